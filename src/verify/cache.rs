//! A bounded cache of verified access tokens, so that a token presented on every request of
//! an agent's session costs one signature verification, not one per request.
//!
//! What is cached is the outcome of the checks that cannot change while the token stays the
//! same text: its signature under a published key, its header and the shape of its claims.
//! Everything that can change is checked again on every hit by [`super::Verifier`]:
//!
//! - the key: an entry serves only while the key set in use still publishes the very key that
//!   verified it (same `kid`, same public key); a key unpublished, replaced or past the key
//!   set's staleness limit turns every hit into a miss, and the full check then fails;
//! - time: expiry, not-before and the lifetime cap against the request's `now`;
//! - revocation: the token, its subject and every actor of its chain against the revocation
//!   list.
//!
//! Entries are keyed by the SHA-256 of the exact token text: another spelling of the same
//! token misses and is verified in full, and a lookup never compares token text (the map
//! compares digests). Only tokens that passed every check are inserted. The cache holds at
//! most its capacity; when full, expired entries are dropped, and if that frees less than a
//! quarter of it the cache starts afresh — a flood of valid tokens costs verifications, never
//! memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{KeyLookup, PublicKey};
use crate::token::AccessClaims;

/// The default number of tokens held.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// The digest an entry is keyed by.
pub(crate) type TokenDigest = [u8; 32];

/// The SHA-256 of the token's exact text.
pub(crate) fn digest(token: &str) -> TokenDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[derive(Debug)]
struct Entry {
    claims: AccessClaims,
    key: Arc<PublicKey>,
}

/// Verified access tokens, by the digest of their text.
pub(crate) struct VerifiedTokens {
    capacity: usize,
    entries: Mutex<HashMap<TokenDigest, Entry>>,
    hits: AtomicU64,
}

impl std::fmt::Debug for VerifiedTokens {
    // The size, not the entries: a verifier's Debug output stays short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("capacity", &self.capacity)
            .field("held", &self.entries().len())
            .field("hits", &self.hits())
            .finish()
    }
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0: nothing is cached).
    pub(crate) fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens { capacity, entries: Mutex::default(), hits: AtomicU64::new(0) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The claims of the token with this digest, if it verified under a key that `keys` still
    /// publishes unchanged. Time and revocation are the caller's to check.
    pub(crate) fn get(&self, digest: &TokenDigest, keys: &dyn KeyLookup) -> Option<AccessClaims> {
        if self.capacity == 0 {
            return None;
        }
        let entries = self.entries();
        let entry = entries.get(digest)?;
        let published = keys.lookup(&entry.key.kid)?;
        if *published != *entry.key {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.claims.clone())
    }

    /// Remembers a token that passed every check, verified by `key`.
    pub(crate) fn insert(&self, digest: TokenDigest, claims: &AccessClaims, key: Arc<PublicKey>, now: i64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            entries.retain(|_, e| e.claims.exp > now);
            if entries.len() >= self.capacity - self.capacity / 4 {
                entries.clear();
            }
        }
        entries.insert(digest, Entry { claims: claims.clone(), key });
    }

    /// Tokens held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// How many checks were served from the cache.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CallerKind;
    use crate::token::claims::Audience;

    fn claims(jti: &str, exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://broker".into(),
            sub: "c1".into(),
            client_id: "c1".into(),
            aud: Audience::One("core".into()),
            iat: exp - 300,
            nbf: exp - 300,
            exp,
            jti: jti.into(),
            scope: "workspaces:read".into(),
            tenant: "org-1".into(),
            caller_kind: CallerKind::Agent,
            workspace: None,
            act: None,
            cnf: None,
        }
    }

    fn key(kid: &str, byte: u8) -> Arc<PublicKey> {
        Arc::new(PublicKey { kid: kid.into(), alg: "EdDSA".into(), raw: vec![byte; 32] })
    }

    fn published(keys: &[&Arc<PublicKey>]) -> HashMap<String, Arc<PublicKey>> {
        keys.iter().map(|k| (k.kid.clone(), Arc::clone(k))).collect()
    }

    #[test]
    fn serves_only_while_the_verifying_key_is_published_unchanged() {
        let cache = VerifiedTokens::new(8);
        let k1 = key("k1", 1);
        let d = digest("token-text");
        cache.insert(d, &claims("j1", 1_000), k1.clone(), 0);
        assert_eq!(cache.get(&d, &published(&[&k1])).unwrap().jti, "j1");
        assert_eq!(cache.hits(), 1);
        // Unpublished, or another key under the same kid: a miss.
        assert!(cache.get(&d, &published(&[&key("k2", 2)])).is_none());
        assert!(cache.get(&d, &published(&[&key("k1", 9)])).is_none());
        assert!(cache.get(&d, &HashMap::new()).is_none());
        // Another text: a miss, even one byte apart.
        assert!(cache.get(&digest("token-texT"), &published(&[&k1])).is_none());
        assert_eq!(cache.hits(), 1);
        // Debug output gives the size, never the entries.
        let shown = format!("{cache:?}");
        assert!(shown.contains("held: 1") && !shown.contains("j1") && !shown.contains("c1"), "{shown}");
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = VerifiedTokens::new(4);
        let k = key("k1", 1);
        // Two expired by t=500, two live: a full cache drops the expired ones first.
        for (i, exp) in [(0, 100), (1, 200), (2, 1_000), (3, 1_000)] {
            cache.insert(digest(&format!("t{i}")), &claims(&format!("j{i}"), exp), k.clone(), 0);
        }
        assert_eq!(cache.len(), 4);
        cache.insert(digest("t4"), &claims("j4", 1_000), k.clone(), 500);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&digest("t2"), &published(&[&k])).is_some());
        assert!(cache.get(&digest("t0"), &published(&[&k])).is_none());
        // Full of live tokens: it starts afresh rather than grow.
        cache.insert(digest("t5"), &claims("j5", 1_000), k.clone(), 500);
        cache.insert(digest("t6"), &claims("j6", 1_000), k.clone(), 500);
        assert_eq!(cache.len(), 1);
        for i in 0..100 {
            cache.insert(digest(&format!("u{i}")), &claims("u", 1_000), k.clone(), 500);
            assert!(cache.len() <= 4);
        }
        // Capacity 0 holds nothing.
        let none = VerifiedTokens::new(0);
        none.insert(digest("t"), &claims("j", 1_000), k.clone(), 0);
        assert!(none.get(&digest("t"), &published(&[&k])).is_none());
    }
}
