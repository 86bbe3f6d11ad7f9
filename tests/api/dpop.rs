//! Sender-constrained tokens (DPoP, RFC 9449; design §13). A token copied out of an
//! agent's context cannot be used at the broker, the gate or core.

use std::time::Duration;

use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::verify::Verifier;
use tessera::verify::dpop::{DpopKey, access_token_hash};
use tessera::verify::gate::Gate;
use tessera::verify::revocations::FeedCredentials;

use crate::gate::core_example;
use crate::helpers::*;

#[path = "../../examples/agent.rs"]
#[allow(dead_code, unreachable_pub)]
mod agent_example;

impl TestApp {
    /// POST /oauth/token with HTTP Basic and a DPoP proof.
    async fn token_with_proof(&self, form: &[(&str, &str)], client: &TestClient, proof: &str) -> reqwest::Response {
        self.http
            .post(self.url("/oauth/token"))
            .basic_auth(&client.id, Some(&client.secret))
            .header("DPoP", proof)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// A token bound to `key`.
    async fn bound_token(&self, client: &TestClient, key: &DpopKey) -> String {
        let proof = key.proof("POST", &self.url("/oauth/token"), None, None, self.state.now()).unwrap();
        let res = self.token_with_proof(&[("grant_type", "client_credentials")], client, &proof).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["token_type"], "DPoP");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A request at the broker with a bound token and a proof made by `key`.
    async fn dpop_request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        key: &DpopKey,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let proof = key.proof(method.as_str(), &self.url(path), Some(token), None, self.state.now()).unwrap();
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("Authorization", format!("DPoP {token}"))
            .header("DPoP", proof);
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.unwrap()
    }
}

fn token_url(app: &TestApp) -> String {
    app.url("/oauth/token")
}

async fn assert_dpop_401(res: reqwest::Response) {
    let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert!(challenge.as_deref().is_some_and(|c| c.starts_with("DPoP ")), "challenge {challenge:?}");
    assert_error(res, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_proof_binds_the_token_to_its_key_with_either_algorithm() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    for key in [DpopKey::generate_ed25519().unwrap(), DpopKey::generate_es256().unwrap()] {
        let token = app.bound_token(&agent, &key).await;
        assert_eq!(peek_claims(&token)["cnf"]["jkt"], key.jkt());
        // It works at the broker with a proof by its key.
        let res = app.dpop_request(reqwest::Method::GET, "/v1/approvals/apr_x", &token, &key, None).await;
        assert_error(res, 404, "not_found").await;
    }
    // Without a proof the token stays a plain bearer token.
    let plain = app.access_token(&agent).await;
    assert!(peek_claims(&plain).get("cnf").is_none());
    let meta: Value =
        app.http.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["dpop_signing_alg_values_supported"], json!(["EdDSA", "ES256"]));
}

#[tokio::test]
async fn a_copied_bound_token_is_refused_at_the_broker() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let key = DpopKey::generate_ed25519().unwrap();
    let token = app.bound_token(&agent, &key).await;
    let path = "/v1/approvals/apr_x";
    // As Bearer: 401 with the DPoP challenge.
    assert_dpop_401(app.get_bearer(path, &token).await).await;
    // As DPoP without a proof, or with a proof by another key.
    let res = app.http.get(app.url(path)).header("Authorization", format!("DPoP {token}")).send().await.unwrap();
    assert_dpop_401(res).await;
    let thief = DpopKey::generate_ed25519().unwrap();
    assert_dpop_401(app.dpop_request(reqwest::Method::GET, path, &token, &thief, None).await).await;
    // Wrong method, URL, ath, stale, replayed.
    let now = app.state.now();
    let url = app.url(path);
    let send = |proof: String| {
        app.http.get(app.url(path)).header("Authorization", format!("DPoP {token}")).header("DPoP", proof).send()
    };
    for proof in [
        key.proof("POST", &url, Some(&token), None, now).unwrap(),
        key.proof("GET", &app.url("/v1/approvals/apr_y"), Some(&token), None, now).unwrap(),
        key.proof("GET", &url, Some("another.token.entirely"), None, now).unwrap(),
        key.proof("GET", &url, None, None, now).unwrap(),
        key.proof("GET", &url, Some(&token), None, now - 120).unwrap(),
    ] {
        assert_dpop_401(send(proof).await.unwrap()).await;
    }
    let good = key.proof("GET", &url, Some(&token), None, now).unwrap();
    assert_eq!(send(good.clone()).await.unwrap().status(), 404);
    assert_dpop_401(send(good).await.unwrap()).await;
    // A plain token presented as DPoP is refused too.
    let plain = app.access_token(&agent).await;
    let res = app.dpop_request(reqwest::Method::GET, path, &plain, &key, None).await;
    assert_dpop_401(res).await;
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_proofs() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let key = DpopKey::generate_ed25519().unwrap();
    let now = app.state.now();
    let url = token_url(&app);
    let claims = |htm: &str, htu: &str, iat: i64| json!({"jti": format!("j-{htm}-{iat}-{htu}"), "htm": htm, "htu": htu, "iat": iat});
    let jwk = key.public_jwk().clone();
    let mut private = jwk.clone();
    private["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    let hs = {
        let h =
            tessera::token::b64::encode(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}).to_string().as_bytes());
        let c = tessera::token::b64::encode(claims("POST", &url, now).to_string().as_bytes());
        format!("{h}.{c}.{}", tessera::token::b64::encode(&[1u8; 32]))
    };
    let none = {
        let h =
            tessera::token::b64::encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}).to_string().as_bytes());
        let c = tessera::token::b64::encode(claims("POST", &url, now).to_string().as_bytes());
        format!("{h}.{c}.")
    };
    let other = DpopKey::generate_ed25519().unwrap();
    for proof in [
        key.sign_claims(&claims("GET", &url, now)).unwrap(),
        key.sign_claims(&claims("POST", &app.url("/oauth/introspect"), now)).unwrap(),
        // Well outside the 60 s window: the broker's clock is the real one and may tick while
        // the test runs, which would bring a proof made 61 s ahead inside it.
        key.sign_claims(&claims("POST", &url, now - 90)).unwrap(),
        key.sign_claims(&claims("POST", &url, now + 90)).unwrap(),
        key.sign_with_header(&json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": private}), &claims("POST", &url, now))
            .unwrap(),
        key.sign_with_header(&json!({"typ": "JWT", "alg": "EdDSA", "jwk": jwk}), &claims("POST", &url, now)).unwrap(),
        other
            .sign_with_header(&json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}), &claims("POST", &url, now))
            .unwrap(),
        hs,
        none,
        "garbage".to_owned(),
    ] {
        let res = app.token_with_proof(&[("grant_type", "client_credentials")], &agent, &proof).await;
        assert_error(res, 400, "invalid_dpop_proof").await;
    }
    // A proof used twice.
    let proof = key.proof("POST", &url, None, None, now).unwrap();
    assert_eq!(app.token_with_proof(&[("grant_type", "client_credentials")], &agent, &proof).await.status(), 200);
    let res = app.token_with_proof(&[("grant_type", "client_credentials")], &agent, &proof).await;
    assert_error(res, 400, "invalid_dpop_proof").await;
    // Two DPoP headers.
    let res = app
        .http
        .post(url.clone())
        .basic_auth(&agent.id, Some(&agent.secret))
        .header("DPoP", key.proof("POST", &url, None, None, now).unwrap())
        .header("DPoP", key.proof("POST", &url, None, None, now).unwrap())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_dpop_proof").await;
}

#[tokio::test]
async fn require_dpop_by_registration_and_by_kind() {
    let app = spawn_app_with(|c| {
        let file: tessera::policy::PolicyFile = toml::from_str("[kinds.workspace]\nrequire_dpop = true\n").unwrap();
        c.policy = tessera::policy::Policy::from_file(&file).unwrap();
    })
    .await;
    let out =
        app.cli(&["clients", "create", "--tenant", "org-1", "--kind", "agent", "--name", "a", "--require-dpop"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["require_dpop"], true);
    let agent = TestClient {
        id: created["client_id"].as_str().unwrap().to_owned(),
        secret: created["client_secret"].as_str().unwrap().to_owned(),
    };
    let ws = app.create_client_with("org-1", CallerKind::Workspace, "w", Some("ws-1"), &[], &[]).await;
    let free = app.create_client("org-1", CallerKind::Agent, "free").await;
    for c in [&agent, &ws] {
        let res = app.token_request(&[("grant_type", "client_credentials")], Some(c)).await;
        assert_error(res, 400, "invalid_dpop_proof").await;
        let key = DpopKey::generate_es256().unwrap();
        app.bound_token(c, &key).await;
    }
    assert_eq!(app.token_request(&[("grant_type", "client_credentials")], Some(&free)).await.status(), 200);
}

#[tokio::test]
async fn server_nonces_are_asked_for_and_honoured() {
    let app = spawn_app_with(|c| c.dpop_nonce = true).await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let key = DpopKey::generate_ed25519().unwrap();
    let url = token_url(&app);
    let form = [("grant_type", "client_credentials")];
    let res = app.token_with_proof(&form, &agent, &key.proof("POST", &url, None, None, app.state.now()).unwrap()).await;
    let nonce = res.headers().get("dpop-nonce").unwrap().to_str().unwrap().to_owned();
    assert_error(res, 400, "use_dpop_nonce").await;
    // A made-up nonce is refused the same way.
    let res = app
        .token_with_proof(&form, &agent, &key.proof("POST", &url, None, Some("AAAA"), app.state.now()).unwrap())
        .await;
    assert_error(res, 400, "use_dpop_nonce").await;
    let res = app
        .token_with_proof(&form, &agent, &key.proof("POST", &url, None, Some(&nonce), app.state.now()).unwrap())
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("dpop-nonce").is_some());
    // Once its window and the next have passed, the nonce is old.
    app.state.clock().advance(2 * 300 + 1);
    let res = app
        .token_with_proof(&form, &agent, &key.proof("POST", &url, None, Some(&nonce), app.state.now()).unwrap())
        .await;
    assert_error(res, 400, "use_dpop_nonce").await;
    // The example agent follows the nonce on its own.
    let cfg = agent_example::AgentConfig {
        broker: app.base.clone(),
        core: String::new(),
        client_id: agent.id.clone(),
        client_secret: agent.secret.clone(),
        workspace: "ws-1".into(),
        wait: Duration::from_secs(1),
    };
    app.state.clock().advance(-(2 * 300 + 1));
    let t = agent_example::bound_token(&reqwest::Client::new(), &cfg, &key).await.unwrap();
    assert_eq!(peek_claims(&t)["cnf"]["jkt"], key.jkt());
}

#[tokio::test]
async fn exchange_keeps_the_binding_and_introspection_reports_it() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let key = DpopKey::generate_ed25519().unwrap();
    let token = app.bound_token(&agent, &key).await;
    let url = token_url(&app);
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("scope", "workspaces:read"),
    ];
    // Without a proof, or with another key's: refused.
    assert_error(app.token_request(&form, Some(&agent)).await, 400, "invalid_dpop_proof").await;
    let other = DpopKey::generate_ed25519().unwrap();
    let proof = other.proof("POST", &url, None, None, app.state.now()).unwrap();
    assert_error(app.token_with_proof(&form, &agent, &proof).await, 400, "invalid_dpop_proof").await;
    // With the same key: the narrower token is bound to it too.
    let proof = key.proof("POST", &url, None, None, app.state.now()).unwrap();
    let res = app.token_with_proof(&form, &agent, &proof).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
    let narrow = body["access_token"].as_str().unwrap();
    assert_eq!(peek_claims(narrow)["cnf"]["jkt"], key.jkt());
    assert_eq!(peek_claims(narrow)["scope"], "workspaces:read");

    let core = app.create_client("org-1", CallerKind::Service, "core").await;
    let res = app
        .http
        .post(app.url("/oauth/introspect"))
        .basic_auth(&core.id, Some(&core.secret))
        .form(&[("token", narrow)])
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "DPoP");
    assert_eq!(v["cnf"]["jkt"], key.jkt());
}

#[tokio::test]
async fn only_a_service_may_name_the_requester() {
    let app = spawn_app().await;
    let agent = app.create_client("org-1", CallerKind::Agent, "concierge").await;
    let other = app.create_client("org-1", CallerKind::Agent, "other").await;
    let at = app.access_token(&agent).await;
    let ot = app.access_token(&other).await;
    let params = json!({"name": "x"});
    let mut body = json!({
        "action": "org_token_mint", "resource": "orgs/org-1/tokens", "params": params,
        "params_digest": tessera::verify::params_digest(&params).to_string(), "reason": "r",
        "requester_token": at,
    });
    // An agent naming another as the requester: 403.
    assert_error(app.post_bearer("/v1/approvals", &ot, &body).await, 403, "forbidden").await;
    // A service of another tenant: the token is not usable.
    let foreign = app.create_client("org-2", CallerKind::Service, "core-2").await;
    let ft = app.access_token(&foreign).await;
    assert_error(app.post_bearer("/v1/approvals", &ft, &body).await, 400, "invalid_request").await;
    // Core's own service client: the approval is the agent's.
    let core = app.create_client("org-1", CallerKind::Service, "core").await;
    let ct = app.access_token(&core).await;
    let res = app.post_bearer("/v1/approvals", &ct, &body).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let v: Value = app.get_bearer(&format!("/v1/approvals/{id}"), &at).await.json().await.unwrap();
    assert_eq!(v["requester"], agent.id);
    // Garbage as the requester token.
    body["requester_token"] = json!("garbage");
    assert_error(app.post_bearer("/v1/approvals", &ct, &body).await, 400, "invalid_request").await;
}

/// A broker, core with (or without) a service client of its own, an agent and an operator.
struct World {
    broker: TestApp,
    core: String,
    agent: TestClient,
    op: TestClient,
}

async fn world(with_service: bool) -> World {
    let broker = spawn_app().await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let mut verifier = Verifier::for_issuer(&broker.base, "core");
    if with_service {
        let svc = broker.create_client("org-1", CallerKind::Service, "core").await;
        verifier = verifier.with_feed_credentials(FeedCredentials::new(svc.id, svc.secret));
    }
    let clock = broker.state.clock().clone();
    let gate = Gate::with_clock(verifier, &broker.base, move || clock.now());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let core = format!("http://{addr}");
    assert!(gate.set_public_url(&core));
    let router = core_example::router(&gate, core_example::Effects::default());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    World { broker, core, agent, op }
}

impl World {
    async fn effects(&self) -> Vec<Value> {
        reqwest::get(format!("{}/debug/effects", self.core))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    async fn approve_all(&self) -> usize {
        let t = self.broker.access_token(&self.op).await;
        let v: Value = self.broker.get_bearer("/v1/approvals?status=pending", &t).await.json().await.unwrap();
        let list = v["approvals"].as_array().unwrap().clone();
        for a in &list {
            assert_eq!(self.broker.decide(&t, a["approval_id"].as_str().unwrap(), "approve").await.status(), 200);
        }
        list.len()
    }
}

async fn call(
    key: &DpopKey,
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
    cap: Option<&str>,
) -> reqwest::Response {
    agent_example::send(&reqwest::Client::new(), key, token, method, url, body, cap).await.unwrap()
}

#[tokio::test]
async fn the_example_agent_runs_the_gated_flow_with_a_bound_token_and_copies_are_useless() {
    let w = world(true).await;
    let key = DpopKey::generate_ed25519().unwrap();
    let cfg = agent_example::AgentConfig {
        broker: w.broker.base.clone(),
        core: w.core.clone(),
        client_id: w.agent.id.clone(),
        client_secret: w.agent.secret.clone(),
        workspace: "ws-9".into(),
        wait: Duration::from_secs(20),
    };
    let run = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            let key = key;
            let out = agent_example::run(&cfg, &key).await.unwrap();
            (out, key)
        }
    });
    // The operator approves what comes in (bounded wait).
    let mut approved = 0;
    for _ in 0..100 {
        approved += w.approve_all().await;
        if approved > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(approved, 1);
    let (out, key) = tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap();
    assert_eq!(out.final_status, 200);
    assert_eq!(
        w.effects().await,
        vec![json!({"action": "secret_write", "resource": "workspaces/ws-9/secrets/OPENAI_KEY"})]
    );
    // The approval was the agent's, bound to its key, though core created it as a service.
    let ot = w.broker.access_token(&w.op).await;
    let v: Value = w.broker.get_bearer(&format!("/v1/approvals/{}", out.approval_id), &ot).await.json().await.unwrap();
    assert_eq!(v["requester"], w.agent.id);
    assert_eq!(v["status"], "redeemed");

    // A copy of the agent's token, used as Bearer at core, or with the thief's own proofs: 401.
    let token = agent_example::bound_token(&reqwest::Client::new(), &cfg, &key).await.unwrap();
    let url = format!("{}/workspaces/ws-1", w.core);
    let res = reqwest::Client::new().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_dpop_401(res).await;
    let thief = DpopKey::generate_ed25519().unwrap();
    assert_dpop_401(call(&thief, &token, reqwest::Method::GET, &url, None, None).await).await;
    let proof = key.proof("GET", &url, Some(&token), None, w.broker.state.now()).unwrap();
    let replay = || {
        reqwest::Client::new()
            .get(&url)
            .header("Authorization", format!("DPoP {token}"))
            .header("DPoP", proof.clone())
            .send()
    };
    assert_eq!(replay().await.unwrap().status(), 200);
    assert_dpop_401(replay().await.unwrap()).await;
    // The rightful holder is fine.
    assert_eq!(call(&key, &token, reqwest::Method::GET, &url, None, None).await.status(), 200);
}

#[tokio::test]
async fn a_bound_capability_needs_its_key_and_core_needs_a_service_client() {
    let w = world(true).await;
    let key = DpopKey::generate_es256().unwrap();
    let token = w.broker.bound_token(&w.agent, &key).await;
    let url = format!("{}/workspaces/ws-3", w.core);
    let res = call(&key, &token, reqwest::Method::DELETE, &url, None, None).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(w.approve_all().await, 1);
    let path = format!("/v1/approvals/{id}");
    let v: Value = w.broker.dpop_request(reqwest::Method::GET, &path, &token, &key, None).await.json().await.unwrap();
    let cap = v["capability"].as_str().unwrap().to_owned();
    assert_eq!(peek_claims(&cap)["cnf"]["jkt"], key.jkt());

    // The same client with a token bound to another key: the capability is refused.
    let other = DpopKey::generate_ed25519().unwrap();
    let other_token = w.broker.bound_token(&w.agent, &other).await;
    let res = call(&other, &other_token, reqwest::Method::DELETE, &url, None, Some(&cap)).await;
    assert_error(res, 403, "forbidden").await;
    // An unbound token of the same client: refused too.
    let plain = w.broker.access_token(&w.agent).await;
    let res = reqwest::Client::new()
        .delete(&url)
        .bearer_auth(&plain)
        .header("Tessera-Capability", &cap)
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    // Redeeming it at the broker with the other key's token: refused.
    let res = w
        .broker
        .dpop_request(
            reqwest::Method::POST,
            "/v1/capabilities/redeem",
            &other_token,
            &other,
            Some(&json!({"capability": cap})),
        )
        .await;
    assert_error(res, 403, "forbidden").await;
    assert!(w.effects().await.is_empty());
    // The key's holder: once.
    assert_eq!(call(&key, &token, reqwest::Method::DELETE, &url, None, Some(&cap)).await.status(), 200);
    let res = call(&key, &token, reqwest::Method::DELETE, &url, None, Some(&cap)).await;
    assert_error(res, 409, "conflict").await;

    // A core without a service client of its own refuses a bound caller's gated request.
    let bare = world(false).await;
    let token = bare.broker.bound_token(&bare.agent, &key).await;
    let res = call(&key, &token, reqwest::Method::DELETE, &format!("{}/workspaces/ws-3", bare.core), None, None).await;
    assert_error(res, 403, "forbidden").await;
    // …while an unbound caller still works as before.
    let plain = bare.broker.access_token(&bare.agent).await;
    let res = reqwest::Client::new()
        .delete(format!("{}/workspaces/ws-3", bare.core))
        .bearer_auth(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

#[test]
fn ath_is_the_hash_of_the_token() {
    // RFC 9449 §7.1's example: the token and its ath.
    assert_eq!(
        access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

/// Review round three, item 5: proofs were remembered on requests that then failed, and one
/// client could fill the whole replay cache so that every DPoP request was refused. A proof is
/// remembered only once the request is otherwise good; a key, or a client, at its share is
/// refused alone, and counted.
#[tokio::test]
async fn one_client_filling_the_replay_cache_refuses_only_itself() {
    let app = spawn_app_with(|c| {
        c.dpop_replay_per_key = 3;
        c.dpop_replay_per_client = 5;
    })
    .await;
    let greedy = app.create_client("org-1", CallerKind::Agent, "greedy").await;
    let other = app.create_client("org-1", CallerKind::Agent, "other").await;
    let url = token_url(&app);
    let now = app.state.now();
    let cc = [("grant_type", "client_credentials")];

    // A refused request leaves its proof unspent: the same proof then works.
    let key = DpopKey::generate_ed25519().unwrap();
    let proof = key.proof("POST", &url, None, None, now).unwrap();
    let res =
        app.token_with_proof(&[("grant_type", "client_credentials"), ("scope", "orgs:admin")], &greedy, &proof).await;
    assert_error(res, 400, "invalid_scope").await;
    let res = app
        .http
        .post(&url)
        .basic_auth(&greedy.id, Some("tessera_sk_wrong"))
        .header("DPoP", &proof)
        .form(&cc)
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "invalid_client").await;
    assert_eq!(app.token_with_proof(&cc, &greedy, &proof).await.status(), 200);
    assert_error(app.token_with_proof(&cc, &greedy, &proof).await, 400, "invalid_dpop_proof").await;

    // The key's share: two more proofs, then refused.
    for _ in 0..2 {
        let p = key.proof("POST", &url, None, None, now).unwrap();
        assert_eq!(app.token_with_proof(&cc, &greedy, &p).await.status(), 200);
    }
    let p = key.proof("POST", &url, None, None, now).unwrap();
    let body = assert_error(app.token_with_proof(&cc, &greedy, &p).await, 400, "invalid_dpop_proof").await;
    assert!(body["error_description"].as_str().unwrap().contains("too many proofs"), "{body}");
    // The client's share, across its keys.
    let key2 = DpopKey::generate_ed25519().unwrap();
    for _ in 0..2 {
        let p = key2.proof("POST", &url, None, None, now).unwrap();
        assert_eq!(app.token_with_proof(&cc, &greedy, &p).await.status(), 200);
    }
    let key3 = DpopKey::generate_ed25519().unwrap();
    let p = key3.proof("POST", &url, None, None, now).unwrap();
    assert_error(app.token_with_proof(&cc, &greedy, &p).await, 400, "invalid_dpop_proof").await;

    // Another client is served, at the token endpoint and with its bound token on /v1.
    let theirs = DpopKey::generate_ed25519().unwrap();
    let token = app.bound_token(&other, &theirs).await;
    let res = app.dpop_request(reqwest::Method::GET, "/v1/approvals?status=pending", &token, &theirs, None).await;
    assert_ne!(res.status(), 401);
    assert_ne!(res.status(), 400);

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_dpop_replay_full_total{share=\"key\"} 1"), "{metrics}");
    assert!(metrics.contains("tessera_dpop_replay_full_total{share=\"client\"} 1"), "{metrics}");
    assert!(metrics.contains("tessera_dpop_replay_full_total{share=\"all\"} 0"), "{metrics}");
}

#[tokio::test]
async fn replay_shares_outside_their_range_are_refused_at_start() {
    for (key, client) in [("0", "10"), ("11", "10"), ("5", "0"), ("5", "200001")] {
        let env: std::collections::HashMap<String, String> = [
            ("TESSERA_DPOP_REPLAY_PER_KEY".to_owned(), key.to_owned()),
            ("TESSERA_DPOP_REPLAY_PER_CLIENT".to_owned(), client.to_owned()),
        ]
        .into();
        let err = tessera::config::Config::load(None, &env).unwrap_err();
        assert!(err.to_string().contains("dpop_replay_per"), "{key}/{client}: {err}");
    }
}
