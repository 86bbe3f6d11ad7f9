//! The verifier library, the gate middleware and the reference core — the incident,
//! replayed against the real thing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::verify::gate::Gate;
use tessera::verify::{JwksClient, JwksOptions, Policy, Verifier};

use crate::helpers::*;

#[path = "../../examples/core.rs"]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod core_example;

struct World {
    broker: TestApp,
    core: String,
    http: reqwest::Client,
    agent: TestClient,
    op: TestClient,
}

pub(crate) async fn spawn_core(broker: &TestApp) -> String {
    let clock = broker.state.clock().clone();
    let gate = Gate::with_clock(Verifier::for_issuer(&broker.base, "core"), &broker.base, move || clock.now());
    let router = core_example::router(&gate, core_example::Effects::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn world() -> World {
    let broker = spawn_app().await;
    let core = spawn_core(&broker).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    World { broker, core, http: reqwest::Client::new(), agent, op }
}

impl World {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        cap: Option<&str>,
    ) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.core)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(c) = cap {
            req = req.header("Tessera-Capability", c);
        }
        req.send().await.unwrap()
    }

    async fn effects(&self) -> Vec<Value> {
        let v: Value =
            self.http.get(format!("{}/debug/effects", self.core)).send().await.unwrap().json().await.unwrap();
        v.as_array().unwrap().clone()
    }

    async fn pending(&self) -> Vec<Value> {
        let t = self.broker.access_token(&self.op).await;
        let v: Value = self.broker.get_bearer("/v1/approvals?status=pending", &t).await.json().await.unwrap();
        v["approvals"].as_array().unwrap().clone()
    }

    async fn approve(&self, id: &str) {
        let t = self.broker.access_token(&self.op).await;
        assert_eq!(self.broker.decide(&t, id, "approve").await.status(), 200);
    }

    /// Runs a gated call to approval and returns the capability.
    async fn approved_capability(&self, token: &str, method: &str, path: &str, body: Value) -> String {
        let res = self.call(method, path, token, Some(body), None).await;
        assert_eq!(res.status(), 202);
        let v: Value = res.json().await.unwrap();
        let id = v["approval_id"].as_str().unwrap().to_owned();
        self.approve(&id).await;
        self.broker.capability(token, &id).await.unwrap()
    }
}

#[tokio::test]
async fn the_incident_cannot_happen_again() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;

    // First try: 202 pending, an approval operators can see, and no effect.
    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "ci"})), None).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    let id = body["approval_id"].as_str().unwrap().to_owned();
    let pending = w.pending().await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["approval_id"], id);
    assert_eq!(pending[0]["action"], "org_token_mint");
    assert_eq!(pending[0]["resource"], "orgs/org-1/tokens");
    assert_eq!(pending[0]["requester"], w.agent.id);
    assert!(w.effects().await.is_empty());

    // The agent cannot approve its own request, nor mint a token that skips the gate.
    assert_error(w.broker.decide(&at, &id, "approve").await, 403, "forbidden").await;
    let res = w
        .broker
        .token_request(&[("grant_type", "client_credentials"), ("scope", "org_token_mint")], Some(&w.agent))
        .await;
    assert_error(res, 400, "invalid_scope").await;

    // An operator approves; the retry with the capability runs exactly one effect.
    w.approve(&id).await;
    let cap = w.broker.capability(&at, &id).await.unwrap();
    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "ci"})), Some(&cap)).await;
    assert_eq!(res.status(), 201);
    let effects = w.effects().await;
    assert_eq!(effects, vec![json!({"action": "org_token_mint", "resource": "orgs/org-1/tokens"})]);

    // The replay is 409; the same capability with another body is 403; nothing more runs.
    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "ci"})), Some(&cap)).await;
    assert_error(res, 409, "conflict").await;
    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "admin-2"})), Some(&cap)).await;
    assert_error(res, 403, "forbidden").await;
    assert_eq!(w.effects().await.len(), 1);
}

#[tokio::test]
async fn a_capability_fits_only_its_own_request() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let body = json!({"key": "OPENAI_KEY", "value": "sk-live-0123456789"});
    let cap = w.approved_capability(&at, "PUT", "/workspaces/ws-1/secrets", body.clone()).await;

    // Another workspace, another key, another value, another verb: 403.
    let other_value = json!({"key": "OPENAI_KEY", "value": "sk-live-evil"});
    let other_key = json!({"key": "ANTHROPIC_KEY", "value": "sk-live-0123456789"});
    for (method, path, b) in [
        ("PUT", "/workspaces/ws-2/secrets", body.clone()),
        ("PUT", "/workspaces/ws-1/secrets", other_value),
        ("PUT", "/workspaces/ws-1/secrets", other_key),
        ("PUT", "/settings/secrets", body.clone()),
        ("DELETE", "/workspaces/ws-1", body.clone()),
    ] {
        let res = w.call(method, path, &at, Some(b), Some(&cap)).await;
        assert_error(res, 403, "forbidden").await;
    }
    // Another agent of the same tenant holding it: 403 (bound to the requester).
    let thief = w.broker.create_client("org-1", CallerKind::Agent, "thief").await;
    let tt = w.broker.access_token(&thief).await;
    assert_error(
        w.call("PUT", "/workspaces/ws-1/secrets", &tt, Some(body.clone()), Some(&cap)).await,
        403,
        "forbidden",
    )
    .await;
    assert!(w.effects().await.is_empty());

    // The right request still works, once.
    assert_eq!(w.call("PUT", "/workspaces/ws-1/secrets", &at, Some(body.clone()), Some(&cap)).await.status(), 200);
    assert_eq!(
        w.effects().await,
        vec![json!({"action": "secret_write", "resource": "workspaces/ws-1/secrets/OPENAI_KEY"})]
    );
}

#[tokio::test]
async fn tokens_are_never_interchangeable_and_the_token_comes_first() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let cap = w.approved_capability(&at, "DELETE", "/workspaces/ws-7", json!({})).await;
    // A capability as the bearer token: 401 before anything else.
    let res = w.call("DELETE", "/workspaces/ws-7", &cap, None, Some(&cap)).await;
    assert_error(res, 401, "invalid_token").await;
    // The access token as a capability: 403.
    let res = w.call("DELETE", "/workspaces/ws-7", &at, None, Some(&at)).await;
    assert_error(res, 403, "forbidden").await;
    // No token, or garbage: 401, and no approval is created.
    let before = w.pending().await.len();
    let res = w.http.post(format!("{}/org/tokens", w.core)).json(&json!({"name": "x"})).send().await.unwrap();
    assert_error(res, 401, "invalid_token").await;
    assert_error(
        w.call("POST", "/org/tokens", "garbage", Some(json!({"name": "x"})), None).await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(w.pending().await.len(), before);
    assert!(w.effects().await.is_empty());
}

#[tokio::test]
async fn every_gated_route_asks_and_secret_values_never_reach_the_broker() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let cases = [
        (
            "PUT",
            "/workspaces/ws-1/secrets",
            json!({"key": "K1", "value": "hunter2-secret"}),
            "secret_write",
            "workspaces/ws-1/secrets/K1",
        ),
        (
            "PUT",
            "/settings/secrets",
            json!({"key": "K2", "value": "hunter2-secret"}),
            "secret_write",
            "orgs/org-1/secrets/K2",
        ),
        ("DELETE", "/workspaces/ws-1", json!({}), "workspace_delete", "workspaces/ws-1"),
        ("POST", "/workspaces/ws-1/deprovision", json!({}), "workspace_deprovision", "workspaces/ws-1"),
        ("POST", "/admin/workspaces/ws-1/tokens", json!({}), "workspace_token_mint", "workspaces/ws-1/tokens"),
        ("POST", "/org/tokens", json!({"name": "n"}), "org_token_mint", "orgs/org-1/tokens"),
    ];
    for (method, path, body, action, resource) in cases.clone() {
        let res = w.call(method, path, &at, Some(body.clone()), None).await;
        assert_eq!(res.status(), 202, "{method} {path}");
        let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
        let ot = w.broker.access_token(&w.op).await;
        let a: Value = w.broker.get_bearer(&format!("/v1/approvals/{id}"), &ot).await.json().await.unwrap();
        assert_eq!(a["action"], action);
        assert_eq!(a["resource"], resource);
        // The broker keeps the presented form, and the digest is of exactly that form.
        let secret_fields: &[&str] = if action == "secret_write" { &["value"] } else { &[] };
        let shown = tessera::verify::presented(&body, secret_fields).unwrap();
        assert_eq!(a["params"], shown);
        assert_eq!(a["params_digest"], tessera::verify::params_digest(&shown).to_string());
        assert_eq!(a["requester"], w.agent.id);
        if body.get("value").is_some() {
            assert_eq!(a["params"]["value"]["$secret"]["length"], 14);
            assert_eq!(a["params"]["key"], body["key"]);
        }
    }
    let export = w.broker.cli(&["audit", "export"]).await;
    let everything = format!("{}{:?}", String::from_utf8_lossy(&export.stdout), w.pending().await);
    assert!(!everything.contains("hunter2-secret"));
    assert!(w.effects().await.is_empty());

    // Reads need only the right scope.
    assert_eq!(w.call("GET", "/workspaces/ws-1", &at, None, None).await.status(), 200);
    let narrow = w.broker.create_client_with("org-1", CallerKind::Agent, "n", None, &["approvals:create"], &[]).await;
    let nt = w.broker.access_token(&narrow).await;
    assert_error(w.call("GET", "/workspaces/ws-1", &nt, None, None).await, 403, "forbidden").await;
    // A malformed gated request is 400 and creates nothing.
    let before = w.pending().await.len();
    assert_error(
        w.call("PUT", "/workspaces/ws-1/secrets", &at, Some(json!({"value": "x"})), None).await,
        400,
        "invalid_request",
    )
    .await;
    let res = w
        .http
        .put(format!("{}/workspaces/ws-1/secrets", w.core))
        .bearer_auth(&at)
        .header("content-type", "application/json")
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    assert_eq!(w.pending().await.len(), before);
}

#[tokio::test]
async fn the_brokers_refusals_reach_the_caller() {
    let w = world().await;
    let ws = w.broker.create_client_with("org-1", CallerKind::Workspace, "rt", Some("ws-1"), &[], &[]).await;
    let wt = w.broker.access_token(&ws).await;
    let res = w.call("PUT", "/workspaces/ws-1/secrets", &wt, Some(json!({"key": "K", "value": "v"})), None).await;
    assert_error(res, 403, "self_target_forbidden").await;
    // An agent sending the bypass header through core is refused too.
    let at = w.broker.access_token(&w.agent).await;
    let res = w
        .http
        .post(format!("{}/org/tokens", w.core))
        .bearer_auth(&at)
        .header("Tessera-Gate-Bypass", "trust me")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "bypass_not_allowed").await;
    assert!(w.effects().await.is_empty());
}

#[tokio::test]
async fn an_unknown_kid_flood_costs_at_most_one_fetch_per_cooldown() {
    let broker = spawn_app().await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "a").await;
    let at = broker.access_token(&agent).await;
    let jwks = JwksClient::new(broker.url("/.well-known/jwks.json"), JwksOptions::default());
    let verifier = Arc::new(Verifier::new(Policy::new(broker.base.clone(), "core"), jwks));
    verifier.verify_access(&at, broker.state.now()).await.unwrap();
    assert_eq!(verifier.jwks().fetch_count(), 1);
    // Forge tokens with random kids: each is refused, and together they cause one fetch.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let v = verifier.clone();
        let mut parts: Vec<String> = at.split('.').map(str::to_owned).collect();
        parts[0] =
            tessera::token::b64::encode(format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"random{i}"}}"#).as_bytes());
        let forged = parts.join(".");
        let now = broker.state.now();
        tasks.push(tokio::spawn(async move { v.verify_access(&forged, now).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    assert_eq!(verifier.jwks().fetch_count(), 2, "one refetch for the whole flood");
    verifier.verify_access(&at, broker.state.now()).await.unwrap();
}

#[tokio::test]
async fn the_jwks_cache_keeps_the_last_good_set_then_fails_closed() {
    let broker = spawn_app().await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "a").await;
    let at = broker.access_token(&agent).await;
    let now = broker.state.now();
    let short = JwksOptions {
        default_max_age: Duration::from_millis(200),
        min_max_age: Duration::from_millis(200),
        max_max_age: Duration::from_millis(200),
        stale_limit: Duration::from_millis(800),
        ..JwksOptions::default()
    };
    let verifier = Verifier::new(
        Policy::new(broker.base.clone(), "core"),
        JwksClient::new(broker.url("/.well-known/jwks.json"), short),
    );
    verifier.verify_access(&at, now).await.unwrap();
    let _ = broker.stop().await;
    // Past freshness, the fetch fails: the last good set still serves.
    tokio::time::sleep(Duration::from_millis(400)).await;
    verifier.verify_access(&at, now).await.unwrap();
    // Past the staleness limit: fail closed.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(verifier.verify_access(&at, now).await.is_err());
}

/// Serves a JWKS document that the test can replace, at `/jwks.json`.
async fn replaceable_jwks(doc: Value) -> (String, Arc<std::sync::RwLock<Value>>) {
    let doc = Arc::new(std::sync::RwLock::new(doc));
    let served = doc.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = served.read().unwrap().clone();
            async move { ([("cache-control", "max-age=0")], axum::Json(doc)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}/jwks.json"), doc)
}

#[tokio::test]
async fn a_cached_verification_ends_with_its_key_its_expiry_and_its_revocation() {
    let broker = spawn_app().await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "a").await;
    let svc = broker.create_client("org-1", CallerKind::Service, "core").await;
    let at = broker.access_token(&agent).await;
    let other = broker.access_token(&agent).await;
    let published: Value = reqwest::get(broker.url("/.well-known/jwks.json")).await.unwrap().json().await.unwrap();
    let (uri, doc) = replaceable_jwks(published.clone()).await;
    let short = JwksOptions {
        default_max_age: Duration::from_millis(100),
        min_max_age: Duration::from_millis(100),
        max_max_age: Duration::from_millis(100),
        ..JwksOptions::default()
    };
    let verifier = Verifier::new(Policy::new(broker.base.clone(), "core"), JwksClient::new(uri, short))
        .with_feed_credentials(tessera::verify::revocations::FeedCredentials::new(&svc.id, &svc.secret));
    let now = broker.state.now();

    // The first check verifies; the next ones are served by the cache.
    verifier.verify_access(&at, now).await.unwrap();
    assert_eq!(verifier.token_cache_hits(), 0);
    for _ in 0..3 {
        assert_eq!(verifier.verify_access(&at, now).await.unwrap().sub, agent.id);
    }
    assert_eq!(verifier.token_cache_hits(), 3);
    // Another spelling of the same token is verified in full (and here refused).
    let tampered = format!("{at}A");
    assert!(verifier.verify_access(&tampered, now).await.is_err());
    assert_eq!(verifier.token_cache_hits(), 3);

    // Expiry is checked on every hit.
    let exp = peek_claims(&at)["exp"].as_i64().unwrap();
    assert_eq!(verifier.verify_access(&at, exp + 60).await.unwrap_err(), tessera::verify::VerifyError::Expired);

    // Revocation is checked on every hit.
    verifier.verify_access(&other, now).await.unwrap();
    let revoked = broker
        .http
        .post(broker.url("/oauth/revoke"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .form(&[("token", &other)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    verifier.poll_revocations(now).await.unwrap();
    assert_eq!(verifier.verify_access(&other, now).await.unwrap_err(), tessera::verify::VerifyError::Revoked);
    verifier.verify_access(&at, now).await.unwrap();

    // The key that verified it is unpublished: the cached token fails as a fresh one would.
    *doc.write().unwrap() = json!({ "keys": [] });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = verifier.token_cache_hits();
    assert_eq!(verifier.verify_access(&at, now).await.unwrap_err(), tessera::verify::VerifyError::UnknownKey);
    assert_eq!(verifier.token_cache_hits(), hits);
    // Published again, under the same kid but another public key: still refused.
    let mut swapped = published.clone();
    let x = swapped["keys"][0]["x"].as_str().unwrap().to_owned();
    let flipped = match x.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &x[1..]),
    };
    swapped["keys"][0]["x"] = json!(flipped);
    *doc.write().unwrap() = swapped;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(verifier.verify_access(&at, now).await.is_err());
    assert_eq!(verifier.token_cache_hits(), hits);
    // And the genuine key again: served.
    *doc.write().unwrap() = published;
    tokio::time::sleep(Duration::from_millis(300)).await;
    verifier.verify_access(&at, now).await.unwrap();
}

/// Design §18: the library gate refuses the bodies the proxy refuses, so a Rust core and the
/// proxy decide alike: a query, a body that is not JSON, case-folded key collisions.
#[tokio::test]
async fn the_library_gate_refuses_what_the_proxy_refuses() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let url = format!("{}/workspaces/ws-1/secrets", w.core);
    let good = json!({"key": "OPENAI_KEY", "value": "sk-1"});
    let res = w.http.put(format!("{url}?key=EVIL")).bearer_auth(&at).json(&good).send().await.unwrap();
    assert_error(res, 400, "invalid_request").await;
    let res = w
        .http
        .put(&url)
        .bearer_auth(&at)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    let res = w
        .http
        .put(&url)
        .bearer_auth(&at)
        .header("content-type", "application/json")
        .body(r#"{"key":"PUBLIC_NOTE","value":"v","KEY":"OPENAI_KEY"}"#)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    assert!(w.pending().await.is_empty());
    assert!(w.effects().await.is_empty());
    // A gated verb with no body at all still asks.
    assert_eq!(w.call("DELETE", "/workspaces/ws-1", &at, None, None).await.status(), 202);
}

/// A key set's server that never stops sending: each connection gets a chunked body of up to
/// `limit` bytes; the bytes it managed to write are counted.
async fn endless_jwks(limit: usize, chunked: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req).await;
        let head = if chunked {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
        } else {
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {limit}\r\n\r\n")
        };
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let block = vec![b' '; 16 * 1024];
        let chunk = [format!("{:x}\r\n", block.len()).into_bytes(), block.clone(), b"\r\n".to_vec()].concat();
        while count.load(std::sync::atomic::Ordering::Relaxed) < limit {
            let piece = if chunked { &chunk } else { &block };
            if s.write_all(piece).await.is_err() {
                return;
            }
            count.fetch_add(block.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    (url, written)
}

/// A key set larger than the limit is refused having read no more than the limit (plus what
/// the kernel buffered), whether its size is announced or it just keeps coming.
#[tokio::test]
async fn an_oversized_key_set_is_refused_without_being_read_whole() {
    const SENT_AT_MOST: usize = 64 * 1024 * 1024;
    for chunked in [true, false] {
        let (url, written) = endless_jwks(SENT_AT_MOST, chunked).await;
        let jwks = JwksClient::new(url, JwksOptions::default());
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(20), jwks.refresh()).await.expect("bounded").unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 16 * 1024 * 1024, "chunked {chunked}: the server wrote {sent} bytes before the client stopped");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// Review round three, item 8. The revocation feed is for `service` clients, so the reference
/// core reads it as its own (`CORE_CLIENT_ID`, `CORE_CLIENT_SECRET`): a disabled agent's token
/// stops working there within one poll, long before it expires. Without a client, core says
/// once at start that revoked tokens stay valid there until they expire. Both are built by
/// `gate_from_env`, exactly as the program's `main` builds its gate.
#[tokio::test]
async fn the_reference_core_stops_a_disabled_agents_token_within_one_poll() {
    let broker = spawn_app().await;
    let svc = broker.create_client("org-1", CallerKind::Service, "core").await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let at = broker.access_token(&agent).await;
    let http = reqwest::Client::new();

    let start = |with_client: bool| {
        let mut vars = vec![("CORE_BROKER_URL", broker.base.clone()), ("CORE_REVOCATION_POLL_SECS", "1".to_owned())];
        if with_client {
            vars.push(("CORE_CLIENT_ID", svc.id.clone()));
            vars.push(("CORE_CLIENT_SECRET", svc.secret.clone()));
        }
        let var = move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let mut warnings = Vec::new();
        let gate = core_example::gate_from_env(&var, &mut |w| warnings.push(w.to_owned()));
        let router = core_example::router(&gate, core_example::Effects::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/workspaces/ws-1", listener.local_addr().unwrap());
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (url, warnings)
    };
    let (with, with_warnings) = start(true);
    let (without, without_warnings) = start(false);
    assert!(with_warnings.is_empty(), "{with_warnings:?}");
    assert_eq!(without_warnings.len(), 1, "{without_warnings:?}");
    assert!(without_warnings[0].contains("revoked tokens stay valid here until they expire"));
    assert!(!without_warnings[0].contains(&svc.secret));
    assert_eq!(http.get(&with).bearer_auth(&at).send().await.unwrap().status(), 200);
    assert_eq!(http.get(&without).bearer_auth(&at).send().await.unwrap().status(), 200);

    let out = broker.cli(&["clients", "disable", &agent.id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut refused = false;
    for _ in 0..50 {
        let res = http.get(&with).bearer_auth(&at).send().await.unwrap();
        if res.status() == 401 {
            assert_error(res, 401, "invalid_token").await;
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a core with a client learns of the disable within its poll");
    // The one without learns nothing until the token expires.
    assert_eq!(http.get(&without).bearer_auth(&at).send().await.unwrap().status(), 200);
}
