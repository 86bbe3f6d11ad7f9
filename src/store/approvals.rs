//! The `approvals` and `decisions` tables.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Backend, Store, StoreError, parse_col};

use crate::domain::GroupName;
pub use crate::domain::approval::{ApprovalRow, Decision, Requirement, Status};

/// The stored form of the requirements: `NULL` when they are one count of any operator (as
/// every approval before per-group quorum was), else their JSON list.
fn requirements_text(a: &ApprovalRow) -> Option<String> {
    match a.requirements.as_slice() {
        [Requirement { group: None, .. }] | [] => None,
        list => serde_json::to_string(list).ok(),
    }
}

fn groups_text(groups: &[GroupName]) -> String {
    groups.iter().map(GroupName::as_str).collect::<Vec<_>>().join(" ")
}

const COLUMNS: &str = "approval_id, tenant, action, resource, params_digest, summary, reason, requester, \
    requester_kind, status, quorum, created_at, expires_at, decided_at, bypass, cap_jti, cap_iat, cap_exp, \
    redeemed_at, redeemed_by, params, act, cnf_jkt, quorum_groups, requester_owner, break_glass, reviewed_by, \
    reviewed_at";

fn from_row(r: &AnyRow) -> Result<ApprovalRow, StoreError> {
    let kind: String = r.try_get("requester_kind")?;
    let status: String = r.try_get("status")?;
    let quorum: i64 = r.try_get("quorum")?;
    let requirements = match r.try_get::<Option<String>, _>("quorum_groups")? {
        None => vec![Requirement { group: None, count: u32::try_from(quorum).unwrap_or(1) }],
        Some(t) => serde_json::from_str(&t).map_err(|_| StoreError::Corrupt("quorum_groups".into()))?,
    };
    let reviewed_by: Option<String> = r.try_get("reviewed_by")?;
    let reviewed_at: Option<i64> = r.try_get("reviewed_at")?;
    Ok(ApprovalRow {
        approval_id: r.try_get("approval_id")?,
        tenant: r.try_get("tenant")?,
        action: r.try_get("action")?,
        resource: r.try_get("resource")?,
        params_digest: r.try_get("params_digest")?,
        summary: r.try_get("summary")?,
        reason: r.try_get("reason")?,
        requester: r.try_get("requester")?,
        requester_kind: parse_col("requester_kind", &kind)?,
        status: parse_col("status", &status)?,
        quorum,
        requirements,
        requester_owner: r.try_get("requester_owner")?,
        break_glass: r.try_get::<i64, _>("break_glass")? != 0,
        reviewed: reviewed_by.zip(reviewed_at),
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        decided_at: r.try_get("decided_at")?,
        bypass: r.try_get::<i64, _>("bypass")? != 0,
        cap_jti: r.try_get("cap_jti")?,
        cap_iat: r.try_get("cap_iat")?,
        cap_exp: r.try_get("cap_exp")?,
        redeemed_at: r.try_get("redeemed_at")?,
        redeemed_by: r.try_get("redeemed_by")?,
        params: r.try_get("params")?,
        act: r.try_get("act")?,
        cnf_jkt: r.try_get("cnf_jkt")?,
        decisions: Vec::new(),
    })
}

/// Inserts a new approval (its decisions are inserted separately).
pub async fn insert(conn: &mut AnyConnection, a: &ApprovalRow) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO approvals ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)"
    ))
    .bind(&a.approval_id)
    .bind(&a.tenant)
    .bind(&a.action)
    .bind(&a.resource)
    .bind(&a.params_digest)
    .bind(&a.summary)
    .bind(&a.reason)
    .bind(&a.requester)
    .bind(a.requester_kind.as_str())
    .bind(a.status.as_str())
    .bind(a.quorum)
    .bind(a.created_at)
    .bind(a.expires_at)
    .bind(a.decided_at)
    .bind(i64::from(a.bypass))
    .bind(&a.cap_jti)
    .bind(a.cap_iat)
    .bind(a.cap_exp)
    .bind(a.redeemed_at)
    .bind(&a.redeemed_by)
    .bind(&a.params)
    .bind(&a.act)
    .bind(&a.cnf_jkt)
    .bind(requirements_text(a))
    .bind(&a.requester_owner)
    .bind(i64::from(a.break_glass))
    .bind(a.reviewed.as_ref().map(|r| r.0.clone()))
    .bind(a.reviewed.as_ref().map(|r| r.1))
    .execute(conn)
    .await?;
    Ok(())
}

async fn load_decisions(conn: &mut AnyConnection, rows: &mut [ApprovalRow]) -> Result<(), StoreError> {
    for a in rows.iter_mut() {
        let ds = sqlx::query(
            "SELECT operator, decision, note, at, method, groups, break_glass FROM decisions WHERE approval_id = $1 \
             ORDER BY at, operator",
        )
        .bind(&a.approval_id)
        .fetch_all(&mut *conn)
        .await?;
        a.decisions = ds
            .iter()
            .map(|d| {
                Ok(Decision {
                    operator: d.try_get("operator")?,
                    decision: parse_col("decision", &d.try_get::<String, _>("decision")?)?,
                    note: d.try_get("note")?,
                    at: d.try_get("at")?,
                    method: parse_col("decision method", &d.try_get::<String, _>("method")?)?,
                    groups: d
                        .try_get::<String, _>("groups")?
                        .split_ascii_whitespace()
                        .map(|g| parse_col("group", g))
                        .collect::<Result<_, _>>()?,
                    break_glass: d.try_get::<i64, _>("break_glass")? != 0,
                })
            })
            .collect::<Result<_, StoreError>>()?;
    }
    Ok(())
}

/// One approval with its decisions, read on `conn` (inside a transaction if it is one).
pub async fn get_on(conn: &mut AnyConnection, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE approval_id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut rows = [from_row(&row)?];
    load_decisions(conn, &mut rows).await?;
    let [a] = rows;
    Ok(Some(a))
}

/// One approval with its decisions, read inside a write transaction with the approval's row
/// locked until the transaction ends, so decisions on it are taken one after the other and
/// each sees the ones before. PostgreSQL locks the row (`SELECT … FOR UPDATE`); on SQLite the
/// write transaction ([`Store::begin_write`], `BEGIN IMMEDIATE`) already holds the database's
/// write lock.
pub async fn get_for_update(
    conn: &mut AnyConnection,
    backend: Backend,
    id: &str,
) -> Result<Option<ApprovalRow>, StoreError> {
    if backend == Backend::Postgres {
        let locked = sqlx::query("SELECT approval_id FROM approvals WHERE approval_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        if locked.is_none() {
            return Ok(None);
        }
    }
    get_on(conn, id).await
}

/// The operators still enabled that have approved approval `id`, with the groups each
/// belonged to when it decided: a vote from an operator disabled since then does not count
/// toward quorum.
pub async fn enabled_approvers(conn: &mut AnyConnection, id: &str) -> Result<Vec<Vec<GroupName>>, StoreError> {
    let rows = sqlx::query(
        "SELECT d.groups AS groups FROM decisions d JOIN clients c ON c.client_id = d.operator \
         WHERE d.approval_id = $1 AND d.decision = 'approve' AND c.disabled = 0 ORDER BY d.at, d.operator",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>("groups")?
                .split_ascii_whitespace()
                .map(|g| parse_col("group", g))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect()
}

/// One approval with its decisions.
pub async fn get(store: &Store, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    get_on(&mut conn, id).await
}

/// A page of a tenant's approvals in `status`, oldest first, after the cursor
/// `(created_at, approval_id)`.
pub async fn list(
    store: &Store,
    tenant: &str,
    status: Status,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let (after_t, after_id) = after.unwrap_or((i64::MIN, String::new()));
    let mut conn = store.pool().acquire().await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE tenant = $1 AND status = $2 \
         AND (created_at > $3 OR (created_at = $3 AND approval_id > $4)) \
         ORDER BY created_at, approval_id LIMIT $5"
    ))
    .bind(tenant)
    .bind(status.as_str())
    .bind(after_t)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    load_decisions(&mut conn, &mut out).await?;
    Ok(out)
}

/// The ids of approvals whose stored status is overdue at `now`.
pub async fn due_for_expiry(store: &Store, now: i64, limit: i64) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT approval_id FROM approvals WHERE (status = 'pending' AND expires_at <= $1) \
         OR (status = 'approved' AND cap_exp <= $1) ORDER BY approval_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(|r| Ok(r.try_get("approval_id")?)).collect()
}

/// Moves an approval from `from` to `to`; false if it was no longer in `from`.
pub async fn transition(
    conn: &mut AnyConnection,
    id: &str,
    from: Status,
    to: Status,
    decided_at: Option<i64>,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE approvals SET status = $3, decided_at = COALESCE($4, decided_at) WHERE approval_id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(decided_at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Approves a pending request and records its capability (and whether it was break-glass);
/// false if it was not pending.
pub async fn approve(
    conn: &mut AnyConnection,
    id: &str,
    jti: &str,
    iat: i64,
    exp: i64,
    break_glass: bool,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE approvals SET status = 'approved', decided_at = $3, cap_jti = $2, cap_iat = $3, cap_exp = $4, \
         break_glass = $5 WHERE approval_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(jti)
    .bind(iat)
    .bind(exp)
    .bind(i64::from(break_glass))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records one operator's decision; a second decision by the same operator is a unique
/// violation.
pub async fn insert_decision(conn: &mut AnyConnection, id: &str, d: &Decision) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO decisions (approval_id, operator, decision, note, at, method, groups, break_glass) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(&d.operator)
    .bind(d.decision.as_str())
    .bind(&d.note)
    .bind(d.at)
    .bind(d.method.as_str())
    .bind(groups_text(&d.groups))
    .bind(i64::from(d.break_glass))
    .execute(conn)
    .await?;
    Ok(())
}

/// Redeems the capability `jti` of approval `id` exactly once: true for the one caller that
/// moves it from approved to redeemed before it expires.
pub async fn redeem(conn: &mut AnyConnection, id: &str, jti: &str, by: &str, now: i64) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE approvals SET status = 'redeemed', redeemed_at = $4, redeemed_by = $3 \
         WHERE approval_id = $1 AND cap_jti = $2 AND status = 'approved' AND cap_exp > $4",
    )
    .bind(id)
    .bind(jti)
    .bind(by)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A requester's most recent approvals (for operators weighing a request).
pub async fn recent_by_requester(store: &Store, requester: &str, limit: i64) -> Result<Vec<ApprovalRow>, StoreError> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE requester = $1 ORDER BY created_at DESC LIMIT $2"))
            .bind(requester)
            .bind(limit)
            .fetch_all(store.pool())
            .await?;
    rows.iter().map(from_row).collect()
}

/// How many requests of `requester` are pending and not yet overdue at `now`.
pub async fn count_pending_of(conn: &mut AnyConnection, requester: &str, now: i64) -> Result<i64, StoreError> {
    let r = sqlx::query(
        "SELECT COUNT(*) AS n FROM approvals WHERE requester = $1 AND status = 'pending' AND expires_at > $2",
    )
    .bind(requester)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(r.try_get("n")?)
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

/// The stored decision and method of `operator` on `approval_id`, if any.
pub async fn decision_of(
    store: &Store,
    approval_id: &str,
    operator: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query("SELECT decision, method FROM decisions WHERE approval_id = $1 AND operator = $2")
        .bind(approval_id)
        .bind(operator)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((r.try_get("decision")?, r.try_get("method")?))).transpose()
}

/// The `params_digest` stored for `approval_id`, if it exists.
pub async fn params_digest_of(store: &Store, approval_id: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT params_digest FROM approvals WHERE approval_id = $1")
        .bind(approval_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok(r.try_get("params_digest")?)).transpose()
}

/// Every `(approval_id, operator)` whose stored decision was made with a passkey.
pub async fn passkey_decisions(store: &Store) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query("SELECT approval_id, operator FROM decisions WHERE method = 'passkey'")
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(|r| Ok((r.try_get("approval_id")?, r.try_get("operator")?))).collect()
}

/// Records another operator's acknowledgement of a break-glass approval; false if it was not
/// a break-glass approval awaiting review.
pub async fn mark_reviewed(conn: &mut AnyConnection, id: &str, by: &str, now: i64) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE approvals SET reviewed_by = $2, reviewed_at = $3 \
         WHERE approval_id = $1 AND break_glass = 1 AND reviewed_at IS NULL",
    )
    .bind(id)
    .bind(by)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A page of a tenant's break-glass approvals nobody has acknowledged yet, oldest first,
/// after the cursor `(created_at, approval_id)`.
pub async fn list_to_review(
    store: &Store,
    tenant: &str,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let (after_t, after_id) = after.unwrap_or((i64::MIN, String::new()));
    let mut conn = store.pool().acquire().await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE tenant = $1 AND break_glass = 1 AND reviewed_at IS NULL \
         AND (created_at > $2 OR (created_at = $2 AND approval_id > $3)) \
         ORDER BY created_at, approval_id LIMIT $4"
    ))
    .bind(tenant)
    .bind(after_t)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    load_decisions(&mut conn, &mut out).await?;
    Ok(out)
}
