//! The approval gate — human decisions and one-time capability tokens.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

const SECRET: &str = "workspaces/ws-2/secrets/OPENAI_KEY";

struct Org {
    app: TestApp,
    agent: TestClient,
    op: TestClient,
    op2: TestClient,
}

async fn org() -> Org {
    org_with(|_| {}).await
}

async fn org_with(tweak: impl FnOnce(&mut tessera::config::Config)) -> Org {
    let app = spawn_app_with(tweak).await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let op2 = app.create_client("org-1", CallerKind::Operator, "bob").await;
    Org { app, agent, op, op2 }
}

fn params() -> Value {
    json!({"key": "OPENAI_KEY", "value": {"length": 51, "sha256": "abc"}})
}

#[tokio::test]
async fn an_operator_approves_with_the_cli_and_the_capability_redeems_exactly_once() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "secret_write", SECRET, &params()).await;
    assert!(id.starts_with("apr_"));
    assert_eq!(app.capability(&at, &id).await, None, "no capability while pending");

    let env = [("TESSERA_CLIENT_ID", op.id.as_str()), ("TESSERA_CLIENT_SECRET", op.secret.as_str())];
    let list = cli_on(&app.database_url, &app.keys_dir(), &app.base, &["approvals", "list"], &env).await;
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&id), "list prints whole ids: {text}");
    assert!(text.contains("secret_write") && text.contains(SECRET));

    let show = cli_on(&app.database_url, &app.keys_dir(), &app.base, &["approvals", "show", &id], &env).await;
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("What will run") && text.contains("\"key\": \"OPENAI_KEY\""), "{text}");
    let show = cli_on(&app.database_url, &app.keys_dir(), &app.base, &["approvals", "show", &id, "--json"], &env).await;
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["approval_id"], id);
    assert!(shown.get("capability").is_none(), "operators never see the capability");

    let approve = cli_on(
        &app.database_url,
        &app.keys_dir(),
        &app.base,
        &["approvals", "approve", &id, "--note", "ok", "--server", &app.base],
        &env,
    )
    .await;
    assert!(approve.status.success(), "{}", String::from_utf8_lossy(&approve.stderr));
    assert!(String::from_utf8_lossy(&approve.stdout).contains("approved"));

    let cap = app.capability(&at, &id).await.expect("capability once approved");
    assert_eq!(peek_header(&cap)["typ"], "cap+jwt");
    let c = peek_claims(&cap);
    assert_eq!(c["sub"], agent.id);
    assert_eq!(c["action"], "secret_write");
    assert_eq!(c["resource"], SECRET);
    assert_eq!(c["params_digest"], tessera::verify::params_digest(&params()).to_string());
    assert_eq!(c["approval_id"], id);
    assert_eq!(c["approvers"], json!([op.id]));
    assert_eq!(c["bypass"], false);
    assert_eq!(c["tenant"], "org-1");
    assert_eq!(c["caller_kind"], "agent");
    assert_eq!(c["aud"], "core");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    // The same reading twice gives the same token.
    assert_eq!(app.capability(&at, &id).await.as_deref(), Some(cap.as_str()));

    let res = app.redeem(&at, &cap).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["approval_id"], id);
    assert_error(app.redeem(&at, &cap).await, 409, "conflict").await;
    let after: Value = app.get_bearer(&format!("/v1/approvals/{id}"), &at).await.json().await.unwrap();
    assert_eq!(after["status"], "redeemed");
    assert!(after.get("capability").is_none());

    let events = app.audit_events().await;
    for e in ["approval.requested", "approval.decided", "approval.approved", "capability.issued", "capability.redeemed"]
    {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    assert_eq!(app.cli(&["audit", "verify"]).await.status.code(), Some(0));
}

#[tokio::test]
async fn the_requester_and_other_agents_can_never_decide() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "x"})).await;
    // The requester itself.
    assert_error(app.decide(&at, &id, "approve").await, 403, "forbidden").await;
    // Another agent of the same tenant cannot even see it.
    let other = app.create_client("org-1", CallerKind::Agent, "other").await;
    let ot = app.access_token(&other).await;
    assert_error(app.decide(&ot, &id, "approve").await, 404, "not_found").await;
    assert_error(app.get_bearer(&format!("/v1/approvals/{id}"), &ot).await, 404, "not_found").await;
    assert_error(app.get_bearer("/v1/approvals?status=pending", &ot).await, 403, "forbidden").await;
    // An operator that is also registered as... the requester? Operators cannot request.
    let opt = app.access_token(&op).await;
    let res = app.request_approval(&opt, "secret_write", SECRET, &params()).await;
    assert_error(res, 403, "forbidden").await;
    // The request is still pending and undecided.
    let a: Value = app.get_bearer(&format!("/v1/approvals/{id}"), &opt).await.json().await.unwrap();
    assert_eq!(a["status"], "pending");
    assert_eq!(a["decisions"], json!([]));
}

#[tokio::test]
async fn another_tenants_operator_sees_nothing_and_decides_nothing() {
    let Org { app, agent, .. } = org().await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-3", &json!({})).await;
    let foreign = app.create_client("org-2", CallerKind::Operator, "eve").await;
    let ft = app.access_token(&foreign).await;
    let list: Value = app.get_bearer("/v1/approvals?status=pending", &ft).await.json().await.unwrap();
    assert_eq!(list["approvals"], json!([]));
    assert_error(app.get_bearer(&format!("/v1/approvals/{id}"), &ft).await, 404, "not_found").await;
    assert_error(app.decide(&ft, &id, "approve").await, 404, "not_found").await;
    let foreign_service = app.create_client("org-2", CallerKind::Service, "core-2").await;
    let _ = foreign_service;
}

#[tokio::test]
async fn requests_are_validated() {
    let Org { app, agent, .. } = org().await;
    let at = app.access_token(&agent).await;
    let good = json!({
        "action": "secret_write", "resource": SECRET,
        "params": params(),
        "params_digest": tessera::verify::params_digest(&params()).to_string(),
        "reason": "rotate the key",
    });
    let other = json!({"key": "OPENAI_KEY", "value": "another"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for (what, body) in [
        ("non-gated action", with("action", json!("workspaces_read"))),
        ("unknown action", with("action", json!("launch_missiles"))),
        ("bad digest", with("params_digest", json!("sha256:short"))),
        ("md5 digest", with("params_digest", json!("md5:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))),
        ("missing reason", without("reason")),
        ("empty reason", with("reason", json!("   "))),
        ("missing digest", without("params_digest")),
        ("malformed resource", with("resource", json!("workspaces/../secrets"))),
        ("non-object summary", with("summary", json!("text"))),
        ("oversized summary", with("summary", json!({"x": "y".repeat(5000)}))),
        ("unknown field", with("caller_kind", json!("operator"))),
        ("number action", with("action", json!(7))),
        // Design §11: the digest must be of exactly the parameters shown.
        ("missing params", without("params")),
        ("null params", with("params", Value::Null)),
        ("params not an object", with("params", json!(["key", "OPENAI_KEY"]))),
        ("params whose digest is another's", with("params", other.clone())),
        ("a digest of other params", with("params_digest", json!(tessera::verify::params_digest(&other).to_string()))),
        ("a forged secret mark deep down", with("params", json!({"key": "K", "x": {"y": {"$secret": {"length": 1}}}}))),
    ] {
        let res = app.post_bearer("/v1/approvals", &at, &body).await;
        assert_error(res, 400, "invalid_request").await;
        let _ = what;
    }
    // Duplicate members, not JSON, wrong content type.
    let dup = r#"{"action":"secret_write","action":"secret_write","resource":"a","params_digest":"x","reason":"r"}"#;
    for (ct, body) in [("application/json", dup), ("application/json", "{"), ("text/plain", "{}")] {
        let res = app
            .http
            .post(app.url("/v1/approvals"))
            .bearer_auth(&at)
            .header("content-type", ct)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_error(res, 400, "invalid_request").await;
    }
    // Nothing was created.
    assert!(!app.audit_events().await.iter().any(|e| e == "approval.requested"));
    // The good request, for contrast, is taken.
    assert_eq!(app.post_bearer("/v1/approvals", &at, &good).await.status(), 202);
    // Without a token, or with garbage.
    let res = app.http.post(app.url("/v1/approvals")).json(&good).send().await.unwrap();
    assert_error(res, 401, "invalid_token").await;
    assert_error(app.post_bearer("/v1/approvals", "not.a.token", &good).await, 401, "invalid_token").await;
}

#[tokio::test]
async fn an_agent_cannot_target_a_secret_of_its_own_workspace() {
    let app = spawn_app().await;
    let ws = app.create_client_with("org-1", CallerKind::Workspace, "rt", Some("ws-1"), &[], &[]).await;
    let wt = app.access_token(&ws).await;
    let res = app.request_approval(&wt, "secret_write", "workspaces/ws-1/secrets/TOKEN", &params()).await;
    assert_error(res, 403, "self_target_forbidden").await;
    let bound_agent = app.create_client_with("org-1", CallerKind::Agent, "a", Some("ws-1"), &[], &[]).await;
    let bt = app.access_token(&bound_agent).await;
    let res = app.request_approval(&bt, "secret_write", "workspaces/ws-1/secrets/TOKEN", &params()).await;
    assert_error(res, 403, "self_target_forbidden").await;
    // Another workspace's secret is an ordinary request.
    app.pending_approval(&wt, "secret_write", "workspaces/ws-9/secrets/TOKEN", &params()).await;
}

#[tokio::test]
async fn only_allowed_install_clients_bypass_and_it_is_audited() {
    let Org { app, agent, .. } = org().await;
    let install =
        app.create_client_with("org-1", CallerKind::Install, "provisioner", None, &[], &["workspace_token_mint"]).await;
    let plain_install = app.create_client("org-1", CallerKind::Install, "other").await;
    let body = json!({
        "action": "workspace_token_mint", "resource": "workspaces/ws-5/tokens",
        "params": {}, "params_digest": tessera::verify::params_digest(&json!({})).to_string(), "reason": "provisioning ws-5",
    });
    let send = |token: String, body: Value| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/v1/approvals"))
                .bearer_auth(token)
                .header("Tessera-Gate-Bypass", "initial provisioning")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // An agent: refused, always.
    assert_error(send(app.access_token(&agent).await, body.clone()).await, 403, "bypass_not_allowed").await;
    // An install client not registered for it.
    assert_error(send(app.access_token(&plain_install).await, body.clone()).await, 403, "bypass_not_allowed").await;
    // The allowed client, but another action.
    let mut other = body.clone();
    other["action"] = json!("org_token_mint");
    other["resource"] = json!("orgs/org-1/tokens");
    let it = app.access_token(&install).await;
    assert_error(send(it.clone(), other).await, 403, "bypass_not_allowed").await;
    // The allowed client and action: the capability at once.
    let res = send(it.clone(), body).await;
    assert_eq!(res.status(), 201);
    let a: Value = res.json().await.unwrap();
    assert_eq!(a["status"], "approved");
    let cap = a["capability"].as_str().unwrap();
    let c = peek_claims(cap);
    assert_eq!(c["bypass"], true);
    assert_eq!(c["approvers"], json!([]));
    assert_eq!(c["sub"], install.id);
    assert_eq!(app.redeem(&it, cap).await.status(), 200);
    let events = app.audit_events().await;
    assert!(events.iter().any(|e| e == "approval.bypassed"));
}

#[tokio::test]
async fn expired_requests_and_capabilities_are_refused() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let stale = app.pending_approval(&at, "workspace_delete", "workspaces/ws-1", &json!({})).await;
    let fresh = app.pending_approval(&at, "workspace_delete", "workspaces/ws-2", &json!({})).await;
    let opt = app.access_token(&op).await;
    assert_eq!(app.decide(&opt, &fresh, "approve").await.status(), 200);
    let cap = app.capability(&at, &fresh).await.unwrap();

    // Past the capability's five minutes: redeeming is 410, and it reads as expired.
    app.state.clock().advance(301);
    let at = app.access_token(&agent).await;
    assert_error(app.redeem(&at, &cap).await, 410, "expired").await;
    let a: Value = app.get_bearer(&format!("/v1/approvals/{fresh}"), &at).await.json().await.unwrap();
    assert_eq!(a["status"], "expired");
    assert!(a.get("capability").is_none());

    // Past the request's hour: deciding is 410.
    app.state.clock().advance(3600);
    let opt = app.access_token(&op).await;
    assert_error(app.decide(&opt, &stale, "approve").await, 410, "expired").await;
    let a: Value = app.get_bearer(&format!("/v1/approvals/{stale}"), &opt).await.json().await.unwrap();
    assert_eq!(a["status"], "expired");
    let listed: Value = app.get_bearer("/v1/approvals?status=expired", &opt).await.json().await.unwrap();
    assert_eq!(listed["approvals"].as_array().unwrap().len(), 2);
    assert!(app.audit_events().await.iter().filter(|e| *e == "approval.expired").count() >= 2);
}

#[tokio::test]
async fn decisions_on_decided_requests_conflict_and_quorum_counts_distinct_operators() {
    let Org { app, agent, op, op2 } = org_with(|c| {
        let file = tessera::policy::PolicyFile {
            quorum: Some([("org_token_mint".to_owned(), tessera::policy::QuorumFile::Count(2))].into()),
            ..Default::default()
        };
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let at = app.access_token(&agent).await;
    let t1 = app.access_token(&op).await;
    let t2 = app.access_token(&op2).await;
    let id = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "ci"})).await;
    let first: Value = app.decide(&t1, &id, "approve").await.json().await.unwrap();
    assert_eq!(first["status"], "pending", "one of two approvals");
    assert_eq!(first["quorum"], json!([{"group": null, "count": 2, "approvals": 1}]));
    // The same operator again does not count twice.
    assert_error(app.decide(&t1, &id, "approve").await, 409, "conflict").await;
    assert_eq!(app.capability(&at, &id).await, None);
    let second: Value = app.decide(&t2, &id, "approve").await.json().await.unwrap();
    assert_eq!(second["status"], "approved");
    let cap = app.capability(&at, &id).await.unwrap();
    let approvers = peek_claims(&cap)["approvers"].clone();
    assert_eq!(approvers.as_array().unwrap().len(), 2);
    // Decided: any further decision conflicts.
    let op3 = app.create_client("org-1", CallerKind::Operator, "carol").await;
    let t3 = app.access_token(&op3).await;
    assert_error(app.decide(&t3, &id, "deny").await, 409, "conflict").await;

    // One deny ends it.
    let id2 = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "x"})).await;
    let denied: Value = app.decide(&t1, &id2, "deny").await.json().await.unwrap();
    assert_eq!(denied["status"], "denied");
    assert_error(app.decide(&t2, &id2, "approve").await, 409, "conflict").await;
    assert_eq!(app.capability(&at, &id2).await, None);
    // Bad decision bodies.
    let res = app.post_bearer(&format!("/v1/approvals/{id2}/decision"), &t2, &json!({"decision": "maybe"})).await;
    assert_error(res, 400, "invalid_request").await;
}

#[tokio::test]
async fn approve_and_deny_racing_leave_exactly_one_decision() {
    for _ in 0..3 {
        let Org { app, agent, op, op2 } = org().await;
        let at = app.access_token(&agent).await;
        let id = app.pending_approval(&at, "secret_write", SECRET, &params()).await;
        let (t1, t2) = (app.access_token(&op).await, app.access_token(&op2).await);
        let (a, d) = tokio::join!(app.decide(&t1, &id, "approve"), app.decide(&t2, &id, "deny"));
        let statuses = [a.status().as_u16(), d.status().as_u16()];
        assert!(statuses.contains(&200) && statuses.contains(&409), "{statuses:?}");
        let final_: Value = app.get_bearer(&format!("/v1/approvals/{id}"), &at).await.json().await.unwrap();
        let expected = if statuses[0] == 200 { "approved" } else { "denied" };
        assert_eq!(final_["status"], expected);
        assert_eq!(final_["decisions"].as_array().unwrap().len(), 1);
        assert_eq!(final_.get("capability").is_some(), expected == "approved");
    }
}

#[tokio::test]
async fn withdrawal_only_while_pending_and_only_by_the_requester() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let opt = app.access_token(&op).await;
    let id = app.pending_approval(&at, "workspace_deprovision", "workspaces/ws-4", &json!({})).await;
    assert_error(app.post_bearer(&format!("/v1/approvals/{id}/withdraw"), &opt, &json!({})).await, 403, "forbidden")
        .await;
    let res = app.post_bearer(&format!("/v1/approvals/{id}/withdraw"), &at, &json!({})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "withdrawn");
    assert_error(app.decide(&opt, &id, "approve").await, 409, "conflict").await;

    let id2 = app.pending_approval(&at, "workspace_deprovision", "workspaces/ws-4", &json!({})).await;
    assert_eq!(app.decide(&opt, &id2, "approve").await.status(), 200);
    assert_error(app.post_bearer(&format!("/v1/approvals/{id2}/withdraw"), &at, &json!({})).await, 409, "conflict")
        .await;
    assert!(app.audit_events().await.iter().any(|e| e == "approval.withdrawn"));
}

#[tokio::test]
async fn thirty_two_parallel_redemptions_give_exactly_one_success() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "secret_write", SECRET, &params()).await;
    assert_eq!(app.decide(&app.access_token(&op).await, &id, "approve").await.status(), 200);
    let cap = app.capability(&at, &id).await.unwrap();
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (app, at, cap) = (app.clone(), at.clone(), cap.clone());
        tasks.push(tokio::spawn(async move { app.redeem(&at, &cap).await.status().as_u16() }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 31, "{codes:?}");
    let redeemed = app.audit_events().await.into_iter().filter(|e| e == "capability.redeemed").count();
    assert_eq!(redeemed, 1);
}

#[tokio::test]
async fn who_may_redeem_and_what_counts_as_a_capability() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let opt = app.access_token(&op).await;
    let id = app.pending_approval(&at, "secret_write", SECRET, &params()).await;
    app.decide(&opt, &id, "approve").await;
    let cap = app.capability(&at, &id).await.unwrap();
    // Another agent of the tenant, and another tenant's service: refused.
    let other = app.create_client("org-1", CallerKind::Agent, "other").await;
    assert_error(app.redeem(&app.access_token(&other).await, &cap).await, 403, "forbidden").await;
    let foreign = app.create_client("org-2", CallerKind::Service, "core-2").await;
    assert_error(app.redeem(&app.access_token(&foreign).await, &cap).await, 403, "forbidden").await;
    // An access token is not a capability; a capability is not an access token.
    assert_error(app.redeem(&at, &at).await, 400, "invalid_request").await;
    assert_error(app.get_bearer(&format!("/v1/approvals/{id}"), &cap).await, 401, "invalid_token").await;
    // A tampered capability.
    let mut parts: Vec<String> = cap.split('.').map(str::to_owned).collect();
    let mut claims = peek_claims(&cap);
    claims["resource"] = json!("workspaces/ws-2/secrets/OTHER");
    parts[1] = tessera::token::b64::encode(claims.to_string().as_bytes());
    assert_error(app.redeem(&at, &parts.join(".")).await, 400, "invalid_request").await;
    // Core's service client of the same tenant may redeem on the holder's behalf.
    let core = app.create_client("org-1", CallerKind::Service, "core").await;
    assert_eq!(app.redeem(&app.access_token(&core).await, &cap).await.status(), 200);
    assert_error(app.redeem(&at, &cap).await, 409, "conflict").await;
}

#[tokio::test]
async fn a_vote_from_an_operator_disabled_since_does_not_count_toward_quorum() {
    let Org { app, agent, op, op2 } = org_with(|c| {
        let file = tessera::policy::PolicyFile {
            quorum: Some([("org_token_mint".to_owned(), tessera::policy::QuorumFile::Count(2))].into()),
            ..Default::default()
        };
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let op3 = app.create_client("org-1", CallerKind::Operator, "carol").await;
    let at = app.access_token(&agent).await;
    let (t1, t2, t3) = (app.access_token(&op).await, app.access_token(&op2).await, app.access_token(&op3).await);
    let id = app.pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "ci"})).await;
    let first: Value = app.decide(&t1, &id, "approve").await.json().await.unwrap();
    assert_eq!(first["status"], "pending");
    // The first approver is disabled: its vote no longer counts.
    tessera::clients::disable(app.state.store(), &op.id, "test", app.state.now()).await.unwrap();
    let second: Value = app.decide(&t2, &id, "approve").await.json().await.unwrap();
    assert_eq!(second["status"], "pending", "{second}");
    assert_eq!(app.capability(&at, &id).await, None);
    // Two operators still enabled make the quorum.
    let third: Value = app.decide(&t3, &id, "approve").await.json().await.unwrap();
    assert_eq!(third["status"], "approved", "{third}");
    assert!(app.capability(&at, &id).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_approving_at_once_reach_a_quorum_of_two_every_time() {
    let Org { app, agent, op, op2 } = org_with(|c| {
        let file = tessera::policy::PolicyFile {
            quorum: Some([("org_token_mint".to_owned(), tessera::policy::QuorumFile::Count(2))].into()),
            ..Default::default()
        };
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let at = app.access_token(&agent).await;
    let (t1, t2) = (app.access_token(&op).await, app.access_token(&op2).await);
    let app = Arc::new(app);
    for round in 0..8 {
        let id = app
            .pending_approval(&at, "org_token_mint", "orgs/org-1/tokens", &json!({"name": format!("r{round}")}))
            .await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for t in [t1.clone(), t2.clone()] {
            let (app, id, start) = (app.clone(), id.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                app.decide(&t, &id, "approve").await.status().as_u16()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "round {round}");
        }
        assert!(app.capability(&at, &id).await.is_some(), "round {round}: not approved");
    }
}

#[tokio::test]
async fn malformed_ids_and_disabled_clients() {
    let Org { app, agent, op, .. } = org().await;
    let opt = app.access_token(&op).await;
    for id in ["nope", "apr_", "apr_AAAAAAAAAAAAAAAAAAAAAA", "..%2F..%2Fetc", "apr_%00"] {
        assert_error(app.get_bearer(&format!("/v1/approvals/{id}"), &opt).await, 404, "not_found").await;
        assert_error(app.decide(&opt, id, "approve").await, 404, "not_found").await;
    }
    assert_error(app.get_bearer("/v1/approvals?status=bogus", &opt).await, 400, "invalid_request").await;
    assert_error(app.get_bearer("/v1/approvals?limit=0", &opt).await, 400, "invalid_request").await;
    assert_error(app.get_bearer("/v1/approvals?cursor=%%%", &opt).await, 400, "invalid_request").await;
    let at = app.access_token(&agent).await;
    tessera::clients::disable(app.state.store(), &agent.id, "test", app.state.now()).await.unwrap();
    assert_error(app.request_approval(&at, "secret_write", SECRET, &params()).await, 401, "invalid_token").await;
}

#[tokio::test]
async fn listing_pages_through_every_pending_request() {
    let Org { app, agent, op, .. } = org().await;
    let at = app.access_token(&agent).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(app.pending_approval(&at, "workspace_delete", &format!("workspaces/ws-{i}"), &json!({})).await);
    }
    let opt = app.access_token(&op).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/approvals?status=pending&limit=3&cursor={c}"),
            None => "/v1/approvals?status=pending&limit=3".to_owned(),
        };
        let page: Value = app.get_bearer(&path, &opt).await.json().await.unwrap();
        for a in page["approvals"].as_array().unwrap() {
            seen.push(a["approval_id"].as_str().unwrap().to_owned());
            for k in [
                "approval_id",
                "status",
                "action",
                "resource",
                "params_digest",
                "params",
                "summary",
                "reason",
                "tenant",
                "requester",
                "requester_kind",
                "actors",
                "created_at",
                "expires_at",
                "quorum",
                "decisions",
            ] {
                assert!(a.get(k).is_some(), "{k} missing");
            }
            assert!(a.get("capability").is_none());
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    let mut want = ids.clone();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
}

/// A webhook delivery: the signature header and the body.
type Delivery = (String, Vec<u8>);

#[tokio::test]
async fn new_pending_requests_reach_webhooks_signed() {
    let received: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = received.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let sig = headers.get("tessera-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                sink.lock().unwrap().push((sig, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    // A second webhook that refuses connections must not block or fail the request.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();

    let Org { app, agent, .. } = org_with(|c| {
        c.webhooks = vec![
            tessera::webhooks::WebhookConfig {
                url: format!("http://{hook_addr}/hook"),
                secret: tessera::webhooks::WebhookSecret::new("whsec"),
                format: Default::default(),
            },
            tessera::webhooks::WebhookConfig {
                url: format!("http://{dead}/hook"),
                secret: tessera::webhooks::WebhookSecret::new("x"),
                format: Default::default(),
            },
        ];
    })
    .await;
    let at = app.access_token(&agent).await;
    let started = std::time::Instant::now();
    let id = app.pending_approval(&at, "secret_write", SECRET, &params()).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "webhooks must not block the request");

    let mut got = None;
    for _ in 0..100 {
        if let Some(x) = received.lock().unwrap().first().cloned() {
            got = Some(x);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (sig, body) = got.expect("webhook delivered");
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["event"], "approval.requested");
    assert_eq!(payload["approval"]["approval_id"], id);
    assert!(payload["approval"].get("capability").is_none());
    // Check the signature independently: t=<ts>,v1=hex(HMAC-SHA256(secret, "<ts>.<body>")).
    let (t, v1) = sig.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"whsec");
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&body);
    let tag: Vec<u8> = (0..v1.len() / 2).map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).unwrap()).collect();
    ring::hmac::verify(&key, &msg, &tag).expect("signature verifies");
    let mut tampered = msg.clone();
    tampered.push(b' ');
    assert!(ring::hmac::verify(&key, &tampered, &tag).is_err());
    // The dead hook is retried and then counted as failed, in the background.
    for _ in 0..100 {
        if app.state.notifier().failed() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.state.notifier().failed(), 1);
    assert_eq!(app.state.notifier().delivered(), 1);
}
