//! The gate as a reverse proxy (design §17): `tessera gate --config FILE` puts the verifier
//! library's gate in front of an upstream that knows nothing of Tessera.
//!
//! Each request is matched against the configured routes and run through the very
//! [`GateLayer::check`] that guards an axum route — access token first, scope, approval
//! creation as the caller, capability verification, binding and single redemption — with the
//! route's path parameters supplied as [`PathParams`]. A request that passes is forwarded:
//!
//! - a non-gated route's body streams through unread; a gated route's body has been read once
//!   (bounded, for the digest) and is forwarded exactly as read;
//! - `Authorization`, `Tessera-Capability`, `DPoP`, `Tessera-Gate-Bypass` and hop-by-hop headers
//!   are removed, any caller-sent `Tessera-Subject`, `Tessera-Tenant`, `Tessera-Caller-Kind` and
//!   `Tessera-Approval-Id` dropped, and the proxy's own values set;
//! - the upstream's answer streams back unchanged (hop-by-hop headers aside).
//!
//! The upstream is reached over HTTP/1.1 keep-alive, on TCP or a Unix socket
//! (`upstream_socket`), through a pool of at most
//! `upstream_max_connections` connections; an upstream that cannot be reached, or whose answer
//! does not begin within `upstream_timeout_secs`, is `502 bad_gateway`.

pub mod config;
mod mcp;
mod unix;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::Semaphore;

pub use config::GateConfig;

use crate::verify::Verifier;
use crate::verify::gate::{Gate, GateLayer, Identity, PathParams, Redeemed};

/// The verified caller's client id, set by the proxy.
pub const SUBJECT_HEADER: &str = "tessera-subject";
/// The verified caller's tenant, set by the proxy.
pub const TENANT_HEADER: &str = "tessera-tenant";
/// The verified caller's kind, set by the proxy.
pub const CALLER_KIND_HEADER: &str = "tessera-caller-kind";
/// The approval a redeemed capability came from, set by the proxy on gated routes.
pub const APPROVAL_ID_HEADER: &str = "tessera-approval-id";

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded either way.
/// (Names made once: removing by a `&str` would parse the name on every request.)
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const SUBJECT: HeaderName = HeaderName::from_static(SUBJECT_HEADER);
const TENANT: HeaderName = HeaderName::from_static(TENANT_HEADER);
const CALLER_KIND: HeaderName = HeaderName::from_static(CALLER_KIND_HEADER);
const APPROVAL_ID: HeaderName = HeaderName::from_static(APPROVAL_ID_HEADER);

/// Headers of the caller's that the upstream never sees: its credentials, and the identity
/// headers only the proxy may set.
const CALLER_ONLY: [HeaderName; 8] = [
    header::AUTHORIZATION,
    HeaderName::from_static("tessera-capability"),
    HeaderName::from_static("tessera-gate-bypass"),
    HeaderName::from_static("dpop"),
    SUBJECT,
    TENANT,
    CALLER_KIND,
    APPROVAL_ID,
];

/// The pooled HTTP/1.1 client to the upstream, over TCP or a Unix socket.
enum Upstream {
    Tcp(Client<HttpConnector, Body>),
    Unix(Client<unix::UnixConnector, Body>),
}

impl Upstream {
    fn request(&self, req: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Upstream::Tcp(c) => c.request(req),
            Upstream::Unix(c) => c.request(req),
        }
    }
}

struct Proxy {
    config: GateConfig,
    gate: Gate,
    /// One layer per configured route, in order.
    layers: Vec<GateLayer>,
    /// One layer per MCP endpoint: the access token and the endpoint's scope.
    mcp_layers: Vec<GateLayer>,
    /// The gated MCP calls waiting on an approval.
    pending: mcp::Pending,
    /// For requests that match no route: the access token only.
    unlisted: GateLayer,
    client: Upstream,
    connections: Arc<Semaphore>,
}

pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": code, "error_description": description }))).into_response()
}

fn bad_gateway(description: &str) -> Response {
    error(StatusCode::BAD_GATEWAY, "bad_gateway", description)
}

/// The scope the broker requires of a requester's token to create an approval.
const APPROVALS_CREATE: &str = "approvals:create";

/// Builds the proxy's router around `gate` (which carries the verifier, the broker and the
/// clock).
///
/// DPoP proofs (design §13) must name `config.public_url` plus the request path; a bound
/// caller's gated request is taken to the broker by the gate's own `service` client (the
/// verifier's feed credentials), as in the library.
pub fn app(config: GateConfig, gate: &Gate) -> Router {
    gate.set_body_timeout(config.request_timeout);
    gate.set_resource(&config.audience);
    if !gate.set_public_url(&config.public_url) {
        tracing::warn!("the gate's public URL was already set; DPoP proofs must name that one");
    }
    let layers = config
        .routes
        .iter()
        .map(|r| {
            let layer = match &r.gated {
                Some(g) => {
                    let template = g.resource.clone();
                    let fields: Vec<&str> = g.secret_fields.iter().map(String::as_str).collect();
                    gate.gated(&g.action, move |req| {
                        let mut out = String::new();
                        for piece in &template {
                            match piece {
                                config::Piece::Text(t) => out.push_str(t),
                                config::Piece::Path(p) => out.push_str(req.path(p)?),
                                config::Piece::Body(b) => out.push_str(req.body_str(b)?),
                                config::Piece::Tenant => out.push_str(&req.caller.tenant),
                                // Refused in a route's template at start.
                                config::Piece::Arg(_) => return None,
                            }
                        }
                        Some(out)
                    })
                    .secret_fields(&fields)
                }
                None => gate.authenticated(),
            };
            match &r.scope {
                Some(s) => layer.scope(s),
                None => layer,
            }
        })
        .collect();
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(config.upstream_max_connections);
    let client = match &config.upstream_socket {
        Some(path) => {
            Upstream::Unix(builder.build(unix::UnixConnector::new(path.clone(), config.upstream_connect_timeout)))
        }
        None => {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(config.upstream_connect_timeout));
            connector.set_nodelay(true);
            Upstream::Tcp(builder.build(connector))
        }
    };
    let mcp_layers = config
        .mcp
        .iter()
        .map(|m| match &m.scope {
            Some(s) => gate.authenticated().scope(s),
            None => gate.authenticated(),
        })
        .collect();
    // The proxy is its own service client at the broker (design §18), when it has one.
    gate.act_as_service();
    let mut scopes: Vec<&str> = config
        .routes
        .iter()
        .filter_map(|r| r.scope.as_deref())
        .chain(
            config
                .mcp
                .iter()
                .flat_map(|m| m.scope.iter().chain(m.tools.iter().filter_map(|t| t.scope.as_ref())))
                .map(String::as_str),
        )
        .collect();
    // A gated route or tool creates approvals in its caller's name, which the broker grants
    // only to a token with approvals:create: a client that asks for the metadata's scopes
    // (the MCP SDKs do) gets what it needs to be gated.
    let gates_anything = config.routes.iter().any(|r| r.gated.is_some())
        || config.mcp.iter().any(|m| m.tools.iter().any(|t| t.gated.is_some()));
    if gates_anything {
        scopes.push(APPROVALS_CREATE);
    }
    scopes.sort_unstable();
    scopes.dedup();
    if !gate.set_scopes_supported(&scopes) {
        tracing::warn!("the gate's scopes were already set; its metadata lists those");
    }
    let mut metadata = gate.metadata_routes();
    // Also at the path-suffixed URL of each MCP endpoint (RFC 9728 §3.1), where MCP clients look.
    for m in &config.mcp {
        let g = gate.clone();
        metadata = metadata.route(
            &format!("{}{}", crate::verify::gate::RESOURCE_METADATA_PATH, m.path),
            axum::routing::get(move || {
                let body = g.resource_metadata();
                async move { axum::Json(body) }
            }),
        );
    }
    let proxy = Proxy {
        gate: gate.clone(),
        layers,
        mcp_layers,
        pending: mcp::Pending::default(),
        unlisted: gate.authenticated(),
        client,
        connections: Arc::new(Semaphore::new(config.upstream_max_connections)),
        config,
    };
    // The protected-resource metadata (RFC 9728) is the library gate's own.
    metadata.fallback(handle).with_state(Arc::new(proxy))
}

/// The request path's segments, percent-decoded, or `None` when the path is not in the one
/// form the proxy and every upstream read alike: no empty, `.` or `..` segment (a trailing
/// `/` aside) and no encoded `/`.
fn segments(path: &str) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    let rest = path.strip_prefix('/')?;
    let rest = match rest.strip_suffix('/') {
        Some("") => return None,
        Some(r) => r,
        None => rest,
    };
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('/')
        .map(|raw| {
            let seg = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
            (!seg.is_empty() && seg != "." && seg != ".." && !seg.contains(['/', '\\'])).then_some(seg)
        })
        .collect()
}

async fn handle(State(p): State<Arc<Proxy>>, mut req: Request<Body>) -> Response {
    let segs = segments(req.uri().path());
    if let Some(segs) = &segs
        && let Some(ep) = p.config.mcp.iter().position(|m| m.segments.iter().eq(segs.iter()))
    {
        return mcp::handle(&p, ep, req).await;
    }
    let mut found = segs.map(|segs| {
        let segs: Vec<&str> = segs.iter().map(|s| s.as_ref()).collect();
        p.config.routes.iter().enumerate().find_map(|(i, r)| r.matches(req.method(), &segs).map(|params| (i, params)))
    });
    let layer = match &mut found {
        Some(Some((i, params))) => {
            req.extensions_mut().insert(PathParams(std::mem::take(params)));
            p.layers.get(*i).unwrap_or(&p.unlisted)
        }
        _ => &p.unlisted,
    };
    // The access token first: 401 before anything about the path.
    let req = match layer.check(req).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    match found {
        None => error(StatusCode::BAD_REQUEST, "invalid_request", "the request path is not in canonical form"),
        Some(None) if !p.config.pass_unlisted => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        _ => forward(&p, req).await,
    }
}

/// Headers that make some frameworks run another method than the request's (Rails, Laravel,
/// Symfony, Express's method-override, ASP.NET): never forwarded, so the method the gate
/// checked is the one that runs (design §18).
const METHOD_OVERRIDE: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Removes every header that an upstream could read as one of `names` or as a method
/// override: the names themselves, and any spelling of them with `_` for `-` (CGI and WSGI
/// servers map both to `HTTP_TESSERA_CALLER_KIND` and join the values). Header names arrive in
/// lower case.
fn drop_lookalikes(headers: &mut HeaderMap, names: &[HeaderName]) {
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.contains('_') && {
                let dashed = k.replace('_', "-");
                names.iter().chain(&METHOD_OVERRIDE).any(|n| n.as_str() == dashed)
            }
        })
        .cloned()
        .collect();
    for n in lookalikes.iter().chain(names).chain(&METHOD_OVERRIDE) {
        headers.remove(n);
    }
}

fn strip(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP.iter().chain(extra) {
        headers.remove(n);
    }
}

async fn forward(p: &Proxy, req: Request<Body>) -> Response {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut uri = p.config.upstream.clone().into_parts();
    uri.path_and_query = path_and_query.parse().ok();
    let Ok(uri) = Uri::from_parts(uri) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "the request target cannot be forwarded");
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip(&mut parts.headers, &[]);
    drop_lookalikes(&mut parts.headers, &CALLER_ONLY);
    parts.headers.remove(header::HOST);
    let Some(Identity(caller)) = parts.extensions.remove::<Identity>() else {
        return error(StatusCode::UNAUTHORIZED, "invalid_token", "an access token is required");
    };
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(&mut parts.headers, SUBJECT, &caller.sub);
    set(&mut parts.headers, TENANT, &caller.tenant);
    parts.headers.insert(CALLER_KIND, HeaderValue::from_static(caller.caller_kind.as_str()));
    if let Some(Redeemed(cap)) = parts.extensions.remove::<Redeemed>() {
        set(&mut parts.headers, APPROVAL_ID, &cap.approval_id);
    }
    let deadline = p.config.upstream_timeout;
    // A free connection slot at once, most of the time; else wait for one, within the deadline.
    let permit = match p.connections.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => match tokio::time::timeout(deadline, p.connections.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => return bad_gateway("the upstream has no free connection"),
        },
    };
    let upstream = Request::from_parts(parts, body);
    let res = match tokio::time::timeout(deadline, p.client.request(upstream)).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream unreachable");
            return bad_gateway("the upstream cannot be reached");
        }
        Err(_) => {
            tracing::warn!("upstream did not answer in time");
            return bad_gateway("the upstream did not answer in time");
        }
    };
    let (mut rp, incoming) = res.into_parts();
    strip(&mut rp.headers, &[]);
    // The connection stays counted until the answer has streamed through.
    let body = incoming.map_frame(move |frame| {
        let _held = &permit;
        frame
    });
    Response::from_parts(rp, Body::new(body))
}

/// The gate proxy, bound and ready to serve.
#[derive(Debug)]
pub struct GateProxy {
    listener: tokio::net::TcpListener,
    router: Router,
    limits: crate::server::connection::ServeLimits,
}

impl GateProxy {
    /// Binds `config.listen` and builds the proxy around `gate`.
    pub async fn build(config: GateConfig, gate: &Gate) -> std::io::Result<GateProxy> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let limits = config.limits;
        Ok(GateProxy { listener, router: app(config, gate), limits })
    }

    /// Binds and builds with a gate of its own: the broker's JWKS, and when `feed` names a
    /// `service` client, the revocation feed polled every 15 seconds.
    pub async fn from_config(
        config: GateConfig,
        feed: Option<crate::verify::revocations::FeedCredentials>,
    ) -> std::io::Result<GateProxy> {
        let mut verifier = Verifier::for_issuer(&config.broker, &config.audience);
        let polls = feed.is_some();
        if let Some(f) = feed {
            verifier = verifier.with_feed_credentials(f);
        }
        let verifier = Arc::new(verifier);
        if polls {
            crate::verify::revocations::spawn_poller(verifier.clone(), std::time::Duration::from_secs(15));
        }
        let gate = Gate::new(verifier, &config.broker);
        Self::build(config, &gate).await
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, with the broker's connection limits (see
    /// [`crate::server::connection::serve`]): no connection is held open by a silent client.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let metrics = Arc::new(crate::server::metrics::Metrics::default());
        crate::server::connection::serve(self.listener, self.router, self.limits, metrics, shutdown).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::gate::{BYPASS_HEADER, CAPABILITY_HEADER};

    #[test]
    fn the_stripped_names_are_the_gates_own() {
        for name in [CAPABILITY_HEADER, BYPASS_HEADER, "DPoP", "Authorization"] {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(CALLER_ONLY.contains(&parsed), "{name}");
        }
        for name in [SUBJECT_HEADER, TENANT_HEADER, CALLER_KIND_HEADER, APPROVAL_ID_HEADER] {
            assert!(CALLER_ONLY.contains(&HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
    }

    #[test]
    fn lookalikes_and_method_overrides_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("tessera_caller_kind", "operator"),
            ("Tessera_Subject", "tc_op"),
            ("tessera-tenant", "org-2"),
            ("x-http-method-override", "DELETE"),
            ("x_http_method", "DELETE"),
            ("X-Method-Override", "DELETE"),
            ("authorization", "Bearer t"),
            ("tessera_capability", "c"),
            ("x-request-id", "keep"),
            ("tessera_other", "keep"),
        ] {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_static(v));
        }
        drop_lookalikes(&mut h, &CALLER_ONLY);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["tessera_other", "x-request-id"]);
    }

    #[test]
    fn paths_have_one_reading() {
        assert_eq!(segments("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(segments("/a/b/").unwrap(), vec!["a", "b"]);
        assert_eq!(segments("/work%73paces").unwrap(), vec!["workspaces"]);
        assert_eq!(segments("/").unwrap(), Vec::<String>::new());
        for bad in ["/a//b", "/a/./b", "/a/../b", "/a/%2e%2e/b", "/a%2fb", "/a%5cb", "//", "/%ff"] {
            assert!(segments(bad).is_none(), "{bad}");
        }
    }
}
