//! Request ids: every request gets an `x-request-id` (the caller's, when it is a short plain
//! token; otherwise a fresh one, unique across processes), the request span carries it, and
//! the response echoes it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};

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
