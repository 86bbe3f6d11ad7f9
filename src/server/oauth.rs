//! `POST /oauth/token` (RFC 6749 §4.4 client credentials).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::json;

use super::form::MAX_CREDENTIAL_LEN;
pub(super) use super::form::read_form;
pub use super::form::{Form, PresentedCredentials, presented_credentials};
pub use super::issue::{GRANT_EXCHANGE, TOKEN_TYPE_ACCESS};
use super::issue::{
    bind_client, client_claims, issue, issue_checked, new_jti, requested_scopes, select_scopes, target_audience,
};
use super::{ApiError, ApiResult, AppState};
use crate::audit::Precondition;
use crate::clients;
use crate::clients::ClientRecord;
use crate::domain::ScopeSet;
use crate::token::AccessClaims;
use crate::token::claims::Audience;
use crate::verify::dpop::CheckedProof;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/oauth/token", post(token).fallback(|| async { ApiError::method_not_allowed() }))
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
    let now = state.now();
    let found = if cached {
        let cache = state.client_cache();
        clients::authenticate_cached(state.store(), cache, &creds.client_id, &creds.secret, now).await?
    } else {
        clients::authenticate(state.store(), &creds.client_id, &creds.secret, now)
            .await?
            .map(|(c, used)| clients::Authenticated { record: Arc::new(c), check: None, used })
    };
    match found {
        Some(a) => {
            if a.used == clients::SecretUsed::Previous {
                state.usage().used_previous_secret(a.record.client_id.as_str(), now);
            }
            Ok((a.record, a.check))
        }
        None => {
            request_log!(INFO, client_id = %creds.client_id.chars().take(64).collect::<String>(), "client authentication failed");
            Err(failed())
        }
    }
}

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
    if crate::revocations::is_revoked(state.store(), &subject.jti, &subject.sub, subject.iat).await? {
        return Err(unusable());
    }
    let owner = crate::clients::get(state.store(), &subject.sub)
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
