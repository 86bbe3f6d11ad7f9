//! Console sessions: sign-in with an operator client's credentials, the session cookie, the
//! per-session CSRF token, and the operator identity handlers act as.
//!
//! - The session id is 256 random bits, sent only in the cookie. The database keeps its
//!   SHA-256, so a copy of `console_sessions` signs nobody in.
//! - The CSRF token is HMAC-SHA256 keyed by the session id over a fixed label: the server
//!   recomputes it from the cookie and never stores it, and it reveals nothing of the id.
//!   Forms carry it; every POST compares it in constant time.
//! - Every request re-reads the session and the client: an expired session, a signed-out one,
//!   and one whose client was disabled (or is no operator any more), whose secret was rotated
//!   since sign-in, or whose client was revoked since sign-in, end at once.

use axum::http::{HeaderMap, HeaderValue, header};
use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clients::ClientRecord;
use crate::server::{ApiError, AppState};
use crate::sessions::{self, Found, SessionRow};
use crate::store::StoreError;
use crate::token::claims::Audience;
use crate::token::{AccessClaims, b64};

/// The session cookie's name. (`__Host-` would need `Path=/`; the cookie is kept to
/// `/console` instead, so the API never receives it.)
pub const COOKIE: &str = "tessera_console";

/// The label the CSRF token is computed over.
const CSRF_LABEL: &[u8] = b"tessera console csrf v1";

/// Characters of a session id: 32 bytes in unpadded base64url.
const SESSION_ID_LEN: usize = 43;

/// A signed-in operator, as the console's handlers see it.
#[derive(Clone)]
pub struct Operator {
    /// The identity the approval functions check, built from the client's registration as
    /// it is now (its allowed scopes under today's policy), exactly as a token would carry it.
    pub claims: AccessClaims,
    /// The client's registration.
    pub client: ClientRecord,
    /// This session's CSRF token, for the forms on the page.
    pub csrf: String,
    /// The stored session's key.
    pub session_hash: String,
    /// How the operator signed in: `secret` or `passkey`.
    pub method: String,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").field("client_id", &self.claims.sub).field("tenant", &self.claims.tenant).finish()
    }
}

impl Operator {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        match presented {
            Some(p) => p.as_bytes().ct_eq(self.csrf.as_bytes()).into(),
            None => false,
        }
    }
}

/// A new session id: 256 random bits, base64url. Zeroed when dropped.
fn new_session_id() -> Result<Zeroizing<String>, ApiError> {
    let mut b = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(b.as_mut()).map_err(|_| ApiError::internal(&"random source failed"))?;
    Ok(Zeroizing::new(b64::encode(b.as_ref())))
}

/// The stored key of a session id: lowercase hex SHA-256.
pub fn session_hash(session_id: &str) -> String {
    digest(&SHA256, session_id.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The CSRF token of a session id.
pub fn csrf_token(session_id: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, session_id.as_bytes());
    b64::encode(hmac::sign(&key, CSRF_LABEL).as_ref())
}

/// The session id in the request's cookies, if one is well-formed.
fn session_id_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .find(|v| v.len() == SESSION_ID_LEN && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
}

/// Whether the request carried a console cookie at all (valid or not).
pub fn has_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| pair.trim().split_once('=').is_some_and(|(n, _)| n == COOKIE))
}

/// The identity an operator's session acts as: the client's allowed scopes under today's
/// policy, its tenant and kind. It is never signed or sent anywhere.
fn operator_claims(state: &AppState, client: &ClientRecord, session: &SessionRow, now: i64) -> AccessClaims {
    let cfg = state.config();
    let scopes = cfg.policy.allowed(client.kind, &client.scopes);
    AccessClaims {
        iss: cfg.issuer.clone(),
        sub: client.client_id.to_string(),
        client_id: client.client_id.to_string(),
        aud: Audience::One(cfg.audience.clone()),
        iat: now,
        nbf: now,
        exp: session.expires_at,
        jti: sessions::token_id(&session.session_hash),
        scope: scopes.to_string(),
        tenant: client.tenant.to_string(),
        caller_kind: client.kind,
        workspace: None,
        act: None,
        cnf: None,
    }
}

/// The operator signed in by the request's cookie, if the session is live and its client is
/// an enabled operator. A session whose client is disabled ends here, with every other
/// session of that client.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<Operator>, StoreError> {
    let Some(id) = session_id_of(headers) else { return Ok(None) };
    let hash = session_hash(id);
    let now = state.now();
    match sessions::find(state.store(), &hash, now).await? {
        Found::Live(row, client) => {
            let claims = operator_claims(state, &client, &row, now);
            Ok(Some(Operator { claims, client: *client, csrf: csrf_token(id), session_hash: hash, method: row.method }))
        }
        Found::None => Ok(None),
        Found::ClientGone { client_id, ended } => {
            request_log!(INFO, client_id = %client_id, ended, "console sessions of a disabled client ended");
            Ok(None)
        }
        Found::SecretRotated { client_id, ended } => {
            request_log!(INFO, client_id = %client_id, ended, "console sessions of a rotated secret ended");
            Ok(None)
        }
        Found::Revoked { client_id } => {
            request_log!(INFO, client_id = %client_id, "a console session of a revoked client ended");
            Ok(None)
        }
    }
}

/// Starts a session for `client` and records the sign-in in the audit log, in one
/// transaction. Returns the `Set-Cookie` value.
/// `secret_hash` is the stored hash of the secret the operator signed in with.
pub async fn start(
    state: &AppState,
    client: &ClientRecord,
    secret_hash: &str,
    method: &str,
    now: i64,
) -> Result<HeaderValue, ApiError> {
    let id = new_session_id()?;
    let lifetime = state.config().console_session_secs;
    sessions::open(state.store(), client, session_hash(&id), secret_hash, method, lifetime, now).await?;
    cookie(state, &id, lifetime)
}

/// Ends the operator's session and records the sign-out.
pub async fn end(state: &AppState, op: &Operator, now: i64) -> Result<(), ApiError> {
    sessions::close(state.store(), &op.client, &op.session_hash, now).await?;
    Ok(())
}

/// The session cookie: HttpOnly, SameSite=Strict, Path=/console, with a lifetime, and
/// Secure whenever the broker's issuer is https.
fn cookie(state: &AppState, value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
    let secure = if state.config().issuer.starts_with("https://") { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .map_err(|_| ApiError::internal(&"cookie value"))
}

/// A `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(state: &AppState) -> Result<HeaderValue, ApiError> {
    cookie(state, "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_differ_per_session_and_do_not_reveal_the_id() {
        let a = "A".repeat(SESSION_ID_LEN);
        let b = "B".repeat(SESSION_ID_LEN);
        assert_ne!(csrf_token(&a), csrf_token(&b));
        assert_eq!(csrf_token(&a), csrf_token(&a));
        assert_ne!(csrf_token(&a), session_hash(&a));
        assert!(!csrf_token(&a).contains(&a));
        assert_eq!(session_hash(&a).len(), 64);
    }

    #[test]
    fn only_a_well_formed_console_cookie_is_read() {
        let id = "x".repeat(SESSION_ID_LEN);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap());
        assert_eq!(session_id_of(&h), Some(id.as_str()));
        for bad in ["short", &format!("{id}y"), &"x;".repeat(20), &format!("{}=", "y".repeat(SESSION_ID_LEN))] {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_str(&format!("{COOKIE}={bad}")).unwrap());
            assert_eq!(session_id_of(&h), None, "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("tessera_consolex=abc"));
        assert_eq!(session_id_of(&h), None);
        assert!(!has_cookie(&h));
    }
}
