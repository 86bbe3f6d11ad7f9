//! The verifier library: what a resource server ("core") needs to check Tessera's tokens
//! offline and to enforce the approval gate.
//!
//! Build it alone with `default-features = false, features = ["verify"]`.

mod checks;

pub use checks::{KeyLookup, Policy, PublicKey, VerifyError};

pub use crate::token::jcs::params_digest;
pub use crate::token::{AccessClaims, CapabilityClaims};

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
    Ok(())
}
