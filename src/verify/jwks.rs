//! The JWKS client: fetches the issuer's keys, caches them as `Cache-Control` says (clamped),
//! keeps the last good set through fetch failures up to a staleness limit and then fails
//! closed, and refetches at most once per cooldown when a token names an unknown `kid`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::checks::{KeyLookup, PublicKey};
use crate::token::jws::{ALG_ES256, ALG_RS256, kid_is_plausible};
use crate::token::{ALG_EDDSA, b64, strict_json};

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

/// Parses a JWK set. Kept: Ed25519 keys (`OKP`/`Ed25519`, `alg` `EdDSA`), P-256 keys
/// (`EC`/`P-256`, `alg` `ES256`, the point checked on the curve when used) and RSA keys of
/// 2048 to 8192 bits (`RSA`, `alg` `RS256`); a key without `alg` gets its type's one
/// algorithm. Ignored (RFC 7517 §5): keys of other types or curves, RSA keys of other
/// algorithms, keys not for signing, keys with missing or malformed members. Refused, the
/// whole set: a private member, a duplicate `kid`, or an `alg` other than EdDSA on an OKP
/// key. The broker's own tokens are checked for `EdDSA` whatever the set holds.
pub fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, Arc<PublicKey>>, JwksError> {
    let doc = strict_json::parse_object(bytes).map_err(JwksError::Document)?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err(JwksError::Document("no \"keys\" array".into()));
    };
    let mut out = HashMap::new();
    for k in keys {
        let Value::Object(k) = k else { continue };
        if ["d", "p", "q", "dp", "dq", "qi"].iter().any(|m| k.contains_key(*m)) {
            return Err(JwksError::Document("a private key member is present".into()));
        }
        let s = |name: &str| k.get(name).and_then(Value::as_str);
        if s("use").is_some_and(|u| u != "sig") || k.contains_key("key_ops") {
            continue;
        }
        let Some(kid) = s("kid") else { continue };
        let parsed = match (s("kty"), s("crv")) {
            (Some("OKP"), Some("Ed25519")) => {
                let alg = s("alg").unwrap_or(ALG_EDDSA);
                if alg != ALG_EDDSA {
                    return Err(JwksError::Document(format!("key {kid:?} has alg {alg:?}")));
                }
                s("x").and_then(|x| b64::decode(x).ok()).filter(|raw| raw.len() == 32).map(|raw| (ALG_EDDSA, raw))
            }
            (Some("EC"), Some("P-256")) if s("alg").is_none_or(|a| a == ALG_ES256) => {
                match (s("x").map(b64::decode), s("y").map(b64::decode)) {
                    (Some(Ok(x)), Some(Ok(y))) if x.len() == 32 && y.len() == 32 => {
                        let mut point = Vec::with_capacity(65);
                        point.push(4u8);
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        Some((ALG_ES256, point))
                    }
                    _ => None,
                }
            }
            (Some("RSA"), _) if s("alg").is_none_or(|a| a == ALG_RS256) => {
                match (s("n").map(b64::decode), s("e").map(b64::decode)) {
                    (Some(Ok(n)), Some(Ok(e))) if (256..=1024).contains(&n.len()) && !e.is_empty() && e.len() <= 8 => {
                        Some((ALG_RS256, rsa_public_key_der(&n, &e)))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((alg, raw)) = parsed else { continue };
        if !kid_is_plausible(kid) {
            continue;
        }
        let key = Arc::new(PublicKey { kid: kid.to_owned(), alg: alg.to_owned(), raw });
        if out.insert(kid.to_owned(), key).is_some() {
            return Err(JwksError::Document(format!("duplicate kid {kid:?}")));
        }
    }
    Ok(out)
}

/// The DER `RSAPublicKey` (RFC 8017 A.1.1) of modulus `n` and exponent `e`, both big-endian.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(value: &[u8]) -> Vec<u8> {
        let trimmed: &[u8] = {
            let zeros = value.iter().take_while(|b| **b == 0).count().min(value.len().saturating_sub(1));
            &value[zeros..]
        };
        let pad = trimmed.first().is_some_and(|b| b & 0x80 != 0);
        let mut out = vec![0x02];
        push_len(&mut out, trimmed.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
        out
    }
    let body = [integer(n), integer(e)].concat();
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
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
            // Read no further than the limit: a server that sends more (or never stops) costs
            // at most MAX_JWKS_BYTES of memory, and its connection is dropped there.
            let too_large = || JwksError::Document("document too large".into());
            if res.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                return Err(too_large());
            }
            let mut res = res;
            let mut bytes = Vec::new();
            while let Some(chunk) = res.chunk().await.map_err(|e| JwksError::Fetch(e.to_string()))? {
                if bytes.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
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
