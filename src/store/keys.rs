//! The `signing_keys` table: public halves only. Private keys never enter the database.

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// A registered public key and its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRow {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// Its one algorithm.
    pub alg: String,
    /// Raw public key, base64url.
    pub public_key: String,
    /// When it was registered.
    pub created_at: i64,
    /// From when it may sign (it is published from `created_at`).
    pub activates_at: i64,
    /// When it stopped signing, if it has.
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS, if scheduled.
    pub unpublish_at: Option<i64>,
}

/// Registers a public key.
pub async fn insert(conn: &mut AnyConnection, k: &KeyRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, public_key, created_at, activates_at, retired_at, unpublish_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&k.kid)
    .bind(&k.alg)
    .bind(&k.public_key)
    .bind(k.created_at)
    .bind(k.activates_at)
    .bind(k.retired_at)
    .bind(k.unpublish_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every registered key, oldest first.
pub async fn list(store: &Store) -> Result<Vec<KeyRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT kid, alg, public_key, created_at, activates_at, retired_at, unpublish_at FROM signing_keys ORDER BY created_at, kid",
    )
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(KeyRow {
                kid: r.try_get("kid")?,
                alg: r.try_get("alg")?,
                public_key: r.try_get("public_key")?,
                created_at: r.try_get("created_at")?,
                activates_at: r.try_get("activates_at")?,
                retired_at: r.try_get("retired_at")?,
                unpublish_at: r.try_get("unpublish_at")?,
            })
        })
        .collect()
}

/// Keys that belong in the JWKS at `now`.
pub async fn published(store: &Store, now: i64) -> Result<Vec<KeyRow>, StoreError> {
    Ok(list(store).await?.into_iter().filter(|k| k.unpublish_at.is_none_or(|t| t > now)).collect())
}

/// Retires a key: it stops signing at `retired_at` and leaves the JWKS at `unpublish_at`.
pub async fn retire(
    conn: &mut AnyConnection,
    kid: &str,
    retired_at: i64,
    unpublish_at: i64,
) -> Result<bool, StoreError> {
    let r =
        sqlx::query("UPDATE signing_keys SET retired_at = $2, unpublish_at = $3 WHERE kid = $1 AND retired_at IS NULL")
            .bind(kid)
            .bind(retired_at)
            .bind(unpublish_at)
            .execute(conn)
            .await?;
    Ok(r.rows_affected() == 1)
}
