//! Request ids: every request gets an `x-request-id` (the caller's, when it is a short plain
//! token; otherwise a fresh one, unique across processes), the request span carries it, and
//! the response echoes it.
//!
//! The span (`request`: method, path, request id) is made when something is logged while a
//! request is answered ([`request_log!`](crate::server)), not for every request: a span
//! made per request cost 2.7 % of the token endpoint's CPU, and almost no request logs
//! anything at the default level.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use ring::rand::{SecureRandom, SystemRandom};

/// What the request span says of the request this task is answering.
#[derive(Clone)]
pub struct RequestContext {
    method: Method,
    uri: Uri,
    id: HeaderValue,
}

/// The method, the path and the id, as the span shows them: never the query.
impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("method", &self.method)
            .field("path", &self.uri.path())
            .field("id", &self.id)
            .finish()
    }
}

impl RequestContext {
    /// The context of a request with id `id`.
    pub fn new(method: &Method, uri: &Uri, id: &HeaderValue) -> RequestContext {
        RequestContext { method: method.clone(), uri: uri.clone(), id: id.clone() }
    }
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// Runs `f` (a request's answer) with `context` as its request.
pub async fn scope<F: std::future::Future>(context: RequestContext, f: F) -> F::Output {
    CONTEXT.scope(context, f).await
}

/// The span of the request this task is answering: its method and path (never the query) and
/// its id; none outside a request.
pub fn span() -> tracing::Span {
    CONTEXT
        .try_with(|c| {
            tracing::info_span!(
                target: "tessera::server",
                "request",
                method = %c.method,
                path = %c.uri.path(),
                request_id = %c.id.to_str().unwrap_or_default(),
            )
        })
        .unwrap_or_else(|_| tracing::Span::none())
}

/// The header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest caller-chosen id kept.
const MAX_LEN: usize = 64;

/// Whether a caller-chosen id is kept: 1 to 64 characters of `A-Z a-z 0-9 . _ -`. Anything
/// else is replaced, so no caller-controlled text beyond that reaches the logs.
pub fn acceptable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}

/// The request's id: its own `x-request-id` when there is exactly one and it is acceptable,
/// otherwise a fresh one, which replaces whatever was sent.
pub(super) fn take_or_make(headers: &mut HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next())
        && acceptable(v.as_bytes())
    {
        return v.clone();
    }
    let fresh = fresh();
    headers.insert(X_REQUEST_ID, fresh.clone());
    fresh
}

/// A fresh id: this process's random 64-bit prefix and a counter, in hex (no system call,
/// unlike a random UUID per request). Ids are for finding log lines, not secrets: they only
/// need to be unique.
fn fresh() -> HeaderValue {
    static PREFIX: LazyLock<u64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        // A failed random source leaves the prefix zero: ids stay unique in this process.
        let _ = SystemRandom::new().fill(&mut b);
        u64::from_be_bytes(b)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let text = format!("{:016x}-{n:x}", *PREFIX);
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event logged under `src/server` goes through `request_log!`, so that whatever is
    /// logged while a request is answered carries the request span.
    #[test]
    fn every_event_under_src_server_goes_through_request_log() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut all = Vec::new();
        files(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server"), &mut all);
        assert!(all.len() > 10, "{all:?}");
        let macros = ["trace!(", "debug!(", "info!(", "warn!(", "error!(", "event!("];
        let mut direct = Vec::new();
        for path in &all {
            for (i, line) in std::fs::read_to_string(path).unwrap().lines().enumerate() {
                // The macro's own definition is the one direct use.
                if line.contains("tracing::") && macros.iter().any(|m| line.contains(m)) && !line.contains("$level") {
                    direct.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(direct.is_empty(), "log through request_log! instead:\n{}", direct.join("\n"));
    }

    #[test]
    fn the_context_never_shows_the_query() {
        let uri: Uri = "/oauth/token?client_secret=never-shown".parse().unwrap();
        let c = RequestContext::new(&Method::POST, &uri, &HeaderValue::from_static("id-1"));
        let shown = format!("{c:?}");
        assert!(shown.contains("/oauth/token") && shown.contains("id-1"), "{shown}");
        assert!(!shown.contains("never-shown"), "{shown}");
    }

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(acceptable(b"abc-123_X.y"));
        assert!(acceptable(&[b'a'; 64]));
        assert!(!acceptable(&[b'a'; 65]));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"a b"));
        assert!(!acceptable(b"a\"}"));
    }

    #[test]
    fn fresh_ids_are_acceptable_and_distinct() {
        let mut h = HeaderMap::new();
        let a = take_or_make(&mut h);
        let b = take_or_make(&mut HeaderMap::new());
        assert_ne!(a, b);
        assert!(acceptable(a.as_bytes()) && acceptable(b.as_bytes()));
        assert_eq!(h[&X_REQUEST_ID], a);
        // Kept when plain and alone; replaced when repeated or unacceptable.
        h.insert(X_REQUEST_ID, HeaderValue::from_static("mine-1"));
        assert_eq!(take_or_make(&mut h), "mine-1");
        h.append(X_REQUEST_ID, HeaderValue::from_static("mine-2"));
        let replaced = take_or_make(&mut h);
        assert!(replaced != "mine-1" && replaced != "mine-2");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_ne!(take_or_make(&mut h), "a b");
    }
}
