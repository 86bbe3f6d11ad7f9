//! Public keys of clients that authenticate by key (RFC 7523 §2.2, `private_key_jwt`).

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// A client's registered public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The key id: the JWK's own `kid`, or its RFC 7638 thumbprint.
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// The public JWK as registered (JSON).
    pub jwk: String,
}

/// Records `key` for `client_id` (inside the registration's transaction).
pub async fn insert(conn: &mut AnyConnection, client_id: &str, key: &ClientKey, now: i64) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO client_keys (client_id, kid, alg, jwk, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(client_id)
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.jwk)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The key of `client_id`, if it authenticates by key.
pub async fn get(store: &Store, client_id: &str) -> Result<Option<ClientKey>, StoreError> {
    let row = sqlx::query("SELECT kid, alg, jwk FROM client_keys WHERE client_id = $1")
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok(ClientKey { kid: r.try_get("kid")?, alg: r.try_get("alg")?, jwk: r.try_get("jwk")? })).transpose()
}

/// Every key client's id and key id, ordered by client.
pub async fn list(store: &Store) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query("SELECT client_id, kid FROM client_keys ORDER BY client_id").fetch_all(store.pool()).await?;
    rows.iter().map(|r| Ok((r.try_get("client_id")?, r.try_get("kid")?))).collect()
}
