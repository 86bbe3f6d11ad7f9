//! Introspection (RFC 7662), revocation (RFC 7009), operator revocations and the signed
//! revocation feed that offline verifiers poll.

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Caller, StrictJson, verify_access_any_audience, verify_capability, verify_capability_any_audience};
use super::oauth::{authenticate_request, peer_of, read_form};
use super::{ApiError, ApiResult, AppState};
use crate::approvals::{self as approval_rows, Status};
use crate::domain::CallerKind;
use crate::revocations::{self, RevocationError};

/// The `typ` of the signed revocation feed.
pub const TYP_REVOCATIONS: &str = "revocations+jwt";
/// Most feed entries in one answer.
const FEED_PAGE: i64 = 1000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/introspect", post(introspect).fallback(|| async { ApiError::method_not_allowed() }))
        .route("/oauth/revoke", post(revoke).fallback(|| async { ApiError::method_not_allowed() }))
        .route("/v1/revocations", post(operator_revoke).get(feed))
}

impl From<RevocationError> for ApiError {
    fn from(e: RevocationError) -> Self {
        match e {
            RevocationError::NotFound(what) => ApiError::not_found(what),
            RevocationError::Store(e) => e.into(),
        }
    }
}

fn no_store(v: Value) -> Response {
    let mut res = Json(v).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn introspect(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let peer = peer_of(&req);
    let (headers, form) = read_form(&state, req).await?;
    let client = authenticate_request(&state, &headers, &form, peer).await?;
    if !matches!(client.kind, CallerKind::Service | CallerKind::Operator) {
        return Err(ApiError::unauthorized_client("only service and operator clients may introspect"));
    }
    let Some(token) = form.get("token") else {
        return Err(ApiError::invalid_request("token is required"));
    };
    let now = state.now();
    let inactive = || no_store(json!({ "active": false }));
    if let Ok(c) = verify_access_any_audience(&state, token, now).await {
        let owner = crate::clients::get(state.store(), &c.sub).await?;
        let usable = c.tenant == client.tenant.as_str()
            && owner.is_some_and(|o| !o.disabled)
            && !revocations::is_revoked(state.store(), &c.jti, &c.sub, c.iat).await?
            // Every client of a delegation chain must still be usable (design §12).
            && super::auth::live_actors(&state, &c).await?.is_some();
        if !usable {
            return Ok(inactive());
        }
        let token_type = if c.cnf.is_some() { "DPoP" } else { "Bearer" };
        let mut v = json!({
            "active": true, "token_type": token_type, "scope": c.scope, "client_id": c.client_id, "sub": c.sub,
            "exp": c.exp, "iat": c.iat, "nbf": c.nbf, "aud": c.aud, "iss": c.iss, "jti": c.jti,
            "tenant": c.tenant, "caller_kind": c.caller_kind,
        });
        if let Some(w) = c.workspace {
            v["workspace"] = json!(w);
        }
        if let Some(a) = c.act {
            v["act"] = json!(a);
        }
        if let Some(cnf) = c.cnf {
            v["cnf"] = json!(cnf);
        }
        return Ok(no_store(v));
    }
    if let Ok(c) = verify_capability_any_audience(&state, token, now).await {
        let live = approval_rows::get_unchecked(state.store(), &c.approval_id).await?.is_some_and(|a| {
            a.effective_status(now) == Status::Approved && a.cap_jti.as_deref() == Some(c.jti.as_str())
        });
        if c.tenant != client.tenant.as_str() || !live {
            return Ok(inactive());
        }
        return Ok(no_store(json!({
            "active": true, "token_type": "capability", "sub": c.sub, "exp": c.exp, "iat": c.iat, "nbf": c.nbf,
            "aud": c.aud, "iss": c.iss, "jti": c.jti, "tenant": c.tenant, "caller_kind": c.caller_kind,
            "action": c.action, "resource": c.resource, "params_digest": c.params_digest,
            "approval_id": c.approval_id, "approvers": c.approvers, "bypass": c.bypass, "act": c.act,
            "cnf": c.cnf,
        })));
    }
    Ok(inactive())
}

/// RFC 7009: a client revokes one of its own access tokens. Invalid or expired tokens are
/// answered 200, as the RFC asks; a valid token of another client is refused.
async fn revoke(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let peer = peer_of(&req);
    let (headers, form) = read_form(&state, req).await?;
    let client = authenticate_request(&state, &headers, &form, peer).await?;
    let Some(token) = form.get("token") else {
        return Err(ApiError::invalid_request("token is required"));
    };
    let now = state.now();
    let Ok(c) = verify_access_any_audience(&state, token, now).await else {
        if verify_capability(&state, token, now).await.is_ok() {
            return Err(ApiError::new_unsupported_token_type());
        }
        return Ok(no_store(json!({})));
    };
    let own = c.sub == client.client_id.as_str() || c.act.as_ref().is_some_and(|a| a.sub == client.client_id.as_str());
    if !own {
        return Err(ApiError::unauthorized_client("the token was not issued to this client"));
    }
    revocations::revoke_own(state.store(), &c, client.client_id.as_str(), now).await?;
    Ok(no_store(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorRevocation {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// Operators revoke one token by `jti`, or every live token of a client.
async fn operator_revoke(
    State(state): State<AppState>,
    caller: Caller,
    StrictJson(body): StrictJson<OperatorRevocation>,
) -> ApiResult<Response> {
    if caller.claims.caller_kind != CallerKind::Operator || !caller.claims.has_scope("tokens:revoke") {
        return Err(ApiError::forbidden("only operators holding tokens:revoke may revoke tokens"));
    }
    let now = state.now();
    let tenant = caller.claims.tenant.clone();
    let by = caller.claims.sub.as_str();
    let r = match (body.jti, body.client_id) {
        (Some(jti), None) => revocations::revoke_token(state.store(), &tenant, &jti, by, now).await?,
        (None, Some(client_id)) => revocations::revoke_client(state.store(), &tenant, &client_id, by, now).await?,
        _ => return Err(ApiError::invalid_request("give exactly one of jti and client_id")),
    };
    let answer = json!({ "revoked": r.kind, "jti": r.jti, "client_id": r.client_id, "not_after": r.not_after });
    Ok(no_store(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    since: Option<i64>,
    nonce: Option<String>,
}

/// Longest `nonce` the feed echoes.
const MAX_FEED_NONCE: usize = 64;

/// The revocation feed: a JWS (`typ: revocations+jwt`, signed like every token) listing the
/// revocations of the caller's tenant after `since` that still matter. Offline verifiers poll
/// it with a `service` client's access token.
///
/// The answer is bound to its request: it signs the `since` asked for and the caller's
/// `nonce`, so an older answer cannot stand in for a newer one. `next` is the feed's true
/// position, never raised to `since`, and `since_id`/`next_id` identify the entries at both
/// positions: a broker whose feed is behind the cursor asked for, or has other entries under
/// the same numbers (a database restored from a backup), says so, and the verifier refuses
/// to move.
async fn feed(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> ApiResult<Response> {
    if !caller.claims.every_party_is(&[CallerKind::Service]) {
        return Err(ApiError::forbidden(
            "only service clients (every party of a delegated token) may read the revocation feed",
        ));
    }
    let q: FeedQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_request(format!("query: {e}")))?;
    let since = q.since.unwrap_or(0);
    if since < 0 {
        return Err(ApiError::invalid_request("since must not be negative"));
    }
    if let Some(n) = &q.nonce
        && (n.is_empty()
            || n.len() > MAX_FEED_NONCE
            || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(ApiError::invalid_request("nonce must be 1 to 64 characters of [A-Za-z0-9_-]"));
    }
    let tenant = caller.claims.tenant.as_str();
    let now = state.now();
    let page = revocations::page(state.store(), tenant, since, now, FEED_PAGE).await?;
    let revocations::Page { entries, more, next, since_id, next_id } = page;
    let mut claims = json!({
        "iss": state.config().issuer, "iat": now, "exp": now + 300, "tenant": tenant,
        "since": since, "since_id": since_id, "next": next, "next_id": next_id,
        "more": more, "revocations": entries,
    });
    if let Some(n) = q.nonce {
        claims["nonce"] = json!(n);
    }
    let jws = state.keys().signer().sign_typed(TYP_REVOCATIONS, &claims).map_err(|e| ApiError::internal(&e))?;
    let mut res = jws.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwt"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
