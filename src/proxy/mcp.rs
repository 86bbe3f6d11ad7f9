//! MCP endpoints behind the gate proxy (design §18): one streamable-HTTP endpoint per
//! `[[mcp]]`, gated by JSON-RPC method and tool name.
//!
//! Every request needs a valid access token with the endpoint's `scope` (the gate's checks, as
//! on HTTP routes). A `POST` is then read whole (JSON only, bounded, within the body deadline)
//! and must be one JSON-RPC message with no duplicated member at any depth, whose `Mcp-Method`
//! and `Mcp-Name` headers, when sent, agree with it; a batch is refused. Only `tools/call` is
//! gated: anything else (`initialize`, `server/discover`, notifications, `tools/list`,
//! answers to the server's requests) is forwarded as it came and never creates an approval.
//!
//! A `tools/call` names a tool that is listed (`[[mcp.tool]]`), or is answered with JSON-RPC
//! error `-32602` and never forwarded (unless `unlisted_tools = "allow"`). A gated tool's call
//! runs only on a capability bound to `{"name", "arguments"-presented}` — the JSON-RPC `id` is
//! not part of it, so a retry has the same digest. The proxy does the approval round itself:
//! the first call creates the approval and is answered with an MCP tool result saying it is
//! pending; the same call while pending gets the same answer and approval; once approved, the
//! same call fetches the capability, redeems it and is forwarded exactly once.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::config::{Gated, Mcp, Piece};
use super::{Proxy, error, forward};
use crate::token::strict_json;
use crate::verify::gate::{Created, Identity, Redeemed};
use crate::verify::{AccessClaims, CapabilityBinding, dpop, params_digest, presented};

/// The header a client may send naming the JSON-RPC method (it must match the body).
const MCP_METHOD: &str = "mcp-method";
/// The header a client may send naming the tool, prompt or resource (it must match the body).
const MCP_NAME: &str = "mcp-name";
/// JSON-RPC "invalid params".
const INVALID_PARAMS: i64 = -32602;
/// Most calls remembered as pending at once; beyond it, expired ones are dropped first.
const MAX_PENDING: usize = 100_000;

/// One pending gated call: same caller, same tool, same presented arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CallKey {
    tenant: String,
    sub: String,
    tool: String,
    digest: String,
}

#[derive(Debug, Clone)]
struct PendingCall {
    approval_id: String,
    expires_at: String,
    expires_unix: i64,
}

/// The approvals the proxy is waiting on, per call.
#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<HashMap<CallKey, PendingCall>>);

impl Pending {
    fn get(&self, k: &CallKey) -> Option<PendingCall> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(k).cloned()
    }
    fn forget(&self, k: &CallKey) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(k);
    }
    fn remember(&self, k: CallKey, call: PendingCall, now: i64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PENDING {
            map.retain(|_, c| c.expires_unix > now);
        }
        if map.len() < MAX_PENDING {
            map.insert(k, call);
        }
    }
}

fn bad(description: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", &description.into())
}

fn rpc_result(id: &Value, result: Value) -> Response {
    rpc(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

fn rpc_error(id: &Value, code: i64, message: String) -> Response {
    rpc(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }))
}

fn rpc(body: Value) -> Response {
    let mut res = (StatusCode::OK, axum::Json(body)).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The tool result for a call waiting on (or refused by) operators: an error result the model
/// can read, and the approval in `structuredContent`.
fn approval_result(id: &Value, tool: &str, status: &str, approval_id: &str, expires_at: &str) -> Response {
    let text = match status {
        "pending" => format!(
            "{tool} needs an operator's approval: approval {approval_id} is pending until {expires_at}. Once an \
             operator approves it, call {tool} again with the same arguments and it runs, once."
        ),
        _ => format!(
            "{tool} was not approved: approval {approval_id} was denied by an operator. Nothing ran; calling it \
             again asks for a new approval."
        ),
    };
    rpc_result(
        id,
        json!({
            "isError": true,
            "content": [{ "type": "text", "text": text }],
            "structuredContent": { "approval_id": approval_id, "status": status, "expires_at": expires_at },
        }),
    )
}

#[allow(clippy::result_large_err)] // a refusal is the answer itself
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Response> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| bad(format!("{name} must be printable text"))),
    }
}

/// Handles one request to the endpoint `ep`.
pub(super) async fn handle(p: &Proxy, ep: usize, req: Request<Body>) -> Response {
    let endpoint = &p.config.mcp[ep];
    let Some(layer) = p.mcp_layers.get(ep) else { return bad("no such endpoint") };
    // The access token and the endpoint's scope first: 401 or 403 before anything else.
    let req = match layer.check(req).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    if req.method() != Method::POST {
        // GET (the server's event stream) and DELETE (ending a session) carry no call.
        return forward(p, req).await;
    }
    if req.uri().query().is_some() {
        return bad("an MCP request carries no query string: only its JSON-RPC body is read");
    }
    let (parts, body) = req.into_parts();
    let bytes = match p.gate.read_body(&parts.headers, body).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    match call(p, endpoint, &parts, &bytes).await {
        Ok(Pass::Forward(redeemed)) => {
            let mut req = Request::from_parts(parts, Body::from(bytes));
            if let Some(cap) = redeemed {
                req.extensions_mut().insert(Redeemed(*cap));
            }
            forward(p, req).await
        }
        Ok(Pass::Answer(res)) | Err(res) => res,
    }
}

enum Pass {
    /// Forward the request (with the capability redeemed for it, on a gated call).
    Forward(Option<Box<crate::verify::CapabilityClaims>>),
    /// Answer it here.
    Answer(Response),
}

async fn call(p: &Proxy, endpoint: &Mcp, parts: &axum::http::request::Parts, bytes: &[u8]) -> Result<Pass, Response> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(bad("a JSON-RPC batch is refused: send one message per request"));
    }
    if bytes.is_empty() {
        return Err(bad("an MCP request's body is one JSON-RPC message"));
    }
    crate::token::jcs::check_numbers(bytes).map_err(|e| bad(format!("the body cannot be read safely: {e}")))?;
    let msg = Value::Object(
        strict_json::parse_object(bytes).map_err(|e| bad(format!("the body is not one JSON-RPC message: {e}")))?,
    );
    let method = match msg.get("method") {
        None => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(_) => return Err(bad("the JSON-RPC method must be a string")),
    };
    let params = msg.get("params");
    let named = params.and_then(|p| p.get("name").or_else(|| p.get("uri"))).and_then(Value::as_str);
    if let Some(h) = header_text(&parts.headers, MCP_METHOD)?
        && Some(h) != method
    {
        return Err(bad("the Mcp-Method header does not match the body's method"));
    }
    if let Some(h) = header_text(&parts.headers, MCP_NAME)?
        && Some(h) != named
    {
        return Err(bad("the Mcp-Name header does not match the name the body calls"));
    }
    if method != Some("tools/call") {
        return Ok(Pass::Forward(None));
    }
    let id = match msg.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => return Err(bad("tools/call is a request: it needs a string or number id")),
    };
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Ok(Pass::Answer(rpc_error(&id, INVALID_PARAMS, "tools/call needs params.name, a string".into())));
    };
    let arguments = match params.and_then(|p| p.get("arguments")) {
        None => json!({}),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => {
            return Ok(Pass::Answer(rpc_error(&id, INVALID_PARAMS, "params.arguments must be an object".into())));
        }
    };
    let short: String = name.chars().take(128).collect();
    let Some(tool) = endpoint.tool(name) else {
        if endpoint.allow_unlisted {
            return Ok(Pass::Forward(None));
        }
        return Ok(Pass::Answer(rpc_error(&id, INVALID_PARAMS, format!("unknown tool: {short}"))));
    };
    let Some(Identity(caller)) = parts.extensions.get::<Identity>() else {
        return Err(error(StatusCode::UNAUTHORIZED, "invalid_token", "an access token is required"));
    };
    if let Some(needed) = &tool.scope
        && !caller.has_scope(needed)
    {
        let mut res = error(StatusCode::FORBIDDEN, "forbidden", &format!("the token lacks {needed}"));
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\"")) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return Err(res);
    }
    let Some(gated) = &tool.gated else { return Ok(Pass::Forward(None)) };
    // What runs is what was approved: no member an upstream could read as another.
    if let Some((a, b)) = strict_json::case_collision(&msg) {
        let cut = |s: &str| s.chars().take(32).collect::<String>();
        return Err(bad(format!(
            "the body has members {:?} and {:?}, which some parsers read as one",
            cut(&a),
            cut(&b)
        )));
    }
    gated_call(p, parts, caller, &id, &short, gated, &arguments).await
}

fn resource_of(gated: &Gated, arguments: &Value, caller: &AccessClaims) -> Option<String> {
    let mut out = String::new();
    for piece in &gated.resource {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Arg(a) => out.push_str(arguments.get(a)?.as_str()?),
            Piece::Tenant => out.push_str(&caller.tenant),
            Piece::Path(_) | Piece::Body(_) => return None,
        }
    }
    Some(out)
}

async fn gated_call(
    p: &Proxy,
    parts: &axum::http::request::Parts,
    caller: &AccessClaims,
    id: &Value,
    name: &str,
    gated: &Gated,
    arguments: &Value,
) -> Result<Pass, Response> {
    let Some(resource) = resource_of(gated, arguments, caller) else {
        let wanted: Vec<String> = gated
            .resource
            .iter()
            .filter_map(|piece| match piece {
                Piece::Arg(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        return Ok(Pass::Answer(rpc_error(
            id,
            INVALID_PARAMS,
            format!("{name} needs the string arguments {}", wanted.join(", ")),
        )));
    };
    let fields: Vec<&str> = gated.secret_fields.iter().map(String::as_str).collect();
    let shown_args =
        presented(arguments, &fields).map_err(|e| bad(format!("the arguments cannot be presented: {e}")))?;
    let shown = json!({ "name": name, "arguments": shown_args });
    let digest = params_digest(&shown).to_string();
    let now = p.gate.now();
    let Some((_, token)) = dpop::authorization(&parts.headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "invalid_token", "an access token is required"));
    };
    let acting = p.gate.acting(caller.cnf.is_some(), token, now).await?;
    let binding = CapabilityBinding { action: &gated.action, resource: &resource, params_digest: &digest };

    // A caller holding a capability may still present it, as on HTTP routes.
    if let Some(cap) = parts.headers.get(crate::verify::gate::CAPABILITY_HEADER) {
        let cap =
            cap.to_str().map_err(|_| error(StatusCode::FORBIDDEN, "forbidden", "the capability does not verify"))?;
        let claims = p.gate.spend_capability(&acting, caller, cap.trim(), binding, now).await?;
        return Ok(Pass::Forward(Some(Box::new(claims))));
    }

    let key = CallKey {
        tenant: caller.tenant.clone(),
        sub: caller.sub.clone(),
        tool: name.to_owned(),
        digest: digest.clone(),
    };
    if let Some(waiting) = p.pending.get(&key) {
        let approval = p.gate.read_approval(&acting, &waiting.approval_id).await;
        let approval = match approval {
            Ok(a) => a,
            // Gone from the broker's view (another tenant's id never gets here): ask anew.
            Err(res) if res.status() == StatusCode::NOT_FOUND => {
                p.pending.forget(&key);
                Value::Null
            }
            Err(res) => return Err(res),
        };
        match approval["status"].as_str() {
            Some("pending") => {
                return Ok(Pass::Answer(approval_result(
                    id,
                    name,
                    "pending",
                    &waiting.approval_id,
                    &waiting.expires_at,
                )));
            }
            Some("approved") => {
                p.pending.forget(&key);
                let Some(cap) = approval["capability"].as_str() else {
                    return Err(error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "the broker gave no capability for this call",
                    ));
                };
                let claims = p.gate.spend_capability(&acting, caller, cap, binding, now).await?;
                return Ok(Pass::Forward(Some(Box::new(claims))));
            }
            Some("denied") => {
                p.pending.forget(&key);
                return Ok(Pass::Answer(approval_result(
                    id,
                    name,
                    "denied",
                    &waiting.approval_id,
                    &waiting.expires_at,
                )));
            }
            // Expired, withdrawn, redeemed, or gone: the same call asks anew.
            _ => p.pending.forget(&key),
        }
    }

    let body = json!({
        "action": gated.action,
        "resource": resource,
        "params": shown,
        "params_digest": digest,
        "reason": format!("MCP tool call {name}"),
    });
    match p.gate.create_approval(&acting, body, parts.headers.get(crate::verify::gate::BYPASS_HEADER)).await? {
        Created::Approved { capability } => {
            let claims = p.gate.spend_capability(&acting, caller, &capability, binding, now).await?;
            Ok(Pass::Forward(Some(Box::new(claims))))
        }
        Created::Pending { approval_id, expires_at } => {
            let expires_unix = time::OffsetDateTime::parse(&expires_at, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .unwrap_or(now + 3600);
            let answer = approval_result(id, name, "pending", &approval_id, &expires_at);
            p.pending.remember(key, PendingCall { approval_id, expires_at, expires_unix }, now);
            Ok(Pass::Answer(answer))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_table_forgets_expired_calls_when_full() {
        let t = Pending::default();
        let key = |i: usize| CallKey { tenant: "t".into(), sub: "s".into(), tool: "x".into(), digest: i.to_string() };
        let call = |exp| PendingCall { approval_id: "a".into(), expires_at: String::new(), expires_unix: exp };
        for i in 0..MAX_PENDING {
            t.remember(key(i), call(10), 0);
        }
        t.remember(key(MAX_PENDING), call(100), 5);
        assert!(t.get(&key(MAX_PENDING)).is_none(), "full of live calls: not remembered");
        t.remember(key(MAX_PENDING), call(100), 50);
        assert!(t.get(&key(MAX_PENDING)).is_some(), "expired ones were dropped");
        assert!(t.get(&key(0)).is_none());
    }
}
