//! Token formats: the claim sets, the one strict compact-JWS parser that both the broker and
//! the verifier library use, the RFC 8785 digest of request parameters and their presented
//! form.

pub mod b64;
pub mod claims;
pub mod jcs;
pub mod jws;
pub mod presented;
pub mod strict_json;

pub use claims::{AccessClaims, Actor, CapabilityClaims, Confirmation};
pub use jws::{Header, JwsError, UnverifiedJws};

/// The `typ` header of an access token (RFC 9068).
pub const TYP_ACCESS: &str = "at+jwt";
/// The `typ` header of a capability token.
pub const TYP_CAPABILITY: &str = "cap+jwt";
/// The only signature algorithm Tessera issues.
pub const ALG_EDDSA: &str = "EdDSA";
/// Largest token accepted anywhere, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The most clock leeway any check may allow, in seconds.
pub const MAX_LEEWAY_SECS: i64 = 60;
/// The longest lifetime (`exp - iat`) of any token, in seconds.
pub const MAX_LIFETIME_SECS: i64 = 900;
