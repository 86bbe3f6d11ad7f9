//! The checks every Tessera token passes before anything acts on it (RFC 8725, RFC 9068).

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::token::claims::Audience;
use crate::token::jws::{JwsError, UnverifiedJws};
use crate::token::{
    ALG_EDDSA, AccessClaims, CapabilityClaims, MAX_LEEWAY_SECS, MAX_LIFETIME_SECS, TYP_ACCESS, TYP_CAPABILITY,
};

/// Why a token was refused. Display text is safe to log: it never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The compact serialization, header or claims were unacceptable.
    #[error(transparent)]
    Format(#[from] JwsError),
    /// `typ` was not the one this check requires.
    #[error("wrong token type {found:?}; expected {expected}")]
    WrongType {
        /// What the token said (truncated).
        found: String,
        /// What was required.
        expected: &'static str,
    },
    /// `alg` is not allowed, or does not match the key.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// No published key has this `kid`.
    #[error("unknown key id")]
    UnknownKey,
    /// `iss` is not the trusted issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` does not name this audience.
    #[error("wrong audience")]
    Audience,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// `iat` or `nbf` lies in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp - iat` exceeds the lifetime cap, or `exp` precedes `iat`.
    #[error("token lifetime out of bounds")]
    Lifetime,
    /// A claim is present but unacceptable.
    #[error("invalid claim {0}")]
    Claim(&'static str),
    /// The token was revoked.
    #[error("token revoked")]
    Revoked,
}

/// A published verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key id.
    pub kid: String,
    /// The key's one algorithm (`EdDSA`).
    pub alg: String,
    /// The raw 32-byte Ed25519 public key.
    pub raw: Vec<u8>,
}

/// Finds published keys by `kid`.
pub trait KeyLookup {
    /// The key with this id, if published.
    fn lookup(&self, kid: &str) -> Option<Arc<PublicKey>>;
}

impl KeyLookup for HashMap<String, Arc<PublicKey>> {
    fn lookup(&self, kid: &str) -> Option<Arc<PublicKey>> {
        self.get(kid).cloned()
    }
}

/// What a verifier trusts and how strict it is about time.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The exact issuer URL.
    pub issuer: String,
    /// The audience that must appear in `aud`.
    pub audience: String,
    /// Clock leeway in seconds; clamped to 0..=60.
    pub leeway_secs: i64,
    /// Longest accepted `exp - iat`; clamped to at most 900.
    pub max_lifetime_secs: i64,
}

impl Policy {
    /// A policy with 30 s leeway and the 900 s lifetime cap.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Policy {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: 30,
            max_lifetime_secs: MAX_LIFETIME_SECS,
        }
    }

    fn leeway(&self) -> i64 {
        self.leeway_secs.clamp(0, MAX_LEEWAY_SECS)
    }

    fn max_lifetime(&self) -> i64 {
        self.max_lifetime_secs.clamp(1, MAX_LIFETIME_SECS)
    }

    /// Verifies an access token at time `now` (Unix seconds).
    pub fn verify_access(&self, keys: &dyn KeyLookup, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
        self.verify_access_keyed(keys, token, now).map(|(claims, _)| claims)
    }

    /// As [`Policy::verify_access`], with the key that verified the signature.
    pub(crate) fn verify_access_keyed(
        &self,
        keys: &dyn KeyLookup,
        token: &str,
        now: i64,
    ) -> Result<(AccessClaims, Arc<PublicKey>), VerifyError> {
        let (claims, key): (AccessClaims, _) =
            self.verify_common(keys, token, &[TYP_ACCESS, "application/at+jwt"], TYP_ACCESS)?;
        self.check_access_time(&claims, now)?;
        if claims.sub.is_empty() || claims.client_id != claims.sub {
            return Err(VerifyError::Claim("client_id"));
        }
        if claims.jti.is_empty() {
            return Err(VerifyError::Claim("jti"));
        }
        if claims.tenant.is_empty() {
            return Err(VerifyError::Claim("tenant"));
        }
        if let Some(act) = &claims.act {
            if act.depth() > crate::verify::MAX_ACT_DEPTH {
                return Err(VerifyError::Claim("act"));
            }
        }
        Ok((claims, key))
    }

    /// The checks of an access token's registered claims that depend on `now` (and on this
    /// policy): issuer, audience, not-before, lifetime, expiry. A cached verification passes
    /// them again on every use.
    pub(crate) fn check_access_time(&self, claims: &AccessClaims, now: i64) -> Result<(), VerifyError> {
        self.check_registered(&claims.iss, &claims.aud, claims.iat, claims.nbf, claims.exp, now)
    }

    /// Verifies a capability token at time `now` (Unix seconds). Binding it to a request is
    /// the caller's next step (see [`crate::verify::CapabilityBinding`]).
    pub fn verify_capability(
        &self,
        keys: &dyn KeyLookup,
        token: &str,
        now: i64,
    ) -> Result<CapabilityClaims, VerifyError> {
        let (claims, _): (CapabilityClaims, _) = self.verify_common(keys, token, &[TYP_CAPABILITY], TYP_CAPABILITY)?;
        self.check_registered(&claims.iss, &claims.aud, claims.iat, claims.nbf, claims.exp, now)?;
        if claims.sub.is_empty() {
            return Err(VerifyError::Claim("sub"));
        }
        if claims.jti.is_empty() {
            return Err(VerifyError::Claim("jti"));
        }
        if claims.bypass != claims.approvers.is_empty() {
            return Err(VerifyError::Claim("approvers"));
        }
        Ok(claims)
    }

    fn verify_common<T: DeserializeOwned>(
        &self,
        keys: &dyn KeyLookup,
        token: &str,
        allowed_typ: &[&str],
        expected: &'static str,
    ) -> Result<(T, Arc<PublicKey>), VerifyError> {
        let jws = UnverifiedJws::parse(token)?;
        let header = jws.header();
        if !allowed_typ.contains(&header.typ.as_str()) {
            return Err(VerifyError::WrongType { found: header.typ.chars().take(32).collect(), expected });
        }
        if header.alg != ALG_EDDSA {
            return Err(VerifyError::Algorithm(header.alg.chars().take(16).collect()));
        }
        let key = keys.lookup(&header.kid).ok_or(VerifyError::UnknownKey)?;
        if key.alg != header.alg {
            return Err(VerifyError::Algorithm(header.alg.chars().take(16).collect()));
        }
        jws.verify_ed25519(&key.raw)?;
        Ok((jws.claims()?, key))
    }

    fn check_registered(
        &self,
        iss: &str,
        aud: &Audience,
        iat: i64,
        nbf: i64,
        exp: i64,
        now: i64,
    ) -> Result<(), VerifyError> {
        if iss != self.issuer {
            return Err(VerifyError::Issuer);
        }
        if !aud.contains(&self.audience) {
            return Err(VerifyError::Audience);
        }
        let leeway = self.leeway();
        if iat > now.saturating_add(leeway) || nbf > now.saturating_add(leeway) {
            return Err(VerifyError::NotYetValid);
        }
        if exp <= iat || exp.saturating_sub(iat) > self.max_lifetime() {
            return Err(VerifyError::Lifetime);
        }
        if now >= exp.saturating_add(leeway) {
            return Err(VerifyError::Expired);
        }
        Ok(())
    }
}
