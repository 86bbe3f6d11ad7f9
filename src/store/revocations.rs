//! The `revocations` table: single tokens by `jti`, and every token of a client issued at or
//! before a time. Rows are numbered in feed order.

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// Position in the feed.
    pub seq: i64,
    /// `token` or `client`.
    pub kind: String,
    /// The revoked token's id (`token` revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The client whose token or tokens are revoked.
    pub client_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Tokens of the client issued at or before this time are revoked (`client` revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// After this time no token it covers can still be valid; the entry can be forgotten.
    pub expires_at: i64,
}

/// Appends a revocation (its `seq` is assigned here) on `conn`, which must be in a write
/// transaction holding the audit chain lock (see [`crate::audit::lock`]).
pub async fn insert(
    conn: &mut AnyConnection,
    r: &Revocation,
    revoked_at: i64,
    revoked_by: &str,
) -> Result<i64, StoreError> {
    let next: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM revocations")
        .fetch_one(&mut *conn)
        .await?
        .try_get("next")?;
    sqlx::query(
        "INSERT INTO revocations (seq, kind, jti, client_id, tenant, not_after, expires_at, revoked_at, revoked_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(next)
    .bind(&r.kind)
    .bind(&r.jti)
    .bind(&r.client_id)
    .bind(&r.tenant)
    .bind(r.not_after)
    .bind(r.expires_at)
    .bind(revoked_at)
    .bind(revoked_by)
    .execute(conn)
    .await?;
    Ok(next)
}

/// Whether a token (`jti`, of `client_id`, issued at `iat`) is revoked.
pub async fn is_revoked(store: &Store, jti: &str, client_id: &str, iat: i64) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT seq FROM revocations WHERE (kind = 'token' AND jti = $1) \
         OR (kind = 'client' AND client_id = $2 AND not_after >= $3) LIMIT 1",
    )
    .bind(jti)
    .bind(client_id)
    .bind(iat)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.is_some())
}

/// A tenant's revocations after `since` and up to `head` that still matter at `now`, in
/// order.
pub async fn since(
    store: &Store,
    tenant: &str,
    since: i64,
    head: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<Revocation>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, kind, jti, client_id, tenant, not_after, expires_at FROM revocations \
         WHERE tenant = $1 AND seq > $2 AND seq <= $3 AND expires_at > $4 ORDER BY seq LIMIT $5",
    )
    .bind(tenant)
    .bind(since)
    .bind(head)
    .bind(now)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Revocation {
                seq: r.try_get("seq")?,
                kind: r.try_get("kind")?,
                jti: r.try_get("jti")?,
                client_id: r.try_get("client_id")?,
                tenant: r.try_get("tenant")?,
                not_after: r.try_get("not_after")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}

/// The highest feed position of a tenant's revocations (0 when it has none).
pub async fn last_seq(store: &Store, tenant: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM revocations WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(store.pool())
        .await?
        .try_get("last")?)
}

/// The identity of a tenant's feed entry at `seq`: base64url SHA-256 over its stored
/// content, revocation time included. A verifier keeps the identity of the entry its cursor
/// names, so a feed whose history was replaced under the same numbers (a database restored
/// from a backup, then written to again) no longer matches. `None` when the tenant has no
/// entry at `seq`.
pub async fn entry_id(store: &Store, tenant: &str, seq: i64) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, kind, jti, client_id, tenant, not_after, expires_at, revoked_at, revoked_by \
         FROM revocations WHERE tenant = $1 AND seq = $2",
    )
    .bind(tenant)
    .bind(seq)
    .fetch_optional(store.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let content = serde_json::json!([
        r.try_get::<i64, _>("seq")?,
        r.try_get::<String, _>("kind")?,
        r.try_get::<Option<String>, _>("jti")?,
        r.try_get::<String, _>("client_id")?,
        r.try_get::<String, _>("tenant")?,
        r.try_get::<Option<i64>, _>("not_after")?,
        r.try_get::<i64, _>("expires_at")?,
        r.try_get::<i64, _>("revoked_at")?,
        r.try_get::<String, _>("revoked_by")?,
    ]);
    let digest = ring::digest::digest(&ring::digest::SHA256, content.to_string().as_bytes());
    Ok(Some(crate::token::b64::encode(digest.as_ref())))
}

/// The issuing record of a token: its client, tenant and expiry, from the audit log.
pub async fn issued(store: &Store, jti: &str) -> Result<Option<(String, String, i64)>, StoreError> {
    let row = sqlx::query(
        "SELECT actor, tenant, detail FROM audit_log WHERE event = 'token.issued' AND subject = $1 LIMIT 1",
    )
    .bind(jti)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let detail: String = row.try_get("detail")?;
    let exp = serde_json::from_str::<serde_json::Value>(&detail).ok().and_then(|d| d["exp"].as_i64()).unwrap_or(0);
    let sub = serde_json::from_str::<serde_json::Value>(&detail)
        .ok()
        .and_then(|d| d["sub"].as_str().map(str::to_owned))
        .unwrap_or_else(|| row.try_get::<String, _>("actor").unwrap_or_default());
    Ok(Some((sub, row.try_get("tenant")?, exp)))
}
