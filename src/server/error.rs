//! Every error answer, in one place: `{"error": CODE, "error_description": TEXT}`.
//!
//! Internal failures are logged with their cause and answered with a generic body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    description: String,
    www_authenticate: Option<&'static str>,
    retry_after: Option<u64>,
    dpop_nonce: Option<String>,
}

/// The challenge of a refused proof of possession (RFC 9449 §7.1).
const DPOP_CHALLENGE: &str = "DPoP error=\"invalid_token\", algs=\"EdDSA ES256\"";

impl ApiError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            description: description.into(),
            www_authenticate: None,
            retry_after: None,
            dpop_nonce: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    /// 401 `invalid_client`, with `WWW-Authenticate: Basic`.
    pub fn invalid_client(d: impl Into<String>) -> Self {
        ApiError {
            www_authenticate: Some("Basic realm=\"tessera\", charset=\"UTF-8\""),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
        }
    }
    /// 400 `invalid_grant`.
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    /// 400 `invalid_scope`.
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    /// 400 `unauthorized_client`.
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }
    /// 400 `unsupported_grant_type`.
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }
    /// 400 `unsupported_token_type` (RFC 7009).
    pub fn new_unsupported_token_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_token_type",
            "capabilities are not revoked here; withdraw the request or let the capability expire",
        )
    }
    /// 400 `invalid_target`.
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", d)
    }
    /// 401 `invalid_token`, with `WWW-Authenticate: Bearer`.
    pub fn invalid_token(d: impl Into<String>) -> Self {
        ApiError {
            www_authenticate: Some("Bearer error=\"invalid_token\""),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_token", d)
        }
    }
    /// 401 `invalid_token` for a bound token presented without a valid proof of its key, with
    /// `WWW-Authenticate: DPoP`.
    pub fn invalid_token_dpop(d: impl Into<String>) -> Self {
        ApiError { www_authenticate: Some(DPOP_CHALLENGE), ..Self::new(StatusCode::UNAUTHORIZED, "invalid_token", d) }
    }
    /// 400 `invalid_dpop_proof` (RFC 9449).
    pub fn invalid_dpop_proof(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_dpop_proof", d)
    }
    /// 400 `use_dpop_nonce` with a fresh `DPoP-Nonce` (RFC 9449 §8).
    pub fn use_dpop_nonce(nonce: String) -> Self {
        ApiError {
            dpop_nonce: Some(nonce),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "use_dpop_nonce",
                "the proof needs the server's nonce: retry with the DPoP-Nonce given",
            )
        }
    }
    /// 403 `forbidden`.
    pub fn forbidden(d: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", d)
    }
    /// 403 `self_target_forbidden`.
    pub fn self_target_forbidden(d: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "self_target_forbidden", d)
    }
    /// 403 `bypass_not_allowed`.
    pub fn bypass_not_allowed(d: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "bypass_not_allowed", d)
    }
    /// 403 `passkey_required`: the action's decisions need a passkey, in the console.
    pub fn passkey_required(d: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "passkey_required", d)
    }
    /// 404 `not_found`.
    pub fn not_found(d: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", d)
    }
    /// 405, as `invalid_request`.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "method not allowed on this path")
    }
    /// 409 `conflict`.
    pub fn conflict(d: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", d)
    }
    /// 410 `expired`.
    pub fn expired(d: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "expired", d)
    }
    /// 413, as `invalid_request`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", format!("request body larger than {limit} bytes"))
    }
    /// 429 `rate_limited` with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; retry later")
        }
    }
    /// 429 `rate_limited` with `Retry-After` and a description of what is limited.
    pub fn rate_limited_because(retry_after_secs: u64, description: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", description)
        }
    }
    /// 503 `temporarily_unavailable`, after logging the cause.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        request_log!(ERROR, %cause, "request failed: dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the service is temporarily unavailable; retry later",
        )
    }
    /// 500 `server_error`, after logging the cause.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        request_log!(ERROR, %cause, "request failed: internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::unavailable(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res =
            (self.status, Json(json!({ "error": self.code, "error_description": self.description }))).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(v) = self.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(n) = self.dpop_nonce.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
            h.insert(crate::verify::dpop::DPOP_NONCE_HEADER, n);
        }
        res.extensions_mut().insert(ErrorCode(self.code));
        res
    }
}

/// The error code of an error answer, kept on the response for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
