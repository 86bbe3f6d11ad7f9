//! The operator console's storage: the `console_sessions` table, and the reads its pages need
//! beyond the approval functions (one approval's audit trail, a filtered history).
//!
//! A session is stored under the SHA-256 of its random id, never under the id: the id lives
//! only in the operator's cookie, so a copy of this table signs nobody in.

use sqlx::{AnyConnection, Row};

use super::approvals::Status;
use super::{Store, StoreError};
use crate::audit::AuditRecord;

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

/// How many live sessions `client_id` has at `now`.
pub async fn count_for(store: &Store, client_id: &str, now: i64) -> Result<i64, StoreError> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM console_sessions WHERE client_id = $1 AND expires_at > $2")
        .bind(client_id)
        .bind(now)
        .fetch_one(store.pool())
        .await?;
    Ok(r.try_get("n")?)
}

/// The audit records of one tenant whose subject is `subject` (an approval id), in chain
/// order, at most `limit`.
pub async fn audit_trail(
    store: &Store,
    tenant: &str,
    subject: &str,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at, event, actor, tenant, subject, detail, prev_hash, hash FROM audit_log \
         WHERE subject = $1 AND tenant = $2 ORDER BY seq LIMIT $3",
    )
    .bind(subject)
    .bind(tenant)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(crate::audit::record_from_row).collect()
}

/// What the console's history page filters on. Empty means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// One status, as stored.
    pub status: Option<Status>,
    /// One gated action.
    pub action: Option<String>,
    /// One requester's client id.
    pub requester: Option<String>,
}

/// The ids of a tenant's approvals matching `filter`, newest first, strictly before the
/// cursor `(created_at, approval_id)`, at most `limit`. The pages read each one through
/// `crate::approvals::read`, so what they show passes the same checks as the API.
pub async fn history_ids(
    store: &Store,
    tenant: &str,
    filter: &HistoryFilter,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    // Fixed SQL with optional conditions, so every value is bound, never spliced in.
    let (before_t, before_id) = before.unwrap_or((i64::MAX, String::new()));
    let rows = sqlx::query(
        "SELECT approval_id FROM approvals WHERE tenant = $1 \
         AND ($2 = '' OR status = $2) AND ($3 = '' OR action = $3) AND ($4 = '' OR requester = $4) \
         AND (created_at < $5 OR (created_at = $5 AND ($6 = '' OR approval_id < $6))) \
         ORDER BY created_at DESC, approval_id DESC LIMIT $7",
    )
    .bind(tenant)
    .bind(filter.status.map(Status::as_str).unwrap_or(""))
    .bind(filter.action.as_deref().unwrap_or(""))
    .bind(filter.requester.as_deref().unwrap_or(""))
    .bind(before_t)
    .bind(before_id)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(|r| Ok(r.try_get("approval_id")?)).collect()
}
