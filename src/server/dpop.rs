//! Proof of possession at the broker (design §13): proofs on `/oauth/token`, bound tokens on
//! `/v1/*`, and server nonces (RFC 9449 §8).
//!
//! Nonces are stateless: the time window they were made in and an HMAC of it under a key this
//! process draws at start. A nonce is good in its window and the next, so for between one and
//! two `dpop_nonce_secs`. Replicas each have their own key: a client sent to another replica is
//! answered `use_dpop_nonce` with that replica's nonce, and retries once.

use axum::http::HeaderMap;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::{ApiError, ApiResult, AppState};
use crate::token::b64;
use crate::verify::dpop::{self, CheckedProof, DpopVerifier, ProofCheck};

/// The broker's proof checks, replay cache and nonce key.
pub struct DpopState {
    verifier: DpopVerifier,
    nonce_key: hmac::Key,
    nonce_secs: i64,
    require_nonce: bool,
}

impl std::fmt::Debug for DpopState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopState").field("require_nonce", &self.require_nonce).finish_non_exhaustive()
    }
}

impl DpopState {
    /// Draws a nonce key; `require_nonce` makes the token endpoint demand nonces; `replay`
    /// bounds the replay cache.
    pub fn new(require_nonce: bool, nonce_secs: u64, replay: dpop::ReplayLimits) -> anyhow::Result<DpopState> {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness for the DPoP nonce key"))?;
        Ok(DpopState {
            verifier: DpopVerifier::with_limits(replay),
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            nonce_secs: i64::try_from(nonce_secs).unwrap_or(300).max(1),
            require_nonce,
        })
    }

    /// The proof checks and their replay cache.
    pub fn verifier(&self) -> &DpopVerifier {
        &self.verifier
    }

    fn nonce_for(&self, window: i64) -> String {
        let mut bytes = window.to_be_bytes().to_vec();
        bytes.extend_from_slice(&hmac::sign(&self.nonce_key, &window.to_be_bytes()).as_ref()[..16]);
        b64::encode(&bytes)
    }

    /// A fresh nonce, when nonces are required.
    pub fn nonce(&self, now: i64) -> Option<String> {
        self.require_nonce.then(|| self.nonce_for(now.div_euclid(self.nonce_secs)))
    }

    fn nonce_ok(&self, nonce: &str, now: i64) -> bool {
        let Ok(bytes) = b64::decode(nonce) else { return false };
        if bytes.len() != 24 {
            return false;
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[..8]);
        let window = i64::from_be_bytes(w);
        let current = now.div_euclid(self.nonce_secs);
        if window != current && window != current - 1 {
            return false;
        }
        let expected = hmac::sign(&self.nonce_key, &window.to_be_bytes());
        subtle::ConstantTimeEq::ct_eq(&expected.as_ref()[..16], &bytes[8..]).into()
    }
}

/// The proof on a token request, if any: checked for `POST` of the token endpoint, and its
/// nonce when nonces are required; not yet remembered ([`spend_proof`] does that, once the
/// request is otherwise good). A bad proof is `400 invalid_dpop_proof`; a missing or old nonce
/// `400 use_dpop_nonce` with a fresh one.
pub(super) fn token_request_proof(state: &AppState, headers: &HeaderMap, now: i64) -> ApiResult<Option<CheckedProof>> {
    let proof = dpop::proof_header(headers).map_err(|e| ApiError::invalid_dpop_proof(e.to_string()))?;
    let Some(proof) = proof else { return Ok(None) };
    let url = format!("{}/oauth/token", state.config().issuer);
    let check = ProofCheck { method: "POST", url: &url, access_token: None, now };
    let checked = dpop::check_proof(proof, &check).map_err(|e| ApiError::invalid_dpop_proof(e.to_string()))?;
    let d = state.dpop();
    if let Some(fresh) = d.nonce(now)
        && !checked.nonce.as_deref().is_some_and(|n| d.nonce_ok(n, now))
    {
        return Err(ApiError::use_dpop_nonce(fresh));
    }
    Ok(Some(checked))
}

/// Remembers a token request's proof as `client`'s, once the client authenticated and the
/// request is good but for this: a replay is `400 invalid_dpop_proof`, and so is a key or client
/// at its share of the replay cache (only that key or client is refused).
pub(super) fn spend_proof(state: &AppState, proof: Option<&CheckedProof>, client: &str, now: i64) -> ApiResult<()> {
    let Some(p) = proof else { return Ok(()) };
    state.dpop().verifier.cache().remember(p, client, now).map_err(|e| ApiError::invalid_dpop_proof(e.to_string()))
}

/// Maps a refused presentation on `/v1` to `401 invalid_token` with the `DPoP` challenge.
pub(super) fn refused(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_token_dpop(format!("access token rejected: {e}"))
}
