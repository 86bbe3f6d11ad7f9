//! The group-commit writer for high-rate records (issued tokens).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sqlx::AnyConnection;
use tokio::sync::{mpsc, oneshot};

use super::chain::{append_items, chain, lock};
use super::{AuditError, AuditEvent};
use crate::store::{Backend, Store, StoreError};

/// What a record's author read when it decided to write it, to be read again inside the
/// commit: a key and a fingerprint of the row it names. The record is written only if the
/// fingerprint read then is still the one read now.
///
/// The token endpoint authenticates known clients from memory; its records carry the
/// client's id and a fingerprint of its secret hash and last change (see
/// `crate::clients::ClientCheck`), so a client disabled or rotated meanwhile gets nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// What to read, e.g. a client id.
    pub key: String,
    /// What it said.
    pub fingerprint: String,
}

/// The current fingerprints of keys, by key, read on a pooled connection.
pub type Fingerprints<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<std::collections::HashMap<String, String>, StoreError>> + Send + 'a>,
>;

/// Reads the current fingerprints of keys inside the writer's transaction, on either
/// backend's connection. Provided by the module whose records carry [`Precondition`]s; a key
/// that is absent from the answer (a row gone, a client disabled) fails its check.
pub trait PreconditionReader: Send + Sync + std::fmt::Debug + 'static {
    /// On the SQLite writer's own connection, inside its transaction.
    fn read_sqlite(
        &self,
        conn: &rusqlite::Connection,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, StoreError>;

    /// On a pooled connection (PostgreSQL), inside the batch's transaction.
    fn read_any<'a>(&'a self, conn: &'a mut AnyConnection, keys: &'a [&'a str]) -> Fingerprints<'a>;
}

/// Why a checked record was not written.
#[derive(Debug, thiserror::Error)]
pub enum CheckedError {
    /// What the record's precondition named changed since it was read (a client disabled,
    /// a secret rotated): read it again from the database.
    #[error("the record's precondition no longer holds")]
    Stale,
    /// The write failed.
    #[error(transparent)]
    Failed(#[from] AuditError),
}

struct Job {
    event: AuditEvent,
    at: i64,
    check: Option<Precondition>,
    reply: oneshot::Sender<Result<(), CheckedError>>,
}

/// Group commit for high-rate records: a single writer takes every record waiting, writes
/// them in one transaction (the chain computed in memory), and answers each caller after
/// the commit. Records that carry a
/// [`Precondition`] are checked inside the same transaction, with one read per batch.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
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
    ///
    /// `reader` reads, inside each batch's transaction, what the batch's [`Precondition`]s
    /// name.
    pub fn start(store: Store, reader: std::sync::Arc<dyn PreconditionReader>) -> AuditWriter {
        let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let stats = std::sync::Arc::new(WriterStats::default());
        let counted = stats.clone();
        match store.sqlite_file().cloned() {
            Some(file) => {
                let spawned = std::thread::Builder::new()
                    .name("tessera-audit".into())
                    .spawn(move || sqlite_writer::run(&file, rx, &counted, reader.as_ref()));
                if let Err(e) = spawned {
                    // Without a writer every record fails (the channel is closed), so no
                    // token is issued unrecorded.
                    tracing::error!(error = %e, "cannot start the audit writer thread");
                }
            }
            None => {
                tokio::spawn(pool_writer(store, rx, counted, reader));
            }
        }
        AuditWriter { tx, stats }
    }

    /// What the writer has done since start.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Records `event` at `at`; returns once it is committed. The wait has no timer of its
    /// own: the token endpoint's callers wait within the request's time limit
    /// (`request_timeout_secs`), which ends it.
    pub async fn record(&self, event: AuditEvent, at: i64) -> Result<(), AuditError> {
        match self.submit(event, at, None).await {
            Ok(()) => Ok(()),
            Err(CheckedError::Failed(e)) => Err(e),
            Err(CheckedError::Stale) => Err(AuditError("unexpected precondition".into())),
        }
    }

    /// Records `event` at `at` if `check` still holds at commit;
    /// returns once it is committed.
    pub async fn record_checked(&self, event: AuditEvent, at: i64, check: Precondition) -> Result<(), CheckedError> {
        self.submit(event, at, Some(check)).await
    }

    async fn submit(&self, event: AuditEvent, at: i64, check: Option<Precondition>) -> Result<(), CheckedError> {
        let (reply, wait) = oneshot::channel();
        self.tx.send(Job { event, at, check, reply }).await.map_err(|_| AuditError("writer stopped".into()))?;
        match wait.await {
            Ok(r) => r,
            Err(_) => Err(AuditError("writer stopped".into()).into()),
        }
    }
}

/// Most times the writer lets other tasks run while its batch keeps growing.
const MAX_YIELDS: usize = 8;

/// The writer on the connection pool's backend (PostgreSQL).
async fn pool_writer(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    stats: std::sync::Arc<WriterStats>,
    reader: std::sync::Arc<dyn PreconditionReader>,
) {
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
        let result = write_batch(&store, &mut conn, &batch, reader.as_ref()).await;
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

    use super::{
        AuditEvent, Job, MAX_BATCH, PreconditionReader, WriterStats, answer, chain, passes, precondition_keys,
        take_waiting,
    };
    use crate::store::{SqliteFile, StoreError};

    /// Commits, or records, after which the writer checkpoints: copies the write-ahead log
    /// back into the database, so that the log starts over. Small and often: the next batch
    /// waits for a checkpoint, and at concurrency 16 checkpoints every 256 commits (some 1 800
    /// frames of log; SQLite's own default is 1 000) put the p99 at 7.5 to 8.3 ms, every 16
    /// commits at 5.0 to 6.1 ms, for the same throughput (docs/performance.md). Large
    /// batches (high concurrency) reach the record bound first: at 2 048 rather than 256 the
    /// writer spends 2 % less CPU per token at concurrency 64, as fewer checkpoints copy the
    /// same tail pages again.
    const CHECKPOINT_COMMITS: usize = 16;
    const CHECKPOINT_RECORDS: usize = 2048;

    pub(super) fn run(
        file: &SqliteFile,
        mut rx: tokio::sync::mpsc::Receiver<Job>,
        stats: &WriterStats,
        reader: &dyn PreconditionReader,
    ) {
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
                Some(c) => write_batch(c, &batch, reader),
                None => open(file).and_then(|c| write_batch(conn.insert(c), &batch, reader)),
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

    /// One transaction: the preconditions, then the chained records.
    fn write_batch(
        conn: &mut Connection,
        batch: &[Job],
        reader: &dyn PreconditionReader,
    ) -> Result<Vec<bool>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let keys = precondition_keys(batch);
        let accepted =
            if keys.is_empty() { vec![true; batch.len()] } else { passes(batch, &reader.read_sqlite(&tx, &keys)?) };
        let items: Vec<(&AuditEvent, i64)> =
            batch.iter().zip(&accepted).filter(|(_, ok)| **ok).map(|(j, _)| (&j.event, j.at)).collect();
        if !items.is_empty() {
            let last = tx
                .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
                .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .optional()?;
            // An empty log after an archive continues from its anchor.
            let last = match last {
                Some(l) => Some(l),
                None => tx
                    .prepare_cached("SELECT seq, hash FROM audit_anchor WHERE id = 1")?
                    .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .optional()?,
            };
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
/// precondition).
async fn write_batch(
    store: &Store,
    conn: &mut Option<AnyConnection>,
    batch: &[Job],
    reader: &dyn PreconditionReader,
) -> Result<Vec<bool>, StoreError> {
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
            let accepted = check_preconditions(&mut tx, batch, reader).await?;
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

/// Which jobs pass their precondition, read inside the batch's transaction.
async fn check_preconditions(
    conn: &mut AnyConnection,
    batch: &[Job],
    reader: &dyn PreconditionReader,
) -> Result<Vec<bool>, StoreError> {
    let keys = precondition_keys(batch);
    if keys.is_empty() {
        return Ok(vec![true; batch.len()]);
    }
    let current = reader.read_any(conn, &keys).await?;
    Ok(passes(batch, &current))
}

/// The distinct keys the batch's preconditions name.
fn precondition_keys(batch: &[Job]) -> Vec<&str> {
    let mut keys: Vec<&str> = batch.iter().filter_map(|j| j.check.as_ref().map(|c| c.key.as_str())).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Whether each job's precondition holds against what was read now.
fn passes(batch: &[Job], current: &std::collections::HashMap<String, String>) -> Vec<bool> {
    batch
        .iter()
        .map(|j| match &j.check {
            None => true,
            Some(c) => current.get(&c.key).is_some_and(|now| *now == c.fingerprint),
        })
        .collect()
}
