//! Access tokens on `/v1/*` (`Bearer`, or `DPoP` with a proof for bound tokens), and strict
//! JSON bodies.

use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::clients::{self as client_rows, ClientRecord};
use crate::token::{AccessClaims, strict_json};
use crate::verify::{VerifyError, dpop};

/// The verified caller of a `/v1` route: a valid access token of this broker whose client is
/// still registered, enabled, and of the tenant and kind the token says.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified claims.
    pub claims: AccessClaims,
    /// The client's registration as it is now.
    pub client: ClientRecord,
    /// For a delegated token, each actor's registration as it is now, nearest first.
    pub actors: Vec<ClientRecord>,
}

/// Verifies an access token with the broker's published keys, refreshing them once (rate
/// limited) when the `kid` is unknown, as another replica's new key would be.
pub(super) async fn verify_access(state: &AppState, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
    let verifier = state.verifier();
    match verifier.verify_access(state.keys(), token, now) {
        Err(VerifyError::UnknownKey) if state.keys().refresh_for_unknown(now).await => {
            verifier.verify_access(state.keys(), token, now)
        }
        r => r,
    }
}

/// As [`verify_access`], accepting a token issued for any of the broker's configured
/// `audiences` (design §18): where the broker is asked about a token meant for a resource
/// server — `requester_token`, introspection, revocation — rather than presented one to itself.
pub(super) async fn verify_access_any_audience(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<AccessClaims, VerifyError> {
    match verify_access(state, token, now).await {
        Err(VerifyError::Audience) => {
            let main = state.verifier();
            for audience in state.config().audiences() {
                if audience == main.audience {
                    continue;
                }
                let mut policy = main.clone();
                policy.audience = audience;
                if let Ok(claims) = policy.verify_access(state.keys(), token, now) {
                    return Ok(claims);
                }
            }
            Err(VerifyError::Audience)
        }
        r => r,
    }
}

/// As [`verify_capability`], for a capability issued for any configured audience: redemption
/// and introspection serve every resource server of this broker (design §18).
pub(super) async fn verify_capability_any_audience(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<crate::token::CapabilityClaims, VerifyError> {
    match verify_capability(state, token, now).await {
        Err(VerifyError::Audience) => {
            let main = state.verifier();
            for audience in state.config().audiences() {
                if audience == main.audience {
                    continue;
                }
                let mut policy = main.clone();
                policy.audience = audience;
                if let Ok(claims) = policy.verify_capability(state.keys(), token, now) {
                    return Ok(claims);
                }
            }
            Err(VerifyError::Audience)
        }
        r => r,
    }
}

/// Verifies a capability the same way, refreshing unknown keys once.
pub(super) async fn verify_capability(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<crate::token::CapabilityClaims, VerifyError> {
    let verifier = state.verifier();
    match verifier.verify_capability(state.keys(), token, now) {
        Err(VerifyError::UnknownKey) if state.keys().refresh_for_unknown(now).await => {
            verifier.verify_capability(state.keys(), token, now)
        }
        r => r,
    }
}

/// The registrations of a token's actors, nearest first, if every one is still usable: known,
/// enabled, of the tenant and kind the token says, and not revoked (by client) since the token
/// was issued. `None` when any is not: disabling or revoking any client of a delegation chain
/// stops the token at once (design §12).
pub(super) async fn live_actors(
    state: &AppState,
    claims: &AccessClaims,
) -> Result<Option<Vec<ClientRecord>>, ApiError> {
    let Some(act) = &claims.act else { return Ok(Some(Vec::new())) };
    let mut out = Vec::new();
    for a in act.chain() {
        let Some(c) = client_rows::get(state.store(), &a.sub)
            .await?
            .filter(|c| !c.disabled && c.tenant.as_str() == claims.tenant && c.kind == a.caller_kind)
        else {
            return Ok(None);
        };
        if crate::revocations::is_revoked(state.store(), &claims.jti, &a.sub, claims.iat).await? {
            return Ok(None);
        }
        out.push(c);
    }
    Ok(Some(out))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some((scheme, token)) = dpop::authorization(&parts.headers) else {
            return Err(ApiError::invalid_token(
                "an access token is required: Authorization: Bearer <token>, or DPoP <token> with a proof",
            ));
        };
        let now = state.now();
        let claims = verify_access(state, token, now)
            .await
            .map_err(|e| ApiError::invalid_token(format!("access token rejected: {e}")))?;
        // A bound token only with a proof of its key for this very request (design §13). The
        // proof is remembered last, once the token and its clients are known good.
        let proof = dpop::proof_header(&parts.headers).map_err(super::dpop::refused)?;
        let path = parts.extensions.get::<OriginalUri>().map_or_else(|| parts.uri.path(), |u| u.0.path());
        let url = format!("{}{path}", state.config().issuer);
        let caller = caller_of(state, claims).await?;
        state
            .dpop()
            .verifier()
            .check_presentation(&caller.claims, scheme, token, proof, parts.method.as_str(), &url, now)
            .map_err(super::dpop::refused)?;
        Ok(caller)
    }
}

/// The caller a verified token names, if its client and every actor are still usable.
pub(super) async fn caller_of(state: &AppState, claims: AccessClaims) -> Result<Caller, ApiError> {
    let client = client_rows::get(state.store(), &claims.sub)
        .await?
        .filter(|c| !c.disabled && c.tenant.as_str() == claims.tenant && c.kind == claims.caller_kind)
        .ok_or_else(|| ApiError::invalid_token("access token rejected: the client is disabled or unknown"))?;
    if crate::revocations::is_revoked(state.store(), &claims.jti, &claims.sub, claims.iat).await? {
        return Err(ApiError::invalid_token("access token rejected: revoked"));
    }
    let actors = live_actors(state, &claims).await?.ok_or_else(|| {
        ApiError::invalid_token("access token rejected: a client acting in it is disabled or revoked")
    })?;
    Ok(Caller { claims, client, actors })
}

/// The requester a `service` caller names with `requester_token` (design §13): core acting
/// for a bound caller, whose proof was good only for core's own URL. The token is verified
/// as the caller's own would be (its proof was checked by core); it must be of the service's
/// tenant. Anything else sending the field is refused.
pub(super) async fn requester_of(
    state: &AppState,
    service: &Caller,
    token: &str,
    now: i64,
) -> Result<Caller, ApiError> {
    use crate::domain::CallerKind;
    if service.claims.caller_kind != CallerKind::Service || service.claims.act.is_some() {
        return Err(ApiError::forbidden("only a service client may name the requester with requester_token"));
    }
    let unusable = |why: &str| ApiError::invalid_request(format!("requester_token is not usable: {why}"));
    let claims = verify_access_any_audience(state, token, now).await.map_err(|e| unusable(&e.to_string()))?;
    if claims.tenant != service.claims.tenant {
        return Err(unusable("it belongs to another tenant"));
    }
    caller_of(state, claims).await.map_err(|e| unusable(e.code()))
}

/// A JSON body: `application/json`, bounded, an object with no duplicate members, then
/// deserialized into `T` (which refuses unknown fields).
#[derive(Debug)]
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::invalid_request("Content-Type must be application/json"));
        }
        let limit = state.config().max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| ApiError::too_large(limit))?;
        // Numbers first (design §11): a parsed value no longer says how a number was written.
        crate::token::jcs::check_numbers(&bytes).map_err(|e| ApiError::invalid_request(format!("body: {e}")))?;
        let map = strict_json::parse_object(&bytes).map_err(|e| ApiError::invalid_request(format!("body: {e}")))?;
        let value =
            serde_json::from_value(Value::Object(map)).map_err(|e| ApiError::invalid_request(format!("body: {e}")))?;
        Ok(StrictJson(value))
    }
}
