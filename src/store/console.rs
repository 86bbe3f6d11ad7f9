//! The operator console's storage: the `console_sessions` table, and the reads its pages need
//! beyond the approval functions (one approval's audit trail, a filtered history).
//!
//! A session is stored under the SHA-256 of its random id, never under the id: the id lives
//! only in the operator's cookie, so a copy of this table signs nobody in.

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// A stored console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Lowercase hex SHA-256 of the session id.
    pub session_hash: String,
    /// The operator client signed in.
    pub client_id: String,
    /// Sign-in time, Unix seconds.
    pub created_at: i64,
    /// The session ends at this time, Unix seconds.
    pub expires_at: i64,
    /// A stamp of the credential signed in with (see `sessions::credential_stamp`):
    /// the session ends when the client's secret no longer gives this stamp.
    pub credential: String,
    /// How the operator signed in: `secret` or `passkey`.
    pub method: String,
}

/// Stores a new session.
pub async fn insert(conn: &mut AnyConnection, s: &SessionRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO console_sessions (session_hash, client_id, created_at, expires_at, credential, method) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&s.session_hash)
    .bind(&s.client_id)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(&s.credential)
    .bind(&s.method)
    .execute(conn)
    .await?;
    Ok(())
}

/// The session stored under `session_hash`, expired or not.
pub async fn get(store: &Store, session_hash: &str) -> Result<Option<SessionRow>, StoreError> {
    let row = sqlx::query(
        "SELECT session_hash, client_id, created_at, expires_at, credential, method FROM console_sessions \
         WHERE session_hash = $1",
    )
    .bind(session_hash)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| {
        Ok(SessionRow {
            session_hash: r.try_get("session_hash")?,
            client_id: r.try_get("client_id")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            credential: r.try_get("credential")?,
            method: r.try_get("method")?,
        })
    })
    .transpose()
}

/// Ends one session; true if it existed.
pub async fn delete(conn: &mut AnyConnection, session_hash: &str) -> Result<bool, StoreError> {
    let r =
        sqlx::query("DELETE FROM console_sessions WHERE session_hash = $1").bind(session_hash).execute(conn).await?;
    Ok(r.rows_affected() == 1)
}

/// Ends every console session of `client_id` (a disabled client, or an operator signed out
/// everywhere); returns how many there were. The console calls it when it finds a session
/// whose client is disabled; an administrator may call it when disabling a client.
pub async fn end_sessions_of(store: &Store, client_id: &str) -> Result<u64, StoreError> {
    let r =
        sqlx::query("DELETE FROM console_sessions WHERE client_id = $1").bind(client_id).execute(store.pool()).await?;
    Ok(r.rows_affected())
}

/// Ends every console session of `client_id` opened with another credential than `credential`
/// (the secret was rotated since); returns how many there were.
pub async fn end_sessions_not_of(store: &Store, client_id: &str, credential: &str) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM console_sessions WHERE client_id = $1 AND credential <> $2")
        .bind(client_id)
        .bind(credential)
        .execute(store.pool())
        .await?;
    Ok(r.rows_affected())
}

/// Forgets sessions that ended before `now`; returns how many.
pub async fn delete_expired(store: &Store, now: i64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1").bind(now).execute(store.pool()).await?;
    Ok(r.rows_affected())
}
