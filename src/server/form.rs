//! The token endpoint's form body (RFC 6749 §3.2, no parameter repeated) and the client
//! credentials presented in it or in HTTP Basic.

use std::collections::HashMap;

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{ApiError, ApiResult, AppState};
use crate::clients::ClientSecret;

/// The longest client id or secret considered at all.
pub(super) const MAX_CREDENTIAL_LEN: usize = 256;

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
