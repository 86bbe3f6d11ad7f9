//! Design §18: an MCP server behind `tessera gate`. Every tool call that runs is one an
//! operator approved (for a gated tool) or one the configuration lets through; the approval
//! round is the proxy's, so the MCP client never handles a capability.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::policy::{KindFile, Policy, PolicyFile};
use tessera::proxy::GateConfig;
use tessera::verify::Verifier;
use tessera::verify::gate::Gate;
use tessera::verify::revocations::FeedCredentials;

use crate::helpers::*;

/// One tool call the upstream ran: its params, and the approval header it saw.
type Call = (Value, Option<String>);

/// A streamable-HTTP MCP server stand-in with no Tessera code: it answers the JSON-RPC methods
/// an MCP client uses and records every tool call it executes, with the headers it saw.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<Vec<Call>>>,
    methods: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn ran(&self, tool: &str) -> usize {
        self.calls().iter().filter(|(c, _)| c["name"] == tool).count()
    }

    async fn spawn(&self) -> String {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/mcp",
            axum::routing::post(move |h: HeaderMap, axum::Json(m): axum::Json<Value>| {
                let me = me.clone();
                async move {
                    let method = m["method"].as_str().unwrap_or_default().to_owned();
                    me.methods.lock().unwrap().push(method.clone());
                    let result = match method.as_str() {
                        "initialize" => json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                                               "serverInfo": {"name": "stand-in", "version": "1"}}),
                        "tools/list" => json!({"tools": [
                            {"name": "read_workspace", "inputSchema": {"type": "object"}},
                            {"name": "write_secret", "inputSchema": {"type": "object"}}]}),
                        "tools/call" => {
                            let approval = h.get("tessera-approval-id").map(|v| v.to_str().unwrap().to_owned());
                            me.calls.lock().unwrap().push((m["params"].clone(), approval));
                            json!({"content": [{"type": "text", "text": format!("ran {}", m["params"]["name"])}]})
                        }
                        _ if m.get("id").is_none() => return StatusCode::ACCEPTED.into_response(),
                        _ => json!({}),
                    };
                    axum::Json(json!({"jsonrpc": "2.0", "id": m["id"], "result": result})).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

const MCP: &str = r#"
[[mcp]]
path = "/mcp"
scope = "mcp:use"

[[mcp.tool]]
name = "read_workspace"

[[mcp.tool]]
name = "write_secret"
action = "secret_write"
resource = "workspaces/{args.workspace}/secrets/{args.key}"
secret_fields = ["value"]
"#;

struct World {
    broker: TestApp,
    mcp: String,
    up: Upstream,
    http: reqwest::Client,
    agent: TestClient,
    op: TestClient,
}

/// A policy where agents may hold `mcp:use` (and have it by default).
fn mcp_policy() -> Policy {
    let agent = KindFile {
        ceiling: Some(
            ["workspaces:read", "workspaces:write", "approvals:create", "mcp:use"].map(String::from).to_vec(),
        ),
        defaults: Some(["workspaces:read", "approvals:create", "mcp:use"].map(String::from).to_vec()),
        require_dpop: None,
    };
    Policy::from_file(&PolicyFile {
        extra_scopes: Some(vec!["mcp:use".into()]),
        kinds: Some([(CallerKind::Agent, agent)].into_iter().collect()),
        ..Default::default()
    })
    .unwrap()
}

async fn world() -> World {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("http://{}", listener.local_addr().unwrap());
    let mcp = format!("{gate_url}/mcp");
    let m = mcp.clone();
    // The broker's own audience stays "core"; the MCP endpoint is one of its audiences.
    let broker = spawn_app_with(move |c| {
        c.audiences = vec!["core".into(), m];
        c.policy = mcp_policy();
    })
    .await;
    let up = Upstream::default();
    let upstream = up.spawn().await;
    let svc = broker.create_client("org-1", CallerKind::Service, "gate").await;
    let text = format!(
        "upstream = \"{upstream}\"\nbroker = \"{}\"\npublic_url = \"{gate_url}\"\naudience = \"{mcp}\"\n{MCP}",
        broker.base
    );
    let config = GateConfig::parse(&text).unwrap();
    let clock = broker.state.clock().clone();
    let verifier = Verifier::for_issuer(&broker.base, &mcp)
        .with_feed_credentials(FeedCredentials::new(svc.id.clone(), svc.secret.clone()));
    let gate = Gate::with_clock(verifier, &broker.base, move || clock.now());
    let router = tessera::proxy::app(config, &gate);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let agent = broker.create_client("org-1", CallerKind::Agent, "concierge").await;
    let op = broker.create_client("org-1", CallerKind::Operator, "alice").await;
    World { broker, mcp, up, http: reqwest::Client::new(), agent, op }
}

impl World {
    /// The agent's token for the MCP endpoint (RFC 8707 `resource`).
    async fn token(&self, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("resource", self.mcp.as_str())];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let res = self.broker.token_request(&form, Some(&self.agent)).await;
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    async fn post(&self, token: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self
            .http
            .post(&self.mcp)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn rpc(&self, token: &str, msg: Value) -> Value {
        let res = self.post(token, &msg.to_string(), &[]).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{msg}: {body}");
        body
    }

    async fn call_tool(&self, token: &str, id: i64, name: &str, args: Value) -> Value {
        self.rpc(
            token,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}}),
        )
        .await
    }

    async fn pending(&self) -> Vec<Value> {
        let t = self.broker.access_token(&self.op).await;
        let v: Value = self.broker.get_bearer("/v1/approvals?status=pending", &t).await.json().await.unwrap();
        v["approvals"].as_array().unwrap().clone()
    }

    async fn decide(&self, id: &str, decision: &str) {
        let t = self.broker.access_token(&self.op).await;
        assert_eq!(self.broker.decide(&t, id, decision).await.status(), 200);
    }
}

fn approval_of(answer: &Value) -> (String, String) {
    let r = &answer["result"];
    assert_eq!(r["isError"], true, "{answer}");
    assert_eq!(r["content"][0]["type"], "text");
    let s = &r["structuredContent"];
    (s["approval_id"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned())
}

/// The incident, over MCP: an agent holding only read scopes calls `write_secret`. It does not
/// run until an operator approves; then the same call runs exactly once.
#[tokio::test]
async fn a_gated_tool_runs_once_and_only_once_approved() {
    let w = world().await;
    let at = w.token(None).await;
    // The handshake and the listing never create approvals.
    let init = w
        .rpc(
            &at,
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
             "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "stand-in");
    let res = w.post(&at, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, &[]).await;
    assert_eq!(res.status(), 202);
    let list = w.rpc(&at, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    assert_eq!(list["result"]["tools"].as_array().unwrap().len(), 2, "passed through unchanged");
    let discover = w.post(&at, r#"{"jsonrpc":"2.0","id":2,"method":"server/discover"}"#, &[]).await;
    assert_eq!(discover.status(), 200);
    assert!(w.pending().await.is_empty());

    // An ungated tool runs.
    let r = w.call_tool(&at, 3, "read_workspace", json!({"workspace": "ws-1"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "ran \"read_workspace\"", "{r}");

    // The gated tool: pending, not run.
    let args = json!({"workspace": "ws-1", "key": "OPENAI_KEY", "value": "sk-live-1"});
    let first = w.call_tool(&at, 4, "write_secret", args.clone()).await;
    let (id, status) = approval_of(&first);
    assert_eq!(status, "pending");
    assert_eq!(first["id"], 4);
    assert_eq!(w.up.ran("write_secret"), 0);
    let pending = w.pending().await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["approval_id"], id.as_str());
    assert_eq!(pending[0]["requester"], w.agent.id.as_str(), "the approval is the agent's, not the gate's");
    assert_eq!(pending[0]["resource"], "workspaces/ws-1/secrets/OPENAI_KEY");
    assert_eq!(pending[0]["params"]["name"], "write_secret");
    assert!(!pending[0].to_string().contains("sk-live-1"), "the secret never reaches the broker");
    assert_eq!(pending[0]["params"]["arguments"]["value"]["$secret"]["length"], 9);

    // The same call again, with a new JSON-RPC id: the same approval, no new one.
    let again = w.call_tool(&at, 5, "write_secret", args.clone()).await;
    assert_eq!(approval_of(&again), (id.clone(), "pending".to_owned()));
    assert_eq!(w.pending().await.len(), 1);
    // Other arguments are another call.
    let other =
        w.call_tool(&at, 6, "write_secret", json!({"workspace": "ws-1", "key": "OPENAI_KEY", "value": "x"})).await;
    assert_ne!(approval_of(&other).0, id);
    assert_eq!(w.up.ran("write_secret"), 0);

    // Approved: the identical call runs, once, and the upstream learns which approval.
    w.decide(&id, "approve").await;
    let ran = w.call_tool(&at, 7, "write_secret", args.clone()).await;
    assert_eq!(ran["result"]["content"][0]["text"], "ran \"write_secret\"", "{ran}");
    assert_eq!(ran["id"], 7);
    let calls = w.up.calls();
    let (call, approval) = calls.iter().find(|(c, _)| c["name"] == "write_secret").unwrap();
    assert_eq!(call["arguments"], args, "the upstream gets the arguments as sent");
    assert_eq!(approval.as_deref(), Some(id.as_str()));
    // The next identical call is a new request for approval.
    let next = w.call_tool(&at, 8, "write_secret", args).await;
    let (next_id, status) = approval_of(&next);
    assert_eq!(status, "pending");
    assert_ne!(next_id, id);
    assert_eq!(w.up.ran("write_secret"), 1);
}

#[tokio::test]
async fn a_denied_call_says_so_once_and_then_asks_anew() {
    let w = world().await;
    let at = w.token(None).await;
    let args = json!({"workspace": "ws-2", "key": "K", "value": "v"});
    let (id, _) = approval_of(&w.call_tool(&at, 1, "write_secret", args.clone()).await);
    w.decide(&id, "deny").await;
    let denied = w.call_tool(&at, 2, "write_secret", args.clone()).await;
    assert_eq!(approval_of(&denied), (id.clone(), "denied".to_owned()));
    assert!(denied["result"]["content"][0]["text"].as_str().unwrap().contains("denied"));
    let (fresh, status) = approval_of(&w.call_tool(&at, 3, "write_secret", args).await);
    assert_eq!(status, "pending");
    assert_ne!(fresh, id);
    assert_eq!(w.up.ran("write_secret"), 0);
}

#[tokio::test]
async fn what_the_gate_cannot_read_one_way_is_refused_and_never_forwarded() {
    let w = world().await;
    let at = w.token(None).await;
    // An unlisted tool: a JSON-RPC error naming it.
    let r = w.call_tool(&at, 1, "delete_everything", json!({})).await;
    assert_eq!(r["error"]["code"], -32602);
    assert!(r["error"]["message"].as_str().unwrap().contains("delete_everything"));
    let call = |name: &str| {
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": name,
               "arguments": {"workspace": "ws-1", "key": "K", "value": "v"}}})
        .to_string()
    };
    for (body, headers) in [
        // A batch.
        (format!("[{}]", call("read_workspace")), vec![]),
        // A duplicated member: which name runs depends on the parser.
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"read_workspace","name":"write_secret","arguments":{}}}"#
                .to_owned(),
            vec![],
        ),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"write_secret","arguments":{"key":"a","key":"b","workspace":"w","value":"v"}}}"#
                .to_owned(),
            vec![],
        ),
        // Headers that disagree with the body.
        (call("write_secret"), vec![("Mcp-Name", "read_workspace")]),
        (call("read_workspace"), vec![("Mcp-Method", "tools/list")]),
        // A case-folded collision in a gated call.
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"write_secret","arguments":{"key":"a","KEY":"b","workspace":"w","value":"v"}}}"#
                .to_owned(),
            vec![],
        ),
    ] {
        let res = w.post(&at, &body, &headers).await;
        assert_error(res, 400, "invalid_request").await;
    }
    // Not JSON.
    let res = w
        .http
        .post(&w.mcp)
        .bearer_auth(&at)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(call("read_workspace"))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "invalid_request").await;
    // Matching headers pass.
    let res =
        w.post(&at, &call("read_workspace"), &[("Mcp-Method", "tools/call"), ("Mcp-Name", "read_workspace")]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(w.up.calls().len(), 1, "only the last one ran");
    assert!(w.pending().await.is_empty());

    // A token without the endpoint's scope.
    let narrow = w.token(Some("workspaces:read")).await;
    let res = w.post(&narrow, &call("read_workspace"), &[]).await;
    let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("insufficient_scope") && challenge.contains("mcp:use"), "{challenge}");
    assert_error(res, 403, "forbidden").await;
    // No token: 401, pointing at the endpoint's metadata.
    let res = w.http.post(&w.mcp).body(call("read_workspace")).send().await.unwrap();
    assert!(res.headers()["www-authenticate"].to_str().unwrap().contains("resource_metadata="));
    assert_error(res, 401, "invalid_token").await;
    // A token for the broker's own audience is not one for this endpoint.
    let core = w.broker.access_token(&w.agent).await;
    assert_error(w.post(&core, &call("read_workspace"), &[]).await, 401, "invalid_token").await;
    assert_eq!(w.up.calls().len(), 1);
}

#[tokio::test]
async fn the_endpoint_is_discoverable_and_the_broker_reads_its_tokens() {
    let w = world().await;
    let base = w.mcp.trim_end_matches("/mcp");
    for path in ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"] {
        let m: Value = w.http.get(format!("{base}{path}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(m["resource"], w.mcp.as_str(), "{path}");
        assert_eq!(m["authorization_servers"], json!([w.broker.base]));
        // approvals:create too: a client asking for the listed scopes can then be gated.
        assert_eq!(m["scopes_supported"], json!(["approvals:create", "mcp:use"]), "{path}");
    }
    let meta: Value =
        w.http.get(w.broker.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    let authorize = meta["authorization_endpoint"].as_str().unwrap();
    let res = w.http.get(format!("{authorize}?response_type=code&client_id=x")).send().await.unwrap();
    assert_error(res, 400, "unsupported_response_type").await;

    // The endpoint's token is not the broker's own audience at /v1 ...
    let at = w.token(None).await;
    assert_error(w.broker.get_bearer("/v1/approvals/ap_x", &at).await, 401, "invalid_token").await;
    // ... but introspection and revocation know it (design §18).
    let svc = w.broker.create_client("org-1", CallerKind::Service, "reader").await;
    let res = w
        .broker
        .http
        .post(w.broker.url("/oauth/introspect"))
        .basic_auth(&svc.id, Some(&svc.secret))
        .form(&[("token", at.as_str())])
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["aud"], w.mcp.as_str());
    let res = w
        .broker
        .http
        .post(w.broker.url("/oauth/revoke"))
        .basic_auth(&w.agent.id, Some(&w.agent.secret))
        .form(&[("token", at.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = w
        .broker
        .http
        .post(w.broker.url("/oauth/introspect"))
        .basic_auth(&svc.id, Some(&svc.secret))
        .form(&[("token", at.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["active"], false);
}
