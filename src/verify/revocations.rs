//! The revocation list of an offline verifier, kept current by polling the broker's signed
//! feed (`GET /v1/revocations?since=N&nonce=R`, a JWS of type `revocations+jwt`).
//!
//! The feed is served to `service` clients only, each seeing its own tenant's revocations: give
//! the verifier the credentials of core's service client ([`FeedCredentials`], with
//! [`Verifier::with_feed_credentials`]); it exchanges them for an access token at the broker's
//! `/oauth/token` (`client_credentials`) and reuses the token until shortly before it expires.
//!
//! Every answer must be the one asked for: its signed `since` and `nonce` must equal the
//! request's, so an older signed answer replayed in its place is refused. The feed may only
//! move forwards: an answer whose position (`next`) is behind the cursor, or whose entry at the
//! cursor is not the one the verifier last saw (`since_id`), is refused — the broker's database
//! was restored from a backup or the answer is forged — and the last good list stays in force.
//! Each refusal is logged as a warning, counted ([`RevocationList::refused`]) and kept
//! ([`RevocationList::last_error`]) for health checks to show; it lasts until the broker's
//! feed is consistent with the cursor again or the verifier restarts and reads the feed anew.
//!
//! Bound: a revoked access token can still pass a verifier for at most the polling interval
//! plus one feed round trip after the revocation is committed (15 s by default with
//! [`spawn_poller`]); and never beyond its own expiry (5 minutes by default). If the feed
//! cannot be fetched, the last list stays in force and the failure is logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use super::{KeyLookup, Verifier, VerifyError};
use crate::token::jws::UnverifiedJws;
use crate::token::{ALG_EDDSA, MAX_LEEWAY_SECS, b64};

/// The `typ` of the feed.
pub const TYP_REVOCATIONS: &str = "revocations+jwt";

/// A cached feed token is replaced this long before it expires.
const TOKEN_MARGIN_SECS: i64 = 30;

#[derive(Debug, Deserialize)]
struct Entry {
    seq: i64,
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
    since: i64,
    #[serde(default)]
    since_id: Option<String>,
    next: i64,
    #[serde(default)]
    next_id: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    more: bool,
    revocations: Vec<Entry>,
}

#[derive(Debug, Default)]
struct State {
    since: i64,
    since_id: Option<String>,
    tokens: HashMap<String, i64>,
    clients: HashMap<String, (i64, i64)>,
}

/// The `service` client a verifier reads the feed as. Its secret is never shown by `Debug`.
pub struct FeedCredentials {
    client_id: String,
    client_secret: String,
}

impl FeedCredentials {
    /// A service client's id and secret (for the reference core, `CORE_CLIENT_ID` and
    /// `CORE_CLIENT_SECRET`).
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> FeedCredentials {
        FeedCredentials { client_id: client_id.into(), client_secret: client_secret.into() }
    }
}

impl std::fmt::Debug for FeedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedCredentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

struct FeedToken {
    token: String,
    usable_until: i64,
}

impl std::fmt::Debug for FeedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedToken").field("usable_until", &self.usable_until).finish_non_exhaustive()
    }
}

/// Revoked tokens and clients, as last read from the feed.
#[derive(Debug, Default)]
pub struct RevocationList {
    state: RwLock<State>,
    credentials: Option<FeedCredentials>,
    token: tokio::sync::Mutex<Option<FeedToken>>,
    refused: AtomicU64,
    last_error: Mutex<Option<FeedError>>,
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

    /// The feed position read up to.
    pub fn cursor(&self) -> i64 {
        self.cursor_and_id().0
    }

    /// How many feed answers were refused (a bad signature, an answer to another request, a
    /// feed going backwards) since the verifier started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Why the last poll failed, if it did; `None` once a poll succeeds. While this is set the
    /// list may be missing revocations.
    pub fn last_error(&self) -> Option<FeedError> {
        match self.last_error.lock() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_last_error(&self, e: Option<FeedError>) {
        match self.last_error.lock() {
            Ok(mut g) => *g = e,
            Err(p) => *p.into_inner() = e,
        }
    }

    fn cursor_and_id(&self) -> (i64, Option<String>) {
        match self.state.read() {
            Ok(s) => (s.since, s.since_id.clone()),
            Err(p) => {
                let s = p.into_inner();
                (s.since, s.since_id.clone())
            }
        }
    }

    fn apply(&self, feed: FeedClaims, now: i64) -> usize {
        let mut s = match self.state.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        // Checked against the state under this lock, in case two polls overlap.
        if feed.since != s.since || feed.since_id != s.since_id {
            return 0;
        }
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
        s.since = feed.next;
        s.since_id = feed.next_id;
        s.tokens.retain(|_, exp| *exp > now);
        s.clients.retain(|_, (_, exp)| *exp > now);
        n
    }
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The request failed.
    #[error("revocation feed fetch failed: {0}")]
    Fetch(String),
    /// No feed credentials are configured, or the broker refused them.
    #[error("revocation feed credentials refused: {0}")]
    Unauthorized(String),
    /// The feed did not verify.
    #[error("revocation feed refused: {0}")]
    Invalid(String),
    /// The signed answer is not the answer to this request (another `since` or `nonce`): an
    /// older answer replayed, or a forged one.
    #[error("revocation feed refused: the answer is not for this request ({0})")]
    Mismatch(String),
    /// The feed went backwards: the broker's position is behind the verifier's cursor, or the
    /// entry at the cursor is not the one read before (a database restored from a backup).
    #[error("revocation feed refused: the feed went backwards ({0})")]
    Backwards(String),
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

/// Checks that a verified answer is the one asked for, at `since` (whose entry was `since_id`)
/// with `nonce`, and that it moves the cursor forwards only.
fn check_answer(claims: &FeedClaims, since: i64, since_id: &Option<String>, nonce: &str) -> Result<(), FeedError> {
    if claims.since != since {
        return Err(FeedError::Mismatch(format!("asked since {since}, answered since {}", claims.since)));
    }
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(FeedError::Mismatch("the nonce differs".into()));
    }
    if claims.next < since {
        return Err(FeedError::Backwards(format!("cursor {since}, feed position {}", claims.next)));
    }
    if claims.since_id != *since_id {
        return Err(FeedError::Backwards(format!("the entry at cursor {since} is not the one read before")));
    }
    let mut last = since;
    for e in &claims.revocations {
        if e.seq <= last || e.seq > claims.next {
            return Err(FeedError::Invalid(format!("entry {} out of order", e.seq)));
        }
        last = e.seq;
    }
    if claims.next > since && claims.next_id.is_none() {
        return Err(FeedError::Invalid("no identity for the new position".into()));
    }
    Ok(())
}

fn nonce() -> Result<String, FeedError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| FeedError::Fetch("no randomness for the nonce".into()))?;
    Ok(b64::encode(&bytes))
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: i64,
}

impl Verifier {
    /// Reads the revocation feed as the service client `credentials` (see the module docs).
    /// Without credentials, [`Verifier::poll_revocations`] fails with
    /// [`FeedError::Unauthorized`].
    pub fn with_feed_credentials(mut self, credentials: FeedCredentials) -> Verifier {
        self.revocations.credentials = Some(credentials);
        self
    }

    /// Whether a service client of core's own is configured ([`Verifier::with_feed_credentials`]).
    pub fn has_service_client(&self) -> bool {
        self.revocations.credentials.is_some()
    }

    /// An access token of core's own service client (the gate acts with it at the broker for
    /// bound callers, design §13): cached while good at `now`.
    pub async fn service_token(&self, now: i64) -> Result<String, FeedError> {
        self.feed_token(now).await
    }

    /// An access token for the feed: the cached one while it is good at `now`, else a new
    /// one from the broker's token endpoint.
    async fn feed_token(&self, now: i64) -> Result<String, FeedError> {
        let list = &self.revocations;
        let Some(creds) = &list.credentials else {
            return Err(FeedError::Unauthorized("no service client is configured for the feed".into()));
        };
        let mut cached = list.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| now < t.usable_until) {
            return Ok(t.token.clone());
        }
        *cached = None;
        let url = format!("{}/oauth/token", self.policy.issuer);
        let res = self
            .jwks
            .http()
            .post(&url)
            .basic_auth(&creds.client_id, Some(&creds.client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| FeedError::Fetch(e.without_url().to_string()))?;
        if !res.status().is_success() {
            return Err(FeedError::Unauthorized(format!("token endpoint answered {}", res.status())));
        }
        let answer: TokenAnswer = res.json().await.map_err(|e| FeedError::Fetch(e.without_url().to_string()))?;
        let usable_until = now + (answer.expires_in - TOKEN_MARGIN_SECS).max(0);
        *cached = Some(FeedToken { token: answer.access_token.clone(), usable_until });
        Ok(answer.access_token)
    }

    async fn forget_feed_token(&self) {
        *self.revocations.token.lock().await = None;
    }

    /// Fetches one page at the list's cursor, checks it and applies it. Returns how many
    /// entries were read and whether more follow.
    async fn poll_page(&self, now: i64) -> Result<(usize, bool), FeedError> {
        let list = &self.revocations;
        let (since, since_id) = list.cursor_and_id();
        let nonce = nonce()?;
        let url = format!("{}/v1/revocations?since={since}&nonce={nonce}", self.policy.issuer);
        let mut res = None;
        for _attempt in 0..2 {
            let token = self.feed_token(now).await?;
            let r = self
                .jwks
                .http()
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| FeedError::Fetch(e.without_url().to_string()))?;
            if r.status() == reqwest::StatusCode::UNAUTHORIZED {
                // The cached token was revoked or its client's key rotated: get a new one once.
                self.forget_feed_token().await;
                continue;
            }
            res = Some(r);
            break;
        }
        let Some(res) = res else {
            return Err(FeedError::Unauthorized("the feed refused the service client's token".into()));
        };
        if res.status() == reqwest::StatusCode::FORBIDDEN {
            return Err(FeedError::Unauthorized("the feed is served to service clients only".into()));
        }
        if !res.status().is_success() {
            return Err(FeedError::Fetch(format!("status {}", res.status())));
        }
        let body = res.text().await.map_err(|e| FeedError::Fetch(e.without_url().to_string()))?;
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
        check_answer(&claims, since, &since_id, &nonce)?;
        let more = claims.more && claims.next > since;
        Ok((list.apply(claims, now), more))
    }

    /// Fetches the revocations published since the last poll and applies them. Returns how
    /// many entries were read. A refused answer leaves the list as it was; it is logged,
    /// counted and kept as [`RevocationList::last_error`].
    pub async fn poll_revocations(&self, now: i64) -> Result<usize, FeedError> {
        let list = &self.revocations;
        let mut total = 0;
        for _page in 0..100 {
            match self.poll_page(now).await {
                Ok((n, more)) => {
                    total += n;
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    if matches!(e, FeedError::Invalid(_) | FeedError::Mismatch(_) | FeedError::Backwards(_)) {
                        list.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, cursor = list.cursor(), "revocation feed answer refused; keeping the last list");
                    }
                    list.set_last_error(Some(e.clone()));
                    return Err(e);
                }
            }
        }
        list.set_last_error(None);
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
            match v.poll_revocations(now).await {
                // Refusals are logged where they are found.
                Err(FeedError::Invalid(_) | FeedError::Mismatch(_) | FeedError::Backwards(_)) | Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "revocation feed poll failed; keeping the last list"),
            }
        }
    })
}
