//! Archiving old records (design §16): the records up to a checkpoint go to a file that
//! verifies on its own, the chain continues from that checkpoint as its anchor, and the
//! records are deleted in bounded batches, so that the broker keeps issuing tokens meanwhile.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::checkpoint::{self, CheckpointKeys, StoredCheckpoint};
use super::verify::{ChainReport, verify_archive};
use super::{chain, lock};
use crate::store::{Store, StoreError};

/// Records read, and deleted, per transaction by default.
pub const DEFAULT_BATCH: i64 = 5000;

/// What an archive did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Archived {
    /// The file written.
    pub out: String,
    /// Records written to it.
    pub records: i64,
    /// The first and last record's seq.
    pub first_seq: i64,
    /// The last record's seq: the new anchor.
    pub last_seq: i64,
    /// The closing checkpoint, which is the chain's anchor from now on.
    pub checkpoint: String,
    /// Records deleted from the database.
    pub deleted: i64,
}

/// Why an archive stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Nothing to do, or refused; the text says why.
    #[error("{0}")]
    Refused(String),
    /// The file could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes the records up to the last checkpoint signed before `before` to `out` (which must
/// not exist), checks the file, makes that checkpoint the chain's anchor, then deletes the
/// records in transactions of at most `batch` rows, pausing `pause` between two. The archive
/// itself is recorded (`audit.archived`, at `now`), in the chain that continues.
pub async fn archive(
    store: &Store,
    keys: &dyn CheckpointKeys,
    before: i64,
    out: &Path,
    batch: i64,
    pause: Duration,
    now: i64,
) -> Result<Archived, ArchiveError> {
    let batch = batch.max(1);
    let Some(cp) = checkpoint::last_before(store, before).await? else {
        return Err(ArchiveError::Refused("no checkpoint was signed before that time: nothing to archive".into()));
    };
    let anchor = checkpoint::anchor(store).await?;
    let from = anchor.as_ref().map_or(0, |a| a.claims.seq);
    if cp.claims.seq <= from {
        // Archived already; finish deleting, should an earlier run have stopped half-way.
        let deleted = delete_upto(store, from, batch, pause).await?;
        return Err(ArchiveError::Refused(format!(
            "the records up to the last checkpoint before that time (seq {}) are archived already{}",
            cp.claims.seq,
            if deleted > 0 { format!("; deleted {deleted} left behind") } else { String::new() }
        )));
    }
    let records = write_file(store, &cp, anchor.as_ref(), out, batch).await?;
    // Check the file as `audit verify --archive` would, continuing from the anchor.
    let follows = anchor.as_ref().map(|a| (a.claims.seq, a.claims.hash.clone()));
    let file = std::io::BufReader::new(std::fs::File::open(out)?);
    match verify_archive(file, keys, follows, Vec::new(), Vec::new())? {
        ChainReport::Intact { last, .. } if last == cp.claims.seq => {}
        ChainReport::Intact { last, .. } => {
            return Err(ArchiveError::Refused(format!(
                "the archive ends at record {last}, not at the checkpoint's {}: nothing deleted",
                cp.claims.seq
            )));
        }
        ChainReport::Broken { seq, reason } => {
            return Err(ArchiveError::Refused(format!(
                "the archive does not verify at record {seq}: {reason}; nothing deleted (the chain needs `audit verify`)"
            )));
        }
    }
    set_anchor(store, &cp, records, now).await?;
    let deleted = delete_upto(store, cp.claims.seq, batch, pause).await?;
    Ok(Archived {
        out: out.display().to_string(),
        records,
        first_seq: from + 1,
        last_seq: cp.claims.seq,
        checkpoint: cp.token,
        deleted,
    })
}

/// Writes the records after `anchor` (or from the genesis) up to `cp`: the anchor's
/// checkpoint on the first line, then the records, then `cp` on the last line.
async fn write_file(
    store: &Store,
    cp: &StoredCheckpoint,
    anchor: Option<&StoredCheckpoint>,
    out: &Path,
    batch: i64,
) -> Result<i64, ArchiveError> {
    let from = anchor.map_or(0, |a| a.claims.seq);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| ArchiveError::Refused(format!("cannot create {}: {e}", out.display())))?;
    let mut w = std::io::BufWriter::new(file);
    if let Some(a) = anchor {
        serde_json::to_writer(&mut w, &super::verify::opening_line(&a.token)).map_err(std::io::Error::other)?;
        w.write_all(b"\n")?;
    }
    let mut after = from;
    let mut records = 0;
    loop {
        let page = chain::read_range(store, after, cp.claims.seq, batch).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            serde_json::to_writer(&mut w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        records += page.len() as i64;
    }
    serde_json::to_writer(&mut w, &serde_json::json!({ "checkpoint": cp.token })).map_err(std::io::Error::other)?;
    w.write_all(b"\n")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(records)
}

async fn set_anchor(store: &Store, cp: &StoredCheckpoint, records: i64, now: i64) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    lock(&mut tx, store.backend()).await?;
    sqlx::query("DELETE FROM audit_anchor").execute(&mut *tx).await?;
    sqlx::query("INSERT INTO audit_anchor (id, seq, hash, token) VALUES (1, $1, $2, $3)")
        .bind(cp.claims.seq)
        .bind(&cp.claims.hash)
        .bind(&cp.token)
        .execute(&mut *tx)
        .await?;
    let detail = super::event::Archived { records, last_seq: cp.claims.seq, hash: cp.claims.hash.clone() };
    let event = super::AuditEvent::of(super::Event::AuditArchived(detail), "cli", "", &cp.claims.seq.to_string());
    super::append(&mut tx, store.backend(), &[event], now).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the records at or below `upto`, lowest first, `batch` at a time, then the
/// checkpoints below it (the archive's own checkpoint covers them).
async fn delete_upto(store: &Store, upto: i64, batch: i64, pause: Duration) -> Result<i64, StoreError> {
    let mut deleted = 0;
    loop {
        let lowest: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM audit_log").fetch_one(store.pool()).await?;
        let Some(lowest) = lowest.filter(|s| *s <= upto) else { break };
        let hi = lowest.saturating_add(batch - 1).min(upto);
        let mut tx = store.begin_write().await?;
        let n = sqlx::query("DELETE FROM audit_log WHERE seq >= $1 AND seq <= $2")
            .bind(lowest)
            .bind(hi)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        deleted += n as i64;
        tokio::time::sleep(pause).await;
    }
    let mut tx = store.begin_write().await?;
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq < $1").bind(upto).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(deleted)
}
