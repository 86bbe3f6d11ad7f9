//! Operability: the version, health and readiness, published keys and metadata, metrics,
//! request ids, logs, configuration and webhooks that leak nothing.

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

#[tokio::test]
async fn version_prints_the_package_version_and_exits_zero() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera")).arg("--version").output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("tessera {}", env!("CARGO_PKG_VERSION")));
}

async fn scrape(app: &TestApp) -> String {
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    res.text().await.unwrap()
}

/// The value of the series named exactly `series` (name and labels), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_count_tokens_failures_approvals_and_redemptions() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let before = scrape(&app).await;

    let at = app.access_token(&agent).await;
    let wrong = TestClient { id: agent.id.clone(), secret: "tessera_sk_wrong".into() };
    let res = app.token_request(&[("grant_type", "client_credentials")], Some(&wrong)).await;
    assert_eq!(res.status(), 401);
    let opt = app.access_token(&op).await;
    let params = json!({"key": "K"});
    let id = app.pending_approval(&at, "secret_write", "workspaces/ws-2/secrets/K", &params).await;
    assert_eq!(app.decide(&opt, &id, "approve").await.status(), 200);
    let cap = app.capability(&at, &id).await.unwrap();
    assert_eq!(app.redeem(&at, &cap).await.status(), 200);
    assert_eq!(app.redeem(&at, &cap).await.status(), 409);

    let after = scrape(&app).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved("tessera_tokens_issued_total{kind=\"agent\",grant=\"client_credentials\"}"), 1.0, "{after}");
    assert_eq!(moved("tessera_tokens_issued_total{kind=\"operator\",grant=\"client_credentials\"}"), 1.0);
    assert_eq!(moved("tessera_token_errors_total{error=\"invalid_client\"}"), 1.0);
    assert_eq!(moved("tessera_approvals_total{status=\"pending\"}"), 1.0);
    assert_eq!(moved("tessera_approvals_total{status=\"approved\"}"), 1.0);
    assert_eq!(moved("tessera_approvals_total{status=\"redeemed\"}"), 1.0);
    assert_eq!(moved("tessera_redemptions_total{outcome=\"redeemed\"}"), 1.0);
    assert_eq!(moved("tessera_redemptions_total{outcome=\"conflict\"}"), 1.0);
    // Latency by route template, never by the raw path.
    assert_eq!(moved("tessera_http_request_duration_seconds_count{route=\"/oauth/token\"}"), 3.0);
    assert_eq!(moved("tessera_http_request_duration_seconds_count{route=\"/v1/approvals/{id}/decision\"}"), 1.0);
    assert_eq!(moved("tessera_http_requests_total{route=\"/oauth/token\",status=\"4xx\"}"), 1.0);
    assert!(!after.contains(&id), "no raw path or id in a label");
    // The two issued tokens went through the group-commit writer, in one batch or two.
    assert_eq!(moved("tessera_audit_batch_records_total"), 2.0, "{after}");
    assert!((1.0..=2.0).contains(&moved("tessera_audit_batches_total")), "{after}");
    assert!(moved("tessera_audit_batch_seconds_total") > 0.0, "{after}");
    assert!(value(&after, "tessera_http_request_duration_seconds_bucket{route=\"/oauth/token\",le=\"+Inf\"}") >= 3.0);
    assert!(after.lines().any(|l| l.starts_with("tessera_signing_key_age_seconds{kid=")), "{after}");
    // Every sample line is `name{labels} number` or `name number`.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn rate_limited_authentications_are_counted() {
    let app = spawn_app_with(|c| c.failed_auth_per_minute = 1).await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let wrong = TestClient { id: agent.id.clone(), secret: "tessera_sk_wrong".into() };
    for _ in 0..3 {
        app.token_request(&[("grant_type", "client_credentials")], Some(&wrong)).await;
    }
    let text = scrape(&app).await;
    assert!(value(&text, "tessera_rate_limited_total{route=\"/oauth/token\"}") >= 1.0, "{text}");
    assert!(value(&text, "tessera_failed_auth_blocked_total") >= 1.0);
    assert!(value(&text, "tessera_token_errors_total{error=\"rate_limited\"}") >= 1.0);
}

#[tokio::test]
async fn responses_carry_a_request_id_echoed_or_generated() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");

    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(tessera::server::request_id::acceptable(generated.as_bytes()), "{generated}");
    let again = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_ne!(again.headers()["x-request-id"], generated.as_str());

    // An id that is not a short plain token is replaced, never echoed into logs or answers.
    let res = app.http.get(app.url("/healthz")).header("x-request-id", "a b\"}{").send().await.unwrap();
    let replaced = res.headers()["x-request-id"].to_str().unwrap();
    assert!(tessera::server::request_id::acceptable(replaced.as_bytes()) && replaced != generated, "{replaced}");
    // Errors carry it too.
    let res = app.http.get(app.url("/nope")).header("x-request-id", "err-1").send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-request-id"], "err-1");
    let _: Value = res.json().await.unwrap();
}

#[tokio::test]
async fn openapi_describes_every_route_and_the_broker_routes_every_operation() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for known in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/oauth/token",
        "/oauth/introspect",
        "/oauth/revoke",
        "/v1/approvals",
        "/v1/approvals/{id}",
        "/v1/approvals/{id}/decision",
        "/v1/approvals/{id}/withdraw",
        "/v1/capabilities/redeem",
        "/v1/revocations",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/console",
        "/console/sign-in",
        "/console/sign-out",
        "/console/history",
        "/console/approvals/{id}",
        "/console/approvals/{id}/decision",
        "/console/approvals/{id}/audit",
    ] {
        assert!(paths.contains_key(known), "{known} missing from the document");
    }
    // Every documented operation reaches its own route (the metrics label is the template the
    // router matched), with its method.
    for op in tessera::server::openapi::OPERATIONS {
        let url = app.url(&op.path.replace("{id}", "apr_x"));
        let method = reqwest::Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let res = app.http.request(method, url).send().await.unwrap();
        assert_ne!(res.status(), 405, "{} {}", op.method, op.path);
        let entry = &doc["paths"][op.path][op.method];
        assert!(entry["responses"]["default"].is_object(), "{} {} lacks the error shape", op.method, op.path);
    }
    let text = scrape(&app).await;
    for op in tessera::server::openapi::OPERATIONS {
        let series = format!("tessera_http_request_duration_seconds_count{{route=\"{}\"}}", op.path);
        assert!(value(&text, &series) >= 1.0, "{} was not routed to its template", op.path);
    }
}

/// Every operation's answer, signed out and signed in to the console, has a media type the
/// document gives for its status: a redirect has no body, the console's errors are pages, the
/// rest JSON. (The API fuzzing in scripts/schemathesis found both mismatches.)
#[tokio::test]
async fn every_operation_answers_with_a_media_type_its_document_gives() {
    let app = spawn_app().await;
    let doc: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let operator = app.create_client("org-1", CallerKind::Operator, "op").await;
    let res = app
        .http
        .post(app.url("/console/sign-in"))
        .form(&[("client_id", operator.id.as_str()), ("client_secret", operator.secret.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();

    let mut checked = 0;
    for session in [None, Some(cookie.as_str())] {
        for op in tessera::server::openapi::OPERATIONS {
            let url = app.url(&op.path.replace("{id}", "apr_x"));
            let method = reqwest::Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
            let mut req = app.http.request(method, url);
            if let Some(c) = session {
                req = req.header("cookie", c);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16().to_string();
            let responses = &doc["paths"][op.path][op.method]["responses"];
            let documented = responses.get(&status).unwrap_or(&responses["default"]);
            let media = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().trim().to_owned());
            let body = res.bytes().await.unwrap();
            let what = format!("{} {} answered {status}", op.method, op.path);
            match documented.get("content") {
                None => assert!(media.is_none() && body.is_empty(), "{what} with a body, documented without one"),
                Some(content) => {
                    let media = media.unwrap_or_else(|| panic!("{what} without a media type"));
                    assert!(content.get(&media).is_some(), "{what} as {media}, documented as {content}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * tessera::server::openapi::OPERATIONS.len());
}

/// The keys a TOML table accepts, read from the real type: the parser's error for an unknown
/// key lists every expected one.
fn accepted_keys(prefix: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, format!("{prefix}zz_not_a_key = 1\n")).unwrap();
    let e = tessera::config::Config::load(Some(&path), &std::collections::HashMap::new()).unwrap_err().0;
    let expected = e.split("expected one of").nth(1).unwrap_or_else(|| panic!("no key list in {e:?}"));
    expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn configuration_reference_matches_the_configuration_type() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let top = accepted_keys("");
    assert!(top.len() > 10, "{top:?}");
    let policy = accepted_keys("[policy]\n");
    assert!(policy.contains(&"access_token_ttl_secs".to_owned()), "{policy:?}");

    // Every key of the file struct has a row; so has every key of [policy].
    let first_cells: Vec<String> = rows.iter().map(|r| r[0].trim_matches('`').to_owned()).collect();
    for key in top.iter().chain(&policy) {
        let shown =
            if ["quorum", "kinds", "actions"].contains(&key.as_str()) { format!("[policy.{key}") } else { key.clone() };
        assert!(
            first_cells.iter().any(|c| c == key) || doc.contains(&format!("`{shown}")),
            "docs/configuration.md has no row for `{key}`"
        );
    }
    // Every environment variable is on the row of the key it overrides.
    for (var, key) in tessera::config::ENV_VARS {
        let row = rows.iter().find(|r| r[0] == format!("`{key}`")).unwrap_or_else(|| panic!("no row for {key}"));
        assert!(row.len() > 1 && row[1].contains(&format!("`{var}`")), "{var} not on the row of `{key}`");
    }
    // And the other way: every row of the main table names a real key, and every variable in
    // its environment column is one the broker reads.
    let extra_vars = ["TESSERA_WEBHOOK_URL", "TESSERA_WEBHOOK_SECRET"];
    for row in rows.iter().filter(|r| r.len() == 4) {
        let key = row[0].trim_matches('`');
        assert!(top.iter().any(|k| k == key), "row `{key}` is not a configuration key");
        for var in row[1].split('`').skip(1).step_by(2) {
            let known = tessera::config::ENV_VARS.iter().any(|(v, k)| *v == var && *k == key);
            assert!(known || extra_vars.contains(&var), "{var} on row `{key}` is not read for it");
        }
    }
    for row in rows.iter().filter(|r| {
        r.len() == 3 && !["agent", "workspace", "install", "operator", "service"].iter().any(|k| r[0].contains(k))
    }) {
        let key = row[0].trim_matches('`');
        if key.starts_with("[policy.") {
            continue;
        }
        assert!(policy.iter().any(|k| k == key), "[policy] row `{key}` is not a policy key");
    }
}

#[tokio::test]
async fn json_logs_carry_the_request_span_with_its_id_and_no_query() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("broker.log");
    let mut broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env_remove("TESSERA_CONFIG")
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_ISSUER", &base)
        .env("TESSERA_DATABASE_URL", format!("sqlite://{}/t.db", dir.path().display()))
        .env("TESSERA_KEYS_DIR", dir.path().join("keys"))
        .env("TESSERA_LOG_FORMAT", "json")
        .env("TESSERA_LOG", "info,tessera::server=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the broker did not start");
    let res =
        http.get(format!("{base}/healthz?q=query-text-never-logged")).header("x-request-id", "log-id-7").send().await;
    assert_eq!(res.unwrap().status(), 200);
    // An event logged inside a request at the default level (a refused client) carries the
    // request's span too.
    let res = http
        .post(format!("{base}/oauth/token"))
        .header("x-request-id", "log-id-8")
        .basic_auth("tc_nobody", Some("wrong-secret-never-logged"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    assert_eq!(res.unwrap().status(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = broker.kill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("query-text-never-logged"), "{text}");
    assert!(!text.contains("wrong-secret-never-logged"), "{text}");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let tagged: Vec<&Value> = lines.iter().filter(|l| l["span"]["request_id"] == "log-id-7").collect();
    assert!(!tagged.is_empty(), "no line carries the request id: {text}");
    // The debug line that closes every request: its status and latency.
    assert!(tagged.iter().any(|l| l["fields"]["message"] == "answered" && l["fields"]["status"] == 200), "{text}");
    for l in tagged {
        assert_eq!(l["span"]["path"], "/healthz");
        assert_eq!(l["span"]["method"], "GET");
    }
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "client authentication failed" && l["level"] == "INFO")
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0]["span"]["request_id"], "log-id-8", "{text}");
    assert_eq!(refused[0]["span"]["path"], "/oauth/token");
    assert_eq!(refused[0]["span"]["method"], "POST");
    // Logged outside any request: no request span.
    let listening: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "tessera listening").collect();
    assert_eq!(listening.len(), 1, "{text}");
    assert!(listening[0].get("span").is_none(), "{text}");
}

#[tokio::test]
async fn jwks_and_metadata_are_published() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let cc = res.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.contains("max-age=300"), "{cc}");
    let jwks: Value = res.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = keys[0].as_object().unwrap();
    let mut names: Vec<&str> = k.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x"]);
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert_eq!(k["alg"], "EdDSA");
    assert_eq!(k["use"], "sig");
    assert_eq!(k["kid"], app.state.keys().signer().kid());

    let meta: Value =
        app.http.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], app.base);
    assert_eq!(meta["token_endpoint"], app.url("/oauth/token"));
    assert_eq!(meta["jwks_uri"], app.url("/.well-known/jwks.json"));
    assert!(meta["grant_types_supported"].as_array().unwrap().contains(&"client_credentials".into()));
    assert!(meta["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&"client_secret_basic".into()));
    assert!(meta["response_types_supported"].is_array());
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], true);
    assert_eq!(body["signing_key"], true);
}

#[tokio::test]
async fn an_unknown_configuration_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n").unwrap();
    let out = cli_on(
        "sqlite://unused.db",
        dir.path(),
        "http://127.0.0.1:1",
        &["--config", path.to_str().unwrap(), "serve"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_adress"));
}

/// Defect 9: a webhook URL was logged verbatim when delivery failed, and chat-webhook URLs
/// carry their secret in the path. Only the host reaches the log.
#[tokio::test]
async fn a_failing_webhook_logs_its_host_and_never_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/t.db", dir.path().display());
    let keys = dir.path().join("keys");
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, dead) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let out =
        cli_on(&db, &keys, &base, &["clients", "create", "--tenant", "o", "--kind", "agent", "--name", "a"], &[]).await;
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent =
        TestClient { id: v["client_id"].as_str().unwrap().into(), secret: v["client_secret"].as_str().unwrap().into() };
    let log = dir.path().join("broker.log");
    let hook = format!("http://127.0.0.1:{dead}/services/T0/B0/pathsecret42?token=querysecret42");
    let mut broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env("TESSERA_DATABASE_URL", &db)
        .env("TESSERA_KEYS_DIR", &keys)
        .env("TESSERA_ISSUER", &base)
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_WEBHOOK_URL", &hook)
        .env("TESSERA_WEBHOOK_SECRET", "whsecret")
        .env("TESSERA_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the broker started");
    let res = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let token: Value = res.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap();
    let body = json!({
        "action": "org_token_mint", "resource": "orgs/o/tokens",
        "params": {}, "params_digest": tessera::verify::params_digest(&json!({})).to_string(), "reason": "r",
    });
    let res = http.post(format!("{base}/v1/approvals")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("webhook unreachable") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    broker.kill().await.unwrap();
    assert!(text.contains("webhook unreachable"), "the failure is logged: {text}");
    assert!(text.contains(&format!("127.0.0.1:{dead}")), "with the hook's host");
    for secret in ["pathsecret42", "querysecret42", "/services/", "whsecret"] {
        assert!(!text.contains(secret), "{secret} reached the log");
    }
}
