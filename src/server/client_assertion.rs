//! Client authentication by key at the broker's endpoints (RFC 7523 §2.2, `private_key_jwt`;
//! design §18): `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//! and a `client_assertion` signed with the client's registered key. The checks themselves are
//! [`crate::clients::key::verify`]; here they meet the request, the failure limiter and the
//! single use of the assertion's `jti`.

use axum::http::{HeaderMap, header};

use super::form::Form;
use super::{ApiError, ApiResult, AppState};
use crate::clients::ClientRecord;
use crate::clients::key;

/// Whether the request authenticates its client with an assertion.
pub(super) fn presented(form: &Form) -> bool {
    form.get("client_assertion_type").is_some() || form.get("client_assertion").is_some()
}

/// Authenticates the client by its assertion. Unknown, disabled and secret-holding clients
/// are one answer; a client id or peer with too many recent failures gets 429 first. The
/// assertion's `jti` is spent here, so a replay fails whichever replica it reaches.
pub(super) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<ClientRecord> {
    if headers.contains_key(header::AUTHORIZATION) || form.get("client_secret").is_some() {
        return Err(ApiError::invalid_request(
            "use exactly one client authentication method, not client_assertion with HTTP Basic or client_secret",
        ));
    }
    if form.get("client_assertion_type") != Some(key::ASSERTION_TYPE) {
        return Err(ApiError::invalid_request(format!("client_assertion_type must be {}", key::ASSERTION_TYPE)));
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Err(ApiError::invalid_request("client_assertion is required with client_assertion_type"));
    };
    let claimed = key::claimed_client(assertion);
    let id = claimed.as_deref().unwrap_or("").to_owned();
    let keys = super::ratelimit::auth_keys(&id, peer);
    let keys = [keys[0].as_str(), keys[1].as_str()];
    if let Some(wait) = state.auth_failures().blocked(&keys) {
        return Err(ApiError::rate_limited(wait.as_secs().max(1)));
    }
    let refused = |why: &str| {
        state.auth_failures().record_failure(&keys);
        request_log!(INFO, client_id = %id.chars().take(64).collect::<String>(), reason = %why, "client assertion refused");
        ApiError::invalid_client(format!("client authentication failed: {why}"))
    };
    let client_id = match claimed {
        Ok(c) => c,
        Err(why) => return Err(refused(&why)),
    };
    if form.get("client_id").is_some_and(|c| c != client_id) {
        return Err(refused("client_id is not the assertion's iss"));
    }
    let store = state.store();
    let registered = crate::clients::key_of(store, &client_id).await?;
    let client = crate::clients::get(store, &client_id).await?.filter(|c| !c.disabled);
    let (Some(registered), Some(client)) = (registered, client) else {
        return Err(refused("no enabled client authenticates by key under this id"));
    };
    let iss = &state.config().issuer;
    let token_endpoint = format!("{iss}/oauth/token");
    let now = state.now();
    let verified =
        key::verify(assertion, &client_id, &registered, &[iss, &token_endpoint], now, state.config().leeway_secs)
            .map_err(|why| refused(&why))?;
    let spent_under = format!("client:{client_id}");
    if !crate::clients::use_assertion_id(store, &spent_under, &verified.jti, verified.remember_until, now).await? {
        return Err(refused("client_assertion was used before (jti)"));
    }
    Ok(client)
}
