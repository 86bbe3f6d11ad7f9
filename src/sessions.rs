//! Console sessions as stored: opened with their audit record, ended with theirs, and found
//! live only while their client is an enabled operator holding the credential the session was
//! opened with, and not revoked since.
//!
//! The session id itself never reaches this module: the console keeps it in the cookie and
//! passes its SHA-256 (`session_hash`).

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

use crate::audit::{AuditEvent, Change, Event, event};
use crate::domain::CallerKind;
use crate::store::clients::{self as client_rows, ClientRecord};
use crate::store::console as rows;
pub use crate::store::console::SessionRow;
use crate::store::{Store, StoreError};

/// The stamp a session keeps of the credential it was opened with: SHA-256 over a label and
/// the client's stored secret hash, in hex. It changes when the secret is rotated, and says
/// nothing of the secret or its hash.
pub fn credential_stamp(secret_hash: &str) -> String {
    let mut input = b"tessera console credential\0".to_vec();
    input.extend_from_slice(secret_hash.as_bytes());
    digest(&SHA256, &input).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The id a session's identity carries, which a revocation of the client covers.
pub fn token_id(session_hash: &str) -> String {
    format!("console:{}", session_hash.chars().take(16).collect::<String>())
}

/// Opens a session for `client` (signed in by `method`, with the secret whose stored hash is
/// `secret_hash`) and records the sign-in, in one change. Old sessions are forgotten first.
pub async fn open(
    store: &Store,
    client: &ClientRecord,
    session_hash: String,
    secret_hash: &str,
    method: &str,
    lifetime: i64,
    now: i64,
) -> Result<SessionRow, StoreError> {
    let row = SessionRow {
        session_hash,
        client_id: client.client_id.to_string(),
        created_at: now,
        expires_at: now + lifetime,
        credential: credential_stamp(secret_hash),
        method: method.to_owned(),
    };
    // Old sessions are forgotten as new ones start; they were refused already.
    rows::delete_expired(store, now).await?;
    let mut change = Change::begin(store).await?;
    rows::insert(&mut change, &row).await?;
    let event = Event::ConsoleSignedIn(event::SignedIn {
        session: row.session_hash[..16].to_owned(),
        expires_at: row.expires_at,
        method: method.to_owned(),
    });
    change.record(AuditEvent::of(event, client.client_id.as_str(), client.tenant.as_str(), client.client_id.as_str()));
    change.commit(now).await?;
    Ok(row)
}

/// Ends `client`'s session `session_hash` and records the sign-out, if it was still open.
pub async fn close(store: &Store, client: &ClientRecord, session_hash: &str, now: i64) -> Result<bool, StoreError> {
    let mut change = Change::begin(store).await?;
    let ended = rows::delete(&mut change, session_hash).await?;
    if ended {
        let event = Event::ConsoleSignedOut(event::SignedOut {
            session: session_hash[..16.min(session_hash.len())].to_owned(),
        });
        change.record(AuditEvent::of(
            event,
            client.client_id.as_str(),
            client.tenant.as_str(),
            client.client_id.as_str(),
        ));
    }
    change.commit(now).await?;
    Ok(ended)
}

/// Ends every session of `client_id`; returns how many.
pub async fn end_all_of(store: &Store, client_id: &str) -> Result<u64, StoreError> {
    rows::end_sessions_of(store, client_id).await
}

/// What a session lookup found.
#[derive(Debug)]
pub enum Found {
    /// A live session and its client's registration.
    Live(SessionRow, Box<ClientRecord>),
    /// No such session, or one past its time (now deleted).
    None,
    /// The client is disabled or no operator any more: its `ended` sessions are deleted.
    ClientGone {
        /// The client.
        client_id: String,
        /// How many of its sessions were ended.
        ended: u64,
    },
    /// The client's secret changed since sign-in: the sessions of the old one (`ended`) are
    /// deleted.
    SecretRotated {
        /// The client.
        client_id: String,
        /// How many sessions of its old secret were ended.
        ended: u64,
    },
    /// The client's tokens were revoked since sign-in: this session is deleted.
    Revoked {
        /// The client.
        client_id: String,
    },
}

/// The session `session_hash` if it is live at `now`; any other is ended here.
pub async fn find(store: &Store, session_hash: &str, now: i64) -> Result<Found, StoreError> {
    let Some(row) = rows::get(store, session_hash).await? else { return Ok(Found::None) };
    if row.expires_at <= now {
        let mut conn = store.pool().acquire().await?;
        rows::delete(&mut conn, session_hash).await?;
        return Ok(Found::None);
    }
    let found = client_rows::get_with_hash(store, &row.client_id).await?;
    let Some((client, secret_hash)) = found.filter(|(c, _)| !c.disabled && c.kind == CallerKind::Operator) else {
        let ended = rows::end_sessions_of(store, &row.client_id).await?;
        return Ok(Found::ClientGone { client_id: row.client_id, ended });
    };
    // The session lives only as long as the credential it was opened with.
    let stamp = credential_stamp(&secret_hash);
    if !bool::from(stamp.as_bytes().ct_eq(row.credential.as_bytes())) {
        let ended = rows::end_sessions_not_of(store, &row.client_id, &stamp).await?;
        return Ok(Found::SecretRotated { client_id: row.client_id, ended });
    }
    // A revocation of the client's tokens covers the sessions opened up to its time.
    if crate::revocations::is_revoked(store, &token_id(session_hash), &row.client_id, row.created_at).await? {
        let mut conn = store.pool().acquire().await?;
        rows::delete(&mut conn, session_hash).await?;
        return Ok(Found::Revoked { client_id: row.client_id });
    }
    Ok(Found::Live(row, Box::new(client)))
}
