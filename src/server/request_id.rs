//! Request ids: every request gets an `x-request-id` (the caller's, when it is a short plain
//! token; otherwise a fresh random UUID), the request span carries it, and the response
//! echoes it.

use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::Response;

/// The header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest caller-chosen id kept.
const MAX_LEN: usize = 64;

/// Whether a caller-chosen id is kept: 1 to 64 characters of `A-Z a-z 0-9 . _ -`. Anything
/// else is replaced, so no caller-controlled text beyond that reaches the logs.
pub fn acceptable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}

/// Drops an unacceptable or repeated `x-request-id`, so the next layer generates one.
pub(super) async fn drop_unacceptable(mut req: Request, next: Next) -> Response {
    let headers = req.headers_mut();
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (Some(v), None) => acceptable(v.as_bytes()),
        (None, _) => true,
        _ => false,
    };
    if !keep {
        headers.remove(&X_REQUEST_ID);
    }
    next.run(req).await
}

/// The id of a request, for its span.
pub(super) fn of(req: &Request) -> &str {
    req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(acceptable(b"abc-123_X.y"));
        assert!(acceptable(&[b'a'; 64]));
        assert!(!acceptable(&[b'a'; 65]));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"a b"));
        assert!(!acceptable(b"a\"}"));
    }
}
