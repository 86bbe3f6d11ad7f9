//! The `clients` table.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, parse_col};
use crate::domain::{Action, ClientId, GroupName, ScopeSet};

pub use crate::domain::client::ClientRecord;

const COLUMNS: &str = "client_id, tenant, kind, name, workspace, scopes, allow_bypass, delegates, require_dpop, disabled, created_at, \
     groups, owner";

fn from_row(row: &AnyRow) -> Result<ClientRecord, StoreError> {
    let client_id: String = row.try_get("client_id")?;
    let tenant: String = row.try_get("tenant")?;
    let kind: String = row.try_get("kind")?;
    let workspace: Option<String> = row.try_get("workspace")?;
    let scopes: String = row.try_get("scopes")?;
    let bypass: String = row.try_get("allow_bypass")?;
    let delegates: String = row.try_get("delegates")?;
    let groups: String = row.try_get("groups")?;
    let owner: Option<String> = row.try_get("owner")?;
    Ok(ClientRecord {
        client_id: parse_col("client_id", &client_id)?,
        tenant: parse_col("tenant", &tenant)?,
        kind: parse_col("kind", &kind)?,
        name: row.try_get("name")?,
        workspace: workspace.map(|w| parse_col("workspace", &w)).transpose()?,
        scopes: ScopeSet::parse_list(&scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        allow_bypass: bypass
            .split_ascii_whitespace()
            .map(|a| Action::parse(a).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?,
        delegates: delegates.split_ascii_whitespace().map(|d| parse_col("delegate", d)).collect::<Result<_, _>>()?,
        require_dpop: row.try_get::<i64, _>("require_dpop")? != 0,
        groups: groups.split_ascii_whitespace().map(|g| parse_col("group", g)).collect::<Result<_, _>>()?,
        owner: owner.map(|o| parse_col("owner", &o)).transpose()?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts a client with its secret hash.
pub async fn insert(conn: &mut AnyConnection, c: &ClientRecord, secret_hash: &str) -> Result<(), StoreError> {
    let bypass: Vec<&str> = c.allow_bypass.iter().map(Action::as_str).collect();
    sqlx::query(
        "INSERT INTO clients (client_id, tenant, kind, name, workspace, scopes, allow_bypass, secret_hash, disabled, \
         created_at, updated_at, delegates, require_dpop, groups, owner) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14)",
    )
    .bind(c.client_id.as_str())
    .bind(c.tenant.as_str())
    .bind(c.kind.as_str())
    .bind(&c.name)
    .bind(c.workspace.as_ref().map(|w| w.as_str().to_owned()))
    .bind(c.scopes.to_string())
    .bind(bypass.join(" "))
    .bind(secret_hash)
    .bind(i64::from(c.disabled))
    .bind(c.created_at)
    .bind(c.delegates.iter().map(ClientId::as_str).collect::<Vec<_>>().join(" "))
    .bind(i64::from(c.require_dpop))
    .bind(group_list(&c.groups))
    .bind(c.owner.as_ref().map(|o| o.as_str().to_owned()))
    .execute(conn)
    .await?;
    Ok(())
}

/// A client and its stored secret hash, for authentication.
pub async fn get_with_hash(store: &Store, client_id: &str) -> Result<Option<(ClientRecord, String)>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS}, secret_hash FROM clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((from_row(&r)?, r.try_get::<String, _>("secret_hash")?))).transpose()
}

/// What authentication needs of a client, read fresh: its record, its secret hash and when
/// the row last changed.
pub async fn get_for_auth(store: &Store, client_id: &str) -> Result<Option<(ClientRecord, String, i64)>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS}, secret_hash, updated_at FROM clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((from_row(&r)?, r.try_get::<String, _>("secret_hash")?, r.try_get::<i64, _>("updated_at")?)))
        .transpose()
}

/// The columns that decide whether a client may still authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    /// The stored secret hash.
    pub secret_hash: String,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When the row last changed.
    pub updated_at: i64,
}

/// As [`auth_states`], on the audit writer's own SQLite connection (inside its transaction).
pub fn auth_states_embedded(
    conn: &rusqlite::Connection,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, AuthState>, StoreError> {
    use rusqlite::OptionalExtension;
    let mut stmt = conn.prepare_cached("SELECT secret_hash, disabled, updated_at FROM clients WHERE client_id = ?1")?;
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for id in ids {
        let row = stmt
            .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
            .optional()?;
        if let Some((secret_hash, disabled, updated_at)) = row {
            out.insert((*id).to_owned(), AuthState { secret_hash, disabled: disabled != 0, updated_at });
        }
    }
    Ok(out)
}

/// The [`AuthState`] of each of `ids` that exists, read on `conn` (inside the caller's
/// transaction); one query per up to 64 ids.
pub async fn auth_states(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, AuthState>, StoreError> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(64) {
        // Padded to a power of two (repeating the last id) so few distinct statements exist.
        let width = chunk.len().next_power_of_two();
        let params: Vec<String> = (1..=width).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT client_id, secret_hash, disabled, updated_at FROM clients WHERE client_id IN ({})",
            params.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for i in 0..width {
            q = q.bind(chunk[i.min(chunk.len() - 1)]);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(
                row.try_get::<String, _>("client_id")?,
                AuthState {
                    secret_hash: row.try_get("secret_hash")?,
                    disabled: row.try_get::<i64, _>("disabled")? != 0,
                    updated_at: row.try_get("updated_at")?,
                },
            );
        }
    }
    Ok(out)
}

/// A client by id.
pub async fn get(store: &Store, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// A client by id, read on `conn` (inside the caller's transaction).
pub async fn get_on(conn: &mut AnyConnection, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every client, by tenant then name.
pub async fn list(store: &Store) -> Result<Vec<ClientRecord>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM clients ORDER BY tenant, name, client_id"))
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

fn group_list(groups: &[GroupName]) -> String {
    groups.iter().map(GroupName::as_str).collect::<Vec<_>>().join(" ")
}

/// Replaces a client's groups; false if there is no such client.
pub async fn set_groups(
    conn: &mut AnyConnection,
    client_id: &str,
    groups: &[GroupName],
    now: i64,
) -> Result<bool, StoreError> {
    let r = sqlx::query("UPDATE clients SET groups = $2, updated_at = $3 WHERE client_id = $1")
        .bind(client_id)
        .bind(group_list(groups))
        .bind(now)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks a client disabled; false if there is no such client.
pub async fn disable(conn: &mut AnyConnection, client_id: &str, now: i64) -> Result<bool, StoreError> {
    let r = sqlx::query("UPDATE clients SET disabled = 1, updated_at = $2 WHERE client_id = $1")
        .bind(client_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Replaces a client's secret hash; false if there is no such client.
pub async fn set_secret_hash(
    conn: &mut AnyConnection,
    client_id: &str,
    hash: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let r = sqlx::query("UPDATE clients SET secret_hash = $2, updated_at = $3 WHERE client_id = $1")
        .bind(client_id)
        .bind(hash)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}
