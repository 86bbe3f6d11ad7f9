//! The JWKS client: fetches the issuer's keys, caches them as `Cache-Control` says (clamped),
//! keeps the last good set through fetch failures up to a staleness limit and then fails
//! closed, and refetches at most once per cooldown when a token names an unknown `kid`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::checks::{KeyLookup, PublicKey};
use crate::token::{ALG_EDDSA, b64, jws::kid_is_plausible, strict_json};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// How the cache behaves. The defaults suit most deployments.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// Used when the response has no usable `max-age`.
    pub default_max_age: Duration,
    /// Lower clamp of `max-age`.
    pub min_max_age: Duration,
    /// Upper clamp of `max-age`.
    pub max_max_age: Duration,
    /// How long past its freshness the last good set is still used while fetches fail.
    pub stale_limit: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            default_max_age: Duration::from_secs(300),
            min_max_age: Duration::from_secs(60),
            max_max_age: Duration::from_secs(3600),
            stale_limit: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The request failed or the status was not 200.
    #[error("JWKS fetch failed: {0}")]
    Fetch(String),
    /// The document is not an acceptable JWK set.
    #[error("JWKS document refused: {0}")]
    Document(String),
}

#[derive(Debug)]
struct Cached {
    keys: Arc<HashMap<String, Arc<PublicKey>>>,
    fresh_until: Option<Instant>,
    usable_until: Option<Instant>,
}

/// A caching JWKS client for one issuer.
#[derive(Debug)]
pub struct JwksClient {
    uri: String,
    http: reqwest::Client,
    options: JwksOptions,
    cached: RwLock<Cached>,
    fetching: tokio::sync::Mutex<()>,
    last_unknown_fetch: Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

/// Parses a JWK set: Ed25519 signing keys are kept; keys of other types or with missing
/// members are ignored (RFC 7517 §5); a private member, a duplicate `kid`, or an
/// `alg` other than EdDSA on an OKP key refuses the whole set.
pub fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, Arc<PublicKey>>, JwksError> {
    let doc = strict_json::parse_object(bytes).map_err(JwksError::Document)?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err(JwksError::Document("no \"keys\" array".into()));
    };
    let mut out = HashMap::new();
    for k in keys {
        let Value::Object(k) = k else { continue };
        if k.contains_key("d") {
            return Err(JwksError::Document("a private key member is present".into()));
        }
        let s = |name: &str| k.get(name).and_then(Value::as_str);
        if s("kty") != Some("OKP") || s("crv") != Some("Ed25519") {
            continue;
        }
        if s("use").is_some_and(|u| u != "sig") || k.contains_key("key_ops") {
            continue;
        }
        let (Some(kid), Some(x)) = (s("kid"), s("x")) else { continue };
        let alg = s("alg").unwrap_or(ALG_EDDSA);
        if alg != ALG_EDDSA {
            return Err(JwksError::Document(format!("key {kid:?} has alg {alg:?}")));
        }
        if !kid_is_plausible(kid) {
            continue;
        }
        let Ok(raw) = b64::decode(x) else { continue };
        if raw.len() != 32 {
            continue;
        }
        let key = Arc::new(PublicKey { kid: kid.to_owned(), alg: ALG_EDDSA.to_owned(), raw });
        if out.insert(kid.to_owned(), key).is_some() {
            return Err(JwksError::Document(format!("duplicate kid {kid:?}")));
        }
    }
    Ok(out)
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok()).map(Duration::from_secs)
}

impl JwksClient {
    /// A client for `jwks_uri`, with nothing cached yet.
    pub fn new(jwks_uri: impl Into<String>, options: JwksOptions) -> JwksClient {
        let http = reqwest::Client::builder()
            .timeout(options.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        JwksClient {
            uri: jwks_uri.into(),
            http,
            options,
            cached: RwLock::new(Cached { keys: Arc::default(), fresh_until: None, usable_until: None }),
            fetching: tokio::sync::Mutex::new(()),
            last_unknown_fetch: Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The HTTP client (shared with the revocation feed).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How many fetches were attempted (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The keys usable now: the cached set while within its staleness limit, else none.
    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<PublicKey>>> {
        let g = match self.cached.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.usable_until {
            Some(t) if Instant::now() < t => g.keys.clone(),
            _ => Arc::default(),
        }
    }

    fn is_fresh(&self) -> bool {
        let g = match self.cached.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.fresh_until.is_some_and(|t| Instant::now() < t)
    }

    /// Fetches unless the set is fresh (single-flight: concurrent callers share one fetch).
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let _guard = self.fetching.lock().await;
        // Another caller fetched while this one waited: use theirs.
        if self.is_fresh() {
            return Ok(());
        }
        self.fetch_now().await
    }

    async fn fetch_now(&self) -> Result<(), JwksError> {
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let res = self.http.get(&self.uri).send().await.map_err(|e| JwksError::Fetch(e.to_string()))?;
            if !res.status().is_success() {
                return Err(JwksError::Fetch(format!("status {}", res.status())));
            }
            let age = max_age(res.headers())
                .unwrap_or(self.options.default_max_age)
                .clamp(self.options.min_max_age, self.options.max_max_age);
            let bytes = res.bytes().await.map_err(|e| JwksError::Fetch(e.to_string()))?;
            if bytes.len() > MAX_JWKS_BYTES {
                return Err(JwksError::Document("document too large".into()));
            }
            Ok((parse_jwks(&bytes)?, age))
        }
        .await;
        let now = Instant::now();
        let mut g = match self.cached.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok((keys, age)) => {
                *g = Cached {
                    keys: Arc::new(keys),
                    fresh_until: Some(now + age),
                    usable_until: Some(now + age + self.options.stale_limit),
                };
                Ok(())
            }
            Err(e) => {
                // Keep the last good set until its staleness limit; retry after a short pause
                // rather than on every request.
                let retry = now + self.options.min_max_age.min(Duration::from_secs(10));
                g.fresh_until = Some(retry.min(g.usable_until.unwrap_or(retry)));
                tracing::warn!(uri = %self.uri, error = %e, "JWKS fetch failed; keeping the last good key set");
                Err(e)
            }
        }
    }

    /// Fetches if the cached set is no longer fresh.
    pub async fn ensure_fresh(&self) {
        if !self.is_fresh() {
            let _ = self.refresh().await;
        }
    }

    /// Called when a token names a `kid` the cache lacks: refetches at most once per
    /// cooldown, whatever the number of callers or kids. Returns whether a fetch happened.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        if !kid_is_plausible(kid) {
            return false;
        }
        {
            let mut last = match self.last_unknown_fetch.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if last.is_some_and(|t| t.elapsed() < self.options.unknown_kid_cooldown) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let _guard = self.fetching.lock().await;
        self.fetch_now().await.is_ok()
    }
}

impl KeyLookup for JwksClient {
    fn lookup(&self, kid: &str) -> Option<Arc<PublicKey>> {
        self.snapshot().get(kid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ed25519_keys_and_refuses_dangerous_sets() {
        let x = b64::encode(&[1u8; 32]);
        let ok = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1","alg":"EdDSA","use":"sig"}},{{"kty":"RSA","n":"x","e":"AQAB","kid":"r"}}]}}"#
        );
        let keys = parse_jwks(ok.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["k1"].raw, vec![1u8; 32]);
        let private = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","d":"{x}","kid":"k1"}}]}}"#);
        assert!(parse_jwks(private.as_bytes()).is_err());
        let dup = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1"}},{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1"}}]}}"#
        );
        assert!(parse_jwks(dup.as_bytes()).is_err());
        let hs = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1","alg":"HS256"}}]}}"#);
        assert!(parse_jwks(hs.as_bytes()).is_err());
        assert!(parse_jwks(b"[]").is_err());
    }
}
