//! The gate as a reverse proxy (design §17). A core that knows nothing of Tessera, behind
//! `tessera gate`, passes the reference core's tests: the incident, the §9 table, and what a
//! proxy adds (identity headers, bodies, an upstream that is slow or down).

use std::time::Duration;

use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::proxy::GateConfig;
use tessera::verify::Verifier;
use tessera::verify::dpop::DpopKey;
use tessera::verify::gate::Gate;
use tessera::verify::revocations::FeedCredentials;

use crate::helpers::*;

/// A trivial core with no Tessera code at all: it trusts the identity headers the proxy sets
/// (it is reachable only through the proxy) and records the effects it executes.
mod upstream {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{any, delete, get, post, put};
    use axum::{Json, Router};
    use serde_json::{Value, json};

    #[derive(Clone, Default)]
    pub struct Seen {
        pub effects: Arc<Mutex<Vec<Value>>>,
        pub headers: Arc<Mutex<Vec<HeaderMap>>>,
        pub bodies: Arc<Mutex<Vec<usize>>>,
    }

    impl Seen {
        pub fn effects(&self) -> Vec<Value> {
            self.effects.lock().unwrap().clone()
        }
        pub fn last_headers(&self) -> HeaderMap {
            self.headers.lock().unwrap().last().cloned().unwrap_or_default()
        }
        fn effect(&self, h: &HeaderMap, action: &str, resource: String) {
            self.headers.lock().unwrap().push(h.clone());
            self.effects.lock().unwrap().push(json!({"action": action, "resource": resource}));
        }
    }

    fn tenant(h: &HeaderMap) -> String {
        h.get("tessera-tenant").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    /// The §9 routes on loopback TCP; `delay` holds every gated answer back (a slow upstream).
    pub async fn spawn(delay: Duration) -> (String, Seen) {
        let (app, seen) = router(delay);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    /// The same routes on a Unix socket at `path` (the proxy's `upstream_socket`).
    pub async fn spawn_unix(path: &std::path::Path) -> Seen {
        let (app, seen) = router(Duration::ZERO);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        seen
    }

    fn router(delay: Duration) -> (Router, Seen) {
        let seen = Seen::default();
        let app = Router::new()
            .route(
                "/workspaces/{id}",
                get(|State(s): State<Seen>, h: HeaderMap, Path(id): Path<String>| async move {
                    s.headers.lock().unwrap().push(h);
                    Json(json!({"id": id}))
                })
                .delete(
                    move |State(s): State<Seen>, h: HeaderMap, Path(id): Path<String>| async move {
                        s.effect(&h, "workspace_delete", format!("workspaces/{id}"));
                        tokio::time::sleep(delay).await;
                        Json(json!({"deleted": id}))
                    },
                ),
            )
            .route(
                "/org/tokens",
                post(|State(s): State<Seen>, h: HeaderMap| async move {
                    s.effect(&h, "org_token_mint", format!("orgs/{}/tokens", tenant(&h)));
                    (StatusCode::CREATED, Json(json!({"created": true})))
                }),
            )
            .route(
                "/workspaces/{id}/secrets",
                put(|State(s): State<Seen>, h: HeaderMap, Path(id): Path<String>, Json(b): Json<Value>| async move {
                    let key = b["key"].as_str().unwrap_or_default().to_owned();
                    s.effect(&h, "secret_write", format!("workspaces/{id}/secrets/{key}"));
                    Json(json!({"written": key, "value_length": b["value"].as_str().map(str::len)}))
                }),
            )
            .route(
                "/settings/secrets",
                put(|State(s): State<Seen>, h: HeaderMap, Json(b): Json<Value>| async move {
                    let key = b["key"].as_str().unwrap_or_default().to_owned();
                    s.effect(&h, "secret_write", format!("orgs/{}/secrets/{key}", tenant(&h)));
                    Json(json!({"written": key}))
                }),
            )
            .route(
                "/workspaces/{id}/deprovision",
                post(|State(s): State<Seen>, h: HeaderMap, Path(id): Path<String>| async move {
                    s.effect(&h, "workspace_deprovision", format!("workspaces/{id}"));
                    Json(json!({"deprovisioned": id}))
                }),
            )
            .route(
                "/admin/workspaces/{id}/tokens",
                post(|State(s): State<Seen>, h: HeaderMap, Path(id): Path<String>| async move {
                    s.effect(&h, "workspace_token_mint", format!("workspaces/{id}/tokens"));
                    (StatusCode::CREATED, Json(json!({"created": true})))
                }),
            )
            .route(
                "/upload",
                post(|State(s): State<Seen>, h: HeaderMap, body: axum::body::Bytes| async move {
                    s.headers.lock().unwrap().push(h);
                    s.bodies.lock().unwrap().push(body.len());
                    Json(json!({"received": body.len()}))
                }),
            )
            .route(
                "/anything/{*rest}",
                any(|State(s): State<Seen>, h: HeaderMap| async move {
                    s.headers.lock().unwrap().push(h);
                    "unlisted"
                }),
            )
            .route("/x/{id}", delete(|| async { "ok" }))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(seen.clone());
        (app, seen)
    }
}

/// The proxy's configuration for the reference core's table (design §9).
pub const CORE_ROUTES: &str = r#"
[[route]]
method = "GET"
path = "/workspaces/{id}"
scope = "workspaces:read"

[[route]]
method = "POST"
path = "/org/tokens"
action = "org_token_mint"
resource = "orgs/{tenant}/tokens"

[[route]]
method = "PUT"
path = "/workspaces/{id}/secrets"
action = "secret_write"
resource = "workspaces/{id}/secrets/{body.key}"
secret_fields = ["value"]

[[route]]
method = "PUT"
path = "/settings/secrets"
action = "secret_write"
resource = "orgs/{tenant}/secrets/{body.key}"
secret_fields = ["value"]

[[route]]
method = "DELETE"
path = "/workspaces/{id}"
action = "workspace_delete"
resource = "workspaces/{id}"

[[route]]
method = "POST"
path = "/workspaces/{id}/deprovision"
action = "workspace_deprovision"
resource = "workspaces/{id}"

[[route]]
method = "POST"
path = "/admin/workspaces/{id}/tokens"
action = "workspace_token_mint"
resource = "workspaces/{id}/tokens"

[[route]]
method = "POST"
path = "/upload"
scope = "workspaces:write"
"#;

/// Starts `tessera gate`'s router in front of `upstream`, trusting `broker` (on its clock).
pub(crate) async fn spawn_proxy(broker: &TestApp, upstream: &str, extra: &str) -> String {
    spawn_proxy_as(broker, upstream, extra, None).await
}

/// A broker for a gate: its default audience is the URL the gate will be reached at (design
/// §18: the gate's audience is its public URL), a loopback port set aside for it.
pub(crate) async fn spawn_gated_app() -> TestApp {
    spawn_gated_app_with(|_| {}).await
}

/// As [`spawn_gated_app`], with more configuration.
pub(crate) async fn spawn_gated_app_with(tweak: impl FnOnce(&mut tessera::config::Config)) -> TestApp {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    spawn_app_with(|c| {
        c.audience = format!("http://127.0.0.1:{port}");
        tweak(c)
    })
    .await
}

/// As [`spawn_proxy`], with the proxy's own `service` client. The proxy's public URL (and so its
/// audience) is the broker's default audience; it listens there when that port is free (else on
/// another, as a second proxy behind the same name would).
async fn spawn_proxy_as(broker: &TestApp, upstream: &str, extra: &str, service: Option<&TestClient>) -> String {
    let public = broker.state.config().audience.clone();
    let wanted = public.trim_start_matches("http://").to_owned();
    let listener = match tokio::net::TcpListener::bind(&wanted).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listener.local_addr().unwrap();
    let text = format!(
        "upstream = \"{upstream}\"\nbroker = \"{}\"\npublic_url = \"{public}\"\n{extra}\n{CORE_ROUTES}",
        broker.base
    );
    let config = GateConfig::parse(&text).unwrap();
    let clock = broker.state.clock().clone();
    let mut verifier = Verifier::for_issuer(&broker.base, &public);
    if let Some(s) = service {
        verifier = verifier.with_feed_credentials(FeedCredentials::new(s.id.clone(), s.secret.clone()));
    }
    let gate = Gate::with_clock(verifier, &broker.base, move || clock.now());
    let router = tessera::proxy::app(config, &gate);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

struct World {
    broker: TestApp,
    proxy: String,
    seen: upstream::Seen,
    http: reqwest::Client,
    agent: TestClient,
    op: TestClient,
}

async fn world_with(delay: Duration, extra: &str) -> World {
    let broker = spawn_gated_app().await;
    let (up, seen) = upstream::spawn(delay).await;
    let proxy = spawn_proxy(&broker, &up, extra).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    World { broker, proxy, seen, http: reqwest::Client::new(), agent, op }
}

async fn world() -> World {
    world_with(Duration::ZERO, "").await
}

#[tokio::test]
async fn an_upstream_on_a_unix_socket_gets_the_same_gate() {
    let dir = tempfile::tempdir().unwrap();
    let broker = spawn_gated_app().await;
    let socket = dir.path().join("core.sock");
    let seen = upstream::spawn_unix(&socket).await;
    let proxy =
        spawn_proxy(&broker, "http://core.internal", &format!("upstream_socket = {:?}", socket.display().to_string()))
            .await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let w = World { broker, proxy, seen, http: reqwest::Client::new(), agent, op };
    let at = w.broker.access_token(&w.agent).await;

    let res = w.call("GET", "/workspaces/w1", &at, None, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"id": "w1"}));
    assert_eq!(w.seen.last_headers()["tessera-subject"], w.agent.id.as_str());
    // The upstream sees the configured URL's host, whatever the caller named.
    assert_eq!(w.seen.last_headers()["host"], "core.internal");
    // A gated verb: held for approval, then run once with the capability.
    let body = json!({"key": "db", "value": "s3cret"});
    let (cap, id) = w.approved_capability(&at, "PUT", "/workspaces/w1/secrets", body.clone()).await;
    assert!(w.seen.effects().is_empty());
    let res = w.call("PUT", "/workspaces/w1/secrets", &at, Some(body.clone()), Some(&cap)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(w.seen.last_headers()["tessera-approval-id"], id.as_str());
    assert_error(w.call("PUT", "/workspaces/w1/secrets", &at, Some(body), Some(&cap)).await, 409, "conflict").await;
    assert_eq!(w.seen.effects().len(), 1);
    // No token: refused before the socket is touched.
    let res = w.http.get(format!("{}/workspaces/w1", w.proxy)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // No socket at the path: 502, as for a TCP upstream that is down.
    let missing = format!("upstream_socket = {:?}", dir.path().join("missing.sock").display().to_string());
    let proxy = spawn_proxy(&w.broker, "http://core.internal", &missing).await;
    let res = w.http.get(format!("{proxy}/workspaces/w2")).bearer_auth(&at).send().await.unwrap();
    assert_error(res, 502, "bad_gateway").await;
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
        let mut req = self.http.request(method, format!("{}{path}", self.proxy)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(c) = cap {
            req = req.header("Tessera-Capability", c);
        }
        req.send().await.unwrap()
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

    async fn approved_capability(&self, token: &str, method: &str, path: &str, body: Value) -> (String, String) {
        let res = self.call(method, path, token, Some(body), None).await;
        assert_eq!(res.status(), 202, "{method} {path}");
        let v: Value = res.json().await.unwrap();
        let id = v["approval_id"].as_str().unwrap().to_owned();
        self.approve(&id).await;
        (self.broker.capability(token, &id).await.unwrap(), id)
    }
}

#[tokio::test]
async fn the_incident_cannot_happen_again_behind_the_proxy() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;

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
    assert!(w.seen.effects().is_empty());

    assert_error(w.broker.decide(&at, &id, "approve").await, 403, "forbidden").await;
    w.approve(&id).await;
    let cap = w.broker.capability(&at, &id).await.unwrap();
    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "ci"})), Some(&cap)).await;
    assert_eq!(res.status(), 201);
    assert_eq!(w.seen.effects(), vec![json!({"action": "org_token_mint", "resource": "orgs/org-1/tokens"})]);
    // The upstream learnt who asked, and which approval let it run.
    let h = w.seen.last_headers();
    assert_eq!(h["tessera-subject"], w.agent.id.as_str());
    assert_eq!(h["tessera-tenant"], "org-1");
    assert_eq!(h["tessera-caller-kind"], "agent");
    assert_eq!(h["tessera-approval-id"], id.as_str());
    assert!(h.get("authorization").is_none() && h.get("tessera-capability").is_none());

    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "ci"})), Some(&cap)).await;
    assert_error(res, 409, "conflict").await;
    let res = w.call("POST", "/org/tokens", &at, Some(json!({"name": "admin-2"})), Some(&cap)).await;
    assert_error(res, 403, "forbidden").await;
    assert_eq!(w.seen.effects().len(), 1);
}

#[tokio::test]
async fn the_reference_cores_table_holds_behind_the_proxy() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let cases = [
        (
            "PUT",
            "/workspaces/ws-1/secrets",
            json!({"key": "K1", "value": "hunter2-secret"}),
            "secret_write",
            "workspaces/ws-1/secrets/K1",
            200,
        ),
        (
            "PUT",
            "/settings/secrets",
            json!({"key": "K2", "value": "hunter2-secret"}),
            "secret_write",
            "orgs/org-1/secrets/K2",
            200,
        ),
        ("DELETE", "/workspaces/ws-1", json!({}), "workspace_delete", "workspaces/ws-1", 200),
        ("POST", "/workspaces/ws-1/deprovision", json!({}), "workspace_deprovision", "workspaces/ws-1", 200),
        ("POST", "/admin/workspaces/ws-1/tokens", json!({}), "workspace_token_mint", "workspaces/ws-1/tokens", 201),
        ("POST", "/org/tokens", json!({"name": "n"}), "org_token_mint", "orgs/org-1/tokens", 201),
    ];
    let ot = w.broker.access_token(&w.op).await;
    for (n, (method, path, body, action, resource, status)) in cases.iter().enumerate() {
        let (cap, id) = w.approved_capability(&at, method, path, body.clone()).await;
        let a: Value = w.broker.get_bearer(&format!("/v1/approvals/{id}"), &ot).await.json().await.unwrap();
        assert_eq!(a["action"], *action);
        assert_eq!(a["resource"], *resource);
        let secret_fields: &[&str] = if *action == "secret_write" { &["value"] } else { &[] };
        let shown = tessera::verify::presented(body, secret_fields).unwrap();
        assert_eq!(a["params"], shown, "the broker holds the presented form");
        assert_eq!(a["params_digest"], tessera::verify::params_digest(&shown).to_string());
        // A capability for this request fits no other route.
        let other = if *path == "/org/tokens" { "/settings/secrets" } else { "/org/tokens" };
        let other_method = if other == "/org/tokens" { "POST" } else { "PUT" };
        let res = w.call(other_method, other, &at, Some(body.clone()), Some(&cap)).await;
        assert!([400, 403].contains(&res.status().as_u16()), "{other}: {}", res.status());
        let res = w.call(method, path, &at, Some(body.clone()), Some(&cap)).await;
        assert_eq!(res.status().as_u16(), *status, "{method} {path}");
        assert_eq!(w.seen.effects().len(), n + 1);
        assert_eq!(w.seen.effects()[n], json!({"action": action, "resource": resource}));
        assert_error(w.call(method, path, &at, Some(body.clone()), Some(&cap)).await, 409, "conflict").await;
    }
    // The secret value reached the upstream intact, and never the broker or its audit log.
    let export = w.broker.cli(&["audit", "export"]).await;
    assert!(!String::from_utf8_lossy(&export.stdout).contains("hunter2-secret"));

    // Reads need only the scope: 403 with the scope named, before anything reaches the upstream.
    assert_eq!(w.call("GET", "/workspaces/ws-1", &at, None, None).await.status(), 200);
    let narrow = w.broker.create_client_with("org-1", CallerKind::Agent, "n", None, &["approvals:create"], &[]).await;
    let nt = w.broker.access_token(&narrow).await;
    let res = w.call("GET", "/workspaces/ws-1", &nt, None, None).await;
    let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("insufficient_scope") && challenge.contains("workspaces:read"), "{challenge}");
    assert_error(res, 403, "forbidden").await;

    // The token first: none, garbage, or a capability as one → 401, on any path, before 404.
    let before = w.pending().await.len();
    let (cap, _) = w.approved_capability(&at, "DELETE", "/workspaces/ws-7", json!({})).await;
    assert_error(w.call("DELETE", "/workspaces/ws-7", &cap, None, Some(&cap)).await, 401, "invalid_token").await;
    assert_error(w.call("DELETE", "/workspaces/ws-7", &at, None, Some(&at)).await, 403, "forbidden").await;
    let res = w.http.post(format!("{}/org/tokens", w.proxy)).json(&json!({"name": "x"})).send().await.unwrap();
    let res = assert_error(res, 401, "invalid_token").await;
    assert!(res["error_description"].is_string());
    assert_error(w.call("GET", "/nowhere", "garbage", None, None).await, 401, "invalid_token").await;
    assert_error(w.call("GET", "/nowhere", &at, None, None).await, 404, "not_found").await;
    // A malformed gated request is 400 and creates nothing; the broker's refusals reach the caller.
    assert_error(
        w.call("PUT", "/workspaces/ws-1/secrets", &at, Some(json!({"value": "x"})), None).await,
        400,
        "invalid_request",
    )
    .await;
    let ws = w.broker.create_client_with("org-1", CallerKind::Workspace, "rt", Some("ws-1"), &[], &[]).await;
    let wt = w.broker.access_token(&ws).await;
    let res = w.call("PUT", "/workspaces/ws-1/secrets", &wt, Some(json!({"key": "K", "value": "v"})), None).await;
    assert_error(res, 403, "self_target_forbidden").await;
    assert_eq!(w.pending().await.len(), before);
    assert_eq!(w.seen.effects().len(), cases.len());

    // Protected-resource metadata names the broker.
    let m: Value = w
        .http
        .get(format!("{}/.well-known/oauth-protected-resource", w.proxy))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["authorization_servers"], json!([w.broker.base]));
    assert_eq!(m["resource"], w.proxy);
    assert_eq!(m["scopes_supported"], json!(["approvals:create", "workspaces:read", "workspaces:write"]));
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream() {
    let w = world_with(Duration::ZERO, "pass_unlisted = true").await;
    let at = w.broker.access_token(&w.agent).await;
    let forge = |req: reqwest::RequestBuilder| {
        req.bearer_auth(&at)
            .header("Tessera-Subject", "cli_operator")
            .header("tessera-tenant", "org-2")
            .header("TESSERA-CALLER-KIND", "operator")
            .header("Tessera-Approval-Id", "apr_forged")
            .header("Tessera-Gate-Bypass", "forged")
            .header("Connection", "close, x-secret-hop")
            .header("x-secret-hop", "1")
    };
    for path in ["/workspaces/ws-1", "/anything/at/all?x=1"] {
        let res = forge(w.http.get(format!("{}{path}", w.proxy))).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = w.seen.last_headers();
        assert_eq!(h.get_all("tessera-subject").iter().count(), 1);
        assert_eq!(h["tessera-subject"], w.agent.id.as_str());
        assert_eq!(h["tessera-tenant"], "org-1");
        assert_eq!(h["tessera-caller-kind"], "agent");
        for gone in ["tessera-approval-id", "authorization", "tessera-gate-bypass", "x-secret-hop"] {
            assert!(h.get(gone).is_none(), "{gone} reached the upstream on {path}");
        }
    }
    // On a gated route the approval id is the redeemed capability's, not the caller's.
    let (cap, id) = w.approved_capability(&at, "DELETE", "/workspaces/ws-9", json!({})).await;
    let res = forge(w.http.delete(format!("{}/workspaces/ws-9", w.proxy)))
        .json(&json!({}))
        .header("Tessera-Capability", &cap)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = w.seen.last_headers();
    assert_eq!(h["tessera-approval-id"], id.as_str());
    assert_eq!(h["tessera-tenant"], "org-1");
    assert!(h.get("tessera-capability").is_none());
    // Unlisted paths still need the token.
    assert_error(w.call("GET", "/anything/else", "nope", None, None).await, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_path_has_one_reading_so_no_spelling_skips_the_gate() {
    let w = world_with(Duration::ZERO, "pass_unlisted = true").await;
    let at = w.broker.access_token(&w.agent).await;
    // An encoded spelling or a trailing slash of a gated route is the gated route.
    for path in ["/work%73paces/ws-1", "/workspaces/ws-1/"] {
        assert_eq!(w.call("DELETE", path, &at, Some(json!({})), None).await.status(), 202, "{path}");
    }
    // Spellings an upstream might read as a gated route are refused outright.
    for path in ["/workspaces//ws-1", "/workspaces/ws-1%2fsecrets"] {
        let res = w.call("DELETE", path, &at, Some(json!({})), None).await;
        assert_error(res, 400, "invalid_request").await;
    }
    // Dot segments, sent as written (an HTTP client library would resolve them first).
    for path in ["/x/../workspaces/ws-1", "/x/%2e%2e/workspaces/ws-1"] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(w.proxy.trim_start_matches("http://")).await.unwrap();
        let req =
            format!("DELETE {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {at}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
        assert!(out.contains("invalid_request"), "{out}");
    }
    assert!(w.seen.effects().is_empty());
}

#[tokio::test]
async fn bodies_stream_and_an_oversized_gated_body_is_refused_before_anything_runs() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    // A non-gated body of 4 MiB streams through unread.
    let big = vec![b'a'; 4 << 20];
    let res = w.http.post(format!("{}/upload", w.proxy)).bearer_auth(&at).body(big).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["received"], 4 << 20);
    // A gated body over the bound: 413 in the pinned shape, no approval, no effect.
    let value = "v".repeat(100 * 1024);
    let res = w.call("PUT", "/workspaces/ws-1/secrets", &at, Some(json!({"key": "K", "value": value})), None).await;
    assert_error(res, 413, "invalid_request").await;
    assert!(w.pending().await.is_empty());
    assert!(w.seen.effects().is_empty());
    // A gated body is forwarded exactly as read.
    let body = json!({"key": "K", "value": "é-secret"});
    let (cap, _) = w.approved_capability(&at, "PUT", "/workspaces/ws-1/secrets", body.clone()).await;
    let res = w.call("PUT", "/workspaces/ws-1/secrets", &at, Some(body), Some(&cap)).await;
    assert_eq!(res.json::<Value>().await.unwrap()["value_length"], "é-secret".len());
}

#[tokio::test]
async fn a_slow_upstream_is_a_502_and_nothing_runs_twice() {
    let w = world_with(Duration::from_secs(3), "upstream_timeout_secs = 1").await;
    let at = w.broker.access_token(&w.agent).await;
    let (cap, _) = w.approved_capability(&at, "DELETE", "/workspaces/ws-1", json!({})).await;
    let started = std::time::Instant::now();
    let res = w.call("DELETE", "/workspaces/ws-1", &at, Some(json!({})), Some(&cap)).await;
    assert_error(res, 502, "bad_gateway").await;
    assert!(started.elapsed() < Duration::from_millis(2500));
    // The retry cannot run it again: the capability was spent on the one forwarded request.
    let res = w.call("DELETE", "/workspaces/ws-1", &at, Some(json!({})), Some(&cap)).await;
    assert_error(res, 409, "conflict").await;
    assert_eq!(w.seen.effects().len(), 1);
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_502_and_nothing_runs() {
    let broker = spawn_gated_app().await;
    // A port with nothing listening on it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let proxy = spawn_proxy(&broker, &format!("http://{addr}"), "").await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "a").await;
    let at = broker.access_token(&agent).await;
    let http = reqwest::Client::new();
    let res = http.get(format!("{proxy}/workspaces/ws-1")).bearer_auth(&at).send().await.unwrap();
    let body = assert_error(res, 502, "bad_gateway").await;
    assert!(!body.to_string().contains(&addr.to_string()), "no internals in the body");
    // Still the token first, and the 401 says where the metadata is (RFC 9728 §5.1).
    let res = http.get(format!("{proxy}/workspaces/ws-1")).send().await.unwrap();
    let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(&format!("resource_metadata=\"{proxy}/.well-known/oauth-protected-resource\"")),
        "{challenge}"
    );
    assert_error(res, 401, "invalid_token").await;
}

async fn gate_cli(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["gate", "--config"]).arg(&path).env_remove("TESSERA_CONFIG").kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_configuration_error_exits_1_naming_it() {
    let base = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nbroker = \"http://127.0.0.1:8700\"\n";
    for (extra, needle) in [
        ("timeout = 3\n", "timeout"),
        ("[[route]]\nmethod = \"PUT\"\npath = \"/w/{id}\"\naction = \"nuke\"\nresource = \"w/{id}\"\n", "nuke"),
        ("[[route]]\nmethod = \"PUT\"\npath = \"/w/{id}\"\naction = \"secret_write\"\nresource = \"w/{ws}\"\n", "{ws}"),
    ] {
        let out = gate_cli(&format!("{base}{extra}")).await;
        assert_eq!(out.status.code(), Some(1), "{extra}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(needle), "{err}");
    }
}

/// Review round three, item 11. A capability names action, resource and the digest of the
/// body, never the route (the digest is pinned as the body's, and every verifier computes it
/// so). What keeps it on its route: each route of the reference core's table has its own action
/// or resource, so one for `DELETE /workspaces/ws-1` runs nowhere else on that resource; and a
/// file giving two routes one action and resources that could coincide never starts.
#[tokio::test]
async fn a_capability_runs_only_on_the_route_it_was_approved_for() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let (cap, _) = w.approved_capability(&at, "DELETE", "/workspaces/ws-1", json!({})).await;
    for (method, path) in [
        ("POST", "/workspaces/ws-1/deprovision"),
        ("POST", "/admin/workspaces/ws-1/tokens"),
        ("PUT", "/workspaces/ws-1/secrets"),
    ] {
        let body = if method == "PUT" { json!({"key": "K", "value": "v"}) } else { json!({}) };
        let res = w.call(method, path, &at, Some(body), Some(&cap)).await;
        assert_error(res, 403, "forbidden").await;
    }
    // An overriding header names no other method either: it is dropped, and the route is DELETE.
    let res = w
        .http
        .post(format!("{}/workspaces/ws-1/deprovision", w.proxy))
        .bearer_auth(&at)
        .header("X-HTTP-Method-Override", "DELETE")
        .header("Tessera-Capability", &cap)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(res, 403, "forbidden").await;
    assert!(w.seen.effects().is_empty(), "nothing ran on another route");
    assert_eq!(w.call("DELETE", "/workspaces/ws-1", &at, Some(json!({})), Some(&cap)).await.status(), 200);
    assert_eq!(w.seen.effects(), vec![json!({"action": "workspace_delete", "resource": "workspaces/ws-1"})]);

    // Two routes of one action whose resources could coincide: exit 1, naming both.
    let base = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nbroker = \"http://127.0.0.1:8700\"\n";
    let route = |method: &str, path: &str| {
        format!(
            "[[route]]\nmethod = \"{method}\"\npath = \"{path}\"\naction = \"workspace_delete\"\nresource = \"workspaces/{{id}}\"\n"
        )
    };
    let text = format!("{base}{}{}", route("DELETE", "/workspaces/{id}"), route("POST", "/workspaces/{id}/archive"));
    let out = gate_cli(&text).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("route 2 (POST /workspaces/{id}/archive)") && err.contains("route 1 (DELETE /workspaces/{id})"),
        "{err}"
    );
}

/// A DPoP request through the proxy: the proof names the proxy's URL.
async fn dpop_call(
    key: &DpopKey,
    token: &str,
    method: reqwest::Method,
    url: &str,
    now: i64,
    cap: Option<&str>,
) -> reqwest::Response {
    let proof = key.proof(method.as_str(), url, Some(token), None, now).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("Authorization", format!("DPoP {token}"))
        .header("DPoP", proof)
        .header("content-type", "application/json")
        .body("{}");
    if let Some(c) = cap {
        req = req.header("Tessera-Capability", c);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_bound_caller_goes_through_the_proxy_with_its_key_only() {
    let broker = spawn_gated_app().await;
    let (up, seen) = upstream::spawn(Duration::ZERO).await;
    let svc = broker.create_client("org-1", CallerKind::Service, "gate").await;
    let proxy = spawn_proxy_as(&broker, &up, "", Some(&svc)).await;
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    let key = DpopKey::generate_ed25519().unwrap();
    let proof = key.proof("POST", &broker.url("/oauth/token"), None, None, broker.state.now()).unwrap();
    let res = broker
        .http
        .post(broker.url("/oauth/token"))
        .basic_auth(&agent.id, Some(&agent.secret))
        .header("DPoP", proof)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let token = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let url = format!("{proxy}/workspaces/ws-3");

    // Presented as a bearer token, the bound token is refused with the DPoP challenge.
    let res = reqwest::Client::new().get(&url).bearer_auth(&token).send().await.unwrap();
    assert!(res.headers()["www-authenticate"].to_str().unwrap().starts_with("DPoP"));
    assert_error(res, 401, "invalid_token").await;
    // With its proof: a read passes, and the proof never reaches the upstream.
    let now = broker.state.now();
    assert_eq!(dpop_call(&key, &token, reqwest::Method::GET, &url, now, None).await.status(), 200);
    assert!(seen.last_headers().get("dpop").is_none());

    // The gated flow: the approval is the agent's though the proxy's service client created it.
    let res = dpop_call(&key, &token, reqwest::Method::DELETE, &url, now, None).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let ot = broker.access_token(&op).await;
    assert_eq!(broker.decide(&ot, &id, "approve").await.status(), 200);
    let path = format!("/v1/approvals/{id}");
    let proof = key.proof("GET", &broker.url(&path), Some(&token), None, now).unwrap();
    let v: Value = broker
        .http
        .get(broker.url(&path))
        .header("Authorization", format!("DPoP {token}"))
        .header("DPoP", proof)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["requester"], agent.id);
    let cap = v["capability"].as_str().unwrap().to_owned();
    // Another key cannot use it; the key's holder runs it once.
    let thief = DpopKey::generate_ed25519().unwrap();
    let res = dpop_call(&thief, &token, reqwest::Method::DELETE, &url, now, Some(&cap)).await;
    assert_error(res, 401, "invalid_token").await;
    assert_eq!(dpop_call(&key, &token, reqwest::Method::DELETE, &url, now, Some(&cap)).await.status(), 200);
    assert_error(dpop_call(&key, &token, reqwest::Method::DELETE, &url, now, Some(&cap)).await, 409, "conflict").await;
    assert_eq!(seen.effects(), vec![json!({"action": "workspace_delete", "resource": "workspaces/ws-3"})]);
    assert_eq!(seen.last_headers()["tessera-approval-id"], id.as_str());
}

/// The proxy's own listener has the broker's connection limits: a connection that sends
/// nothing is closed at the first-request deadline, and one beyond the per-address cap is
/// closed on arrival, while a real request is served.
#[tokio::test]
async fn the_proxy_closes_a_silent_connection_at_its_first_request_deadline() {
    use tokio::io::AsyncReadExt;
    let broker = spawn_gated_app().await;
    let (up, _seen) = upstream::spawn(Duration::ZERO).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nupstream = \"{up}\"\nbroker = \"{}\"\nheader_read_timeout_secs = 1\n\
         max_connections_per_address = 3\n{CORE_ROUTES}",
        broker.base
    );
    std::fs::write(&path, config).unwrap();
    let mut proxy = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["gate", "--config"])
        .arg(&path)
        .env_remove("TESSERA_CONFIG")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up_now = false;
    for _ in 0..100 {
        if http
            .get(format!("{base}/.well-known/oauth-protected-resource"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up_now = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up_now, "the proxy started");

    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // A fourth from the same address is closed on arrival.
    let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await.expect("closed on arrival");
    assert!(matches!(n, Ok(0) | Err(_)));
    // The silent ones are closed at the deadline (1 s), not left open.
    for s in &mut silent {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed by the proxy");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the deadline");
    // And the proxy serves again.
    let res = http.get(format!("{base}/.well-known/oauth-protected-resource")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    proxy.kill().await.unwrap();
}

/// Design §18: on a gated route, what is forwarded is only what the digest covers. Each way a
/// request could carry more than the operator saw is refused, before any approval exists, and
/// the upstream sees nothing.
#[tokio::test]
async fn a_gated_request_carries_nothing_the_approval_did_not_cover() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let url = format!("{}/workspaces/ws-1/secrets", w.proxy);
    let good = json!({"key": "OPENAI_KEY", "value": "sk-1"});

    // A query string: upstreams that merge it into the parameters would read another key.
    let res = w.http.put(format!("{url}?key=EVIL&overwrite=all")).bearer_auth(&at).json(&good).send().await.unwrap();
    let body = assert_error(res, 400, "invalid_request").await;
    assert!(body["error_description"].as_str().unwrap().contains("query"), "{body}");
    // The same body as a form, or with no Content-Type at all.
    for ct in [Some("application/x-www-form-urlencoded"), Some("text/plain"), None] {
        let mut req = w.http.put(&url).bearer_auth(&at).body(good.to_string());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_error(req.send().await.unwrap(), 400, "invalid_request").await;
    }
    // Keys that collide once case-folded (Go's encoding/json matches them, last wins), at the
    // top and deeper, with the KELVIN SIGN too.
    for collide in [
        r#"{"key":"PUBLIC_NOTE","value":"v","KEY":"OPENAI_KEY"}"#,
        "{\"key\":\"PUBLIC_NOTE\",\"value\":\"v\",\"\u{212a}ey\":\"OPENAI_KEY\"}",
        r#"{"key":"K","value":"v","meta":{"a":1,"A":2}}"#,
    ] {
        let res = w
            .http
            .put(&url)
            .bearer_auth(&at)
            .header("content-type", "application/json")
            .body(collide.to_owned())
            .send()
            .await
            .unwrap();
        let body = assert_error(res, 400, "invalid_request").await;
        assert!(body["error_description"].as_str().unwrap().contains("read as one"), "{collide}: {body}");
    }
    assert!(w.pending().await.is_empty(), "no approval was created for any of them");
    assert!(w.seen.effects().is_empty());

    // The plain request still asks for approval, and runs once approved.
    let (cap, _) = w.approved_capability(&at, "PUT", "/workspaces/ws-1/secrets", good.clone()).await;
    // The capability does not carry a query along either.
    let res = w
        .http
        .put(format!("{url}?key=EVIL"))
        .bearer_auth(&at)
        .header("Tessera-Capability", &cap)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    assert!(w.seen.effects().is_empty());
    assert_eq!(w.call("PUT", "/workspaces/ws-1/secrets", &at, Some(good), Some(&cap)).await.status(), 200);
    assert_eq!(
        w.seen.effects(),
        vec![json!({"action": "secret_write", "resource": "workspaces/ws-1/secrets/OPENAI_KEY"})]
    );
}

/// Review round three, item 4, at the proxy: a decimal that shares a double with another
/// (`…992.0`, `…993.0`), or is not exactly the double it becomes, is 400 and never forwarded.
#[tokio::test]
async fn the_proxy_refuses_decimals_that_share_a_double() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let url = format!("{}/workspaces/ws-1/secrets", w.proxy);
    for n in ["9007199254740992.0", "9007199254740993.0", "2e53", "0.30000000000000001"] {
        let body = format!(r#"{{"key": "OPENAI_KEY", "value": "sk-1", "ttl": {n}}}"#);
        let res = w
            .http
            .put(&url)
            .bearer_auth(&at)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let err = assert_error(res, 400, "invalid_request").await;
        assert!(err["error_description"].as_str().unwrap().contains(n), "{n}: {err}");
    }
    assert!(w.pending().await.is_empty(), "no approval was created for any of them");
    assert!(w.seen.effects().is_empty());
}

/// Design §18: a gated body dripped byte by byte does not hold its connection past
/// `request_timeout_secs`; it is answered 408 and nothing is forwarded.
#[tokio::test]
async fn a_dripped_gated_body_is_cut_off_at_the_request_time_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world_with(Duration::ZERO, "request_timeout_secs = 1").await;
    let at = w.broker.access_token(&w.agent).await;
    let addr = w.proxy.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /workspaces/ws-1/secrets HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {at}\r\n\
         content-type: application/json\r\ncontent-length: 400\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // Drip one byte every 100 ms, for at most 5 s; the proxy must answer well before.
    for _ in 0..50 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?} after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(w.seen.effects().is_empty());
    assert!(w.pending().await.is_empty());
}

/// Design §18: identity headers spelled with `_` (which CGI and WSGI servers read as the real
/// ones, joined with them) and method overrides never reach the upstream, on any route.
#[tokio::test]
async fn lookalike_identity_headers_and_method_overrides_are_dropped() {
    let w = world().await;
    let at = w.broker.access_token(&w.agent).await;
    let res = w
        .http
        .get(format!("{}/workspaces/ws-1", w.proxy))
        .bearer_auth(&at)
        .header("Tessera_Subject", "tc_OPERATOR")
        .header("Tessera_Caller_Kind", "operator")
        .header("tessera_tenant", "org-2")
        .header("Tessera_Approval_Id", "ap_x")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-HTTP-Method", "DELETE")
        .header("X_Method_Override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = w.seen.last_headers();
    for (name, _) in &h {
        let dashed = name.as_str().replace('_', "-");
        assert!(
            !dashed.starts_with("tessera-")
                || ["tessera-subject", "tessera-tenant", "tessera-caller-kind"].contains(&dashed.as_str())
                    && !name.as_str().contains('_'),
            "{name} reached the upstream"
        );
        assert!(!dashed.contains("method"), "{name} reached the upstream");
    }
    assert_eq!(h.get_all("tessera-caller-kind").iter().count(), 1);
    assert_eq!(h["tessera-caller-kind"], "agent");
    assert_eq!(h["tessera-subject"], w.agent.id.as_str());
    assert_eq!(h["tessera-tenant"], "org-1");
    assert!(h.get("tessera-approval-id").is_none());
}
