//! Issue: security review, round two. Each defect the review reproduced, tried again against
//! the running broker; each test failed before its fix.

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

/// Defect 5: a capability approved for 9007199254740992 was accepted for 9007199254740993,
/// since both are the same double. Integers beyond ±(2^53 − 1) are refused before any digest
/// is taken, at the gate and at the broker, and nothing is created.
#[tokio::test]
async fn integers_that_share_a_double_never_reach_a_digest() {
    let broker = spawn_app().await;
    let core = crate::gate::spawn_core(&broker).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let token = broker.access_token(&agent).await;
    let http = reqwest::Client::new();

    for body in [
        r#"{"name": 9007199254740992}"#,
        r#"{"name": "ci", "limit": 9007199254740993}"#,
        r#"{"name": "ci", "nested": {"n": [-9007199254740993]}}"#,
        r#"{"name": "ci", "n": 1e400}"#,
    ] {
        let res = http
            .post(format!("{core}/org/tokens"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(res, 400, "invalid_request").await;
    }
    // The largest safe integer still works, so the refusal is about the range, not numbers.
    let res = http
        .post(format!("{core}/org/tokens"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"name": "ci", "limit": 9007199254740991}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    // At the broker, a body carrying such a number is refused the same way.
    let body = format!(
        r#"{{"action": "org_token_mint", "resource": "orgs/org-1/tokens", "params": {{}}, "params_digest": "{}", "summary": {{"limit": 9007199254740993}}, "reason": "r"}}"#,
        tessera::verify::params_digest(&json!({})),
    );
    let res = http
        .post(broker.url("/v1/approvals"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;

    // Exactly one approval exists: the one for the safe integer.
    let op_token = broker.access_token(&op).await;
    let list: Value = broker.get_bearer("/v1/approvals?status=pending", &op_token).await.json().await.unwrap();
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1, "{list}");
}

/// Review round three, item 4: a capability approved for `9007199254740992.0` was accepted for
/// `9007199254740993.0`, both the double 2^53. A decimal beyond ±(2^53 − 1), or one that is not
/// exactly the double it becomes, is refused before any digest, at the library gate and at the
/// broker, and nothing is created.
#[tokio::test]
async fn decimals_that_share_a_double_never_reach_a_digest() {
    let broker = spawn_app().await;
    let core = crate::gate::spawn_core(&broker).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let token = broker.access_token(&agent).await;
    let http = reqwest::Client::new();
    let post = |url: String, body: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    for n in ["9007199254740992.0", "9007199254740993.0", "1e16", "-1.5e300", "0.10000000000000001"] {
        let res = post(format!("{core}/org/tokens"), format!(r#"{{"name": "ci", "limit": {n}}}"#)).await;
        let body = assert_error(res, 400, "invalid_request").await;
        assert!(body["error_description"].as_str().unwrap().contains(n), "{n}: {body}");
        let at_broker = format!(
            r#"{{"action": "org_token_mint", "resource": "orgs/org-1/tokens", "params": {{"limit": {n}}}, "params_digest": "{}", "reason": "r"}}"#,
            tessera::verify::params_digest(&json!({"limit": 1})),
        );
        assert_error(post(broker.url("/v1/approvals"), at_broker).await, 400, "invalid_request").await;
    }
    // A decimal that is exactly its double still works, however it is spelled.
    let res = post(format!("{core}/org/tokens"), r#"{"name": "ci", "limit": 1.50e1, "ratio": 0.25}"#.into()).await;
    assert_eq!(res.status(), 202);
    let op_token = broker.access_token(&op).await;
    let list: Value = broker.get_bearer("/v1/approvals?status=pending", &op_token).await.json().await.unwrap();
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1, "{list}");
}

/// A client for requests that leave from `local` (any address of 127.0.0.0/8 reaches the
/// broker on 127.0.0.1), so one test can be two peers.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(local.parse().unwrap()))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn token_from(http: &reqwest::Client, broker: &TestApp, id: &str, secret: &str) -> reqwest::Response {
    http.post(broker.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
}

/// Defect 2: thirty-odd wrong secrets from one address made the right secret from another
/// address answer 429, for any client, operators included. Failures now count per (client id,
/// address) and per address: the attacker's address is stopped, the victim's is not.
#[tokio::test]
async fn wrong_secrets_from_one_address_do_not_lock_the_client_out_elsewhere() {
    let broker = spawn_app_with(|c| c.failed_auth_per_minute = 5).await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let attacker = client_from("127.0.0.2");
    let victim = client_from("127.0.0.3");

    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(token_from(&attacker, &broker, &op.id, "tessera_sk_wrong").await.status().as_u16());
    }
    assert!(statuses.contains(&429), "the attacker's address is limited: {statuses:?}");
    // Console sign-in from the attacker's address, too, in the operator's name.
    for _ in 0..4 {
        let res = attacker
            .post(broker.url("/console/sign-in"))
            .header("origin", &broker.base)
            .form(&[("client_id", op.id.as_str()), ("client_secret", "tessera_sk_wrong")])
            .send()
            .await
            .unwrap();
        assert!([401, 429].contains(&res.status().as_u16()));
    }
    // Even the right secret is refused from the address that failed...
    assert_error(token_from(&attacker, &broker, &op.id, &op.secret).await, 429, "rate_limited").await;
    // ...and succeeds from an address that did not, at the token endpoint and the console.
    assert_eq!(token_from(&victim, &broker, &op.id, &op.secret).await.status(), 200);
    let res = victim
        .post(broker.url("/console/sign-in"))
        .header("origin", &broker.base)
        .form(&[("client_id", op.id.as_str()), ("client_secret", op.secret.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "the operator signs in from its own address");
    assert!(res.headers().get("set-cookie").is_some());
}

/// Defect 4: `token_requests_per_minute` was accepted and ignored. At 2, the third request of a
/// client within the minute is 429 `rate_limited` with `Retry-After`; another client is not
/// affected.
#[tokio::test]
async fn token_requests_per_minute_is_enforced_per_client() {
    let broker = spawn_app_with(|c| c.token_requests_per_minute = 2).await;
    let a = broker.create_client("org-1", CallerKind::Agent, "a").await;
    let b = broker.create_client("org-1", CallerKind::Agent, "b").await;
    let form = [("grant_type", "client_credentials")];
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let res = broker.token_request(&form, Some(&a)).await;
        if res.status() == 429 {
            let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429, 429, 429, 429, 429]);
    assert_error(broker.token_request(&form, Some(&a)).await, 429, "rate_limited").await;
    assert_eq!(broker.token_request(&form, Some(&b)).await.status(), 200);
    // Unset, the same ten requests all succeed.
    let free = spawn_app().await;
    let c = free.create_client("org-1", CallerKind::Agent, "c").await;
    for _ in 0..10 {
        assert_eq!(free.token_request(&form, Some(&c)).await.status(), 200);
    }
}

/// Defect 8: approvals were not limited per requester. At most `max_pending_per_requester`
/// are pending at once; the next is 429 `rate_limited` with `Retry-After` and creates nothing;
/// another requester is not affected; a withdrawal makes room again.
#[tokio::test]
async fn pending_approvals_are_limited_per_requester() {
    let broker = spawn_app_with(|c| c.policy.max_pending_per_requester = 3).await;
    let spammer = broker.create_client("org-1", CallerKind::Agent, "spammer").await;
    let other = broker.create_client("org-1", CallerKind::Agent, "other").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let t = broker.access_token(&spammer).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(broker.pending_approval(&t, "org_token_mint", "orgs/org-1/tokens", &json!({ "i": i })).await);
    }
    let res = broker.request_approval(&t, "org_token_mint", "orgs/org-1/tokens", &json!({"i": 3})).await;
    assert!(res.headers().get("retry-after").is_some());
    let body = assert_error(res, 429, "rate_limited").await;
    assert!(body["error_description"].as_str().unwrap().contains("pending"), "{body}");
    let ot = broker.access_token(&other).await;
    broker.pending_approval(&ot, "org_token_mint", "orgs/org-1/tokens", &json!({})).await;

    let op_token = broker.access_token(&op).await;
    let list: Value = broker.get_bearer("/v1/approvals?status=pending", &op_token).await.json().await.unwrap();
    assert_eq!(list["approvals"].as_array().unwrap().len(), 4, "nothing was created for the refused request");

    let res = broker.post_bearer(&format!("/v1/approvals/{}/withdraw", ids[0]), &t, &json!({})).await;
    assert_eq!(res.status(), 200);
    broker.pending_approval(&t, "org_token_mint", "orgs/org-1/tokens", &json!({"i": 4})).await;
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

/// Defect 9: the SQLite database and its write-ahead log were created world-readable. The
/// file and its folder are created private, and SQLite gives `-wal` and `-shm` the file's mode.
#[tokio::test]
async fn the_sqlite_database_and_its_wal_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("data").join("db");
    let url = format!("sqlite://{}/tessera.db", folder.display());
    let broker = spawn_on(dir, url, |_| {}).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "a").await;
    broker.access_token(&agent).await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(folder.clone()), 0o700);
    for file in ["tessera.db", "tessera.db-wal", "tessera.db-shm"] {
        assert_eq!(mode(folder.join(file)), 0o600, "{file}");
    }
}

/// Review round three, item 10: `tessera clients create` run right after `tessera serve`
/// started once failed with `migration failed … duplicate column name`: two processes applied
/// the same migration. Several processes migrating one fresh database at once all succeed,
/// each migration applied once (on SQLite, and on PostgreSQL with TESSERA_TEST_BACKEND).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_one_database_at_once_all_succeed() {
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database_url(dir.path()).await;
        let keys = dir.path().join("keys");
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let args: &[&str] = if i % 2 == 0 {
                    &["migrate"]
                } else {
                    &["clients", "create", "--tenant", "org-1", "--kind", "agent", "--name", "a"]
                };
                cli_on(&url, &keys, "http://x", args, &[])
            })
            .collect();
        for (i, out) in futures_util::future::join_all(runs).await.into_iter().enumerate() {
            assert!(out.status.success(), "round {round}, process {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let store = tessera::store::Store::open(&tessera::config::DatabaseUrl::new(url.clone())).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let mut unique = versions.clone();
        unique.dedup();
        assert_eq!(versions, unique, "each migration applied once");
        assert!(versions.len() >= 10, "{versions:?}");
        store.close().await;
    }
}
