//! The gate: a tower [`Layer`] for axum routes of a resource server.
//!
//! Every route behind it first needs a valid access token of the broker (else `401
//! invalid_token`). A gated route declares its action and how its resource is derived from
//! the request; it then runs only on a valid capability for exactly this request:
//!
//! - the request's parameters (its JSON body, `{}` when empty) are put in their presented form
//!   ([`presented`]): the route's secret fields replaced by their length and SHA-256
//!   fingerprint. `params_digest` is taken over that form, so the digest a capability binds is
//!   the digest of exactly what the operator was shown;
//! - without a `Tessera-Capability` header, the gate creates the approval at the broker *as
//!   the caller* (forwarding the caller's bearer token) with `params` the presented form (a
//!   secret value never reaches the broker), and answers `202 {"approval_id", "status":
//!   "pending"}`; the handler does not run;
//! - with one, it verifies the capability offline, checks that it is bound to this action,
//!   resource, parameter digest, caller and tenant (else `403 forbidden`), redeems it at the
//!   broker (`409 conflict` if already redeemed), and only then runs the handler.
//!
//! Sender-constrained callers (design §13): a token bound to a key (`cnf.jkt`) is accepted only
//! as `Authorization: DPoP <token>` with a valid proof of that key for this request (else `401
//! invalid_token` with `WWW-Authenticate: DPoP`), and a capability of a bound requester only on
//! a request proved by the same key. A proof is good for one URL, so the gate cannot pass a
//! bound caller's credentials on: it creates the approval as core's own `service` client
//! (the verifier's [`FeedCredentials`](super::revocations::FeedCredentials)) with the caller's
//! token as `requester_token`, and redeems as that client. Without one, a bound caller's gated
//! request is `403 forbidden`. The URL a proof must name is the gate's public URL
//! ([`Gate::set_public_url`]) plus the request path, or `http://` and the `Host` header.
//!
//! The verified identity reaches the handler as the [`Identity`] request extension, the
//! redeemed capability as [`Redeemed`].
//!
//! The same checks serve a request that no axum route matched: [`GateLayer::check`] admits a
//! request whose path parameters the caller supplies as the [`PathParams`] extension. The gate
//! proxy (`tessera gate`) runs every proxied request through it, so the library and the proxy
//! are one implementation.
//!
//! ```no_run
//! use axum::{Extension, Json, Router, routing::put};
//! use tessera::verify::gate::{Gate, Identity};
//! use tessera::verify::Verifier;
//!
//! # async fn wire() {
//! let broker = "https://tessera.internal";
//! let gate = Gate::new(Verifier::for_issuer(broker, "core"), broker);
//! let app: Router = Router::new().route(
//!     "/workspaces/{id}/secrets",
//!     put(|Extension(who): Extension<Identity>| async move { Json(who.0.sub) })
//!         .route_layer(
//!             gate.gated("secret_write", |r| {
//!                 Some(format!("workspaces/{}/secrets/{}", r.path("id")?, r.body_str("key")?))
//!             })
//!             .secret_fields(&["value"]),
//!         ),
//! );
//! # let _ = app;
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::{Layer, Service};

use super::dpop::{self, DpopError};
use super::{AccessClaims, CapabilityBinding, CapabilityClaims, Verifier, check_binding, params_digest, presented};
use crate::token::strict_json;

/// The header carrying the capability on a gated request.
pub const CAPABILITY_HEADER: &str = "Tessera-Capability";
/// The header with which an allowed install client asks for the audited bypass.
pub const BYPASS_HEADER: &str = "Tessera-Gate-Bypass";
/// Largest request body a gated route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The verified caller, as a request extension.
#[derive(Debug, Clone)]
pub struct Identity(pub AccessClaims);

/// The capability redeemed for this request, as a request extension.
#[derive(Debug, Clone)]
pub struct Redeemed(pub CapabilityClaims);

/// Path parameters matched by a router other than axum's, as a request extension; when present,
/// the gate takes them instead of axum's own.
#[derive(Debug, Clone, Default)]
pub struct PathParams(pub HashMap<String, String>);

/// What a route's resource function sees.
#[derive(Debug)]
pub struct GateRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The matched path parameters.
    pub path_params: &'a HashMap<String, String>,
    /// The JSON body (`{}` when there is none): the parameters the digest covers.
    pub params: &'a Value,
    /// The verified caller.
    pub caller: &'a AccessClaims,
}

impl GateRequest<'_> {
    /// A path parameter.
    pub fn path(&self, name: &str) -> Option<&str> {
        self.path_params.get(name).map(String::as_str)
    }
    /// A string member of the body.
    pub fn body_str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }
}

type ResourceFn = dyn Fn(&GateRequest<'_>) -> Option<String> + Send + Sync;
type Clock = dyn Fn() -> i64 + Send + Sync;

struct Rule {
    action: String,
    resource: Arc<ResourceFn>,
    secret_fields: Vec<String>,
}

struct GateInner {
    verifier: Arc<Verifier>,
    broker: String,
    http: reqwest::Client,
    clock: Box<Clock>,
    public_url: std::sync::OnceLock<String>,
    scopes_supported: std::sync::OnceLock<Vec<String>>,
    body_timeout: std::sync::OnceLock<std::time::Duration>,
    resource: std::sync::OnceLock<String>,
    /// Act at the broker as the verifier's own service client for every caller (the proxy).
    act_as_service: std::sync::atomic::AtomicBool,
}

/// The shared gate: one per resource server, cloned into each route's layer.
#[derive(Clone)]
pub struct Gate(Arc<GateInner>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("broker", &self.0.broker).finish_non_exhaustive()
    }
}

fn system_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Gate {
    /// A gate that verifies with `verifier` and creates approvals and redeems capabilities
    /// at the broker at `broker_url`.
    pub fn new(verifier: impl Into<Arc<Verifier>>, broker_url: &str) -> Gate {
        Self::with_clock(verifier, broker_url, system_now)
    }

    /// As [`Gate::new`], reading time from `clock` (Unix seconds).
    pub fn with_clock(
        verifier: impl Into<Arc<Verifier>>,
        broker_url: &str,
        clock: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Gate {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Gate(Arc::new(GateInner {
            verifier: verifier.into(),
            broker: broker_url.trim_end_matches('/').to_owned(),
            http,
            clock: Box::new(clock),
            public_url: std::sync::OnceLock::new(),
            scopes_supported: std::sync::OnceLock::new(),
            body_timeout: std::sync::OnceLock::new(),
            resource: std::sync::OnceLock::new(),
            act_as_service: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The URL clients reach this resource server at (scheme, host, port; no path), which DPoP
    /// proofs name. Set once; false if it was already set.
    pub fn set_public_url(&self, url: &str) -> bool {
        self.0.public_url.set(url.trim_end_matches('/').to_owned()).is_ok()
    }

    /// How long a gated request's body may take to arrive (default 10 s); later, `408` and the
    /// connection closed, nothing run. Set once; false if it was already set.
    pub fn set_body_timeout(&self, limit: std::time::Duration) -> bool {
        self.0.body_timeout.set(limit).is_ok()
    }

    /// Creates approvals and redeems capabilities as the verifier's own `service` client for
    /// every caller, bound or not, naming the caller with `requester_token` (design §18): the
    /// callers' tokens then need only this resource server's audience. Without a service client
    /// configured, unbound callers are still acted for with their own token.
    pub fn act_as_service(&self) {
        self.0.act_as_service.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The URL a proof for this request must name: the public URL and the path.
    fn request_url(&self, parts: &axum::http::request::Parts) -> String {
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_owned())
            .unwrap_or_else(|| parts.uri.path().to_owned());
        match self.0.public_url.get() {
            Some(base) => format!("{base}{path}"),
            None => {
                let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                format!("http://{host}{path}")
            }
        }
    }

    /// The scopes this resource server's routes ask for, listed in its protected-resource
    /// metadata (RFC 9728). Set once; false if it was already set.
    pub fn set_scopes_supported(&self, scopes: &[&str]) -> bool {
        self.0.scopes_supported.set(scopes.iter().map(|s| (*s).to_owned()).collect()).is_ok()
    }

    /// The resource identifier the metadata names (RFC 9728 §2), when it is not the public URL:
    /// the audience the tokens carry, such as an MCP endpoint's URL. Set once; false if it was
    /// already set.
    pub fn set_resource(&self, resource: &str) -> bool {
        self.0.resource.set(resource.to_owned()).is_ok()
    }

    /// The protected-resource metadata (RFC 9728 §2): `resource` (see [`Gate::set_resource`];
    /// by default the public URL, see [`Gate::set_public_url`]), `authorization_servers` (the broker's issuer),
    /// `scopes_supported`, `bearer_methods_supported` and `dpop_signing_alg_values_supported`.
    pub fn resource_metadata(&self) -> Value {
        json!({
            "resource": self.0.resource.get().cloned().unwrap_or_else(|| self.public_url()),
            "authorization_servers": [self.0.verifier.policy().issuer],
            "scopes_supported": self.0.scopes_supported.get().cloned().unwrap_or_default(),
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": dpop::DPOP_ALGS,
        })
    }

    /// Where the metadata is served: the public URL and [`RESOURCE_METADATA_PATH`].
    pub fn resource_metadata_url(&self) -> String {
        format!("{}{RESOURCE_METADATA_PATH}", self.public_url())
    }

    fn public_url(&self) -> String {
        self.0.public_url.get().cloned().unwrap_or_else(|| "http://localhost".to_owned())
    }

    /// A router serving `GET /.well-known/oauth-protected-resource`, to merge into the
    /// resource server's own; it needs no token.
    pub fn metadata_routes<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let gate = self.clone();
        axum::Router::new().route(
            RESOURCE_METADATA_PATH,
            axum::routing::get(move || {
                let body = gate.resource_metadata();
                async move { axum::Json(body) }
            }),
        )
    }

    /// A layer that only requires a valid access token.
    pub fn authenticated(&self) -> GateLayer {
        GateLayer { gate: self.clone(), rule: None, scope: None }
    }

    /// A layer for a gated route: `action`, and the resource derived from each request
    /// (`None` refuses the request as malformed).
    pub fn gated(
        &self,
        action: &str,
        resource: impl Fn(&GateRequest<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> GateLayer {
        GateLayer {
            gate: self.clone(),
            rule: Some(Arc::new(Rule {
                action: action.to_owned(),
                resource: Arc::new(resource),
                secret_fields: Vec::new(),
            })),
            scope: None,
        }
    }

    /// Now, on the gate's clock (Unix seconds).
    pub(crate) fn now(&self) -> i64 {
        (self.0.clock)()
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.0.verifier
    }
}

/// The layer of one route.
#[derive(Clone)]
pub struct GateLayer {
    gate: Gate,
    rule: Option<Arc<Rule>>,
    scope: Option<Arc<str>>,
}

impl GateLayer {
    /// Names the route's secret fields: top-level body members whose values the operator sees
    /// only as length and fingerprint, and which never reach the broker (design §11). On a
    /// route that is not gated nothing is digested or sent, and this changes nothing.
    pub fn secret_fields(self, fields: &[&str]) -> GateLayer {
        let rule = self.rule.map(|rule| {
            Arc::new(Rule {
                action: rule.action.clone(),
                resource: Arc::clone(&rule.resource),
                secret_fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            })
        });
        GateLayer { gate: self.gate, rule, scope: self.scope }
    }

    /// Requires `scope` of the caller's token: without it, `403 forbidden` with
    /// `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` (RFC 6750 §3.1).
    pub fn scope(self, scope: &str) -> GateLayer {
        GateLayer { scope: Some(Arc::from(scope)), ..self }
    }

    /// Runs this route's checks on `req`: the request to pass on (with [`Identity`] and, on a
    /// gated route, [`Redeemed`] in its extensions and the body as read), or the answer to give
    /// instead. Path parameters come from the [`PathParams`] extension when the request has one,
    /// else from axum's router.
    pub async fn check(&self, req: Request<Body>) -> Result<Request<Body>, Response> {
        self.gate
            .admit(req, self.rule.as_deref(), self.scope.as_deref())
            .await
            .map_err(|res| self.gate.with_resource_metadata(res))
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> GateService<S> {
        GateService { inner, gate: self.gate.clone(), rule: self.rule.clone(), scope: self.scope.clone() }
    }
}

/// The service of one route.
#[derive(Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Gate,
    rule: Option<Arc<Rule>>,
    scope: Option<Arc<str>>,
}

impl<S> Service<Request<Body>> for GateService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let rule = self.rule.clone();
        let scope = self.scope.clone();
        Box::pin(async move {
            match gate.admit(req, rule.as_deref(), scope.as_deref()).await {
                Ok(req) => inner.call(req).await,
                Err(res) => Ok(gate.with_resource_metadata(res)),
            }
        })
    }
}

/// Where a resource server's protected-resource metadata is served (RFC 9728 §3).
pub const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

impl Gate {
    /// Adds `resource_metadata` to a refusal's `WWW-Authenticate` challenge (RFC 9728 §5.1), so
    /// a client can find from a 401 alone where to get a token.
    fn with_resource_metadata(&self, mut res: Response) -> Response {
        if let Some(challenge) = res.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) {
            let with = format!("{challenge}, resource_metadata=\"{}\"", self.resource_metadata_url());
            if let Ok(v) = HeaderValue::from_str(&with) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

fn error(status: StatusCode, code: &str, description: impl Into<String>) -> Response {
    let mut res =
        (status, axum::Json(json!({ "error": code, "error_description": description.into() }))).into_response();
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = HeaderValue::from_str("Bearer error=\"invalid_token\"")
    {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// How long a gated request's body may take to arrive, unless set.
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_json(ct: &HeaderValue) -> bool {
    let mime = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

fn not_json() -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", "a gated request's body must be Content-Type: application/json")
}

/// A gated body as the digest reads it, and as every upstream reads it alike (design §11, §18):
/// one JSON object, no duplicate member at any depth, no two member names equal once
/// case-folded, numbers exactly representable.
#[allow(clippy::result_large_err)] // a refusal is the answer itself, built once per request
pub(crate) fn parse_gated_body(bytes: &[u8]) -> Result<Value, Response> {
    crate::token::jcs::check_numbers(bytes).map_err(|e| {
        error(StatusCode::BAD_REQUEST, "invalid_request", format!("the body cannot be digested safely: {e}"))
    })?;
    let value = Value::Object(strict_json::parse_object(bytes).map_err(|e| {
        error(StatusCode::BAD_REQUEST, "invalid_request", format!("the body must be a JSON object: {e}"))
    })?);
    if let Some((a, b)) = strict_json::case_collision(&value) {
        let short = |s: &str| s.chars().take(32).collect::<String>();
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "the body has members {:?} and {:?}, which some parsers read as one: name each once",
                short(&a),
                short(&b)
            ),
        ));
    }
    Ok(value)
}

/// 401 `invalid_token` for a refused proof of possession, with the `DPoP` challenge.
fn dpop_unauthorized(description: impl Into<String>) -> Response {
    let mut res = error(StatusCode::UNAUTHORIZED, "invalid_token", description);
    if let Ok(v) = HeaderValue::from_str(&dpop::challenge("invalid_token")) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

fn headers_authorization(headers: &HeaderMap) -> Option<(dpop::Scheme, String)> {
    dpop::authorization(headers).map(|(s, t)| (s, t.to_owned()))
}

async fn relay(res: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    match res.json::<Value>().await {
        Ok(body) => (status, axum::Json(body)).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the broker answered unreadably"),
    }
}

/// What the broker answered to a new approval.
pub(crate) enum Created {
    /// Waiting for operators.
    Pending { approval_id: String, expires_at: String },
    /// An allowed install client's audited bypass: approved at once.
    Approved { capability: String },
}

fn unavailable(description: &str) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description)
}

/// The broker's refusal of something the gate asked, as the caller sees it. A 401 there is
/// about the credentials the gate presented — the gate's own service client, or a caller token
/// the gate has just verified but the broker no longer accepts (its client disabled) — never
/// the caller's `invalid_token`, which would send a client to fetch a new token in a loop.
async fn broker_refusal(res: reqwest::Response) -> Response {
    match res.status().as_u16() {
        401 => {
            tracing::warn!("the broker refused the gate's credentials");
            error(StatusCode::FORBIDDEN, "forbidden", "the broker refused this request's credentials")
        }
        s if s >= 500 => unavailable("the broker could not take the request"),
        _ => relay(res).await,
    }
}

/// Whose token the gate presents at the broker.
pub(crate) enum Acting {
    /// The caller's own bearer token (an unbound caller).
    Caller(String),
    /// Core's service token, naming a bound caller's token as the requester.
    Service { token: String, requester_token: String },
}

impl Acting {
    fn bearer(&self) -> &str {
        match self {
            Acting::Caller(t) => t,
            Acting::Service { token, .. } => token,
        }
    }
}

impl Gate {
    async fn admit(
        &self,
        req: Request<Body>,
        rule: Option<&Rule>,
        scope: Option<&str>,
    ) -> Result<Request<Body>, Response> {
        let g = &self.0;
        let (mut parts, body) = req.into_parts();
        let Some((scheme, token)) = headers_authorization(&parts.headers) else {
            return Err(error(StatusCode::UNAUTHORIZED, "invalid_token", "an access token is required"));
        };
        let proof = dpop::proof_header(&parts.headers)
            .map_err(|e: DpopError| dpop_unauthorized(format!("access token rejected: {e}")))?
            .map(str::to_owned);
        let now = (g.clock)();
        let url = self.request_url(&parts);
        let (caller, _) = g
            .verifier
            .verify_presented(scheme, &token, proof.as_deref(), parts.method.as_str(), &url, now)
            .await
            .map_err(|e| {
                if e.is_dpop() {
                    dpop_unauthorized(e.to_string())
                } else {
                    error(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
                }
            })?;
        // A bound caller's credentials are good for this request only: at the broker the gate
        // acts as core's own service client.
        let bound = caller.cnf.is_some();
        if let Some(needed) = scope
            && !caller.has_scope(needed)
        {
            let mut res = error(StatusCode::FORBIDDEN, "forbidden", format!("the token lacks {needed}"));
            let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\"");
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return Err(res);
        }
        let Some(rule) = rule else {
            parts.extensions.insert(Identity(caller));
            return Ok(Request::from_parts(parts, body));
        };

        // Everything that runs is what was approved (design §18): the query is no part of the
        // presented parameters, so a gated request has none.
        if parts.uri.query().is_some() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a gated request carries no query string: only its path and JSON body are approved",
            ));
        }
        let bytes = self.read_body(&parts.headers, body).await?;
        let params = if bytes.is_empty() { json!({}) } else { parse_gated_body(&bytes)? };
        let path_params: HashMap<String, String> = match parts.extensions.get::<PathParams>() {
            Some(p) => p.0.clone(),
            None => RawPathParams::from_request_parts(&mut parts, &())
                .await
                .map(|p| p.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
                .unwrap_or_default(),
        };
        let view = GateRequest { method: &parts.method, path_params: &path_params, params: &params, caller: &caller };
        let Some(resource) = (rule.resource)(&view) else {
            return Err(error(StatusCode::BAD_REQUEST, "invalid_request", "the request does not name its target"));
        };
        let fields: Vec<&str> = rule.secret_fields.iter().map(String::as_str).collect();
        let shown = presented(&params, &fields).map_err(|e| {
            error(StatusCode::BAD_REQUEST, "invalid_request", format!("the parameters cannot be presented: {e}"))
        })?;
        let digest = params_digest(&shown).to_string();

        let acting = self.acting(bound, &token, now).await?;
        let Some(capability) = parts.headers.get(CAPABILITY_HEADER) else {
            return Err(self.request_approval(&parts, &acting, &rule.action, &resource, &digest, &shown).await);
        };
        let capability = capability
            .to_str()
            .map_err(|_| error(StatusCode::FORBIDDEN, "forbidden", "the capability does not verify"))?
            .trim()
            .to_owned();
        let cap =
            g.verifier.verify_capability(&capability, now).await.map_err(|e| {
                error(StatusCode::FORBIDDEN, "forbidden", format!("the capability does not verify: {e}"))
            })?;
        let binding = CapabilityBinding { action: &rule.action, resource: &resource, params_digest: &digest };
        check_binding(&cap, &caller, binding).map_err(|e| {
            error(StatusCode::FORBIDDEN, "forbidden", format!("the capability does not match this request: {e}"))
        })?;
        self.redeem(acting.bearer(), &capability).await?;
        parts.extensions.insert(Identity(caller));
        parts.extensions.insert(Redeemed(cap));
        Ok(Request::from_parts(parts, Body::from(bytes)))
    }

    /// Reads a gated request's body: JSON only (an empty body aside), at most
    /// [`MAX_BODY_BYTES`], within the gate's body deadline ([`Gate::set_body_timeout`]).
    pub(crate) async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, Response> {
        let declared = headers.get(header::CONTENT_TYPE);
        if let Some(ct) = declared
            && !is_json(ct)
        {
            return Err(not_json());
        }
        let deadline = self.0.body_timeout.get().copied().unwrap_or(DEFAULT_BODY_TIMEOUT);
        let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "request body too large"));
            }
            Err(_) => {
                let mut res = error(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request",
                    "the request body did not arrive in time; nothing was forwarded",
                );
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(res);
            }
        };
        if declared.is_none() && !bytes.is_empty() {
            return Err(not_json());
        }
        Ok(bytes)
    }

    /// How the gate acts at the broker for a caller holding `token`.
    pub(crate) async fn acting(&self, bound: bool, token: &str, now: i64) -> Result<Acting, Response> {
        let service = bound
            || (self.0.act_as_service.load(std::sync::atomic::Ordering::Relaxed)
                && self.0.verifier.has_service_client());
        Ok(if service {
            Acting::Service { token: self.service_token(now).await?, requester_token: token.to_owned() }
        } else {
            Acting::Caller(token.to_owned())
        })
    }

    /// Creates an approval at the broker for the acting caller.
    pub(crate) async fn create_approval(
        &self,
        acting: &Acting,
        body: Value,
        bypass: Option<&HeaderValue>,
    ) -> Result<Created, Response> {
        let g = &self.0;
        let mut body = body;
        if let Acting::Service { requester_token, .. } = acting {
            body["requester_token"] = json!(requester_token);
        }
        let mut req = g.http.post(format!("{}/v1/approvals", g.broker)).bearer_auth(acting.bearer()).json(&body);
        if let Some(b) = bypass {
            req = req.header(BYPASS_HEADER, b.clone());
        }
        let res = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, "broker unreachable while creating an approval");
            unavailable("the broker is unreachable")
        })?;
        let status = res.status().as_u16();
        if !matches!(status, 201 | 202) {
            return Err(broker_refusal(res).await);
        }
        let v: Value = res.json().await.map_err(|_| unavailable("the broker answered unreadably"))?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Ok(match v["capability"].as_str() {
            Some(c) if status == 201 => Created::Approved { capability: c.to_owned() },
            _ => Created::Pending { approval_id: text("approval_id"), expires_at: text("expires_at") },
        })
    }

    /// Reads an approval at the broker as the acting caller: for a service, as the requester
    /// whose token it holds, so the capability is in the answer once approved.
    pub(crate) async fn read_approval(&self, acting: &Acting, id: &str) -> Result<Value, Response> {
        let g = &self.0;
        let mut req = g.http.get(format!("{}/v1/approvals/{id}", g.broker)).bearer_auth(acting.bearer());
        if let Acting::Service { requester_token, .. } = acting {
            req = req.header("Tessera-Requester-Token", requester_token);
        }
        let res = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, "broker unreachable while reading an approval");
            unavailable("the broker is unreachable")
        })?;
        if res.status().as_u16() != 200 {
            return Err(broker_refusal(res).await);
        }
        res.json().await.map_err(|_| unavailable("the broker answered unreadably"))
    }

    /// Verifies `capability` offline, checks it is bound to exactly this request and caller,
    /// and redeems it at the broker: after `Ok`, the request may run, once.
    pub(crate) async fn spend_capability(
        &self,
        acting: &Acting,
        caller: &AccessClaims,
        capability: &str,
        binding: CapabilityBinding<'_>,
        now: i64,
    ) -> Result<CapabilityClaims, Response> {
        let cap =
            self.0.verifier.verify_capability(capability, now).await.map_err(|e| {
                error(StatusCode::FORBIDDEN, "forbidden", format!("the capability does not verify: {e}"))
            })?;
        check_binding(&cap, caller, binding).map_err(|e| {
            error(StatusCode::FORBIDDEN, "forbidden", format!("the capability does not match this request: {e}"))
        })?;
        self.redeem(acting.bearer(), capability).await?;
        Ok(cap)
    }

    /// Core's own service token, for acting at the broker for a bound caller.
    async fn service_token(&self, now: i64) -> Result<String, Response> {
        let v = &self.0.verifier;
        if !v.has_service_client() {
            return Err(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this resource server has no service client of its own, so it cannot act at the broker for a \
                 caller whose token is bound to a key",
            ));
        }
        v.service_token(now).await.map_err(|e| {
            tracing::warn!(error = %e, "core's service client cannot get a token");
            error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the broker is unreachable")
        })
    }

    async fn request_approval(
        &self,
        parts: &axum::http::request::Parts,
        acting: &Acting,
        action: &str,
        resource: &str,
        digest: &str,
        shown: &Value,
    ) -> Response {
        let g = &self.0;
        let mut body = json!({
            "action": action,
            "resource": resource,
            "params": shown,
            "params_digest": digest,
            "reason": format!("gated request {} {}", parts.method, parts.uri.path()),
        });
        if let Acting::Service { requester_token, .. } = acting {
            body["requester_token"] = json!(requester_token);
        }
        let mut req = g.http.post(format!("{}/v1/approvals", g.broker)).bearer_auth(acting.bearer()).json(&body);
        if let Some(b) = parts.headers.get(BYPASS_HEADER) {
            req = req.header(BYPASS_HEADER, b.clone());
        }
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "broker unreachable while creating an approval");
                return error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the broker is unreachable");
            }
        };
        if res.status() == reqwest::StatusCode::ACCEPTED {
            return match res.json::<Value>().await {
                Ok(v) => {
                    (StatusCode::ACCEPTED, axum::Json(json!({ "approval_id": v["approval_id"], "status": "pending" })))
                        .into_response()
                }
                Err(_) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the broker answered unreadably")
                }
            };
        }
        // A refusal (403 self_target_forbidden, …) or an install bypass (201 with the
        // capability): the caller sees the broker's own answer; never its 401 or 5xx.
        broker_refusal(res).await
    }

    async fn redeem(&self, token: &str, capability: &str) -> Result<(), Response> {
        let g = &self.0;
        let res = g
            .http
            .post(format!("{}/v1/capabilities/redeem", g.broker))
            .bearer_auth(token)
            .json(&json!({ "capability": capability }))
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "broker unreachable while redeeming");
                error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the broker is unreachable")
            })?;
        match res.status().as_u16() {
            200 => Ok(()),
            409 => Err(error(StatusCode::CONFLICT, "conflict", "the capability was already redeemed")),
            401 => Err(error(StatusCode::FORBIDDEN, "forbidden", "the broker refused this request's credentials")),
            s if s >= 500 => {
                Err(error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the broker could not redeem"))
            }
            _ => Err(error(StatusCode::FORBIDDEN, "forbidden", "the broker refused to redeem the capability")),
        }
    }
}
