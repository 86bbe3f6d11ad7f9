//! The `passkeys` and `passkey_challenges` tables.

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// A stored passkey of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRow {
    /// base64url of the credential id.
    pub credential_id: String,
    /// The operator client it belongs to.
    pub client_id: String,
    /// COSE algorithm.
    pub alg: i64,
    /// base64url of the raw public key.
    pub public_key: String,
    /// The last signature counter seen.
    pub sign_count: i64,
    /// The name the operator gave it.
    pub name: String,
    /// Enrolled, Unix seconds.
    pub created_at: i64,
    /// Last used, Unix seconds.
    pub last_used_at: Option<i64>,
    /// Removed, Unix seconds (kept to verify the decisions it signed).
    pub removed_at: Option<i64>,
}

const COLUMNS: &str =
    "credential_id, client_id, alg, public_key, sign_count, name, created_at, last_used_at, removed_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<PasskeyRow, StoreError> {
    Ok(PasskeyRow {
        credential_id: r.try_get("credential_id")?,
        client_id: r.try_get("client_id")?,
        alg: r.try_get("alg")?,
        public_key: r.try_get("public_key")?,
        sign_count: r.try_get("sign_count")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        removed_at: r.try_get("removed_at")?,
    })
}

/// Stores a new passkey.
pub async fn insert(conn: &mut AnyConnection, p: &PasskeyRow) -> Result<(), StoreError> {
    sqlx::query(&format!("INSERT INTO passkeys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
        .bind(&p.credential_id)
        .bind(&p.client_id)
        .bind(p.alg)
        .bind(&p.public_key)
        .bind(p.sign_count)
        .bind(&p.name)
        .bind(p.created_at)
        .bind(p.last_used_at)
        .bind(p.removed_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// A passkey by credential id, removed or not.
pub async fn get(store: &Store, credential_id: &str) -> Result<Option<PasskeyRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM passkeys WHERE credential_id = $1"))
        .bind(credential_id)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// An operator's passkeys in use, oldest first.
pub async fn of_client(store: &Store, client_id: &str) -> Result<Vec<PasskeyRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM passkeys WHERE client_id = $1 AND removed_at IS NULL ORDER BY created_at, credential_id"
    ))
    .bind(client_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Moves a passkey's counter forward, only from `from` (so two uses of one assertion cannot
/// both succeed); true if it moved.
pub async fn advance(
    conn: &mut AnyConnection,
    credential_id: &str,
    from: i64,
    to: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE passkeys SET sign_count = $1, last_used_at = $2 WHERE credential_id = $3 AND sign_count = $4 \
         AND removed_at IS NULL",
    )
    .bind(to)
    .bind(now)
    .bind(credential_id)
    .bind(from)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks passkeys removed: one (`Some(credential_id)`) or all of a client's. Returns how many.
pub async fn remove(
    conn: &mut AnyConnection,
    client_id: &str,
    credential_id: Option<&str>,
    now: i64,
) -> Result<u64, StoreError> {
    let r = match credential_id {
        Some(id) => sqlx::query(
            "UPDATE passkeys SET removed_at = $1 WHERE client_id = $2 AND credential_id = $3 AND removed_at IS NULL",
        )
        .bind(now)
        .bind(client_id)
        .bind(id)
        .execute(conn)
        .await?,
        None => {
            sqlx::query("UPDATE passkeys SET removed_at = $1 WHERE client_id = $2 AND removed_at IS NULL")
                .bind(now)
                .bind(client_id)
                .execute(conn)
                .await?
        }
    };
    Ok(r.rows_affected())
}

/// A challenge issued for a ceremony, waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChallengeRow {
    /// base64url of the challenge bytes.
    pub challenge: String,
    /// `enrol`, `sign_in`, `decide`, or `enrol_code` (an administrator's enrolment code, stored
    /// as its SHA-256).
    pub purpose: String,
    /// The operator (enrol, decide).
    pub client_id: Option<String>,
    /// The console session it was issued to (enrol, decide).
    pub session_hash: Option<String>,
    /// The approval (decide).
    pub approval_id: Option<String>,
    /// The verdict (decide).
    pub decision: Option<String>,
    /// The approval's digest (decide).
    pub params_digest: Option<String>,
    /// The nonce the challenge was derived with (decide).
    pub nonce: Option<String>,
    /// Answerable until, Unix seconds.
    pub expires_at: i64,
}

/// Stores a challenge; old ones are forgotten on the way.
pub async fn insert_challenge(store: &Store, c: &ChallengeRow, now: i64) -> Result<(), StoreError> {
    let mut conn = store.pool().acquire().await?;
    insert_challenge_on(&mut conn, c, now).await
}

/// As [`insert_challenge`], on `conn` (inside a change).
pub async fn insert_challenge_on(conn: &mut AnyConnection, c: &ChallengeRow, now: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM passkey_challenges WHERE expires_at <= $1").bind(now).execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO passkey_challenges (challenge, purpose, client_id, session_hash, approval_id, decision, \
         params_digest, nonce, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&c.challenge)
    .bind(&c.purpose)
    .bind(&c.client_id)
    .bind(&c.session_hash)
    .bind(&c.approval_id)
    .bind(&c.decision)
    .bind(&c.params_digest)
    .bind(&c.nonce)
    .bind(c.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A live challenge of `purpose`, left in place.
pub async fn peek_challenge(
    conn: &mut AnyConnection,
    challenge: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<ChallengeRow>, StoreError> {
    let row = sqlx::query(
        "SELECT client_id, expires_at FROM passkey_challenges WHERE challenge = $1 AND purpose = $2 AND expires_at > $3",
    )
    .bind(challenge)
    .bind(purpose)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(ChallengeRow {
            challenge: challenge.to_owned(),
            purpose: purpose.to_owned(),
            client_id: r.try_get("client_id")?,
            expires_at: r.try_get("expires_at")?,
            ..ChallengeRow::default()
        })
    })
    .transpose()
}

/// Takes a live challenge of `purpose`, once: it is deleted in the same transaction, so an
/// answer replayed finds nothing.
pub async fn take_challenge(
    conn: &mut AnyConnection,
    challenge: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<ChallengeRow>, StoreError> {
    let row = sqlx::query(
        "SELECT challenge, purpose, client_id, session_hash, approval_id, decision, params_digest, nonce, expires_at \
         FROM passkey_challenges WHERE challenge = $1 AND purpose = $2 AND expires_at > $3",
    )
    .bind(challenge)
    .bind(purpose)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let deleted =
        sqlx::query("DELETE FROM passkey_challenges WHERE challenge = $1").bind(challenge).execute(&mut *conn).await?;
    if deleted.rows_affected() != 1 {
        return Ok(None);
    }
    Ok(Some(ChallengeRow {
        challenge: r.try_get("challenge")?,
        purpose: r.try_get("purpose")?,
        client_id: r.try_get("client_id")?,
        session_hash: r.try_get("session_hash")?,
        approval_id: r.try_get("approval_id")?,
        decision: r.try_get("decision")?,
        params_digest: r.try_get("params_digest")?,
        nonce: r.try_get("nonce")?,
        expires_at: r.try_get("expires_at")?,
    }))
}
