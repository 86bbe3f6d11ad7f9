//! The `clients` table.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, parse_col};
use crate::domain::{Action, ClientId, GroupName, ScopeSet};

pub use crate::domain::client::{ClientRecord, Inventory, PreviousSecret};

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

/// Inserts a client with its secret hash (empty: it has no secret), registered by `created_by`.
pub async fn insert(
    conn: &mut AnyConnection,
    c: &ClientRecord,
    secret_hash: &str,
    created_by: &str,
) -> Result<(), StoreError> {
    let bypass: Vec<&str> = c.allow_bypass.iter().map(Action::as_str).collect();
    sqlx::query(
        "INSERT INTO clients (client_id, tenant, kind, name, workspace, scopes, allow_bypass, secret_hash, disabled, \
         created_at, updated_at, delegates, require_dpop, groups, owner, created_by, secret_created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14, $15, $16)",
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
    .bind(created_by)
    .bind((!secret_hash.is_empty()).then_some(c.created_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// The secrets a client authenticates with: the current one's hash, and a replaced one's
/// with the time it stops working (empty and `None` when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecrets {
    /// The current secret's hash (empty: the client has no secret).
    pub current: String,
    /// The previous secret's hash, kept through a rotation's grace (or empty).
    pub previous: String,
    /// When the previous one stops working.
    pub previous_until: Option<i64>,
}

fn secrets_from(r: &AnyRow) -> Result<StoredSecrets, StoreError> {
    Ok(StoredSecrets {
        current: r.try_get("secret_hash")?,
        previous: r.try_get("previous_secret_hash")?,
        previous_until: r.try_get("secret_expires_at")?,
    })
}

/// A client and its current secret's hash (what a console session is stamped with).
pub async fn get_with_hash(store: &Store, client_id: &str) -> Result<Option<(ClientRecord, String)>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS}, secret_hash FROM clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((from_row(&r)?, r.try_get::<String, _>("secret_hash")?))).transpose()
}

/// What authentication needs of a client, read fresh: its record, its secrets and when the
/// row last changed.
pub async fn get_for_auth(
    store: &Store,
    client_id: &str,
) -> Result<Option<(ClientRecord, StoredSecrets, i64)>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS}, secret_hash, previous_secret_hash, secret_expires_at, updated_at FROM clients \
         WHERE client_id = $1"
    ))
    .bind(client_id)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| Ok((from_row(&r)?, secrets_from(&r)?, r.try_get::<i64, _>("updated_at")?))).transpose()
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

/// Marks a client disabled, ending a previous secret's grace with it; false if there is no
/// such client.
pub async fn disable(conn: &mut AnyConnection, client_id: &str, now: i64) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE clients SET disabled = 1, previous_secret_hash = '', secret_expires_at = NULL, updated_at = $2 \
         WHERE client_id = $1",
    )
    .bind(client_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// As [`disable`], only if the client is enabled and unused since before `cutoff`, as the
/// row says inside the caller's transaction: of two replicas sweeping at once, one disables.
pub async fn disable_if_idle(
    conn: &mut AnyConnection,
    client_id: &str,
    cutoff: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE clients SET disabled = 1, previous_secret_hash = '', secret_expires_at = NULL, updated_at = $2 \
         WHERE client_id = $1 AND disabled = 0 AND COALESCE(last_used_at, created_at) < $3",
    )
    .bind(client_id)
    .bind(now)
    .bind(cutoff)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Replaces a client's secret hash. With `grace_until`, the current secret becomes the
/// previous one and keeps working until then (a previous one before it ends now); without,
/// only the new one works. False if there is no such client.
pub async fn rotate_secret(
    conn: &mut AnyConnection,
    client_id: &str,
    hash: &str,
    grace_until: Option<i64>,
    now: i64,
) -> Result<bool, StoreError> {
    // Each SET expression reads the row as it was before the update, on both backends.
    let sql = if grace_until.is_some() {
        "UPDATE clients SET previous_secret_hash = secret_hash, previous_secret_created_at = secret_created_at, \
         secret_expires_at = $4, previous_secret_uses = 0, secret_hash = $2, secret_created_at = $3, \
         updated_at = $3 WHERE client_id = $1"
    } else {
        "UPDATE clients SET previous_secret_hash = '', previous_secret_created_at = NULL, secret_expires_at = $4, \
         previous_secret_uses = 0, secret_hash = $2, secret_created_at = $3, updated_at = $3 WHERE client_id = $1"
    };
    let r = sqlx::query(sql).bind(client_id).bind(hash).bind(now).bind(grace_until).execute(conn).await?;
    Ok(r.rows_affected() == 1)
}

/// Records a client's use: its last use (kept if a later one is already written) and the
/// uses of its previous secret since the last write. `updated_at` does not move.
pub async fn record_use(store: &Store, client_id: &str, minute: i64, previous_uses: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE clients SET last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $2 \
         ELSE last_used_at END, previous_secret_uses = previous_secret_uses + $3 WHERE client_id = $1",
    )
    .bind(client_id)
    .bind(minute)
    .bind(previous_uses)
    .execute(store.pool())
    .await?;
    Ok(())
}

const INVENTORY: &str = "created_by, last_used_at, secret_created_at, previous_secret_hash, \
     previous_secret_created_at, secret_expires_at, previous_secret_uses, \
     CASE WHEN secret_hash = '' THEN 0 ELSE 1 END AS has_secret";

fn inventory_from(row: &AnyRow) -> Result<Inventory, StoreError> {
    let has_secret = row.try_get::<i64, _>("has_secret")? != 0;
    let previous: String = row.try_get("previous_secret_hash")?;
    let expires: Option<i64> = row.try_get("secret_expires_at")?;
    Ok(Inventory {
        created_by: row.try_get("created_by")?,
        last_used_at: row.try_get("last_used_at")?,
        secret_created_at: if has_secret { row.try_get("secret_created_at")? } else { None },
        previous_secret: match (previous.is_empty(), expires) {
            (false, Some(expires_at)) => Some(PreviousSecret {
                created_at: row.try_get("previous_secret_created_at")?,
                expires_at,
                uses: row.try_get("previous_secret_uses")?,
            }),
            _ => None,
        },
    })
}

/// A client with its inventory.
pub async fn get_inventory(store: &Store, client_id: &str) -> Result<Option<(ClientRecord, Inventory)>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS}, {INVENTORY} FROM clients WHERE client_id = $1"))
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((from_row(&r)?, inventory_from(&r)?))).transpose()
}

/// Clients with their inventory, by tenant then name: of `tenant` only when named, and only
/// agent and workspace clients unused since before `idle_before` when that is named.
pub async fn list_inventory(
    store: &Store,
    tenant: Option<&str>,
    idle_before: Option<i64>,
) -> Result<Vec<(ClientRecord, Inventory)>, StoreError> {
    inventory_where(store, tenant, idle_before, None, "tenant, name, client_id", i64::MAX).await
}

/// As [`list_inventory`] for one tenant, a page at a time by client id: at most `limit` after
/// the client `after`.
pub async fn page_inventory(
    store: &Store,
    tenant: &str,
    idle_before: Option<i64>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<(ClientRecord, Inventory)>, StoreError> {
    inventory_where(store, Some(tenant), idle_before, after, "client_id", limit).await
}

async fn inventory_where(
    store: &Store,
    tenant: Option<&str>,
    idle_before: Option<i64>,
    after: Option<&str>,
    order: &str,
    limit: i64,
) -> Result<Vec<(ClientRecord, Inventory)>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, {INVENTORY} FROM clients WHERE ($1 IS NULL OR tenant = $1) AND ($2 IS NULL OR \
         (kind IN ('agent', 'workspace') AND COALESCE(last_used_at, created_at) < $2)) \
         AND ($3 IS NULL OR client_id > $3) ORDER BY {order} LIMIT $4"
    ))
    .bind(tenant)
    .bind(idle_before)
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(|r| Ok((from_row(r)?, inventory_from(r)?))).collect()
}

/// Enabled agent and workspace clients unused since before `cutoff`: what the stale sweep
/// disables (at most `limit` per pass).
pub async fn idle_since_before(store: &Store, cutoff: i64, limit: i64) -> Result<Vec<ClientRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM clients WHERE disabled = 0 AND kind IN ('agent', 'workspace') \
         AND COALESCE(last_used_at, created_at) < $1 ORDER BY client_id LIMIT $2"
    ))
    .bind(cutoff)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}
