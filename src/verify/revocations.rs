//! The revocation list of an offline verifier, kept current by polling the broker's signed
//! feed (`GET /v1/revocations?since=N`, a JWS of type `revocations+jwt`).
//!
//! Bound: a revoked access token can still pass a verifier for at most the polling interval
//! plus one feed round trip after the revocation is committed (15 s by default with
//! [`spawn_poller`]); and never beyond its own expiry (5 minutes by default). If the feed
//! cannot be fetched, the last list stays in force and the failure is logged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::{KeyLookup, Verifier, VerifyError};
use crate::token::jws::UnverifiedJws;
use crate::token::{ALG_EDDSA, MAX_LEEWAY_SECS};

/// The `typ` of the feed.
pub const TYP_REVOCATIONS: &str = "revocations+jwt";

#[derive(Debug, Deserialize)]
struct Entry {
    kind: String,
    #[serde(default)]
    jti: Option<String>,
    client_id: String,
    #[serde(default)]
    not_after: Option<i64>,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct FeedClaims {
    iss: String,
    iat: i64,
    exp: i64,
    next: i64,
    more: bool,
    revocations: Vec<Entry>,
}

#[derive(Debug, Default)]
struct State {
    since: i64,
    tokens: HashMap<String, i64>,
    clients: HashMap<String, (i64, i64)>,
}

/// Revoked tokens and clients, as last read from the feed.
#[derive(Debug, Default)]
pub struct RevocationList {
    state: RwLock<State>,
}

impl RevocationList {
    /// Whether a token (`jti`, of client `sub`, issued at `iat`) is revoked.
    pub fn is_revoked(&self, jti: &str, sub: &str, iat: i64) -> bool {
        let s = match self.state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.tokens.contains_key(jti) || s.clients.get(sub).is_some_and(|(not_after, _)| iat <= *not_after)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        let s = match self.state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.tokens.len() + s.clients.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, feed: FeedClaims, now: i64) -> usize {
        let mut s = match self.state.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let n = feed.revocations.len();
        for e in feed.revocations {
            match (e.kind.as_str(), e.jti, e.not_after) {
                ("token", Some(jti), _) => {
                    s.tokens.insert(jti, e.expires_at);
                }
                ("client", _, Some(not_after)) => {
                    let entry = s.clients.entry(e.client_id).or_insert((not_after, e.expires_at));
                    *entry = (entry.0.max(not_after), entry.1.max(e.expires_at));
                }
                _ => {}
            }
        }
        s.since = s.since.max(feed.next);
        s.tokens.retain(|_, exp| *exp > now);
        s.clients.retain(|_, (_, exp)| *exp > now);
        n
    }

    fn since(&self) -> i64 {
        match self.state.read() {
            Ok(s) => s.since,
            Err(p) => p.into_inner().since,
        }
    }
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The request failed.
    #[error("revocation feed fetch failed: {0}")]
    Fetch(String),
    /// The feed did not verify.
    #[error("revocation feed refused: {0}")]
    Invalid(String),
}

fn verify_feed(keys: &dyn KeyLookup, token: &str, issuer: &str, now: i64) -> Result<FeedClaims, FeedError> {
    let bad = |e: &dyn std::fmt::Display| FeedError::Invalid(e.to_string());
    let jws = UnverifiedJws::parse(token).map_err(|e| bad(&e))?;
    let h = jws.header();
    if h.typ != TYP_REVOCATIONS || h.alg != ALG_EDDSA {
        return Err(FeedError::Invalid("wrong typ or alg".into()));
    }
    let key = keys.lookup(&h.kid).ok_or_else(|| FeedError::Invalid("unknown key".into()))?;
    jws.verify_ed25519(&key.raw).map_err(|e| bad(&e))?;
    let claims: FeedClaims = jws.claims().map_err(|e| bad(&e))?;
    if claims.iss != issuer {
        return Err(FeedError::Invalid("wrong issuer".into()));
    }
    if claims.iat > now + MAX_LEEWAY_SECS || claims.exp <= now - MAX_LEEWAY_SECS {
        return Err(FeedError::Invalid("stale or future feed".into()));
    }
    Ok(claims)
}

impl Verifier {
    /// Fetches the revocations published since the last poll and applies them. Returns how
    /// many entries were read.
    pub async fn poll_revocations(&self, now: i64) -> Result<usize, FeedError> {
        let list = &self.revocations;
        let mut total = 0;
        for _page in 0..100 {
            let url = format!("{}/v1/revocations?since={}", self.policy.issuer, list.since());
            let res = self.jwks.http().get(&url).send().await.map_err(|e| FeedError::Fetch(e.to_string()))?;
            if !res.status().is_success() {
                return Err(FeedError::Fetch(format!("status {}", res.status())));
            }
            let body = res.text().await.map_err(|e| FeedError::Fetch(e.to_string()))?;
            let token = body.trim();
            self.jwks.ensure_fresh().await;
            let claims = match verify_feed(&*self.jwks.snapshot(), token, &self.policy.issuer, now) {
                Err(FeedError::Invalid(_)) => {
                    let kid = UnverifiedJws::parse(token).map(|j| j.header().kid.clone()).unwrap_or_default();
                    self.jwks.refresh_for_unknown_kid(&kid).await;
                    verify_feed(&*self.jwks.snapshot(), token, &self.policy.issuer, now)?
                }
                r => r?,
            };
            let more = claims.more;
            total += list.apply(claims, now);
            if !more {
                break;
            }
        }
        Ok(total)
    }

    /// The revocation list in force.
    pub fn revocations(&self) -> &RevocationList {
        &self.revocations
    }

    pub(super) fn check_revoked(&self, jti: &str, sub: &str, iat: i64) -> Result<(), VerifyError> {
        if self.revocations.is_revoked(jti, sub, iat) { Err(VerifyError::Revoked) } else { Ok(()) }
    }
}

/// Polls the feed every `every` in the background, for as long as the verifier lives.
pub fn spawn_poller(verifier: Arc<Verifier>, every: Duration) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&verifier);
    drop(verifier);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(v) = weak.upgrade() else { break };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if let Err(e) = v.poll_revocations(now).await {
                tracing::warn!(error = %e, "revocation feed poll failed; keeping the last list");
            }
        }
    })
}
