//! The hash chain: hashing a record, appending inside a transaction, reading in order.

use ring::digest::{SHA256, digest};
use sqlx::{AnyConnection, Row};

use super::{AuditEvent, AuditRecord};
use crate::store::{Backend, Store, StoreError};
use crate::token::jcs;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Advisory-lock key that serialises chain appends across PostgreSQL replicas.
const PG_CHAIN_LOCK: i64 = 0x7465_7373_6572_6101;

/// The hash of a record's content chained to its `prev_hash` (the `hash` field is ignored).
pub fn record_hash(r: &AuditRecord) -> String {
    hex(digest(&SHA256, content_jcs(r).as_bytes()).as_ref())
}

/// The RFC 8785 canonical JSON of a record's content: the object of its fields but `hash`.
/// Written directly, since its members are fixed: the same text as
/// `jcs::canonicalize(&json!({...}))` (a test holds the two equal) without building a
/// `Value` per record.
fn content_jcs(r: &AuditRecord) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(
        160 + r.event.len() + r.actor.len() + r.tenant.len() + r.subject.len() + r.detail.len() + r.prev_hash.len(),
    );
    // Members in the order of their names' UTF-16 code units.
    out.push_str("{\"actor\":");
    jcs::write_string(&mut out, &r.actor);
    let _ = write!(out, ",\"at\":{},\"detail\":", r.at);
    jcs::write_string(&mut out, &r.detail);
    out.push_str(",\"event\":");
    jcs::write_string(&mut out, &r.event);
    out.push_str(",\"prev_hash\":");
    jcs::write_string(&mut out, &r.prev_hash);
    let _ = write!(out, ",\"seq\":{},\"subject\":", r.seq);
    jcs::write_string(&mut out, &r.subject);
    out.push_str(",\"tenant\":");
    jcs::write_string(&mut out, &r.tenant);
    out.push('}');
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Appends `events` at time `at` inside the caller's transaction.
pub async fn append(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[AuditEvent],
    at: i64,
) -> Result<(), StoreError> {
    let items: Vec<(&AuditEvent, i64)> = events.iter().map(|e| (e, at)).collect();
    append_items(conn, backend, &items).await
}

/// Takes the lock that serialises appends (and other numbered appends, such as the
/// revocation feed) until the transaction ends. On SQLite the write transaction already holds
/// the database's write lock; on PostgreSQL this is a transaction-scoped advisory lock, which
/// may be taken more than once.
pub async fn lock(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        // Wrapped so the statement returns an integer column rather than `void`.
        sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
            .bind(PG_CHAIN_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Appends events, each with its own time, inside the caller's transaction: the chain is
/// computed in memory from the last stored record, then written with as few multi-row
/// `INSERT`s as the batch allows.
pub(super) async fn append_items(
    conn: &mut AnyConnection,
    backend: Backend,
    items: &[(&AuditEvent, i64)],
) -> Result<(), StoreError> {
    lock(conn, backend).await?;
    if items.is_empty() {
        return Ok(());
    }
    let last = head_on(conn).await?;
    insert_records(conn, &chain(last, items)).await
}

/// The records of `items`, chained after `last` (the last stored record's seq and hash, if
/// any).
pub(super) fn chain(last: Option<(i64, String)>, items: &[(&AuditEvent, i64)]) -> Vec<AuditRecord> {
    let (mut seq, mut prev) = last.unwrap_or_else(|| (0, GENESIS.to_owned()));
    let mut records = Vec::with_capacity(items.len());
    for &(e, at) in items {
        seq += 1;
        let mut r = AuditRecord {
            seq,
            at,
            event: e.event.clone(),
            actor: e.actor.clone(),
            tenant: e.tenant.clone(),
            subject: e.subject.clone(),
            detail: e.detail.clone(),
            prev_hash: prev,
            hash: String::new(),
        };
        r.hash = record_hash(&r);
        prev = r.hash.clone();
        records.push(r);
    }
    records
}

/// Most rows in one `INSERT` (nine parameters each: far below SQLite's and PostgreSQL's
/// limits on bound parameters).
const MAX_ROWS_PER_INSERT: usize = 128;

/// Rows of the next `INSERT` for `remaining` records: the largest power of two that fits,
/// so that only a handful of distinct statements are ever prepared and cached.
fn rows_per_insert(remaining: usize) -> usize {
    let n = remaining.min(MAX_ROWS_PER_INSERT);
    if n == 0 { 0 } else { 1 << n.ilog2() }
}

fn insert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO audit_log (seq, at, event, actor, tenant, subject, detail, prev_hash, hash) VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        let p = r * 9;
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9
        ));
    }
    sql
}

async fn insert_records(conn: &mut AnyConnection, records: &[AuditRecord]) -> Result<(), StoreError> {
    let mut rest = records;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rows_per_insert(rest.len()));
        let sql = insert_sql(chunk.len());
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.seq)
                .bind(r.at)
                .bind(&r.event)
                .bind(&r.actor)
                .bind(&r.tenant)
                .bind(&r.subject)
                .bind(&r.detail)
                .bind(&r.prev_hash)
                .bind(&r.hash);
        }
        q.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}

/// Appends `events` in a transaction of their own.
pub async fn append_now(store: &Store, events: &[AuditEvent], at: i64) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    append(&mut tx, store.backend(), events, at).await?;
    tx.commit().await?;
    Ok(())
}

/// The chain's head on `conn`: the last stored record's seq and hash, or, when every record
/// has been archived, the anchor's; `None` for an empty chain.
pub async fn head_on(conn: &mut AnyConnection) -> Result<Option<(i64, String)>, StoreError> {
    let last =
        sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *conn).await?;
    let last = match last {
        Some(row) => Some(row),
        None => sqlx::query("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetch_optional(&mut *conn).await?,
    };
    Ok(match last {
        Some(row) => Some((row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?)),
        None => None,
    })
}

/// The chain's head, read outside any transaction (see [`head_on`]).
pub async fn head(store: &Store) -> Result<Option<(i64, String)>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    head_on(&mut conn).await
}

/// Reads the records with `after_seq < seq <= upto_seq`, at most `limit`, in order.
pub async fn read_range(
    store: &Store,
    after_seq: i64,
    upto_seq: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at, event, actor, tenant, subject, detail, prev_hash, hash FROM audit_log \
         WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
    )
    .bind(after_seq)
    .bind(upto_seq)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.into_iter().map(|r| record_from_row(&r)).collect()
}

/// A record from a row selecting `seq, at, event, actor, tenant, subject, detail, prev_hash,
/// hash`.
pub(crate) fn record_from_row(r: &sqlx::any::AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        event: r.try_get("event")?,
        actor: r.try_get("actor")?,
        tenant: r.try_get("tenant")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// Reads records in order, `limit` at a time from after `after_seq`.
pub async fn read_page(store: &Store, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at, event, actor, tenant, subject, detail, prev_hash, hash FROM audit_log \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after_seq)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(record_from_row).collect()
}

/// The audit records of one tenant whose subject is `subject` (an approval id), in chain
/// order, at most `limit`.
pub async fn of_subject(
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
    rows.iter().map(record_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_are_split_into_powers_of_two() {
        let mut sizes = Vec::new();
        let mut rest = 300;
        while rest > 0 {
            let n = rows_per_insert(rest);
            sizes.push(n);
            rest -= n;
        }
        assert_eq!(sizes, [128, 128, 32, 8, 4]);
        assert_eq!(rows_per_insert(1), 1);
        assert!(insert_sql(2).ends_with("($10, $11, $12, $13, $14, $15, $16, $17, $18)"));
    }

    #[test]
    fn record_content_is_its_canonical_json() {
        // The hand-written canonical form must be exactly what the generic one gives,
        // escapes included, or stored chains stop verifying.
        for text in ["plain", "quote \" back \\ slash", "ctl \u{1}\u{8}\u{c}\n\r\t\u{1f}", "é € 𝄞", ""] {
            let r = AuditRecord {
                seq: 42,
                at: -7,
                event: crate::audit::EventName::TokenIssued.as_str().into(),
                actor: text.into(),
                tenant: format!("t{text}"),
                subject: text.into(),
                detail: jcs::canonicalize(&serde_json::json!({"k": text, "n": 1})),
                prev_hash: GENESIS.into(),
                hash: "ignored".into(),
            };
            let generic = jcs::canonicalize(&serde_json::json!({
                "seq": r.seq, "at": r.at, "event": r.event, "actor": r.actor, "tenant": r.tenant,
                "subject": r.subject, "detail": r.detail, "prev_hash": r.prev_hash,
            }));
            assert_eq!(content_jcs(&r), generic, "{text:?}");
        }
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
