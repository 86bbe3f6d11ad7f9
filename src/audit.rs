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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use serde::Serialize;
use serde_json::Value;
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
pub(crate) fn hex(bytes: &[u8]) -> String {
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
async fn append_items(
    conn: &mut AnyConnection,
    backend: Backend,
    items: &[(&AuditEvent, i64)],
) -> Result<(), StoreError> {
    lock(conn, backend).await?;
    if items.is_empty() {
        return Ok(());
    }
    let last =
        sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *conn).await?;
    let last = match last {
        Some(row) => Some((row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?)),
        None => None,
    };
    insert_records(conn, &chain(last, items)).await
}

/// The records of `items`, chained after `last` (the last stored record's seq and hash, if
/// any).
fn chain(last: Option<(i64, String)>, items: &[(&AuditEvent, i64)]) -> Vec<AuditRecord> {
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
            detail: jcs::canonicalize(&e.detail),
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

/// A client authenticated from memory rather than from the database: its row must still say
/// this when the record commits, or the record is refused and nothing is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCheck {
    /// The client.
    pub client_id: String,
    /// The secret hash it was authenticated against.
    pub secret_hash: String,
    /// The row's `updated_at` when it was read.
    pub updated_at: i64,
}

impl ClientCheck {
    /// Whether the client's row, as read now, still says what it said when the client was
    /// authenticated: enabled, the same secret hash, unchanged since.
    fn holds(&self, secret_hash: &str, disabled: bool, updated_at: i64) -> bool {
        !disabled && updated_at == self.updated_at && secret_hash == self.secret_hash
    }
}

/// Why a checked record was not written.
#[derive(Debug, thiserror::Error)]
pub enum CheckedError {
    /// The client changed (disabled, secret rotated) since it was read: authenticate again
    /// against the database.
    #[error("the client changed since it was authenticated")]
    Stale,
    /// The write failed.
    #[error(transparent)]
    Failed(#[from] AuditError),
}

struct Job {
    event: AuditEvent,
    at: i64,
    check: Option<ClientCheck>,
    reply: oneshot::Sender<Result<(), CheckedError>>,
}

/// Group commit for high-rate records: a single writer takes every record waiting, writes
/// them in one transaction (the chain computed in memory), and answers each caller after
/// the commit. Records that carry a
/// [`ClientCheck`] are validated inside the same transaction, with one query per batch.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
    clients: std::sync::Arc<crate::clients::AuthCache>,
    stats: std::sync::Arc<WriterStats>,
}

/// What the writer has done since start, for `/metrics`: the mean batch is
/// `records / batches`, the mean time to write and commit one `seconds / batches`.
#[derive(Debug, Default)]
pub struct WriterStats {
    batches: AtomicU64,
    records: AtomicU64,
    micros: AtomicU64,
}

impl WriterStats {
    fn add(&self, records: usize, took: std::time::Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Batches written (or tried), records in them, and seconds spent writing and committing.
    pub fn totals(&self) -> (u64, u64, f64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
            self.micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Most records written in one transaction.
pub const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Starts the writer on `store`: on SQLite a thread with a connection of its own, on
    /// PostgreSQL a task.
    pub fn start(store: Store) -> AuditWriter {
        let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let stats = std::sync::Arc::new(WriterStats::default());
        let counted = stats.clone();
        match store.sqlite_file().cloned() {
            Some(file) => {
                let spawned = std::thread::Builder::new()
                    .name("tessera-audit".into())
                    .spawn(move || sqlite_writer::run(&file, rx, &counted));
                if let Err(e) = spawned {
                    // Without a writer every record fails (the channel is closed), so no
                    // token is issued unrecorded.
                    tracing::error!(error = %e, "cannot start the audit writer thread");
                }
            }
            None => {
                tokio::spawn(pool_writer(store, rx, counted));
            }
        }
        AuditWriter { tx, clients: std::sync::Arc::default(), stats }
    }

    /// What the writer has done since start.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The clients authenticated from memory, whose records this writer checks at commit
    /// (see [`crate::clients::authenticate_cached`]).
    pub fn client_cache(&self) -> &crate::clients::AuthCache {
        &self.clients
    }

    /// Records `event` at `at`; returns once it is committed.
    pub async fn record(&self, event: AuditEvent, at: i64) -> Result<(), AuditError> {
        match self.submit(event, at, None).await {
            Ok(()) => Ok(()),
            Err(CheckedError::Failed(e)) => Err(e),
            Err(CheckedError::Stale) => Err(AuditError("unexpected client check".into())),
        }
    }

    /// Records `event` at `at` if the client of `check` is, at commit, still as it was read;
    /// returns once it is committed.
    pub async fn record_checked(&self, event: AuditEvent, at: i64, check: ClientCheck) -> Result<(), CheckedError> {
        self.submit(event, at, Some(check)).await
    }

    async fn submit(&self, event: AuditEvent, at: i64, check: Option<ClientCheck>) -> Result<(), CheckedError> {
        let (reply, wait) = oneshot::channel();
        self.tx.send(Job { event, at, check, reply }).await.map_err(|_| AuditError("writer stopped".into()))?;
        match tokio::time::timeout(Duration::from_secs(15), wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError("writer stopped".into()).into()),
            Err(_) => Err(AuditError("timed out".into()).into()),
        }
    }
}

/// Most times the writer lets other tasks run while its batch keeps growing.
const MAX_YIELDS: usize = 8;

/// The writer on the connection pool's backend (PostgreSQL).
async fn pool_writer(store: Store, mut rx: mpsc::Receiver<Job>, stats: std::sync::Arc<WriterStats>) {
    // A connection of the writer's own, taken from the pool once (and again after a
    // failure), so a batch costs no pool checkout.
    let mut conn: Option<AnyConnection> = None;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = rx.recv().await {
        batch.push(job);
        take_waiting(&mut rx, &mut batch);
        // Let the requests already runnable on this runtime (signed, about to send their
        // record) go first, so that they share this commit instead of each waiting for one
        // more. When nothing else is runnable this returns at once.
        for _ in 0..MAX_YIELDS {
            if batch.len() >= MAX_BATCH {
                break;
            }
            let before = batch.len();
            tokio::task::yield_now().await;
            take_waiting(&mut rx, &mut batch);
            if batch.len() == before {
                break;
            }
        }
        let started = Instant::now();
        let result = write_batch(&store, &mut conn, &batch).await;
        stats.add(batch.len(), started.elapsed());
        answer(&mut batch, &result);
    }
}

/// Answers every job of `batch` with the outcome of its write, and empties it.
fn answer(batch: &mut Vec<Job>, result: &Result<Vec<bool>, StoreError>) {
    for (i, job) in batch.drain(..).enumerate() {
        let r = match result {
            Ok(accepted) if accepted[i] => Ok(()),
            Ok(_) => Err(CheckedError::Stale),
            Err(e) => Err(CheckedError::Failed(AuditError(e.to_string()))),
        };
        let _ = job.reply.send(r);
    }
}

/// The writer on SQLite: a thread of its own with a connection of its own, outside the pool.
///
/// Every issued token's record goes through here, so the path is short: one cached prepared
/// statement per row instead of a multi-row statement rebuilt per batch, and no hop through
/// the pool's worker thread per statement. A batch is every record the runtime has ready:
/// the thread yields the core until a yield brings no new record.
mod sqlite_writer {
    use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

    use super::{AuditEvent, Job, MAX_BATCH, WriterStats, answer, chain, take_waiting};
    use crate::store::{SqliteFile, StoreError};

    /// Commits, or records, after which the writer checkpoints: copies the write-ahead log
    /// back into the database, so that the log starts over. Small and often: the next batch
    /// waits for a checkpoint, and at concurrency 16 checkpoints every 256 commits (some 1 800
    /// frames of log; SQLite's own default is 1 000) put the p99 at 7.5 to 8.3 ms, every 16
    /// commits at 5.0 to 6.1 ms, for the same throughput (docs/performance.md).
    const CHECKPOINT_COMMITS: usize = 16;
    const CHECKPOINT_RECORDS: usize = 256;

    pub(super) fn run(file: &SqliteFile, mut rx: tokio::sync::mpsc::Receiver<Job>, stats: &WriterStats) {
        let mut conn: Option<Connection> = None;
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let (mut commits, mut records) = (0, 0);
        while let Some(job) = rx.blocking_recv() {
            batch.push(job);
            take_waiting(&mut rx, &mut batch);
            // Woken by the first record, this thread would otherwise commit it at once and
            // the requests right behind it would each wait for a commit of their own. Give
            // the core back to the runtime while it still has records to send: a yield that
            // brings nothing new means nothing else is runnable, and the batch is complete.
            for _ in 0..super::MAX_YIELDS {
                if batch.len() >= MAX_BATCH {
                    break;
                }
                let before = batch.len();
                std::thread::yield_now();
                take_waiting(&mut rx, &mut batch);
                if batch.len() == before {
                    break;
                }
            }
            let started = std::time::Instant::now();
            let result = match &mut conn {
                Some(c) => write_batch(c, &batch),
                None => open(file).and_then(|c| write_batch(conn.insert(c), &batch)),
            };
            if result.is_err() {
                // The connection may be what failed: the next batch opens a fresh one.
                conn = None;
            }
            stats.add(batch.len(), started.elapsed());
            commits += 1;
            records += batch.len();
            answer(&mut batch, &result);
            // After the answers, not inside a commit as SQLite's automatic checkpoint would
            // be: no caller waits for it but the next batch.
            if commits >= CHECKPOINT_COMMITS || records >= CHECKPOINT_RECORDS {
                (commits, records) = (0, 0);
                if let Some(c) = &conn
                    && let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(error = %e, "write-ahead log checkpoint failed");
                }
            }
        }
    }

    fn open(file: &SqliteFile) -> Result<Connection, StoreError> {
        // The pool has created the file and put it in WAL mode (which persists).
        let c = Connection::open_with_flags(
            &file.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.execute_batch(if file.synchronous_normal {
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
        } else {
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
        })?;
        c.pragma_update_and_check(None, "wal_autocheckpoint", 0, |_| Ok(()))?;
        Ok(c)
    }

    /// One transaction: the client checks, then the chained records.
    fn write_batch(conn: &mut Connection, batch: &[Job]) -> Result<Vec<bool>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut accepted = Vec::with_capacity(batch.len());
        {
            let mut client =
                tx.prepare_cached("SELECT secret_hash, disabled, updated_at FROM clients WHERE client_id = ?1")?;
            // A batch holds few distinct clients: each is read once.
            let mut seen: Vec<(&str, bool)> = Vec::new();
            for job in batch {
                let ok = match &job.check {
                    None => true,
                    Some(c) => match seen.iter().find(|(id, _)| *id == c.client_id) {
                        Some(&(_, current)) => current,
                        None => {
                            let row = client
                                .query_row([&c.client_id], |r| {
                                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                                })
                                .optional()?;
                            let current = row
                                .is_some_and(|(hash, disabled, updated_at)| c.holds(&hash, disabled != 0, updated_at));
                            seen.push((&c.client_id, current));
                            current
                        }
                    },
                };
                accepted.push(ok);
            }
        }
        let items: Vec<(&AuditEvent, i64)> =
            batch.iter().zip(&accepted).filter(|(_, ok)| **ok).map(|(j, _)| (&j.event, j.at)).collect();
        if !items.is_empty() {
            let last = tx
                .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
                .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .optional()?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit_log (seq, at, event, actor, tenant, subject, detail, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for r in chain(last, &items) {
                insert.execute(rusqlite::params![
                    r.seq,
                    r.at,
                    r.event,
                    r.actor,
                    r.tenant,
                    r.subject,
                    r.detail,
                    r.prev_hash,
                    r.hash
                ])?;
            }
        }
        tx.commit()?;
        Ok(accepted)
    }
}

/// Moves the records already waiting into the batch, up to [`MAX_BATCH`].
fn take_waiting(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Writes a batch in one transaction; which jobs were written (the others failed their
/// client check).
async fn write_batch(store: &Store, conn: &mut Option<AnyConnection>, batch: &[Job]) -> Result<Vec<bool>, StoreError> {
    // Records in one batch share the commit; each keeps its own time.
    let mut last_err = None;
    for _attempt in 0..3 {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(store.pool().acquire().await?.detach()),
        };
        let result = async {
            // As `Store::begin_write`: on SQLite the write lock is taken at once.
            let mut tx = match store.backend() {
                Backend::Sqlite => sqlx::Connection::begin_with(&mut *c, "BEGIN IMMEDIATE").await?,
                Backend::Postgres => sqlx::Connection::begin(&mut *c).await?,
            };
            // Under the chain lock, so that on PostgreSQL a concurrent disable (which takes
            // it too) is either seen here or waits for this commit.
            lock(&mut tx, store.backend()).await?;
            let accepted = check_clients(&mut tx, batch).await?;
            let items: Vec<(&AuditEvent, i64)> =
                batch.iter().zip(&accepted).filter(|(_, ok)| **ok).map(|(j, _)| (&j.event, j.at)).collect();
            append_items(&mut tx, store.backend(), &items).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(accepted)
        }
        .await;
        match result {
            Ok(accepted) => return Ok(accepted),
            Err(e) if e.is_unique_violation() => last_err = Some(e),
            Err(e) => {
                // The connection may be what failed: the next batch takes a fresh one.
                *conn = None;
                return Err(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| StoreError::Setup("audit append retries exhausted".into())))
}

/// Which jobs pass their client check, read inside the batch's transaction.
async fn check_clients(conn: &mut AnyConnection, batch: &[Job]) -> Result<Vec<bool>, StoreError> {
    let mut ids: Vec<&str> = batch.iter().filter_map(|j| j.check.as_ref().map(|c| c.client_id.as_str())).collect();
    if ids.is_empty() {
        return Ok(vec![true; batch.len()]);
    }
    ids.sort_unstable();
    ids.dedup();
    let current = crate::store::clients::auth_states(conn, &ids).await?;
    Ok(batch
        .iter()
        .map(|j| match &j.check {
            None => true,
            Some(c) => {
                current.get(c.client_id.as_str()).is_some_and(|s| c.holds(&s.secret_hash, s.disabled, s.updated_at))
            }
        })
        .collect())
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
                event: "token.issued".into(),
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
