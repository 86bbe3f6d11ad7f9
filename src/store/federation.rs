//! Federated identities of clients and the assertion ids already used (design §14).

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// One workload identity: an issuer and a subject of its tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FederatedIdentity {
    /// The issuer, as its tokens' `iss` says.
    pub issuer: String,
    /// The subject, as its tokens' `sub` says.
    pub subject: String,
}

/// Records `identities` for `client_id` (inside the registration's transaction). An identity
/// that already names a client is a unique violation.
pub async fn insert(
    conn: &mut AnyConnection,
    client_id: &str,
    identities: &[FederatedIdentity],
    now: i64,
) -> Result<(), StoreError> {
    for id in identities {
        sqlx::query("INSERT INTO client_federated (issuer, subject, client_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id.issuer)
            .bind(&id.subject)
            .bind(client_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The client an identity names, if any.
pub async fn client_for(store: &Store, issuer: &str, subject: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT client_id FROM client_federated WHERE issuer = $1 AND subject = $2")
        .bind(issuer)
        .bind(subject)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| r.try_get::<String, _>("client_id").map_err(StoreError::from)).transpose()
}

/// Every client's identities, as (client id, identity), ordered by client.
pub async fn list(store: &Store) -> Result<Vec<(String, FederatedIdentity)>, StoreError> {
    let rows =
        sqlx::query("SELECT client_id, issuer, subject FROM client_federated ORDER BY client_id, issuer, subject")
            .fetch_all(store.pool())
            .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("client_id")?,
                FederatedIdentity { issuer: r.try_get("issuer")?, subject: r.try_get("subject")? },
            ))
        })
        .collect()
}

/// Whether `client_id` has any federated identity.
pub async fn is_federated(store: &Store, client_id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 AS one FROM client_federated WHERE client_id = $1 LIMIT 1")
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.is_some())
}

/// Marks an assertion id of `issuer` as used until `expires_at`. Returns `false` when it was
/// used before (and has not yet been forgotten): the assertion is a replay. Ids whose
/// assertions have expired are forgotten on the way.
pub async fn use_jti(store: &Store, issuer: &str, jti: &str, expires_at: i64, now: i64) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM federation_jtis WHERE expires_at < $1").bind(now).execute(store.pool()).await?;
    let done = sqlx::query(
        "INSERT INTO federation_jtis (issuer, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT (issuer, jti) DO NOTHING",
    )
    .bind(issuer)
    .bind(jti)
    .bind(expires_at)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}
