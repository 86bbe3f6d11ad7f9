//! `/.well-known/jwks.json` and RFC 8414 metadata.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/oauth/authorize", get(authorize).post(authorize))
}

/// The authorization endpoint RFC 8414 clients require to be named: this broker has no
/// interactive grant (no user, no redirect), so every request is answered, never redirected,
/// with the RFC 6749 §4.1.2.1 error `unsupported_response_type` (docs/api.md).
async fn authorize() -> Response {
    let mut res = (
        axum::http::StatusCode::BAD_REQUEST,
        Json(json!({
            "error": "unsupported_response_type",
            "error_description": "this broker has no interactive authorization: clients get tokens at /oauth/token \
                                  (client_credentials, token exchange, jwt-bearer)",
        })),
    )
        .into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn jwks(State(state): State<AppState>) -> Response {
    // Every replica lists every replica's live keys: re-read them (cheap, and fetched rarely
    // thanks to the max-age). If the database is unreachable, the last set read is served.
    if let Err(e) = state.keys().refresh(state.now()).await {
        request_log!(WARN, error = %e, "serving the cached JWKS: cannot re-read keys");
    }
    let body = state.keys().jwks();
    let max_age = state.config().jwks_max_age_secs;
    let mut res = (*body).clone().into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    res
}

async fn metadata(State(state): State<AppState>) -> Json<serde_json::Value> {
    let iss = &state.config().issuer;
    let scopes: Vec<String> = state.config().policy.catalogue().iter().map(|s| s.to_string()).collect();
    let auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt"];
    let mut grants = vec!["client_credentials", super::oauth::GRANT_EXCHANGE];
    if !state.federation().is_empty() {
        grants.push(super::jwt_bearer::GRANT_JWT_BEARER);
    }
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth/authorize"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth/introspect"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "grant_types_supported": grants,
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": crate::clients::key::KEY_ALGS,
        "introspection_endpoint_auth_signing_alg_values_supported": crate::clients::key::KEY_ALGS,
        "revocation_endpoint_auth_signing_alg_values_supported": crate::clients::key::KEY_ALGS,
        "response_types_supported": [],
        "scopes_supported": scopes,
        "dpop_signing_alg_values_supported": crate::verify::dpop::DPOP_ALGS,
        "tessera_audiences": state.config().audiences(),
        "tessera_assertion_signing_alg_values_supported": crate::federation::ASSERTION_ALGS,
        "tessera_revocations_feed": format!("{iss}/v1/revocations"),
        "tessera_approvals_endpoint": format!("{iss}/v1/approvals"),
        "tessera_redemption_endpoint": format!("{iss}/v1/capabilities/redeem"),
    }))
}
