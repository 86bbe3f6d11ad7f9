//! Delegation: every party in a chain counts (design §12) — bypass, own workspace, decisions,
//! disabling and standing. Each test tries to talk past the gate and fails.

use serde_json::{Value, json};
use tessera::domain::CallerKind;

use crate::helpers::*;

/// Registers a client with delegates and bypass rights, as `tessera clients create` would.
async fn register(
    app: &TestApp,
    kind: CallerKind,
    name: &str,
    workspace: Option<&str>,
    bypass: &[&str],
    delegates: &[&TestClient],
) -> TestClient {
    let new = tessera::clients::NewClient {
        tenant: "org-1".parse().unwrap(),
        kind,
        name: name.into(),
        workspace: workspace.map(|w| w.parse().unwrap()),
        scopes: vec![],
        allow_bypass: bypass.iter().map(|a| a.parse().unwrap()).collect(),
        delegates: delegates.iter().map(|d| d.id.parse().unwrap()).collect(),
        require_dpop: false,
        groups: vec![],
        owner: None,
    };
    let (rec, secret) =
        tessera::clients::create(app.state.store(), &app.state.config().policy, new, "test", app.state.now())
            .await
            .unwrap();
    TestClient { id: rec.client_id.to_string(), secret: secret.expose().to_owned() }
}

/// `actor` exchanges `subject_token` (RFC 8693) and acts for its subject.
async fn act_for(app: &TestApp, actor: &TestClient, subject_token: &str) -> String {
    let res = app
        .token_request(
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", subject_token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
            Some(actor),
        )
        .await;
    assert_eq!(res.status(), 200, "exchange by {}", actor.id);
    res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

pub(crate) async fn call_core(
    http: &reqwest::Client,
    core: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
    cap: Option<&str>,
) -> reqwest::Response {
    let mut req = http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{core}{path}"))
        .bearer_auth(token)
        .json(body);
    if let Some(c) = cap {
        req = req.header("Tessera-Capability", c);
    }
    req.send().await.unwrap()
}

pub(crate) async fn effects(http: &reqwest::Client, core: &str) -> Vec<Value> {
    http.get(format!("{core}/debug/effects")).send().await.unwrap().json::<Vec<Value>>().await.unwrap()
}

/// The bypass needs every party's permission: an agent acting for an install client that may
/// bypass gets nothing it could not get alone, however deep the chain.
#[tokio::test]
async fn a_delegated_token_never_borrows_the_subjects_bypass() {
    let app = spawn_app().await;
    let helper_install = register(&app, CallerKind::Install, "provisioner-2", None, &["workspace_delete"], &[]).await;
    let agent = register(&app, CallerKind::Agent, "concierge", None, &[], &[]).await;
    let install =
        register(&app, CallerKind::Install, "provisioner", None, &["workspace_delete"], &[&agent, &helper_install])
            .await;
    let body = json!({
        "action": "workspace_delete", "resource": "workspaces/ws-7", "params": {},
        "params_digest": tessera::verify::params_digest(&json!({})).to_string(), "reason": "decommission",
    });
    let bypass = |t: &str| {
        app.http
            .post(app.url("/v1/approvals"))
            .bearer_auth(t)
            .header("Tessera-Gate-Bypass", "scheduled decommission")
            .json(&body)
            .send()
    };
    let subject = app.access_token(&install).await;
    // One level: the agent acting for the install client.
    let one = act_for(&app, &agent, &subject).await;
    assert_error(bypass(&one).await.unwrap(), 403, "bypass_not_allowed").await;
    // Two levels: the agent acting through another allowed install client.
    let via = act_for(&app, &helper_install, &subject).await;
    let two = act_for(&app, &agent, &via).await;
    assert_eq!(peek_claims(&two)["act"]["act"]["sub"], helper_install.id);
    assert_error(bypass(&two).await.unwrap(), 403, "bypass_not_allowed").await;
    // Every party allowed: the chain of install clients gets it, and it is recorded.
    let res = bypass(&via).await.unwrap();
    assert_eq!(res.status(), 201);
    let a: Value = res.json().await.unwrap();
    assert_eq!(a["actors"], json!([helper_install.id]));
    let cap = peek_claims(a["capability"].as_str().unwrap());
    assert_eq!(cap["act"]["sub"], helper_install.id);
    assert_eq!(cap["act"]["caller_kind"], "install");
    // And the subject alone, for contrast.
    assert_eq!(bypass(&subject).await.unwrap().status(), 201);
}

/// Self-target checks every party's workspace: a workspace client acting for the concierge
/// cannot ask for a secret in its own workspace, nor can an agent acting through it.
#[tokio::test]
async fn a_delegated_token_cannot_target_any_partys_own_workspace() {
    let app = spawn_app().await;
    let runtime = register(&app, CallerKind::Workspace, "runtime", Some("ws-9"), &[], &[]).await;
    let helper = register(&app, CallerKind::Agent, "helper", None, &[], &[]).await;
    let concierge = register(&app, CallerKind::Agent, "concierge", None, &[], &[&runtime, &helper]).await;
    let subject = app.access_token(&concierge).await;
    let own = "workspaces/ws-9/secrets/OPENAI_KEY";
    let params = json!({"key": "OPENAI_KEY", "value": {"$secret": {"length": 3, "sha256": "sha256:ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"}}});

    let one = act_for(&app, &runtime, &subject).await;
    let res = app.request_approval(&one, "secret_write", own, &params).await;
    assert_error(res, 403, "self_target_forbidden").await;
    let via = act_for(&app, &runtime, &subject).await;
    let two = act_for(&app, &helper, &via).await;
    let res = app.request_approval(&two, "secret_write", own, &params).await;
    assert_error(res, 403, "self_target_forbidden").await;
    // Another workspace is fine, and the approval names the chain, nearest first.
    let res = app.request_approval(&two, "secret_write", "workspaces/ws-1/secrets/OPENAI_KEY", &params).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let a: Value = app.get_bearer(&format!("/v1/approvals/{id}"), &two).await.json().await.unwrap();
    assert_eq!(a["actors"], json!([helper.id, runtime.id]));
    assert_eq!(a["requester"], concierge.id);
    // The capability serves that chain only: the subject alone may not redeem it.
    let events = app.audit_events().await;
    assert!(events.iter().any(|e| e == "approval.requested"));
}

/// No client in the chain decides the request it led to, and decisions need the operator's own
/// token. (An operator cannot normally act in a request: its ceiling lacks `approvals:create`;
/// here the policy gives it that, to show the decision is refused all the same.)
#[tokio::test]
async fn no_party_of_the_chain_decides_and_delegated_tokens_never_decide() {
    let app = spawn_app_with(|c| {
        let file: tessera::policy::PolicyFile = toml::from_str(
            r#"
            [kinds.operator]
            ceiling = ["workspaces:read", "approvals:read", "approvals:decide", "approvals:create"]
            defaults = ["workspaces:read", "approvals:read", "approvals:decide", "approvals:create"]
            "#,
        )
        .unwrap();
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let op = register(&app, CallerKind::Operator, "mallory", None, &[], &[]).await;
    let other_op = register(&app, CallerKind::Operator, "bob", None, &[], &[]).await;
    let deputy = register(&app, CallerKind::Operator, "deputy", None, &[], &[]).await;
    let agent = register(&app, CallerKind::Agent, "concierge", None, &[], &[&op]).await;
    let boss = register(&app, CallerKind::Operator, "boss", None, &[], &[&deputy]).await;

    let delegated = act_for(&app, &op, &app.access_token(&agent).await).await;
    let id = app.pending_approval(&delegated, "org_token_mint", "orgs/org-1/tokens", &json!({"name": "x"})).await;
    // The operator that acted in the request cannot approve it with its own token.
    let own = app.access_token(&op).await;
    assert_error(app.decide(&own, &id, "approve").await, 403, "forbidden").await;
    // Another operator's delegated token cannot decide at all.
    let as_boss = act_for(&app, &deputy, &app.access_token(&boss).await).await;
    assert_error(app.decide(&as_boss, &id, "approve").await, 403, "forbidden").await;
    let a: Value =
        app.get_bearer(&format!("/v1/approvals/{id}"), &app.access_token(&other_op).await).await.json().await.unwrap();
    assert_eq!(a["status"], "pending");
    assert_eq!(a["decisions"], json!([]));
    // An operator outside the chain, with its own token, decides.
    assert_eq!(app.decide(&app.access_token(&other_op).await, &id, "approve").await.status(), 200);
}

/// Disabling, or revoking by client, any client in the chain stops the token at once at the
/// broker and in introspection.
#[tokio::test]
async fn disabling_or_revoking_any_party_stops_a_delegated_token_at_once() {
    let app = spawn_app().await;
    let runtime = register(&app, CallerKind::Workspace, "runtime", Some("ws-9"), &[], &[]).await;
    let helper = register(&app, CallerKind::Agent, "helper", None, &[], &[]).await;
    let concierge = register(&app, CallerKind::Agent, "concierge", None, &[], &[&runtime, &helper]).await;
    let service = app.create_client("org-1", CallerKind::Service, "core").await;
    let admin = app.create_client_with("org-1", CallerKind::Operator, "root", None, &["tokens:revoke"], &[]).await;
    let introspect = |t: String| {
        let app = &app;
        let service = &service;
        async move {
            let res = app
                .http
                .post(app.url("/oauth/introspect"))
                .basic_auth(&service.id, Some(&service.secret))
                .form(&[("token", t.as_str())])
                .send()
                .await
                .unwrap();
            res.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
        }
    };
    let usable = |t: String| {
        let app = &app;
        async move { app.get_bearer("/v1/approvals/apr_AAAAAAAAAAAAAAAAAAAAAA", &t).await.status() == 404 }
    };

    // Revoking the farther actor by client.
    let subject = app.access_token(&concierge).await;
    let via = act_for(&app, &runtime, &subject).await;
    let two = act_for(&app, &helper, &via).await;
    assert!(usable(two.clone()).await && introspect(two.clone()).await);
    let res =
        app.post_bearer("/v1/revocations", &app.access_token(&admin).await, &json!({"client_id": runtime.id})).await;
    assert!(res.status().is_success());
    assert!(!usable(two.clone()).await, "refused at the broker");
    assert!(!introspect(two.clone()).await, "inactive in introspection");
    // An offline verifier learns it from the signed feed, on its next poll.
    let verifier = tessera::verify::Verifier::for_issuer(&app.base, "core")
        .with_feed_credentials(tessera::verify::revocations::FeedCredentials::new(&service.id, &service.secret));
    verifier.poll_revocations(app.state.now()).await.unwrap();
    let err = verifier.verify_access(&two, app.state.now()).await.unwrap_err();
    assert!(matches!(err, tessera::verify::VerifyError::Revoked), "{err:?}");
    verifier.verify_access(&subject, app.state.now()).await.unwrap();
    assert!(usable(subject.clone()).await, "the subject's own token is not the runtime's");

    // Disabling the nearer actor.
    let one = act_for(&app, &helper, &app.access_token(&concierge).await).await;
    assert!(usable(one.clone()).await);
    tessera::clients::disable(app.state.store(), &helper.id, "test", app.state.now()).await.unwrap();
    assert!(!usable(one.clone()).await);
    assert!(!introspect(one).await);
    // A disabled actor cannot exchange either, and no token it acted in can be exchanged again.
    let res = app
        .token_request(
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", two.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ],
            Some(&concierge),
        )
        .await;
    assert_eq!(res.status(), 400);
}

/// A service's standing (reading the revocation feed and audit checkpoints, redeeming any
/// capability of its tenant) is not lent to an agent acting for it.
#[tokio::test]
async fn an_agent_acting_for_a_service_gets_none_of_the_services_standing() {
    let app = spawn_app().await;
    let agent = register(&app, CallerKind::Agent, "borrower", None, &[], &[]).await;
    let service = register(&app, CallerKind::Service, "core", None, &[], &[&agent]).await;
    let requester = register(&app, CallerKind::Agent, "concierge", None, &[], &[]).await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;

    // Another requester's approved capability, which the agent has somehow seen.
    let rt = app.access_token(&requester).await;
    let id = app.pending_approval(&rt, "workspace_delete", "workspaces/ws-3", &json!({})).await;
    assert_eq!(app.decide(&app.access_token(&op).await, &id, "approve").await.status(), 200);
    let cap = app.capability(&rt, &id).await.unwrap();

    let service_token = app.access_token(&service).await;
    let delegated = act_for(&app, &agent, &service_token).await;
    assert_eq!(peek_claims(&delegated)["caller_kind"], "service");
    assert_error(app.get_bearer("/v1/revocations?since=0", &delegated).await, 403, "forbidden").await;
    assert_error(app.get_bearer("/v1/audit/checkpoint", &delegated).await, 403, "forbidden").await;
    assert_error(app.redeem(&delegated, &cap).await, 403, "forbidden").await;
    // The capability is intact: its holder redeems it, once.
    assert_eq!(app.redeem(&rt, &cap).await.status(), 200);
    // And the service itself keeps its standing.
    assert_eq!(app.get_bearer("/v1/revocations?since=0", &service_token).await.status(), 200);
}
