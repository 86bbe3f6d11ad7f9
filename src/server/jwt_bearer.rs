//! The JWT bearer grant (RFC 7523 §2.1): a workload trades the identity its platform gave it
//! (a Kubernetes service-account token, a SPIFFE JWT-SVID, a CI system's OIDC token) for an
//! access token, with no secret of ours (design §14).
//!
//! The assertion alone authenticates: its issuer must be configured (`[[federation]]`), it
//! must pass [`crate::federation::Federation::verify`], and its issuer and subject must name a
//! client registered with `--federated ISSUER=SUBJECT`. Kind, tenant, scopes and workspace
//! come from that registration. Each refusal is `400 invalid_grant` and changes nothing; the
//! assertion's `jti` is spent only when a token is issued.

use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde_json::json;

use super::form::Form;
use super::issue::{bind_client, client_claims, issue, select_scopes, target_audience};
use super::{ApiError, ApiResult, AppState};

/// The grant type (RFC 7523 §2.1).
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The key failed assertions are counted under, with the peer's address.
const FAILURE_KEY: &str = "jwt-bearer";

pub(super) async fn grant(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<Response> {
    if headers.contains_key(header::AUTHORIZATION)
        || form.get("client_secret").is_some()
        || form.get("client_assertion").is_some()
    {
        return Err(ApiError::invalid_request(
            "the jwt-bearer grant is authenticated by its assertion alone; send no other client authentication",
        ));
    }
    let Some(assertion) = form.get("assertion") else {
        return Err(ApiError::invalid_request("assertion is required"));
    };
    let keys = super::ratelimit::auth_keys(FAILURE_KEY, peer);
    let keys = [keys[0].as_str(), keys[1].as_str()];
    if let Some(wait) = state.auth_failures().blocked(&keys) {
        return Err(ApiError::rate_limited(wait.as_secs().max(1)));
    }
    let now = state.now();
    let refused = |why: String| {
        state.auth_failures().record_failure(&keys);
        request_log!(INFO, reason = %why, "jwt-bearer assertion refused");
        ApiError::invalid_grant(why)
    };
    let verified = state.federation().verify(assertion, now).await.map_err(|e| refused(e.0))?;
    let store = state.store();
    let Some(client_id) = crate::clients::federated_client(store, &verified.issuer, &verified.subject).await? else {
        return Err(refused("no client is registered for the assertion's issuer and subject".into()));
    };
    if form.get("client_id").is_some_and(|id| id != client_id) {
        return Err(refused("client_id is not the client registered for the assertion's identity".into()));
    }
    let Some(client) = crate::clients::get(store, &client_id).await?.filter(|c| !c.disabled) else {
        return Err(refused("the client registered for this identity is disabled".into()));
    };
    if let Some(limiter) = state.token_requests()
        && let Err(wait) = limiter.check(client.client_id.as_str())
    {
        return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
    }
    let aud = target_audience(state, form)?;
    let scopes = select_scopes(state, &client, form.get("scope"))?;
    let proof = super::dpop::token_request_proof(state, headers, now)?;
    let cnf = bind_client(state, &client, proof.as_ref())?;
    super::dpop::spend_proof(state, proof.as_ref(), client.client_id.as_str(), now)?;
    // Last, so that a refused request leaves the assertion unspent: its id, used once.
    if !crate::clients::use_assertion_id(store, &verified.issuer, &verified.jti, verified.exp, now).await? {
        return Err(refused("the assertion was used before (jti)".into()));
    }
    let mut claims = client_claims(state, &client, &scopes, aud, now)?;
    claims.cnf = cnf;
    let detail = json!({
        "issuer": verified.issuer, "subject": verified.subject, "assertion_jti": verified.jti,
    });
    issue(state, claims, client.client_id.as_str(), GRANT_JWT_BEARER, detail, now).await
}
