//! Limits: rate limits on failed authentications and token requests, and pending approvals
//! per requester.

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

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
