//! The verifier library: what a resource server ("core") needs to check Tessera's tokens
//! offline and to enforce the approval gate.
//!
//! Build it alone with `default-features = false, features = ["verify"]`.

mod cache;
mod checks;
pub mod dpop;
pub mod gate;
pub mod jwks;
pub mod revocations;

pub use checks::{KeyLookup, Policy, PublicKey, VerifyError};
pub use jwks::{JwksClient, JwksOptions};

pub use crate::token::jcs::{check_numbers, params_digest};
pub use crate::token::presented::{PresentedError, fingerprint, presented};
pub use crate::token::{AccessClaims, CapabilityClaims};

/// Offline verification against a broker's JWKS: the checks of [`Policy`] with keys from a
/// caching [`JwksClient`].
#[derive(Debug)]
pub struct Verifier {
    policy: Policy,
    jwks: JwksClient,
    revocations: revocations::RevocationList,
    dpop: dpop::DpopVerifier,
    verified: cache::VerifiedTokens,
}

impl Verifier {
    /// Verifies tokens of `policy.issuer` with keys from `jwks`.
    pub fn new(policy: Policy, jwks: JwksClient) -> Verifier {
        Verifier {
            policy,
            jwks,
            revocations: revocations::RevocationList::default(),
            dpop: Default::default(),
            verified: cache::VerifiedTokens::new(cache::DEFAULT_CAPACITY),
        }
    }

    /// Holds at most `capacity` verified access tokens (10,000 by default; 0 turns the cache
    /// off). A token presented again costs a hash and a lookup instead of a signature
    /// verification; its key, times and revocation are still checked on every use, so a
    /// cached token fails exactly when a fresh verification would.
    pub fn with_token_cache(mut self, capacity: usize) -> Verifier {
        self.verified = cache::VerifiedTokens::new(capacity);
        self
    }

    /// How many access-token checks were served by the cache of verified tokens.
    pub fn token_cache_hits(&self) -> u64 {
        self.verified.hits()
    }

    /// Trusts the broker at `issuer` (its JWKS at `/.well-known/jwks.json`) for `audience`,
    /// with the default leeway, lifetime cap and cache settings.
    pub fn for_issuer(issuer: &str, audience: &str) -> Verifier {
        let issuer = issuer.trim_end_matches('/');
        let jwks = JwksClient::new(format!("{issuer}/.well-known/jwks.json"), JwksOptions::default());
        Verifier::new(Policy::new(issuer, audience), jwks)
    }

    /// The checks applied.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The key cache.
    pub fn jwks(&self) -> &JwksClient {
        &self.jwks
    }

    /// The DPoP proof checks and their replay cache.
    pub fn dpop(&self) -> &dpop::DpopVerifier {
        &self.dpop
    }

    /// Verifies an access token as presented on a request: the token itself (see
    /// [`Verifier::verify_access`]), then, for a bound token, the DPoP proof of its key for
    /// `method` and `url` (design §13). Returns the claims and, for a bound token, the proof.
    #[allow(clippy::too_many_arguments)] // one request's facts, each needed
    pub async fn verify_presented(
        &self,
        scheme: dpop::Scheme,
        token: &str,
        proof: Option<&str>,
        method: &str,
        url: &str,
        now: i64,
    ) -> Result<(AccessClaims, Option<dpop::CheckedProof>), PresentedTokenError> {
        let claims = self.verify_access(token, now).await.map_err(PresentedTokenError::Token)?;
        let proof = self
            .dpop
            .check_presentation(&claims, scheme, token, proof, method, url, now)
            .map_err(PresentedTokenError::Presentation)?;
        Ok((claims, proof))
    }

    async fn with_keys<T>(
        &self,
        token: &str,
        check: impl Fn(&dyn KeyLookup) -> Result<T, VerifyError>,
    ) -> Result<T, VerifyError> {
        self.jwks.ensure_fresh().await;
        match check(&*self.jwks.snapshot()) {
            Err(VerifyError::UnknownKey) => {
                let kid = crate::token::UnverifiedJws::parse(token).map(|j| j.header().kid.clone())?;
                if self.jwks.refresh_for_unknown_kid(&kid).await {
                    check(&*self.jwks.snapshot())
                } else {
                    Err(VerifyError::UnknownKey)
                }
            }
            r => r,
        }
    }

    /// Verifies an access token at `now` (Unix seconds), and that the revocation list (see
    /// [`Verifier::poll_revocations`]) does not name it.
    ///
    /// A token that verified before is taken from the cache of verified tokens while the key
    /// that verified it is still published unchanged; its times and revocation are checked
    /// again on every use.
    pub async fn verify_access(&self, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
        let digest = cache::digest(token);
        self.jwks.ensure_fresh().await;
        let cached = self.verified.get(&digest, &*self.jwks.snapshot());
        if let Some(claims) = cached {
            self.policy.check_access_time(&claims, now)?;
            self.check_chain_revoked(&claims)?;
            return Ok(claims);
        }
        let (claims, key) = self.with_keys(token, |keys| self.policy.verify_access_keyed(keys, token, now)).await?;
        self.check_chain_revoked(&claims)?;
        self.verified.insert(digest, &claims, key, now);
        Ok(claims)
    }

    fn check_chain_revoked(&self, claims: &AccessClaims) -> Result<(), VerifyError> {
        self.check_revoked(&claims.jti, &claims.sub, claims.iat)?;
        // Revoking (or disabling) any client of a delegation chain revokes the token too
        // (design §12): each actor is checked as a subject would be.
        for actor in claims.actors() {
            self.check_revoked(&claims.jti, actor, claims.iat)?;
        }
        Ok(())
    }

    /// Verifies a capability token at `now` (Unix seconds).
    pub async fn verify_capability(&self, token: &str, now: i64) -> Result<CapabilityClaims, VerifyError> {
        self.with_keys(token, |keys| self.policy.verify_capability(keys, token, now)).await
    }
}

/// Why an access token presented on a request was refused: each is `401 invalid_token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresentedTokenError {
    /// The token itself does not verify.
    #[error("access token rejected: {0}")]
    Token(VerifyError),
    /// The token is fine, but not presented as it must be (DPoP).
    #[error("access token rejected: {0}")]
    Presentation(dpop::PresentationError),
}

impl PresentedTokenError {
    /// Whether the refusal concerns proof of possession (its challenge is `DPoP`).
    pub fn is_dpop(&self) -> bool {
        matches!(self, PresentedTokenError::Presentation(_))
    }
}

/// The deepest RFC 8693 actor chain accepted.
pub const MAX_ACT_DEPTH: usize = 4;

/// What a capability must be bound to for one request.
#[derive(Debug, Clone, Copy)]
pub struct CapabilityBinding<'a> {
    /// The gated action of the route.
    pub action: &'a str,
    /// The resource derived from the request.
    pub resource: &'a str,
    /// The digest of the request's parameters.
    pub params_digest: &'a str,
}

/// Why a verified capability does not fit the request it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// Another action.
    #[error("capability is for another action")]
    Action,
    /// Another resource.
    #[error("capability is for another resource")]
    Resource,
    /// Other parameters.
    #[error("capability is for other parameters")]
    Digest,
    /// Another caller.
    #[error("capability was issued to another caller")]
    Subject,
    /// Another tenant.
    #[error("capability belongs to another tenant")]
    Tenant,
    /// Another delegation chain: the capability serves only the chain that asked for it.
    #[error("capability was issued to another chain of actors")]
    Actors,
    /// Another key: a capability of a bound requester serves only requests proved by its key.
    #[error("capability is bound to another key")]
    Key,
}

/// Checks that `cap` is bound to exactly this request by exactly this caller.
pub fn check_binding(
    cap: &CapabilityClaims,
    caller: &AccessClaims,
    binding: CapabilityBinding<'_>,
) -> Result<(), BindingError> {
    if cap.action != binding.action {
        return Err(BindingError::Action);
    }
    if cap.resource != binding.resource {
        return Err(BindingError::Resource);
    }
    if cap.params_digest != binding.params_digest {
        return Err(BindingError::Digest);
    }
    if cap.sub != caller.sub {
        return Err(BindingError::Subject);
    }
    if cap.tenant != caller.tenant {
        return Err(BindingError::Tenant);
    }
    let cap_actors: Vec<&str> =
        cap.act.as_ref().map(|a| a.chain().into_iter().map(|x| x.sub.as_str()).collect()).unwrap_or_default();
    if cap_actors != caller.actors() {
        return Err(BindingError::Actors);
    }
    // The caller's token was presented with a proof of its key (checked before this), so the
    // same `cnf` means the request was proved by the capability's key.
    if cap.cnf != caller.cnf {
        return Err(BindingError::Key);
    }
    Ok(())
}
