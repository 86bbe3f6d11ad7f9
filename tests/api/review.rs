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
        r#"{{"action": "org_token_mint", "resource": "orgs/org-1/tokens", "params_digest": "{}", "summary": {{"limit": 9007199254740993}}, "reason": "r"}}"#,
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
