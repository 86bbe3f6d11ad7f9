//! Tessera: a credential-scoping token broker for AI-agent platforms.
//!
//! Agents hold only a bootstrap secret, exchanged for short-lived scoped access tokens that
//! carry a `caller_kind` claim and never a gated scope. A gated verb needs a one-time
//! capability token bound to the exact action, resource and request digest, issued only after
//! human operators (never the requester) approve. Resource servers verify both offline
//! through the JWKS with [`verify`].
//!
//! Features: `verify` is the verifier library alone (token checks, JWKS client, gate
//! middleware); `server` (the default) adds the broker, its storage and its command line.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "verify")]
pub mod domain;
#[cfg(feature = "verify")]
pub mod token;
#[cfg(feature = "verify")]
pub mod verify;

#[cfg(feature = "server")]
pub mod approvals;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod clients;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod federation;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod passkeys;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod revocations;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sessions;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod webhooks;
