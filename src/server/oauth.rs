//! `POST /oauth/token` (RFC 6749 §4.4 client credentials).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

use super::{ApiError, ApiResult, AppState};
use crate::audit::{AuditEvent, CheckedError, Precondition};
use crate::clients::{self, ClientSecret};
use crate::domain::ScopeSet;
use crate::store::clients::ClientRecord;
use crate::token::claims::Audience;
use crate::token::{AccessClaims, Confirmation, b64};
use crate::verify::dpop::CheckedProof;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/oauth/token", post(token).fallback(|| async { ApiError::method_not_allowed() }))
}

/// The longest client id or secret considered at all.
const MAX_CREDENTIAL_LEN: usize = 256;

/// A parsed `application/x-www-form-urlencoded` body in which no parameter repeats.
pub struct Form(HashMap<String, String>);

impl Form {
    /// Parses a form body, refusing malformed encoding and repeated parameters
    /// (RFC 6749 §3.2).
    pub fn parse(bytes: &[u8]) -> ApiResult<Form> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
            .map_err(|_| ApiError::invalid_request("the body is not a valid form"))?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if map.contains_key(&k) {
                let shown: String = k.chars().take(32).collect();
                return Err(ApiError::invalid_request(format!("parameter {shown:?} appears more than once")));
            }
            map.insert(k, v);
        }
        Ok(Form(map))
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Reads an OAuth request: parameters only in the body, the right content type, a bounded
/// size, no parameter twice (RFC 6749 §3.2).
pub(super) async fn read_form(state: &AppState, req: Request) -> ApiResult<(HeaderMap, Form)> {
    let (parts, body) = req.into_parts();
    if parts.uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::invalid_request(
            "parameters belong in the request body; never put credentials or tokens in the URL",
        ));
    }
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ApiError::invalid_request("Content-Type must be application/x-www-form-urlencoded"));
    }
    let limit = state.config().max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| ApiError::too_large(limit))?;
    Ok((parts.headers, Form::parse(&bytes)?))
}

/// Client credentials as presented, before they are checked.
#[derive(Debug)]
pub struct PresentedCredentials {
    /// The client id named.
    pub client_id: String,
    /// The secret presented.
    pub secret: ClientSecret,
}

fn percent_decode(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space).decode_utf8().ok().map(|c| c.into_owned())
}

/// Finds the one client authentication method used: HTTP Basic (`client_secret_basic`) or
/// `client_id` and `client_secret` in the body (`client_secret_post`).
pub fn presented_credentials(headers: &HeaderMap, form: &Form) -> ApiResult<PresentedCredentials> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| ApiError::invalid_client("malformed Authorization header"))?;
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(ApiError::invalid_client(
                    "unsupported client authentication; use HTTP Basic or client_secret_post",
                ));
            }
            let decoded = STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) =
                decoded.split_once(':').ok_or_else(|| ApiError::invalid_client("malformed Basic credentials"))?;
            let id = percent_decode(id).ok_or_else(|| ApiError::invalid_client("malformed Basic credentials"))?;
            let secret =
                percent_decode(secret).ok_or_else(|| ApiError::invalid_client("malformed Basic credentials"))?;
            Some((id, secret))
        }
    };
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(_), _, Some(_)) => {
            return Err(ApiError::invalid_request(
                "use exactly one client authentication method, not HTTP Basic and client_secret together",
            ));
        }
        (Some((id, secret)), Some(body_id), None) if body_id != id => {
            let _ = secret;
            return Err(ApiError::invalid_request("client_id in the body does not match HTTP Basic"));
        }
        (Some((id, secret)), _, None) => (id, secret),
        (None, Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
        (None, _, _) => {
            return Err(ApiError::invalid_client("client authentication required (HTTP Basic or client_secret_post)"));
        }
    };
    Ok(PresentedCredentials { client_id: id, secret: ClientSecret::new(secret) })
}

/// Authenticates the client. Unknown client, wrong secret and disabled client give the same
/// answer after the same work. A client id or peer with too many recent failures is refused
/// with 429 before its secret is checked.
pub(super) async fn authenticate(
    state: &AppState,
    creds: &PresentedCredentials,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<ClientRecord> {
    Ok(Arc::unwrap_or_clone(authenticate_with(state, creds, peer, false).await?.0))
}

/// Authenticates the client of a form-encoded request by whichever one method it used: a
/// secret (HTTP Basic or `client_secret_post`) or an assertion (`private_key_jwt`).
pub(super) async fn authenticate_request(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<ClientRecord> {
    if super::client_assertion::presented(form) {
        return Box::pin(super::client_assertion::authenticate(state, headers, form, peer)).await;
    }
    let creds = presented_credentials(headers, form)?;
    authenticate(state, &creds, peer).await
}

/// As [`authenticate`]; with `cached`, a client that authenticated before with the same
/// secret is answered from memory, with the [`Precondition`] its token's audit record must
/// pass at commit.
async fn authenticate_with(
    state: &AppState,
    creds: &PresentedCredentials,
    peer: Option<std::net::IpAddr>,
    cached: bool,
) -> ApiResult<(Arc<ClientRecord>, Option<Precondition>)> {
    let keys = || super::ratelimit::auth_keys(&creds.client_id, peer);
    if let Some(wait) = state.auth_failures().blocked_by(|| keys().into()) {
        return Err(ApiError::rate_limited(wait.as_secs().max(1)));
    }
    let result = check_credentials(state, creds, cached).await;
    if matches!(&result, Err(e) if e.code() == "invalid_client") {
        state.auth_failures().record_failure(&keys().each_ref().map(String::as_str));
    }
    result
}

async fn check_credentials(
    state: &AppState,
    creds: &PresentedCredentials,
    cached: bool,
) -> ApiResult<(Arc<ClientRecord>, Option<Precondition>)> {
    let failed = || ApiError::invalid_client("client authentication failed");
    if creds.client_id.is_empty()
        || creds.client_id.len() > MAX_CREDENTIAL_LEN
        || creds.secret.expose().len() > MAX_CREDENTIAL_LEN
    {
        return Err(failed());
    }
    let found = if cached {
        let cache = state.client_cache();
        clients::authenticate_cached(state.store(), cache, &creds.client_id, &creds.secret).await?
    } else {
        clients::authenticate(state.store(), &creds.client_id, &creds.secret).await?.map(|c| (Arc::new(c), None))
    };
    match found {
        Some(c) => Ok(c),
        None => {
            request_log!(INFO, client_id = %creds.client_id.chars().take(64).collect::<String>(), "client authentication failed");
            Err(failed())
        }
    }
}

/// A fresh token id: 16 bytes, base64url, of which the first 6 are the time of issue in
/// milliseconds and the other 10 are random (80 bits: two ids issued in the same
/// millisecond collide with odds of 2^-80). Ids issued close in time share a prefix, so
/// the audit log's index on them grows at its end instead of touching a random page per
/// token.
pub(super) fn new_jti() -> ApiResult<String> {
    let millis =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    JTI_RANDOM
        .with(|pool| pool.borrow_mut().take(&mut b[6..]))
        .map_err(|_| ApiError::internal(&"random source failed"))?;
    Ok(b64::encode(&b))
}

/// The random part of token ids comes from the operating system's generator 4 KiB at a time,
/// each byte handed out once, instead of one system call per token.
struct RandomPool {
    bytes: [u8; 4096],
    used: usize,
}

impl RandomPool {
    fn take(&mut self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        if self.used + out.len() > self.bytes.len() {
            SystemRandom::new().fill(&mut self.bytes)?;
            self.used = 0;
        }
        out.copy_from_slice(&self.bytes[self.used..self.used + out.len()]);
        // Handed out once: never again readable from the pool.
        self.bytes[self.used..self.used + out.len()].fill(0);
        self.used += out.len();
        Ok(())
    }
}

thread_local! {
    static JTI_RANDOM: std::cell::RefCell<RandomPool> =
        const { std::cell::RefCell::new(RandomPool { bytes: [0; 4096], used: 4096 }) };
}

/// The scopes to grant: what was asked for, each of it allowed, or everything allowed.
pub(super) fn select_scopes(state: &AppState, client: &ClientRecord, requested: Option<&str>) -> ApiResult<ScopeSet> {
    let policy = &state.config().policy;
    let allowed = policy.allowed(client.kind, &client.scopes);
    let Some(raw) = requested else { return Ok(allowed) };
    let wanted = requested_scopes(policy, raw)?;
    let outside = wanted.difference(&allowed);
    if !outside.is_empty() {
        return Err(ApiError::invalid_scope(format!("not granted to this client: {outside}")));
    }
    Ok(wanted)
}

/// Parses a `scope` parameter, refusing gated actions with a pointer to approvals.
fn requested_scopes(policy: &crate::policy::Policy, raw: &str) -> ApiResult<ScopeSet> {
    for word in raw.split_ascii_whitespace() {
        if policy.is_gated(word) {
            let shown: String = word.chars().take(64).collect();
            return Err(ApiError::invalid_scope(format!(
                "{shown} is a gated action and is never granted as a scope; request it through an approval (POST /v1/approvals) and present the capability"
            )));
        }
    }
    let wanted = ScopeSet::parse_list(raw).map_err(|e| ApiError::invalid_scope(e.to_string()))?;
    if wanted.is_empty() {
        return Err(ApiError::invalid_scope("scope is empty; omit it to get every allowed scope"));
    }
    Ok(wanted)
}

/// The claims of a fresh access token for `client` with `scopes`.
pub(super) fn client_claims(
    state: &AppState,
    client: &ClientRecord,
    scopes: &ScopeSet,
    aud: String,
    now: i64,
) -> ApiResult<AccessClaims> {
    Ok(AccessClaims {
        iss: state.config().issuer.clone(),
        sub: client.client_id.to_string(),
        client_id: client.client_id.to_string(),
        aud: Audience::One(aud),
        iat: now,
        nbf: now,
        exp: now + state.config().policy.access_token_ttl_secs,
        jti: new_jti()?,
        scope: scopes.to_string(),
        tenant: client.tenant.to_string(),
        caller_kind: client.kind,
        workspace: client.workspace.as_ref().map(|w| w.to_string()),
        act: None,
        cnf: None,
    })
}

/// The audience a token is issued for (RFC 8707): `resource` when the request names one of
/// the configured audiences, the default audience when it names none; anything else is
/// `invalid_target`.
pub(super) fn target_audience(state: &AppState, form: &Form) -> ApiResult<String> {
    match form.get("resource") {
        None => Ok(state.config().audience.clone()),
        Some(r) if state.config().audiences().iter().any(|a| a == r) => Ok(r.to_owned()),
        Some(_) => Err(ApiError::invalid_target(
            "resource is not an audience of this broker; its metadata lists them (tessera_audiences)",
        )),
    }
}

/// Whether `client` gets tokens only with a proof: registered so, or its kind by policy.
fn requires_dpop(state: &AppState, client: &ClientRecord) -> bool {
    client.require_dpop || state.config().policy.requires_dpop(client.kind)
}

/// The binding of a `client_credentials` token: the proof's key, required where the client
/// or its kind must prove possession.
pub(super) fn bind_client(
    state: &AppState,
    client: &ClientRecord,
    proof: Option<&CheckedProof>,
) -> ApiResult<Option<Confirmation>> {
    match proof {
        Some(p) => Ok(Some(Confirmation { jkt: p.jkt.clone() })),
        None if requires_dpop(state, client) => Err(ApiError::invalid_dpop_proof(
            "this client gets tokens only with a DPoP proof (RFC 9449): send one in the DPoP header",
        )),
        None => Ok(None),
    }
}

/// Signs `claims`, audits the issue (by `actor`), and builds the token response. The audit
/// record is committed before the response leaves; if it cannot be, no token leaves.
pub(super) async fn issue(
    state: &AppState,
    claims: AccessClaims,
    actor: &str,
    grant: &str,
    detail: serde_json::Value,
    now: i64,
) -> ApiResult<Response> {
    issue_checked(state, claims, actor, grant, detail, now, None)
        .await?
        .ok_or_else(|| ApiError::internal(&"a client check without a cached client"))
}

/// As [`issue`]. With `check` (a client authenticated from memory), the audit record commits
/// only if the client's row is still as it was read; if it is not, nothing is issued and the
/// answer is `None`: authenticate again against the database.
async fn issue_checked(
    state: &AppState,
    claims: AccessClaims,
    actor: &str,
    grant: &str,
    detail: serde_json::Value,
    now: i64,
    check: Option<Precondition>,
) -> ApiResult<Option<Response>> {
    let token = state.keys().signer().sign_access(&claims).map_err(|e| ApiError::internal(&e))?;
    let jkt = claims.cnf.as_ref().map(|c| c.jkt.as_str());
    let event = match detail {
        serde_json::Value::Object(extra) if extra.is_empty() => AuditEvent::with_canonical_detail(
            "token.issued",
            actor,
            &claims.tenant,
            &claims.jti,
            issued_facts(grant, &claims, jkt),
        ),
        extra => {
            let mut facts = json!({
                "grant": grant, "sub": claims.sub, "kind": claims.caller_kind, "scope": claims.scope, "exp": claims.exp,
            });
            if let (Some(f), serde_json::Value::Object(extra)) = (facts.as_object_mut(), extra) {
                f.extend(extra);
            }
            if let Some(jkt) = jkt {
                facts["cnf_jkt"] = json!(jkt);
            }
            AuditEvent::new("token.issued", actor, &claims.tenant, &claims.jti, facts)
        }
    };
    match check {
        None => state.audit().record(event, now).await.map_err(|e| ApiError::unavailable(&e))?,
        Some(check) => match state.audit().record_checked(event, now, check).await {
            Ok(()) => {}
            Err(CheckedError::Stale) => return Ok(None),
            Err(CheckedError::Failed(e)) => return Err(ApiError::unavailable(&e)),
        },
    }
    state.metrics().token_issued(claims.caller_kind, grant);
    let body = TokenResponse {
        access_token: &token,
        token_type: if claims.cnf.is_some() { "DPoP" } else { "Bearer" },
        expires_in: claims.exp - now,
        scope: &claims.scope,
        issued_token_type: (grant == GRANT_EXCHANGE).then_some(TOKEN_TYPE_ACCESS),
    };
    // Sized for the whole answer at once (a growing buffer would copy it three times).
    let mut json = Vec::with_capacity(token.len() + claims.scope.len() + 160);
    serde_json::to_writer(&mut json, &body).map_err(|e| ApiError::internal(&e))?;
    let mut res = Response::new(axum::body::Body::from(json));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(n) = state.dpop().nonce(now).and_then(|n| HeaderValue::from_str(&n).ok()) {
        res.headers_mut().insert(crate::verify::dpop::DPOP_NONCE_HEADER, n);
    }
    Ok(Some(res))
}

/// The canonical (RFC 8785) text of a `token.issued` record's facts when the grant adds none:
/// the same as canonicalizing `{"grant", "sub", "kind", "scope", "exp"[, "cnf_jkt"]}`, written
/// directly (members in the order of their names).
fn issued_facts(grant: &str, claims: &AccessClaims, jkt: Option<&str>) -> String {
    use std::fmt::Write as _;

    use crate::token::jcs::write_string;
    let mut out = String::with_capacity(96 + grant.len() + claims.sub.len() + claims.scope.len());
    out.push('{');
    if let Some(jkt) = jkt {
        out.push_str("\"cnf_jkt\":");
        write_string(&mut out, jkt);
        out.push(',');
    }
    // A time in seconds: far inside the integers JSON numbers hold exactly.
    let _ = write!(out, "\"exp\":{},\"grant\":", claims.exp);
    write_string(&mut out, grant);
    out.push_str(",\"kind\":");
    write_string(&mut out, claims.caller_kind.as_str());
    out.push_str(",\"scope\":");
    write_string(&mut out, &claims.scope);
    out.push_str(",\"sub\":");
    write_string(&mut out, &claims.sub);
    out.push('}');
    out
}

/// A successful token response (RFC 6749 §5.1; RFC 8693 §2.2.1 adds `issued_token_type`).
#[derive(serde::Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'static str>,
}

/// The token-exchange grant type (RFC 8693).
pub const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The access-token token type (RFC 8693 §3).
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// RFC 8693 token exchange: `client` presents an access token of this broker (its own, to
/// narrow it; or, where the subject's registration names it as a delegate, another client's,
/// to act for it). The result never has a scope the subject lacks or the client may not hold,
/// never outlives the subject, and carries the actor chain when it is a delegation.
async fn exchange(
    state: &AppState,
    client: &ClientRecord,
    form: &Form,
    proof: Option<&CheckedProof>,
    now: i64,
) -> ApiResult<Response> {
    let Some(subject_token) = form.get("subject_token") else {
        return Err(ApiError::invalid_request("subject_token is required"));
    };
    match form.get("subject_token_type") {
        Some(TOKEN_TYPE_ACCESS) => {}
        Some(_) => {
            return Err(ApiError::invalid_request(
                "unsupported subject_token_type; use urn:ietf:params:oauth:token-type:access_token",
            ));
        }
        None => return Err(ApiError::invalid_request("subject_token_type is required")),
    }
    if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
        return Err(ApiError::invalid_request("actor tokens are not accepted: the authenticated client is the actor"));
    }
    if form.get("requested_token_type").is_some_and(|t| t != TOKEN_TYPE_ACCESS) {
        return Err(ApiError::invalid_request("only access tokens are issued by exchange"));
    }
    let unusable = || ApiError::invalid_request("the subject token is not usable");
    let subject = super::auth::verify_access(state, subject_token, now).await.map_err(|_| unusable())?;
    if subject.tenant != client.tenant.as_str() {
        return Err(unusable());
    }
    if crate::store::revocations::is_revoked(state.store(), &subject.jti, &subject.sub, subject.iat).await? {
        return Err(unusable());
    }
    let owner = crate::store::clients::get(state.store(), &subject.sub)
        .await?
        .filter(|c| !c.disabled && c.tenant == client.tenant)
        .ok_or_else(unusable)?;
    if super::auth::live_actors(state, &subject).await?.is_none() {
        return Err(unusable());
    }
    // A bound subject stays bound, and only its key's holder may exchange it (design §13).
    let cnf = match (subject.jkt(), proof) {
        (Some(jkt), Some(p)) if p.jkt == jkt => subject.cnf.clone(),
        (Some(_), _) => {
            return Err(ApiError::invalid_dpop_proof(
                "the subject token is bound to a key: exchange it with a DPoP proof made by that key",
            ));
        }
        (None, _) => bind_client(state, client, proof)?,
    };
    let delegation = owner.client_id != client.client_id;
    if delegation && !owner.delegates.contains(&client.client_id) {
        return Err(ApiError::unauthorized_client("the subject's registration does not let this client act for it"));
    }
    let act = if delegation {
        let chain = crate::token::Actor {
            sub: client.client_id.to_string(),
            caller_kind: client.kind,
            act: subject.act.clone().map(Box::new),
        };
        if chain.depth() > crate::verify::MAX_ACT_DEPTH {
            return Err(ApiError::invalid_request("the delegation chain is too deep"));
        }
        Some(chain)
    } else {
        subject.act.clone()
    };

    // Scopes: within the subject's, and within what this client may hold. Never narrowed
    // silently: anything asked beyond that is refused.
    let policy = &state.config().policy;
    let subject_scopes = ScopeSet::parse_list(&subject.scope).map_err(|_| unusable())?;
    let available = policy.allowed(client.kind, &client.scopes).intersection(&subject_scopes);
    let scopes = match form.get("scope") {
        None => available,
        Some(raw) => {
            let wanted = requested_scopes(policy, raw)?;
            let outside = wanted.difference(&available);
            if !outside.is_empty() {
                return Err(ApiError::invalid_scope(format!(
                    "beyond the subject token's scopes or this client's: {outside}"
                )));
            }
            wanted
        }
    };
    // `resource` (RFC 8707) or `audience` (RFC 8693) picks one of the configured audiences;
    // without either, the token keeps the subject's.
    let aud = match (form.get("resource"), form.get("audience")) {
        (None, None) => subject.aud.clone(),
        (Some(r), Some(a)) if r != a => {
            return Err(ApiError::invalid_target("audience and resource name different audiences"));
        }
        (Some(wanted), _) | (None, Some(wanted)) => {
            if !state.config().audiences().iter().any(|a| a == wanted) {
                return Err(ApiError::invalid_target("resource is not an audience of this broker"));
            }
            Audience::One(wanted.to_owned())
        }
    };
    let claims = AccessClaims {
        iss: state.config().issuer.clone(),
        sub: subject.sub.clone(),
        client_id: subject.sub.clone(),
        aud,
        iat: now,
        nbf: now,
        exp: (now + policy.access_token_ttl_secs).min(subject.exp),
        jti: new_jti()?,
        scope: scopes.to_string(),
        tenant: subject.tenant.clone(),
        caller_kind: subject.caller_kind,
        workspace: subject.workspace.clone(),
        act,
        cnf,
    };
    if claims.exp <= now {
        return Err(unusable());
    }
    let actors: Vec<&str> = claims.actors();
    let detail = json!({
        "subject_jti": subject.jti, "actor": client.client_id, "delegation": delegation, "actors": actors,
    });
    super::dpop::spend_proof(state, proof, client.client_id.as_str(), now)?;
    issue(state, claims, client.client_id.as_str(), GRANT_EXCHANGE, detail, now).await
}

/// The peer address of a request served over a socket.
pub(super) fn peer_of(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

async fn token(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let peer = peer_of(&req);
    let (headers, form) = read_form(&state, req).await?;
    let Some(grant_type) = form.get("grant_type") else {
        return Err(ApiError::invalid_request("grant_type is required"));
    };
    let grant_type = grant_type.to_owned();
    if grant_type == super::jwt_bearer::GRANT_JWT_BEARER {
        return Box::pin(super::jwt_bearer::grant(&state, &headers, &form, peer)).await;
    }
    let client_credentials = grant_type == "client_credentials";
    // A client authenticated by key is read from the database each time (its assertion is
    // single use anyway); a secret may be answered from memory with a check at commit.
    let (creds, (client, check)) = if super::client_assertion::presented(&form) {
        let client = Box::pin(super::client_assertion::authenticate(&state, &headers, &form, peer)).await?;
        (None, (Arc::new(client), None))
    } else {
        let creds = presented_credentials(&headers, &form)?;
        let authenticated = authenticate_with(&state, &creds, peer, client_credentials).await?;
        (Some(creds), authenticated)
    };
    if let Some(limiter) = state.token_requests()
        && let Err(wait) = limiter.check(client.client_id.as_str())
    {
        return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
    }
    let now = state.now();
    let proof = super::dpop::token_request_proof(&state, &headers, now)?;
    match grant_type.as_str() {
        "client_credentials" => {
            let aud = target_audience(&state, &form)?;
            let scopes = select_scopes(&state, &client, form.get("scope"))?;
            let mut claims = client_claims(&state, &client, &scopes, aud.clone(), now)?;
            claims.cnf = bind_client(&state, &client, proof.as_ref())?;
            let actor = client.client_id.as_str();
            super::dpop::spend_proof(&state, proof.as_ref(), actor, now)?;
            if let Some(res) = issue_checked(&state, claims, actor, "client_credentials", json!({}), now, check).await?
            {
                return Ok(res);
            }
            // The client changed since it was cached (disabled, secret rotated): answer as
            // the database says now.
            let Some(creds) = creds else {
                return Err(ApiError::internal(&"a client check without a cached client"));
            };
            state.client_cache().forget(&creds.client_id);
            let (client, _) = Box::pin(authenticate_with(&state, &creds, peer, false)).await?;
            let scopes = select_scopes(&state, &client, form.get("scope"))?;
            let mut claims = client_claims(&state, &client, &scopes, aud, now)?;
            claims.cnf = bind_client(&state, &client, proof.as_ref())?;
            Box::pin(issue(&state, claims, client.client_id.as_str(), "client_credentials", json!({}), now)).await
        }
        GRANT_EXCHANGE => Box::pin(exchange(&state, &client, &form, proof.as_ref(), now)).await,
        _ => Err(ApiError::unsupported_grant_type(format!(
            "supported grant types: client_credentials, {GRANT_EXCHANGE}, {}",
            super::jwt_bearer::GRANT_JWT_BEARER
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CallerKind;

    #[test]
    fn issued_facts_are_the_canonical_form_of_the_facts_object() {
        let mut claims = AccessClaims {
            iss: "http://127.0.0.1:8700".into(),
            sub: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
            client_id: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
            aud: Audience::One("core".into()),
            iat: 1_800_000_000,
            nbf: 1_800_000_000,
            exp: 1_800_000_300,
            jti: "BBBBBBBBBBBBBBBBBBBBBB".into(),
            scope: "approvals:create workspaces:read".into(),
            tenant: "org-1".into(),
            caller_kind: CallerKind::Agent,
            workspace: None,
            act: None,
            cnf: None,
        };
        let cases: [(&str, &str, &str, Option<&str>); 4] = [
            ("client_credentials", "tc_AAAAAAAAAAAAAAAAAAAAAA", "approvals:create workspaces:read", None),
            ("client_credentials", "tc_x", "", Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")),
            (GRANT_EXCHANGE, "quote\" back\\ nl\n tab\t ctl\u{1} é ✓ 😀", "a b", Some("k")),
            ("urn:ietf:params:oauth:grant-type:jwt-bearer", "tc_y", "tokens:introspect", None),
        ];
        for (i, (grant, sub, scope, jkt)) in cases.into_iter().enumerate() {
            claims.sub = sub.into();
            claims.scope = scope.into();
            claims.caller_kind = CallerKind::ALL[i % CallerKind::ALL.len()];
            claims.exp += 1_000_000 * i as i64;
            let mut facts = json!({
                "grant": grant, "sub": claims.sub, "kind": claims.caller_kind, "scope": claims.scope, "exp": claims.exp,
            });
            if let Some(jkt) = jkt {
                facts["cnf_jkt"] = json!(jkt);
            }
            assert_eq!(issued_facts(grant, &claims, jkt), crate::token::jcs::canonicalize(&facts), "case {i}");
        }
    }

    #[test]
    fn jtis_lead_with_the_time_and_end_random() {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        // Enough to draw the random pool dry several times (409 ids a pool).
        let ids: Vec<String> = (0..2_000).map(|_| new_jti().unwrap()).collect();
        let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let mut tails = std::collections::HashSet::new();
        for id in &ids {
            assert_eq!(id.len(), 22);
            let b = b64::decode(id).unwrap();
            assert_eq!(b.len(), 16);
            let mut t = [0u8; 8];
            t[2..].copy_from_slice(&b[..6]);
            let millis = u64::from_be_bytes(t);
            assert!((before..=after).contains(&millis), "{millis} not in {before}..={after}");
            // The 80 random bits differ between ids, even in the same millisecond.
            assert!(b[6..].iter().any(|x| *x != 0));
            assert!(tails.insert(b[6..].to_vec()));
        }
    }
}
