//! Capabilities: bound to exactly what was shown, the presented form (a secret by its
//! fingerprint) and numbers that could share a digest.

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::delegation::{call_core, effects};
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

/// The review's attack: an agent calls `POST /v1/approvals` itself, shows the operator
/// "read-only-ci" and hopes to run "prod-admin". What the operator saw is what the digest
/// binds, so the other body is refused at core, and nothing runs; the honest body runs once.
#[tokio::test]
async fn a_misdescribed_request_cannot_run_what_the_operator_did_not_see() {
    let broker = spawn_app().await;
    let core = crate::gate::spawn_core(&broker).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = broker.access_token(&agent).await;
    let http = reqwest::Client::new();

    // A digest of one body presented with another is refused outright.
    let shown = json!({"name": "read-only-ci"});
    let hidden = json!({"name": "prod-admin"});
    let lie = json!({
        "action": "org_token_mint", "resource": "orgs/org-1/tokens",
        "params": shown, "params_digest": tessera::verify::params_digest(&hidden).to_string(),
        "summary": {"name": "read-only-ci"}, "reason": "CI needs a read-only token",
    });
    assert_error(broker.post_bearer("/v1/approvals", &at, &lie).await, 400, "invalid_request").await;

    // Honest params, a misleading summary: the operator sees both, marked apart.
    let body = json!({
        "action": "org_token_mint", "resource": "orgs/org-1/tokens",
        "params": shown, "params_digest": tessera::verify::params_digest(&shown).to_string(),
        "summary": {"name": "prod-admin (just kidding)"}, "reason": "CI needs a read-only token",
    });
    let res = broker.post_bearer("/v1/approvals", &at, &body).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let ot = broker.access_token(&op).await;
    let a: Value = broker.get_bearer(&format!("/v1/approvals/{id}"), &ot).await.json().await.unwrap();
    assert_eq!(a["params"], shown, "the operator is shown the parameters themselves");
    assert_eq!(broker.decide(&ot, &id, "approve").await.status(), 200);
    let cap = broker.capability(&at, &id).await.unwrap();

    let res = call_core(&http, &core, "POST", "/org/tokens", &at, &hidden, Some(&cap)).await;
    assert_error(res, 403, "forbidden").await;
    assert!(effects(&http, &core).await.is_empty(), "nothing ran");
    let res = call_core(&http, &core, "POST", "/org/tokens", &at, &shown, Some(&cap)).await;
    assert_eq!(res.status(), 201);
    assert_eq!(effects(&http, &core).await.len(), 1);

    // The audit log alone shows that the approval covered exactly the parameters that ran:
    // the requested record's params hash to the digest the redemption names.
    let records = tessera::audit::read_page(broker.state.store(), 0, 10_000).await.unwrap();
    let detail = |event: &str| -> Value {
        let r = records.iter().find(|r| r.event == event && r.subject == id).unwrap();
        serde_json::from_str(&r.detail).unwrap()
    };
    let requested = detail("approval.requested");
    let redeemed = detail("capability.redeemed");
    assert_eq!(requested["params"], shown);
    assert_eq!(tessera::verify::params_digest(&requested["params"]).to_string(), redeemed["params_digest"]);
}

/// A secret value the operator saw only as length and fingerprint: another value of the
/// same length has another fingerprint, so it cannot ride on the approval.
#[tokio::test]
async fn a_changed_secret_value_of_the_same_length_is_refused() {
    let broker = spawn_app().await;
    let core = crate::gate::spawn_core(&broker).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = broker.access_token(&agent).await;
    let http = reqwest::Client::new();
    let approved = json!({"key": "OPENAI_KEY", "value": "sk-approved-0001"});
    let swapped = json!({"key": "OPENAI_KEY", "value": "sk-attacker-0001"});

    let res = call_core(&http, &core, "PUT", "/workspaces/ws-2/secrets", &at, &approved, None).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let ot = broker.access_token(&op).await;
    let a: Value = broker.get_bearer(&format!("/v1/approvals/{id}"), &ot).await.json().await.unwrap();
    assert_eq!(a["params"]["value"]["$secret"]["length"], 16);
    assert!(!a.to_string().contains("sk-approved"), "the secret never reached the broker");
    assert_eq!(broker.decide(&ot, &id, "approve").await.status(), 200);
    let cap = broker.capability(&at, &id).await.unwrap();

    let res = call_core(&http, &core, "PUT", "/workspaces/ws-2/secrets", &at, &swapped, Some(&cap)).await;
    assert_error(res, 403, "forbidden").await;
    assert!(effects(&http, &core).await.is_empty());
    let res = call_core(&http, &core, "PUT", "/workspaces/ws-2/secrets", &at, &approved, Some(&cap)).await;
    assert_eq!(res.status(), 200);

    // A body the gate cannot present is refused before anything is asked.
    for bad in [json!({"key": "K", "value": 42}), json!({"key": "K", "value": "v", "x": {"$secret": {}}})] {
        let res = call_core(&http, &core, "PUT", "/workspaces/ws-2/secrets", &at, &bad, None).await;
        assert_error(res, 400, "invalid_request").await;
    }
}
