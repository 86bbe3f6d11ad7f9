//! Issue: the broker mints scoped, caller-kind access tokens from bootstrap secrets.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tessera::domain::CallerKind;
use tessera::policy::DEFAULT_GATED_ACTIONS;

use crate::helpers::*;

#[tokio::test]
async fn issued_token_verifies_through_the_jwks_with_every_pinned_claim() {
    let app = spawn_app().await;
    let agent = app.create_client_with("org-1", CallerKind::Agent, "concierge", Some("ws-9"), &[], &[]).await;
    let res = app.token_request(&[("grant_type", "client_credentials")], Some(&agent)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    let token = body["access_token"].as_str().unwrap();

    // Decode with an independent JOSE implementation, keyed only by the published JWKS.
    let jwks: Value = app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.unwrap();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).expect("kid in JWKS");
    let x = tessera::token::b64::decode(jwk["x"].as_str().unwrap()).unwrap();
    let key = DecodingKey::from_ed_der(&x);
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[app.base.as_str()]);
    v.set_audience(&["core"]);
    v.set_required_spec_claims(&["iss", "sub", "aud", "exp", "nbf", "iat"]);
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).unwrap();
    let c = data.claims;
    assert_eq!(c["iss"], app.base);
    assert_eq!(c["sub"], agent.id);
    assert_eq!(c["client_id"], agent.id);
    assert_eq!(c["aud"], "core");
    assert_eq!(c["tenant"], "org-1");
    assert_eq!(c["caller_kind"], "agent");
    assert_eq!(c["workspace"], "ws-9");
    assert_eq!(c["scope"], "approvals:create workspaces:read workspaces:write");
    for k in ["iat", "nbf", "exp"] {
        assert!(c[k].is_i64(), "{k} must be an integer");
    }
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 22));
    assert!(c.get("act").is_none());

    // And with Tessera's own verifier.
    let policy = tessera::verify::Policy::new(app.base.clone(), "core");
    let claims = policy.verify_access(app.state.keys(), token, app.state.now()).unwrap();
    assert_eq!(claims.caller_kind, CallerKind::Agent);
}

#[tokio::test]
async fn client_secret_post_works_and_jtis_are_unique() {
    let app = spawn_app().await;
    let c = app.create_client_with("org-1", CallerKind::Workspace, "rt", Some("ws-1"), &[], &[]).await;
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let res = app
            .token_request(
                &[("grant_type", "client_credentials"), ("client_id", &c.id), ("client_secret", &c.secret)],
                None,
            )
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        let claims = peek_claims(body["access_token"].as_str().unwrap());
        assert!(seen.insert(claims["jti"].as_str().unwrap().to_owned()));
    }
}

#[tokio::test]
async fn workspace_client_without_workspace_is_refused() {
    let app = spawn_app().await;
    let new = tessera::clients::NewClient {
        tenant: "org-1".parse().unwrap(),
        kind: CallerKind::Workspace,
        name: "rt".into(),
        workspace: None,
        scopes: vec![],
        allow_bypass: vec![],
        delegates: vec![],
        require_dpop: false,
    };
    let r = tessera::clients::create(app.state.store(), &app.state.config().policy, new, "test", 0).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn unknown_client_and_wrong_secret_get_the_same_answer() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let wrong = TestClient { id: c.id.clone(), secret: "tessera_sk_wrong".into() };
    let unknown = TestClient { id: "tc_nosuchclient".into(), secret: c.secret.clone() };
    let mut answers = Vec::new();
    for who in [&wrong, &unknown] {
        let res = app.token_request(&[("grant_type", "client_credentials")], Some(who)).await;
        assert_eq!(res.status(), 401);
        let www = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(www.starts_with("Basic"));
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        answers.push((www, body));
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn disable_and_rotate_take_effect_on_the_next_request() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    app.access_token(&c).await;

    let out = app.cli(&["clients", "rotate-secret", &c.id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["client_id"], c.id);
    let new = TestClient { id: c.id.clone(), secret: rotated["client_secret"].as_str().unwrap().to_owned() };
    assert_error(app.token_request(&[("grant_type", "client_credentials")], Some(&c)).await, 401, "invalid_client")
        .await;
    app.access_token(&new).await;

    let out = app.cli(&["clients", "disable", &c.id]).await;
    assert!(out.status.success());
    assert_error(app.token_request(&[("grant_type", "client_credentials")], Some(&new)).await, 401, "invalid_client")
        .await;
}

#[tokio::test]
async fn no_request_of_any_shape_yields_a_gated_action() {
    let app = spawn_app().await;
    for kind in CallerKind::ALL {
        let ws = (kind == CallerKind::Workspace).then_some("ws-1");
        let c = app.create_client_with("org-1", kind, "c", ws, &[], &[]).await;
        let token = app.access_token(&c).await;
        let scope = peek_claims(&token)["scope"].as_str().unwrap().to_owned();
        for g in DEFAULT_GATED_ACTIONS {
            assert!(!scope.split(' ').any(|s| s == g), "{kind} got {g}");
            for asked in [g.to_owned(), format!("workspaces:read {g}"), format!("{g} {g}")] {
                let res = app.token_request(&[("grant_type", "client_credentials"), ("scope", &asked)], Some(&c)).await;
                let body = assert_error(res, 400, "invalid_scope").await;
                assert!(body["error_description"].as_str().unwrap().contains("approval"), "{body}");
            }
        }
    }
}

#[tokio::test]
async fn scope_down_selects_within_the_client_and_never_beyond() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let token = app.access_token_scoped(&c, Some("workspaces:read")).await;
    assert_eq!(peek_claims(&token)["scope"], "workspaces:read");
    for asked in ["approvals:decide", "plugins:write", "nonsense:scope", "BAD", ""] {
        let res = app.token_request(&[("grant_type", "client_credentials"), ("scope", asked)], Some(&c)).await;
        assert_error(res, 400, "invalid_scope").await;
    }
}

#[tokio::test]
async fn only_operators_can_ever_hold_approvals_decide() {
    let app = spawn_app().await;
    for kind in [CallerKind::Agent, CallerKind::Workspace, CallerKind::Install, CallerKind::Service] {
        let new = tessera::clients::NewClient {
            tenant: "org-1".parse().unwrap(),
            kind,
            name: "x".into(),
            workspace: (kind == CallerKind::Workspace).then(|| "ws-1".parse().unwrap()),
            scopes: vec!["approvals:decide".parse().unwrap()],
            allow_bypass: vec![],
            delegates: vec![],
            require_dpop: false,
        };
        assert!(
            tessera::clients::create(app.state.store(), &app.state.config().policy, new, "t", 0).await.is_err(),
            "{kind}"
        );
    }
    let op = app.create_client("org-1", CallerKind::Operator, "op").await;
    assert!(peek_claims(&app.access_token(&op).await)["scope"].as_str().unwrap().contains("approvals:decide"));
}

#[tokio::test]
async fn malformed_token_requests_get_rfc6749_errors() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let url = app.url("/oauth/token");
    let h = &app.http;

    // Missing and unknown grant types.
    assert_error(app.token_request(&[], Some(&c)).await, 400, "invalid_request").await;
    assert_error(app.token_request(&[("grant_type", "password")], Some(&c)).await, 400, "unsupported_grant_type").await;
    // Wrong content type.
    let res = h
        .post(&url)
        .basic_auth(&c.id, Some(&c.secret))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    // GET.
    let res = h.get(&url).basic_auth(&c.id, Some(&c.secret)).send().await.unwrap();
    assert_error(res, 405, "invalid_request").await;
    // A secret in the query string.
    let res = h
        .post(format!("{url}?client_id={}&client_secret={}", c.id, c.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    // Two authentication methods at once.
    let res = app
        .token_request(
            &[("grant_type", "client_credentials"), ("client_id", &c.id), ("client_secret", &c.secret)],
            Some(&c),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    // No authentication at all.
    assert_error(app.token_request(&[("grant_type", "client_credentials")], None).await, 401, "invalid_client").await;
    // A repeated parameter.
    let res = h
        .post(&url)
        .basic_auth(&c.id, Some(&c.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    // An oversized body.
    let big = "x".repeat(64 * 1024);
    let res = app.token_request(&[("grant_type", "client_credentials"), ("pad", &big)], Some(&c)).await;
    assert_error(res, 413, "invalid_request").await;
    // Malformed Basic, and a Bearer scheme.
    for auth in ["Basic !!!notbase64", "Basic Zm9v", "Bearer abc", "Basic"] {
        let res = h
            .post(&url)
            .header("authorization", auth)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_error(res, 401, "invalid_client").await;
    }
    // Not a form at all.
    let res = h
        .post(&url)
        .basic_auth(&c.id, Some(&c.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    // A huge client id and secret.
    let long = "a".repeat(5000);
    let res = app
        .token_request(&[("grant_type", "client_credentials"), ("client_id", &long), ("client_secret", &long)], None)
        .await;
    assert_error(res, 401, "invalid_client").await;
    // Unknown paths keep the shape.
    assert_error(h.get(app.url("/nope")).send().await.unwrap(), 404, "not_found").await;
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
async fn the_signing_key_survives_a_restart() {
    let app = spawn_app().await;
    let kid = app.state.keys().signer().kid().to_owned();
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let old_token = app.access_token(&c).await;
    let (dir, url) = app.stop().await;
    let files: Vec<_> = std::fs::read_dir(dir.path().join("keys")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let app = spawn_on(dir, url, |_| {}).await;
    assert_eq!(app.state.keys().signer().kid(), kid);
    // A token from before the restart still verifies (issuer moved with the port, so check
    // the signature path with the old issuer).
    let iss = peek_claims(&old_token)["iss"].as_str().unwrap().to_owned();
    let policy = tessera::verify::Policy::new(iss, "core");
    policy.verify_access(app.state.keys(), &old_token, app.state.now()).unwrap();
}

#[tokio::test]
async fn every_issued_token_is_audited_without_the_token() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let token = app.access_token(&c).await;
    let jti = peek_claims(&token)["jti"].as_str().unwrap().to_owned();
    let records = tessera::audit::read_page(app.state.store(), 0, 100).await.unwrap();
    let rec = records.iter().find(|r| r.event == "token.issued").expect("token.issued record");
    assert_eq!(rec.subject, jti);
    assert_eq!(rec.actor, c.id);
    let detail: Value = serde_json::from_str(&rec.detail).unwrap();
    assert_eq!(detail["scope"], "approvals:create workspaces:read workspaces:write");
    assert!(detail["exp"].is_i64());
    let export = app.cli(&["audit", "export"]).await;
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(text.lines().count() >= 3);
    assert!(!text.contains(&token));
    assert!(!text.contains(&c.secret));
    assert!(!text.contains(tessera::token::b64::encode(c.secret.as_bytes()).as_str()));
}

#[tokio::test]
async fn a_failed_audit_write_fails_the_request() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    sqlx::query("DROP TABLE audit_log").execute(app.state.store().pool()).await.unwrap();
    let res = app.token_request(&[("grant_type", "client_credentials")], Some(&c)).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 503);
    assert!(body.get("access_token").is_none());
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn audit_verify_passes_then_names_an_altered_record() {
    let app = spawn_app().await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    for _ in 0..3 {
        app.access_token(&c).await;
    }
    let ok = app.cli(&["audit", "verify"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));
    let pool = app.state.store().pool();

    // Alter a middle record.
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").execute(pool).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("record 3"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);

    // Restore it, then alter the last record only, even recomputing its own hash naively.
    sqlx::query("UPDATE audit_log SET actor = $1 WHERE seq = 3").bind(&c.id).execute(pool).await.unwrap();
    assert_eq!(app.cli(&["audit", "verify"]).await.status.code(), Some(0));
    let last: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log").fetch_one(pool).await.unwrap();
    sqlx::query("UPDATE audit_log SET detail = '{}' WHERE seq = $1").bind(last).execute(pool).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains(&format!("record {last}")));

    // Deleting a record is a gap.
    sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(pool).await.unwrap();
    let bad = app.cli(&["audit", "verify"]).await;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("record 2"));
}

#[tokio::test]
async fn the_cli_registers_a_client_that_gets_a_token() {
    let app = spawn_app().await;
    let out = app
        .cli(&[
            "clients",
            "create",
            "--tenant",
            "org-7",
            "--kind",
            "agent",
            "--name",
            "concierge",
            "--scope",
            "workspaces:read",
        ])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = created["client_secret"].as_str().unwrap();
    assert!(secret.starts_with("tessera_sk_") && secret.len() == 11 + 43);
    let c = TestClient { id: created["client_id"].as_str().unwrap().to_owned(), secret: secret.to_owned() };
    let token = app.access_token(&c).await;
    let claims = peek_claims(&token);
    assert_eq!(claims["scope"], "workspaces:read");
    assert_eq!(claims["tenant"], "org-7");
    assert_eq!(peek_header(&token)["typ"], "at+jwt");

    // The secret is never stored, only its hash.
    let stored: String = sqlx::query_scalar("SELECT secret_hash FROM clients WHERE client_id = $1")
        .bind(&c.id)
        .fetch_one(app.state.store().pool())
        .await
        .unwrap();
    assert_eq!(stored, tessera::clients::hash_secret(secret));

    // `list` shows it, without the secret.
    let list = app.cli(&["clients", "list"]).await;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&c.id) && !text.contains(secret));

    // Usage errors exit 2; refused registrations exit 1 with one line.
    let usage = app.cli(&["clients", "create", "--tenant", "org-7", "--kind", "robot", "--name", "x"]).await;
    assert_eq!(usage.status.code(), Some(2));
    let refused = app
        .cli(&[
            "clients",
            "create",
            "--tenant",
            "org-7",
            "--kind",
            "agent",
            "--name",
            "x",
            "--scope",
            "approvals:decide",
        ])
        .await;
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&refused.stderr).trim().lines().count(), 1);
    let gated = app
        .cli(&["clients", "create", "--tenant", "org-7", "--kind", "install", "--name", "x", "--scope", "secret_write"])
        .await;
    assert_eq!(gated.status.code(), Some(1));
    let missing = app.cli(&["clients", "disable", "tc_nobody"]).await;
    assert_eq!(missing.status.code(), Some(1));

    // keys list names the signing key.
    let keys = app.cli(&["keys", "list"]).await;
    assert!(String::from_utf8_lossy(&keys.stdout).contains(app.state.keys().signer().kid()));
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

#[tokio::test]
async fn failed_authentications_are_rate_limited_before_the_secret_is_checked() {
    let app = spawn_app_with(|c| c.failed_auth_per_minute = 10).await;
    let c = app.create_client("org-1", CallerKind::Agent, "a").await;
    let wrong = TestClient { id: c.id.clone(), secret: "tessera_sk_guess".into() };
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(app.token_request(&[("grant_type", "client_credentials")], Some(&wrong)).await.status().as_u16());
    }
    let first_429 = statuses.iter().position(|s| *s == 429).expect("a 429 before 15 failures");
    assert!(first_429 <= 11, "{statuses:?}");
    assert!(statuses[..first_429].iter().all(|s| *s == 401));
    // While limited, even the right secret is refused without being checked.
    let res = app.token_request(&[("grant_type", "client_credentials")], Some(&c)).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_error(res, 429, "rate_limited").await;
}
