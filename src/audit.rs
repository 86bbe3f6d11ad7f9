//! The append-only, hash-chained audit log.
//!
//! Each row of `audit_log` holds its content in readable columns and its own hash: SHA-256
//! over the RFC 8785 canonical JSON of its content together with the previous record's hash.
//! `verify` recomputes every hash, so altering, removing or inserting any record, the last
//! one included, is detected and the first bad record named.
//!
//! State changes append their records inside their own transaction. Issued tokens, which
//! change nothing else, go through [`AuditWriter`], which groups concurrent records into one
//! transaction (group commit) and answers each caller only once its record is durable.

use std::time::Duration;

use ring::digest::{SHA256, digest};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Backend, Store, StoreError};
use crate::token::jcs;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Advisory-lock key that serialises chain appends across PostgreSQL replicas.
const PG_CHAIN_LOCK: i64 = 0x7465_7373_6572_6101;

/// One event to record. Never put a token or a secret in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// What happened, e.g. `token.issued`, `client.created`.
    pub event: String,
    /// Who did it: a client id, or `cli` for the command line.
    pub actor: String,
    /// The tenant concerned (empty for global events such as key changes).
    pub tenant: String,
    /// What it happened to: a client id, a key id, an approval id, a jti.
    pub subject: String,
    /// Further facts, as a JSON object.
    pub detail: Value,
}

impl AuditEvent {
    /// Builds an event.
    pub fn new(event: &str, actor: &str, tenant: &str, subject: &str, detail: Value) -> Self {
        AuditEvent {
            event: event.to_owned(),
            actor: actor.to_owned(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            detail,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When, Unix seconds.
    pub at: i64,
    /// What happened.
    pub event: String,
    /// Who did it.
    pub actor: String,
    /// The tenant concerned.
    pub tenant: String,
    /// What it happened to.
    pub subject: String,
    /// Canonical JSON text of the details.
    pub detail: String,
    /// The previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// The hash of a record's content chained to its `prev_hash` (the `hash` field is ignored).
pub fn record_hash(r: &AuditRecord) -> String {
    let content = json!({
        "seq": r.seq, "at": r.at, "event": r.event, "actor": r.actor, "tenant": r.tenant,
        "subject": r.subject, "detail": r.detail, "prev_hash": r.prev_hash,
    });
    let d = digest(&SHA256, jcs::canonicalize(&content).as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
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

/// Appends events, each with its own time, inside the caller's transaction.
async fn append_items(
    conn: &mut AnyConnection,
    backend: Backend,
    items: &[(&AuditEvent, i64)],
) -> Result<(), StoreError> {
    lock(conn, backend).await?;
    let last =
        sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *conn).await?;
    let (mut seq, mut prev) = match last {
        Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?),
        None => (0, GENESIS.to_owned()),
    };
    for &(e, at) in items {
        seq += 1;
        let mut r = AuditRecord {
            seq,
            at,
            event: e.event.clone(),
            actor: e.actor.clone(),
            tenant: e.tenant.clone(),
            subject: e.subject.clone(),
            detail: jcs::canonicalize(&e.detail),
            prev_hash: prev,
            hash: String::new(),
        };
        r.hash = record_hash(&r);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, event, actor, tenant, subject, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(r.seq)
        .bind(r.at)
        .bind(&r.event)
        .bind(&r.actor)
        .bind(&r.tenant)
        .bind(&r.subject)
        .bind(&r.detail)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(&mut *conn)
        .await?;
        let hash = r.hash;
        prev = hash;
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
    rows.into_iter()
        .map(|r| {
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
        })
        .collect()
}

/// The outcome of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainReport {
    /// Every record checks out.
    Intact {
        /// How many records.
        records: i64,
    },
    /// The first record that does not.
    Broken {
        /// Its sequence number (or the expected one, for a gap).
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Recomputes every hash in order.
pub async fn verify(store: &Store) -> Result<ChainReport, StoreError> {
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_owned();
    loop {
        let page = read_page(store, expected_seq - 1, 1000).await?;
        if page.is_empty() {
            return Ok(ChainReport::Intact { records: expected_seq - 1 });
        }
        for r in page {
            if r.seq != expected_seq {
                return Ok(ChainReport::Broken {
                    seq: expected_seq,
                    reason: format!("record missing (next is {})", r.seq),
                });
            }
            if r.prev_hash != prev {
                return Ok(ChainReport::Broken {
                    seq: r.seq,
                    reason: "prev_hash does not match the previous record".into(),
                });
            }
            let h = record_hash(&r);
            if h != r.hash {
                return Ok(ChainReport::Broken { seq: r.seq, reason: "content does not match its hash".into() });
            }
            prev = r.hash;
            expected_seq += 1;
        }
    }
}

/// Why an audited request could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("audit write failed: {0}")]
pub struct AuditError(pub String);

type Job = (AuditEvent, i64, oneshot::Sender<Result<(), AuditError>>);

/// Group commit for high-rate records: a single task takes every record waiting, writes
/// them in one transaction, and answers each caller after the commit.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
}

/// Most records written in one transaction.
pub const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Starts the writer task on `store`.
    pub fn start(store: Store) -> AuditWriter {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while let Some(job) = rx.recv().await {
                batch.push(job);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let result = write_batch(&store, &batch).await;
                for (_, _, reply) in batch.drain(..) {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(AuditError(e.to_string())),
                    };
                    let _ = reply.send(r);
                }
            }
        });
        AuditWriter { tx }
    }

    /// Records `event` at `at`; returns once it is committed.
    pub async fn record(&self, event: AuditEvent, at: i64) -> Result<(), AuditError> {
        let (reply, wait) = oneshot::channel();
        self.tx.send((event, at, reply)).await.map_err(|_| AuditError("writer stopped".into()))?;
        match tokio::time::timeout(Duration::from_secs(15), wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError("writer stopped".into())),
            Err(_) => Err(AuditError("timed out".into())),
        }
    }
}

async fn write_batch(store: &Store, batch: &[Job]) -> Result<(), StoreError> {
    // Records in one batch share the commit; each keeps its own time.
    let mut last_err = None;
    for _attempt in 0..3 {
        let result = async {
            let mut tx = store.begin_write().await?;
            let items: Vec<(&AuditEvent, i64)> = batch.iter().map(|(e, at, _)| (e, *at)).collect();
            append_items(&mut tx, store.backend(), &items).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_unique_violation() => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| StoreError::Setup("audit append retries exhausted".into())))
}
