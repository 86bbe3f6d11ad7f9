//! Tokens: the token endpoint (client credentials, client_secret_post, scopes, RFC 6749
//! errors), token exchange, introspection, revocation and key rotation.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::policy::DEFAULT_GATED_ACTIONS;
use tessera::verify::revocations::{FeedCredentials, FeedError};
use tessera::verify::{JwksClient, JwksOptions, Policy, Verifier, VerifyError};

use crate::helpers::*;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn exchange(app: &TestApp, client: &TestClient, subject: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut form = vec![("grant_type", EXCHANGE), ("subject_token", subject), ("subject_token_type", ACCESS)];
    form.extend_from_slice(extra);
    app.token_request(&form, Some(client)).await
}

async fn form_post(app: &TestApp, path: &str, client: &TestClient, form: &[(&str, &str)]) -> reqwest::Response {
    app.http.post(app.url(path)).basic_auth(&client.id, Some(&client.secret)).form(form).send().await.unwrap()
}

#[tokio::test]
async fn a_client_narrows_its_own_token_by_exchange() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let subject = app.access_token(&agent).await;
    let res = exchange(&app, &agent, &subject, &[("scope", "workspaces:read")]).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["issued_token_type"], ACCESS);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "workspaces:read");
    let t = body["access_token"].as_str().unwrap();
    let (c, s) = (peek_claims(t), peek_claims(&subject));
    assert_eq!(c["sub"], agent.id);
    assert_eq!(c["scope"], "workspaces:read");
    assert!(c.get("act").is_none());
    assert!(c["exp"].as_i64().unwrap() <= s["exp"].as_i64().unwrap());
    Policy::new(app.base.clone(), "core").verify_access(app.state.keys(), t, app.state.now()).unwrap();

    // Later, the result never outlives the subject.
    app.state.clock().advance(200);
    let res = exchange(&app, &agent, &subject, &[]).await;
    let later = peek_claims(res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap());
    assert_eq!(later["exp"], s["exp"]);
    assert_eq!(later["scope"], s["scope"]);
}

#[tokio::test]
async fn exchange_never_widens_and_refuses_unusable_subjects() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let narrow = app.access_token_scoped(&agent, Some("workspaces:read")).await;
    let full = app.access_token(&agent).await;
    // A scope the subject lacks, a gated action, a scope outside the client's ceiling.
    for (subject, scope) in [(&narrow, "workspaces:write"), (&full, "secret_write"), (&full, "approvals:decide")] {
        assert_error(exchange(&app, &agent, subject, &[("scope", scope)]).await, 400, "invalid_scope").await;
    }
    // Unusable subjects: garbage, a capability, another tenant's token, an expired one.
    let foreign = app.create_client("org-2", CallerKind::Agent, "other").await;
    let foreign_token = app.access_token(&foreign).await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-1", &json!({})).await;
    app.decide(&app.access_token(&op).await, &id, "approve").await;
    let cap = app.capability(&at, &id).await.unwrap();
    for subject in ["garbage", cap.as_str(), foreign_token.as_str()] {
        assert_error(exchange(&app, &agent, subject, &[]).await, 400, "invalid_request").await;
    }
    // Wrong or missing token types, actor tokens.
    let res = app
        .token_request(
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &full),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ],
            Some(&agent),
        )
        .await;
    assert_error(res, 400, "invalid_request").await;
    let res = app.token_request(&[("grant_type", EXCHANGE), ("subject_token", &full)], Some(&agent)).await;
    assert_error(res, 400, "invalid_request").await;
    let res = app.token_request(&[("grant_type", EXCHANGE), ("subject_token_type", ACCESS)], Some(&agent)).await;
    assert_error(res, 400, "invalid_request").await;
    assert_error(
        exchange(&app, &agent, &full, &[("actor_token", &full), ("actor_token_type", ACCESS)]).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        exchange(&app, &agent, &full, &[("requested_token_type", "urn:ietf:params:oauth:token-type:id_token")]).await,
        400,
        "invalid_request",
    )
    .await;
    // Audience narrowing: only to an audience the subject has.
    assert_eq!(exchange(&app, &agent, &full, &[("audience", "core")]).await.status(), 200);
    assert_error(exchange(&app, &agent, &full, &[("audience", "billing")]).await, 400, "invalid_target").await;
    assert_error(
        exchange(&app, &agent, &full, &[("resource", "https://elsewhere.example")]).await,
        400,
        "invalid_target",
    )
    .await;
    // A revoked subject.
    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &full)]).await.status(), 200);
    assert_error(exchange(&app, &agent, &full, &[]).await, 400, "invalid_request").await;
    // An expired one.
    app.state.clock().advance(301);
    assert_error(exchange(&app, &agent, &narrow, &[]).await, 400, "invalid_request").await;
}

#[tokio::test]
async fn a_concierge_delegates_to_a_workspace_agent_with_an_actor_chain() {
    let app = spawn_app().await;
    let ws = app.create_client_with("org-1", CallerKind::Workspace, "runtime", Some("ws-1"), &[], &[]).await;
    let stranger = app.create_client_with("org-1", CallerKind::Workspace, "stranger", Some("ws-2"), &[], &[]).await;
    let concierge = create_with_delegates(&app, "concierge", &[&ws.id]).await;
    let subject = app.access_token(&concierge).await;

    let res = exchange(&app, &ws, &subject, &[]).await;
    assert_eq!(res.status(), 200);
    let t = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let c = peek_claims(&t);
    assert_eq!(c["sub"], concierge.id);
    assert_eq!(c["act"]["sub"], ws.id);
    assert_eq!(c["caller_kind"], "agent");
    // Within the subject's scopes and the workspace client's: no workspaces:write.
    assert_eq!(c["scope"], "approvals:create workspaces:read");
    let claims = Policy::new(app.base.clone(), "core").verify_access(app.state.keys(), &t, app.state.now()).unwrap();
    assert_eq!(claims.act.unwrap().sub, ws.id);
    assert_error(exchange(&app, &ws, &subject, &[("scope", "workspaces:write")]).await, 400, "invalid_scope").await;

    // Not a registered delegate: refused.
    assert_error(exchange(&app, &stranger, &subject, &[]).await, 400, "unauthorized_client").await;
}

async fn create_with_delegates(app: &TestApp, name: &str, delegates: &[&str]) -> TestClient {
    let new = tessera::clients::NewClient {
        tenant: "org-1".parse().unwrap(),
        kind: CallerKind::Agent,
        name: name.into(),
        workspace: None,
        scopes: vec![],
        allow_bypass: vec![],
        delegates: delegates.iter().map(|d| d.parse().unwrap()).collect(),
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

#[tokio::test]
async fn the_actor_chain_is_depth_capped() {
    let app = spawn_app().await;
    let mut ds = Vec::new();
    for i in 0..5 {
        ds.push(app.create_client("org-1", CallerKind::Agent, &format!("d{i}")).await);
    }
    let ids: Vec<&str> = ds.iter().map(|d| d.id.as_str()).collect();
    let owner = create_with_delegates(&app, "owner", &ids).await;
    let mut token = app.access_token(&owner).await;
    for (i, d) in ds.iter().enumerate() {
        let res = exchange(&app, d, &token, &[]).await;
        if i < 4 {
            assert_eq!(res.status(), 200, "hop {i}");
            token = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
        } else {
            assert_error(res, 400, "invalid_request").await;
        }
    }
    assert_eq!(peek_claims(&token)["act"]["act"]["act"]["act"]["sub"], ds[0].id);
    // Registering a delegate of another tenant, or a missing one, is refused.
    let other = app.create_client("org-2", CallerKind::Agent, "x").await;
    let new = tessera::clients::NewClient {
        tenant: "org-1".parse().unwrap(),
        kind: CallerKind::Agent,
        name: "bad".into(),
        workspace: None,
        scopes: vec![],
        allow_bypass: vec![],
        delegates: vec![other.id.parse().unwrap()],
        require_dpop: false,
        groups: vec![],
        owner: None,
    };
    assert!(tessera::clients::create(app.state.store(), &app.state.config().policy, new, "t", 0).await.is_err());
}

#[tokio::test]
async fn introspection_for_services_and_operators_only_and_inactive_means_nothing_else() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let service = app.create_client("org-1", CallerKind::Service, "core").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let foreign_service = app.create_client("org-2", CallerKind::Service, "core-2").await;
    let token = app.access_token(&agent).await;

    for who in [&service, &op] {
        let res = form_post(&app, "/oauth/introspect", who, &[("token", &token)]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["cache-control"], "no-store");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["active"], true);
        assert_eq!(v["sub"], agent.id);
        assert_eq!(v["client_id"], agent.id);
        assert_eq!(v["caller_kind"], "agent");
        assert_eq!(v["tenant"], "org-1");
        assert!(v["exp"].is_i64() && v["scope"].is_string() && v["jti"].is_string());
    }
    let inactive = |v: Value| assert_eq!(v, json!({"active": false}));
    for t in ["garbage", "", "a.b.c"] {
        inactive(form_post(&app, "/oauth/introspect", &service, &[("token", t)]).await.json().await.unwrap());
    }
    // Another tenant's service learns nothing.
    inactive(form_post(&app, "/oauth/introspect", &foreign_service, &[("token", &token)]).await.json().await.unwrap());
    // Agents may not introspect; no token parameter is a malformed request.
    assert_error(form_post(&app, "/oauth/introspect", &agent, &[("token", &token)]).await, 400, "unauthorized_client")
        .await;
    assert_error(form_post(&app, "/oauth/introspect", &service, &[]).await, 400, "invalid_request").await;
    let res = app.http.post(app.url("/oauth/introspect")).form(&[("token", &token)]).send().await.unwrap();
    assert_error(res, 401, "invalid_client").await;
    // Revoked and expired tokens are inactive.
    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &token)]).await.status(), 200);
    inactive(form_post(&app, "/oauth/introspect", &service, &[("token", &token)]).await.json().await.unwrap());
    let fresh = app.access_token(&agent).await;
    app.state.clock().advance(400);
    inactive(form_post(&app, "/oauth/introspect", &service, &[("token", &fresh)]).await.json().await.unwrap());
}

#[tokio::test]
async fn a_capability_introspects_active_until_redeemed() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let service = app.create_client("org-1", CallerKind::Service, "core").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let at = app.access_token(&agent).await;
    let id = app.pending_approval(&at, "workspace_delete", "workspaces/ws-1", &json!({})).await;
    app.decide(&app.access_token(&op).await, &id, "approve").await;
    let cap = app.capability(&at, &id).await.unwrap();
    let v: Value = form_post(&app, "/oauth/introspect", &service, &[("token", &cap)]).await.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "capability");
    assert_eq!(v["action"], "workspace_delete");
    assert_eq!(app.redeem(&at, &cap).await.status(), 200);
    let v: Value = form_post(&app, "/oauth/introspect", &service, &[("token", &cap)]).await.json().await.unwrap();
    assert_eq!(v, json!({"active": false}));
}

#[tokio::test]
async fn a_client_revokes_its_own_tokens_only() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let other = app.create_client("org-1", CallerKind::Agent, "b").await;
    let token = app.access_token(&agent).await;
    let keep = app.access_token(&agent).await;
    let others = app.access_token(&other).await;
    assert_error(form_post(&app, "/oauth/revoke", &agent, &[("token", &others)]).await, 400, "unauthorized_client")
        .await;
    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", "garbage")]).await.status(), 200);
    assert_error(form_post(&app, "/oauth/revoke", &agent, &[]).await, 400, "invalid_request").await;
    assert_eq!(
        form_post(&app, "/oauth/revoke", &agent, &[("token", &token), ("token_type_hint", "access_token")])
            .await
            .status(),
        200
    );
    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &token)]).await.status(), 200, "idempotent");
    assert_error(
        app.get_bearer(&format!("/v1/approvals/{}", "apr_AAAAAAAAAAAAAAAAAAAAAA"), &token).await,
        401,
        "invalid_token",
    )
    .await;
    assert_error(
        app.get_bearer(&format!("/v1/approvals/{}", "apr_AAAAAAAAAAAAAAAAAAAAAA"), &keep).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_bearer(&format!("/v1/approvals/{}", "apr_AAAAAAAAAAAAAAAAAAAAAA"), &others).await,
        404,
        "not_found",
    )
    .await;
    assert!(app.audit_events().await.iter().any(|e| e == "token.revoked"));
}

#[tokio::test]
async fn operators_revoke_by_jti_or_by_client_and_disabling_revokes_everything() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let foreign_op = app.create_client("org-2", CallerKind::Operator, "eve").await;
    let ot = app.access_token(&op).await;
    let t1 = app.access_token(&agent).await;
    let t2 = app.access_token(&agent).await;
    let probe = |t: String| {
        let app = &app;
        async move { app.get_bearer("/v1/approvals/apr_AAAAAAAAAAAAAAAAAAAAAA", &t).await.status().as_u16() }
    };
    let jti = peek_claims(&t1)["jti"].as_str().unwrap().to_owned();
    // Another tenant's operator, and a non-operator, cannot.
    let ft = app.access_token(&foreign_op).await;
    assert_error(app.post_bearer("/v1/revocations", &ft, &json!({"jti": jti})).await, 404, "not_found").await;
    assert_error(app.post_bearer("/v1/revocations", &t2, &json!({"jti": jti})).await, 403, "forbidden").await;
    assert_error(
        app.post_bearer("/v1/revocations", &ot, &json!({"jti": jti, "client_id": agent.id})).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(probe(t1.clone()).await, 404);
    assert_eq!(app.post_bearer("/v1/revocations", &ot, &json!({"jti": jti})).await.status(), 200);
    assert_eq!(probe(t1.clone()).await, 401);
    assert_eq!(probe(t2.clone()).await, 404);
    // By client: every token issued so far.
    assert_eq!(app.post_bearer("/v1/revocations", &ot, &json!({"client_id": agent.id})).await.status(), 200);
    assert_eq!(probe(t2.clone()).await, 401);
    app.state.clock().advance(1);
    let t3 = app.access_token(&agent).await;
    assert_eq!(probe(t3.clone()).await, 404, "tokens issued after the revocation work");
    // Disabling the client revokes the rest.
    assert!(app.cli(&["clients", "disable", &agent.id]).await.status.success());
    assert_eq!(probe(t3).await, 401);
}

/// A verifier of `issuer` reading the feed as the service client `svc`.
fn feed_verifier(issuer: &str, svc: &TestClient) -> Verifier {
    Verifier::new(
        Policy::new(issuer, "core"),
        JwksClient::new(format!("{issuer}/.well-known/jwks.json"), JwksOptions::default()),
    )
    .with_feed_credentials(FeedCredentials::new(&svc.id, &svc.secret))
}

#[tokio::test]
async fn offline_verifiers_learn_revocations_from_the_signed_feed() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let svc = app.create_client("org-1", CallerKind::Service, "core").await;
    let revoked = app.access_token(&agent).await;
    let kept = app.access_token(&agent).await;
    let verifier = feed_verifier(&app.base, &svc);
    let now = app.state.now();
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 0);
    verifier.verify_access(&revoked, now).await.unwrap();

    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &revoked)]).await.status(), 200);
    // The feed is a JWS of its own type, signed with the broker's key, bound to its request.
    let st = app.access_token(&svc).await;
    let res = app.get_bearer("/v1/revocations?since=0&nonce=n-1", &st).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/jwt");
    let feed = res.text().await.unwrap();
    assert_eq!(peek_header(&feed)["typ"], "revocations+jwt");
    let claims = peek_claims(&feed);
    assert_eq!(claims["revocations"][0]["jti"], peek_claims(&revoked)["jti"]);
    assert_eq!(
        (claims["since"].clone(), claims["nonce"].clone(), claims["tenant"].clone()),
        (json!(0), json!("n-1"), json!("org-1"))
    );
    assert_eq!(claims["next"], claims["revocations"][0]["seq"]);
    assert!(claims["next_id"].is_string());
    // A feed is not a token.
    assert!(Policy::new(app.base.clone(), "core").verify_access(app.state.keys(), &feed, now).is_err());

    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 1);
    assert_eq!(verifier.verify_access(&revoked, now).await.unwrap_err(), VerifyError::Revoked);
    verifier.verify_access(&kept, now).await.unwrap();
    // Incremental: nothing new.
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 0);
    assert_eq!(verifier.revocations().cursor(), claims["next"].as_i64().unwrap());
    assert_eq!((verifier.revocations().refused(), verifier.revocations().last_error()), (0, None));
    for bad in [
        "since=x",
        "since=-1",
        "nonce=",
        "nonce=a%20b",
        "nonce=toolong_toolong_toolong_toolong_toolong_toolong_toolong_toolong_x",
        "cursor=1",
    ] {
        assert_error(app.get_bearer(&format!("/v1/revocations?{bad}"), &st).await, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn the_feed_is_for_service_clients_only_and_each_reads_its_own_tenant() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let foreign = app.create_client("org-2", CallerKind::Agent, "b").await;
    let op = app.create_client("org-1", CallerKind::Operator, "alice").await;
    let svc = app.create_client("org-1", CallerKind::Service, "core").await;
    let foreign_svc = app.create_client("org-2", CallerKind::Service, "core-2").await;
    let ot = app.access_token(&op).await;
    let at = app.access_token(&agent).await;
    assert_eq!(app.post_bearer("/v1/revocations", &ot, &json!({"client_id": agent.id})).await.status(), 200);
    let ft = app.access_token(&foreign).await;
    assert_eq!(form_post(&app, "/oauth/revoke", &foreign, &[("token", &ft)]).await.status(), 200);

    // Anonymous callers, bad tokens and every kind but service are refused; none sees a client id.
    for res in [
        app.http.get(app.url("/v1/revocations?since=0")).send().await.unwrap(),
        app.get_bearer("/v1/revocations?since=0", "not-a-token").await,
        app.http.get(app.url("/v1/revocations")).basic_auth(&svc.id, Some(&svc.secret)).send().await.unwrap(),
    ] {
        let body = assert_error(res, 401, "invalid_token").await;
        assert!(!body.to_string().contains(&agent.id));
    }
    for kind in [CallerKind::Agent, CallerKind::Workspace, CallerKind::Operator, CallerKind::Install] {
        let c = if kind == CallerKind::Workspace {
            app.create_client_with("org-1", kind, "w", Some("ws-1"), &[], &[]).await
        } else {
            app.create_client("org-1", kind, "other").await
        };
        let t = app.access_token(&c).await;
        let body = assert_error(app.get_bearer("/v1/revocations?since=0", &t).await, 403, "forbidden").await;
        assert!(!body.to_string().contains(&agent.id), "{kind:?}");
    }

    // A service client reads its own tenant's revocations, and only those.
    let st = app.access_token(&svc).await;
    let feed = app.get_bearer("/v1/revocations?since=0", &st).await.text().await.unwrap();
    let entries = peek_claims(&feed)["revocations"].clone();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!((entries[0]["client_id"].clone(), entries[0]["tenant"].clone()), (json!(agent.id), json!("org-1")));

    // Through the verifier of a core whose service client is in the same tenant, the client's
    // revocation takes effect; the other tenant's revocation reaches only that tenant's core.
    let now = app.state.now();
    let verifier = feed_verifier(&app.base, &svc);
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 1);
    let other = feed_verifier(&app.base, &foreign_svc);
    assert_eq!(other.poll_revocations(now).await.unwrap(), 1);
    assert_eq!(verifier.verify_access(&at, now).await.unwrap_err(), VerifyError::Revoked);
    other.verify_access(&at, now).await.unwrap();
    assert_eq!(other.verify_access(&ft, now).await.unwrap_err(), VerifyError::Revoked);
    verifier.verify_access(&ft, now).await.unwrap();

    // Without credentials, or with another kind's, the verifier cannot read the feed.
    let anonymous = Verifier::new(
        Policy::new(app.base.clone(), "core"),
        JwksClient::new(app.url("/.well-known/jwks.json"), JwksOptions::default()),
    );
    assert!(matches!(anonymous.poll_revocations(now).await, Err(FeedError::Unauthorized(_))));
    let as_operator = feed_verifier(&app.base, &op);
    assert!(matches!(as_operator.poll_revocations(now).await, Err(FeedError::Unauthorized(_))));
    assert!(matches!(as_operator.revocations().last_error(), Some(FeedError::Unauthorized(_))));
}

/// A loopback stand-in for the network between a verifier and the broker: it passes every
/// request on, keeps each feed answer, and answers the feed with a kept one when told to.
#[derive(Clone, Default)]
struct FeedProxy {
    target: Arc<Mutex<String>>,
    answers: Arc<Mutex<Vec<String>>>,
    replay: Arc<Mutex<Option<String>>>,
}

impl FeedProxy {
    /// A broker whose issuer URL is this proxy's.
    async fn start() -> (FeedProxy, TestApp) {
        let proxy = FeedProxy::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().fallback(forward).with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let app = spawn_app_with(|c| c.issuer = issuer).await;
        *proxy.target.lock().unwrap() = app.base.clone();
        (proxy, app)
    }

    fn last_answer(&self) -> String {
        self.answers.lock().unwrap().last().cloned().unwrap()
    }

    fn replay(&self, answer: Option<String>) {
        *self.replay.lock().unwrap() = answer;
    }
}

async fn forward(
    axum::extract::State(p): axum::extract::State<FeedProxy>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
    use axum::response::IntoResponse;
    let path = req.uri().path().to_owned();
    let replay = p.replay.lock().unwrap().clone();
    if let (Some(answer), "/v1/revocations") = (replay, path.as_str()) {
        return ([(CONTENT_TYPE, "application/jwt")], answer).into_response();
    }
    let target = p.target.lock().unwrap().clone();
    let url = format!("{target}{}", req.uri().path_and_query().map(|q| q.as_str()).unwrap_or("/"));
    let (method, headers) = (req.method().clone(), req.headers().clone());
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
    let mut out = reqwest::Client::new().request(method, url).body(body);
    for (k, v) in headers.iter().filter(|(k, _)| *k != HOST && *k != CONTENT_LENGTH) {
        out = out.header(k, v);
    }
    let res = out.send().await.unwrap();
    let (status, ct) = (res.status(), res.headers().get(CONTENT_TYPE).cloned());
    let bytes = res.text().await.unwrap();
    if path == "/v1/revocations" && status == 200 {
        p.answers.lock().unwrap().push(bytes.clone());
    }
    let mut answer = (status, bytes).into_response();
    if let Some(ct) = ct {
        answer.headers_mut().insert(CONTENT_TYPE, ct);
    }
    answer
}

#[tokio::test]
async fn a_verifier_refuses_an_older_signed_feed_answer_replayed_in_place_of_the_one_it_asked_for() {
    let (proxy, app) = FeedProxy::start().await;
    let issuer = app.state.config().issuer.clone();
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let svc = app.create_client("org-1", CallerKind::Service, "core").await;
    let (t1, t2, t3) = (app.access_token(&agent).await, app.access_token(&agent).await, app.access_token(&agent).await);
    let verifier = feed_verifier(&issuer, &svc);
    let now = app.state.now();
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 0);
    let at_zero = proxy.last_answer();

    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &t1)]).await.status(), 200);
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 1);
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 0);
    let at_one = proxy.last_answer();
    assert_eq!(peek_claims(&at_one)["since"], 1);

    // t2 is revoked; the attacker answers with older, validly signed feeds that omit it.
    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &t2)]).await.status(), 200);
    // An answer to another cursor.
    proxy.replay(Some(at_zero));
    assert!(matches!(verifier.poll_revocations(now).await, Err(FeedError::Mismatch(_))));
    // An answer to this very cursor, but to an earlier request.
    proxy.replay(Some(at_one));
    assert!(matches!(verifier.poll_revocations(now).await, Err(FeedError::Mismatch(_))));
    // The last good list stays in force, and the refusals are visible.
    assert_eq!(verifier.verify_access(&t1, now).await.unwrap_err(), VerifyError::Revoked);
    assert_eq!(verifier.revocations().cursor(), 1);
    assert_eq!(verifier.revocations().refused(), 2);
    assert!(matches!(verifier.revocations().last_error(), Some(FeedError::Mismatch(_))));

    // The real answer gets through again.
    proxy.replay(None);
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 1);
    assert_eq!(verifier.verify_access(&t2, now).await.unwrap_err(), VerifyError::Revoked);
    verifier.verify_access(&t3, now).await.unwrap();
    assert_eq!(verifier.revocations().last_error(), None);
}

#[tokio::test]
async fn a_verifier_refuses_a_feed_that_goes_backwards_after_a_database_restore() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let svc = app.create_client("org-1", CallerKind::Service, "core").await;
    let tokens: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(app.access_token(&agent).await);
        }
        v
    };
    let verifier = feed_verifier(&app.base, &svc);
    let now = app.state.now();
    for t in &tokens[..2] {
        assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", t)]).await.status(), 200);
    }
    assert_eq!(verifier.poll_revocations(now).await.unwrap(), 2);
    let cursor = verifier.revocations().cursor();

    // The database is restored from a backup taken before the second revocation.
    sqlx::query("DELETE FROM revocations WHERE seq = $1").bind(cursor).execute(app.state.store().pool()).await.unwrap();
    assert!(matches!(verifier.poll_revocations(now).await, Err(FeedError::Backwards(_))));
    // Written to again, the feed reaches the cursor's number with another entry.
    assert_eq!(form_post(&app, "/oauth/revoke", &agent, &[("token", &tokens[2])]).await.status(), 200);
    assert!(matches!(verifier.poll_revocations(now).await, Err(FeedError::Backwards(_))));
    // Both times the verifier kept what it knew, and said so.
    for t in &tokens[..2] {
        assert_eq!(verifier.verify_access(t, now).await.unwrap_err(), VerifyError::Revoked);
    }
    assert_eq!(verifier.revocations().cursor(), cursor);
    assert_eq!(verifier.revocations().refused(), 2);
    assert!(matches!(verifier.revocations().last_error(), Some(FeedError::Backwards(_))));

    // A verifier reading the feed from the start (after a restart) learns the new history.
    let fresh = feed_verifier(&app.base, &svc);
    assert_eq!(fresh.poll_revocations(now).await.unwrap(), 2);
    assert_eq!(fresh.verify_access(&tokens[2], now).await.unwrap_err(), VerifyError::Revoked);
    fresh.verify_access(&tokens[3], now).await.unwrap();
}

#[tokio::test]
async fn metadata_lists_every_endpoint_grant_and_method() {
    let app = spawn_app().await;
    let m: Value =
        app.http.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["introspection_endpoint"], app.url("/oauth/introspect"));
    assert_eq!(m["revocation_endpoint"], app.url("/oauth/revoke"));
    assert_eq!(m["grant_types_supported"], json!(["client_credentials", EXCHANGE]));
    for k in [
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ] {
        assert_eq!(m[k], json!(["client_secret_basic", "client_secret_post", "private_key_jwt"]), "{k}");
    }
    for k in [
        "token_endpoint_auth_signing_alg_values_supported",
        "introspection_endpoint_auth_signing_alg_values_supported",
        "revocation_endpoint_auth_signing_alg_values_supported",
    ] {
        assert_eq!(m[k], json!(["EdDSA", "ES256"]), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_load_without_a_single_failed_verification() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    let app = Arc::new(spawn_app_with(|c| c.jwks_max_age_secs = 1).await);
    let agent = app.create_client("org-1", CallerKind::Agent, "a").await;
    let short = JwksOptions {
        default_max_age: Duration::from_secs(1),
        min_max_age: Duration::from_secs(1),
        max_max_age: Duration::from_secs(1),
        ..JwksOptions::default()
    };
    let verifier = Arc::new(Verifier::new(
        Policy::new(app.base.clone(), "core"),
        JwksClient::new(app.url("/.well-known/jwks.json"), short),
    ));
    let old_kid = app.state.keys().signer().kid().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let kids = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (app, agent, verifier, stop, ok, failed, kids) =
            (app.clone(), agent.clone(), verifier.clone(), stop.clone(), ok.clone(), failed.clone(), kids.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let t = app.access_token(&agent).await;
                kids.lock().unwrap().insert(peek_header(&t)["kid"].as_str().unwrap().to_owned());
                let at = app.state.now();
                match verifier.verify_access(&t, at).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!(
                            "verification failed: {e:?} kid {} claims {} now {at}",
                            peek_header(&t)["kid"],
                            peek_claims(&t)
                        );
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Rotate with the real command while the broker runs: the new key is published at once.
    let out = cli_on(
        &app.database_url,
        &app.keys_dir(),
        &app.base,
        &["keys", "rotate"],
        &[("TESSERA_JWKS_MAX_AGE_SECS", "1")],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotation: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_kid = rotation["kid"].as_str().unwrap().to_owned();
    assert_eq!(rotation["retired"], json!([old_kid]));
    let lead = rotation["activates_at"].as_i64().unwrap() - app.state.now();
    assert!((60..=62).contains(&lead), "published max-age + leeway before it signs: {lead}");
    // Not signing yet, whatever the broker does in the meantime.
    app.state.keys().tick(app.state.now()).await.unwrap();
    assert_eq!(app.state.keys().signer().kid(), old_kid);
    // Verifiers' caches (max-age 1 s) learn the new key before it signs.
    let mut learned = false;
    for _ in 0..40 {
        if tessera::verify::KeyLookup::lookup(verifier.jwks(), &new_kid).is_some() {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(learned, "the verifier's cache holds the new key before it signs");
    // Its time comes: the broker switches, the load goes on.
    app.state.clock().advance(lead);
    app.state.keys().tick(app.state.now()).await.unwrap();
    assert_eq!(app.state.keys().signer().kid(), new_kid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed verifications");
    assert!(ok.load(Ordering::SeqCst) > 20);
    let seen = kids.lock().unwrap().clone();
    assert!(seen.contains(&old_kid) && seen.contains(&new_kid), "{seen:?}");
    // The old key stays published until its last token expired plus leeway, then leaves.
    let jwks = |app: Arc<TestApp>| async move {
        let v: Value = app.http.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
        v["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert!(jwks(app.clone()).await.contains(&old_kid));
    app.state.clock().advance(900 + 60 + 1);
    let after = jwks(app.clone()).await;
    assert!(!after.contains(&old_kid) && after.contains(&new_kid), "{after:?}");
}

#[tokio::test]
async fn keys_rotate_on_schedule() {
    let app = spawn_app_with(|c| c.key_rotation_days = 1).await;
    let old = app.state.keys().signer().kid().to_owned();
    tessera::server::rotate_on_schedule(&app.state, app.state.now()).await.unwrap();
    assert_eq!(tessera::keys::list(app.state.store()).await.unwrap().len(), 1, "too young to rotate");
    app.state.clock().advance(86_400);
    tessera::server::rotate_on_schedule(&app.state, app.state.now()).await.unwrap();
    tessera::server::rotate_on_schedule(&app.state, app.state.now()).await.unwrap();
    let keys = tessera::keys::list(app.state.store()).await.unwrap();
    assert_eq!(keys.len(), 2, "one successor, not one per check");
    app.state.clock().advance(app.state.config().key_publish_lead_secs());
    // The broker's own background tick runs beside this test and may have read the clock
    // before it was moved: a tick with that earlier time can put the old key back for a moment.
    // The next tick with the moved clock settles it, so tick until it has (bounded).
    let mut rotated = false;
    for _ in 0..40 {
        app.state.keys().tick(app.state.now()).await.unwrap();
        if app.state.keys().signer().kid() != old {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(rotated, "the rotated-in key signs once its time has come");
    assert!(app.audit_events().await.iter().any(|e| e == "key.rotated"));
}

/// A token whose audit record cannot be committed within the request's time limit is never
/// issued: the answer is 503 once the limit passes, without a token; once the database is free
/// again, tokens are issued.
#[tokio::test]
async fn a_token_whose_record_cannot_commit_in_time_is_not_issued() {
    use sqlx::Connection as _;
    let app = spawn_app_with(|c| c.request_timeout_secs = 1).await;
    let client = app.create_client("org-1", CallerKind::Agent, "a").await;
    let form = [("grant_type", "client_credentials")];
    // Once with the database free, so that the next request's client comes from memory.
    assert_eq!(app.token_request(&form, Some(&client)).await.status(), 200);

    // Another connection holds the audit log's table: the writer's next insert waits for it.
    let mut blocker = sqlx::AnyConnection::connect(&app.database_url).await.unwrap();
    if on_postgres() {
        sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
        sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE").execute(&mut blocker).await.unwrap();
    } else {
        sqlx::query("BEGIN EXCLUSIVE").execute(&mut blocker).await.unwrap();
    }
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), app.token_request(&form, Some(&client)))
        .await
        .expect("the request's time limit bounds the wait for the audit record");
    let waited = started.elapsed();
    let body = assert_error(res, 503, "temporarily_unavailable").await;
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(waited >= std::time::Duration::from_millis(900), "answered before the limit: {waited:?}");

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();
    let res = app.token_request(&form, Some(&client)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
}

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
    let new = new_client("org-1", CallerKind::Workspace, "rt");
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
            groups: vec![],
            owner: None,
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
