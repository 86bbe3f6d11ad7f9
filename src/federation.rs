//! Trusted issuers of workload identities (design §14): their keys, through the verifier
//! library's JWKS client or a file, and the strict checks of an RFC 7523 assertion.
//!
//! An assertion is refused unless: it is a compact JWS of at most 8 KiB whose header has no
//! `typ` or `typ: JWT`, `alg` one of `EdDSA`, `ES256`, `RS256` and a `kid` naming a key of the
//! issuer's set with that same algorithm; the signature verifies; `iss` is a configured issuer,
//! exactly; `aud` names that issuer's configured audience; `sub` and `jti` are non-empty
//! strings; `exp` and `iat` are integers, `iat` not in the future, `exp` not past, and
//! `exp - iat` at most one hour; `nbf`, if present, an integer not in the future; and it
//! carries no `cnf` or `act`. Claims that would speak for the registration (`caller_kind`,
//! `tenant`, `workspace`, `scope`, `client_id`) are ignored: the registration decides. Single
//! use of `jti` is the caller's next step, in the database, after these checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::config::FederationConfig;
use crate::token::UnverifiedJws;
use crate::token::claims::Audience;
use crate::token::jws::{ALG_ES256, ALG_RS256};
use crate::verify::jwks::parse_jwks;
use crate::verify::{JwksClient, JwksOptions, KeyLookup, PublicKey};

/// The longest lifetime (`exp - iat`) of an accepted assertion, seconds.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// The signature algorithms accepted on assertions.
pub const ASSERTION_ALGS: [&str; 3] = [crate::token::ALG_EDDSA, ALG_ES256, ALG_RS256];
/// Claims an assertion must not carry: they would change the answer if read (a key binding, an
/// actor chain). Claims that name what the registration decides (`scope`, `tenant`,
/// `caller_kind`, `workspace`, `client_id`: real IdPs' access tokens carry some of them) are
/// ignored, never read.
const REFUSED_CLAIMS: [&str; 2] = ["act", "cnf"];
/// Least time between two re-reads of a JWKS file for an unknown `kid`.
const FILE_RELOAD_COOLDOWN: Duration = Duration::from_secs(10);

/// A verified assertion: who it names, and the id to use once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `jti`.
    pub jti: String,
    /// `exp`.
    pub exp: i64,
}

/// Why an assertion was refused. The text is safe to return and log: it never includes the
/// assertion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AssertionError(pub String);

fn refuse(why: impl Into<String>) -> AssertionError {
    AssertionError(why.into())
}

#[derive(Debug)]
enum KeySource {
    Uri(JwksClient),
    File { path: PathBuf, keys: RwLock<Arc<HashMap<String, Arc<PublicKey>>>>, last_reload: Mutex<Option<Instant>> },
}

#[derive(Debug)]
struct TrustedIssuer {
    audience: String,
    keys: KeySource,
}

/// The configured issuers.
#[derive(Debug, Default)]
pub struct Federation {
    issuers: HashMap<String, TrustedIssuer>,
    leeway_secs: i64,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    jti: String,
}

impl Federation {
    /// The issuers of `config`. A `jwks_file` that cannot be read or parsed is an error, so a
    /// broker never starts trusting an issuer without its keys.
    pub fn new(config: &[FederationConfig], leeway_secs: i64) -> Result<Federation, String> {
        let mut issuers = HashMap::new();
        for f in config {
            let keys = match (&f.jwks_uri, &f.jwks_file) {
                (Some(uri), _) => KeySource::Uri(JwksClient::new(uri.clone(), JwksOptions::default())),
                (None, Some(path)) => {
                    let keys = read_file(path).map_err(|e| format!("federation {:?}: {e}", f.issuer))?;
                    KeySource::File { path: path.clone(), keys: RwLock::new(keys), last_reload: Mutex::new(None) }
                }
                (None, None) => return Err(format!("federation {:?}: no jwks_uri or jwks_file", f.issuer)),
            };
            issuers.insert(f.issuer.clone(), TrustedIssuer { audience: f.audience.clone(), keys });
        }
        Ok(Federation { issuers, leeway_secs: leeway_secs.clamp(0, crate::token::MAX_LEEWAY_SECS) })
    }

    /// Whether any issuer is trusted.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies `assertion` at `now` (Unix seconds).
    pub async fn verify(&self, assertion: &str, now: i64) -> Result<Assertion, AssertionError> {
        let jws = UnverifiedJws::parse_untyped(assertion).map_err(|e| refuse(format!("the assertion: {e}")))?;
        let header = jws.header().clone();
        if !(header.typ.is_empty() || header.typ.eq_ignore_ascii_case("JWT")) {
            return Err(refuse("the assertion's typ must be JWT or absent"));
        }
        if !ASSERTION_ALGS.contains(&header.alg.as_str()) {
            return Err(refuse("the assertion's alg must be EdDSA, ES256 or RS256"));
        }
        // The issuer picks the keys; nothing of the claims is trusted before the signature.
        let unverified: serde_json::Map<String, Value> =
            jws.claims().map_err(|_| refuse("the assertion's claims are not a JSON object"))?;
        let Some(Value::String(iss)) = unverified.get("iss") else {
            return Err(refuse("the assertion has no iss"));
        };
        let iss = iss.clone();
        let issuer = self.issuers.get(&iss).ok_or_else(|| refuse("the assertion's issuer is not trusted"))?;
        let key = match issuer.lookup(&header.kid).await {
            Some(k) => k,
            None => return Err(refuse("the assertion's kid names no key of its issuer")),
        };
        if key.alg != header.alg {
            return Err(refuse("the assertion's alg does not match its key"));
        }
        jws.verify_with(&key.alg, &key.raw).map_err(|_| refuse("the assertion's signature does not verify"))?;

        if let Some(c) = REFUSED_CLAIMS.iter().find(|c| unverified.contains_key(**c)) {
            return Err(refuse(format!(
                "the assertion carries {c}; a key binding or an actor chain is never taken from an assertion"
            )));
        }
        let claims: AssertionClaims = serde_json::from_value(Value::Object(unverified))
            .map_err(|_| refuse("the assertion needs iss, sub, aud, jti (strings) and exp, iat (integers)"))?;
        if claims.iss != iss {
            return Err(refuse("the assertion's issuer is not trusted"));
        }
        if !claims.aud.contains(&issuer.audience) {
            return Err(refuse("the assertion is not for this broker (aud)"));
        }
        if claims.sub.is_empty() || claims.sub.len() > 512 {
            return Err(refuse("the assertion's sub is empty or too long"));
        }
        if claims.jti.is_empty() || claims.jti.len() > 256 {
            return Err(refuse("the assertion's jti is empty or too long"));
        }
        let leeway = self.leeway_secs;
        if claims.iat > now.saturating_add(leeway) || claims.nbf.is_some_and(|n| n > now.saturating_add(leeway)) {
            return Err(refuse("the assertion is not yet valid"));
        }
        if claims.exp <= claims.iat || claims.exp.saturating_sub(claims.iat) > MAX_ASSERTION_LIFETIME_SECS {
            return Err(refuse("the assertion's lifetime (exp - iat) must be positive and at most one hour"));
        }
        if now >= claims.exp.saturating_add(leeway) {
            return Err(refuse("the assertion has expired"));
        }
        Ok(Assertion {
            issuer: claims.iss,
            subject: claims.sub,
            jti: claims.jti,
            exp: claims.exp.saturating_add(leeway),
        })
    }
}

impl TrustedIssuer {
    /// The key named `kid`: from the cached set, else after one refetch (at most once per
    /// cooldown, as the verifier library does for the broker's own keys).
    async fn lookup(&self, kid: &str) -> Option<Arc<PublicKey>> {
        match &self.keys {
            KeySource::Uri(client) => {
                client.ensure_fresh().await;
                if let Some(k) = client.lookup(kid) {
                    return Some(k);
                }
                if client.refresh_for_unknown_kid(kid).await { client.lookup(kid) } else { None }
            }
            KeySource::File { path, keys, last_reload } => {
                let current = keys.read().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone());
                if let Some(k) = current.get(kid) {
                    return Some(k.clone());
                }
                {
                    let mut last = last_reload.lock().unwrap_or_else(|p| p.into_inner());
                    if last.is_some_and(|t| t.elapsed() < FILE_RELOAD_COOLDOWN) {
                        return None;
                    }
                    *last = Some(Instant::now());
                }
                match read_file(path) {
                    Ok(fresh) => {
                        let found = fresh.get(kid).cloned();
                        *keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                        found
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "federation JWKS file unreadable; keeping the keys read before");
                        None
                    }
                }
            }
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Arc<HashMap<String, Arc<PublicKey>>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > 64 * 1024 {
        return Err(format!("{} is larger than 64 KiB", path.display()));
    }
    parse_jwks(&bytes).map(Arc::new).map_err(|e| format!("{}: {e}", path.display()))
}
