//! Verifying the chain: every record's hash, every checkpoint against the records it covers.
//!
//! Verification is a stream of records and checkpoints, in order of `seq` (a checkpoint right
//! after the record it names), fed to a list of [`Check`]s; the first [`Problem`] any check
//! finds ends it. The database ([`verify_store`]) and an archive file ([`verify_archive`]) are
//! two sources of the same stream, so each check runs on both. A further check (for example
//! one that re-verifies the evidence kept in decision records) is one more [`Check`] passed
//! in `extra`.

use std::io::BufRead;

use super::checkpoint::{self, CheckpointClaims, CheckpointKeys};
use super::{AuditRecord, GENESIS, chain, record_hash};
use crate::store::{Store, StoreError};

/// Records read per page.
const PAGE: i64 = 5000;

/// What went wrong, at which record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record concerned (the first missing one, for missing records; 0 when none).
    pub seq: i64,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    fn at(seq: i64, reason: impl Into<String>) -> Problem {
        Problem { seq, reason: reason.into() }
    }
}

/// Where a checkpoint came from, to name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The database's table of checkpoints.
    Stored,
    /// Given on the command line: a witness's copy.
    Witness,
    /// The last line of an archive file.
    Archive,
    /// The anchor an archive left the chain with.
    Anchor,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Stored => "stored checkpoint",
            Origin::Witness => "witness checkpoint",
            Origin::Archive => "archive's checkpoint",
            Origin::Anchor => "anchor checkpoint",
        })
    }
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its claims.
    pub claims: CheckpointClaims,
    /// Where it came from.
    pub origin: Origin,
}

impl Checkpoint {
    fn name(&self) -> String {
        format!("the {} of seq {} (signed at {})", self.origin, self.claims.seq, rfc3339(self.claims.iat))
    }
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// One property of the stream.
pub trait Check: Send {
    /// The next record, in order.
    fn record(&mut self, r: &AuditRecord) -> Result<(), Problem>;
    /// A checkpoint, right after the record it names (or at the end, when no record does).
    fn checkpoint(&mut self, _cp: &Checkpoint) -> Result<(), Problem> {
        Ok(())
    }
    /// After the last record and checkpoint.
    fn finish(&mut self) -> Result<(), Problem> {
        Ok(())
    }
}

/// Sequence numbers without gaps, each record's `prev_hash` its predecessor's hash, each
/// hash its content's.
#[derive(Debug)]
pub struct ChainCheck {
    /// The seq and hash the next record must follow; `None` to take the first record's
    /// `prev_hash` as given (an archive file on its own).
    prev: Option<(i64, String)>,
}

impl ChainCheck {
    /// A chain continuing from `seq` and `hash` (0 and [`GENESIS`] for a whole chain).
    pub fn from(seq: i64, hash: &str) -> Self {
        ChainCheck { prev: Some((seq, hash.to_owned())) }
    }
    /// A chain continuing from wherever its first record says.
    pub fn from_first() -> Self {
        ChainCheck { prev: None }
    }
}

impl Check for ChainCheck {
    fn record(&mut self, r: &AuditRecord) -> Result<(), Problem> {
        if let Some((seq, hash)) = &self.prev {
            if r.seq != seq + 1 {
                return Err(Problem::at(seq + 1, format!("record missing (the next is {})", r.seq)));
            }
            if r.prev_hash != *hash {
                return Err(Problem::at(r.seq, "prev_hash does not match the previous record"));
            }
        }
        if record_hash(r) != r.hash {
            return Err(Problem::at(r.seq, "content does not match its hash"));
        }
        self.prev = Some((r.seq, r.hash.clone()));
        Ok(())
    }
}

/// Every checkpoint names a record that is there, with the hash it signed: records deleted up
/// to a checkpoint, or rewritten with every later hash recomputed, are detected.
#[derive(Debug)]
pub struct CheckpointCheck {
    /// Records at or below this seq are archived (the anchor's seq, or the record before an
    /// archive file's first).
    archived_upto: Option<(i64, String)>,
    last: Option<(i64, String)>,
}

impl CheckpointCheck {
    /// With the records up to `anchor` (seq, hash) archived, if any.
    pub fn new(anchor: Option<(i64, String)>) -> Self {
        CheckpointCheck { archived_upto: anchor, last: None }
    }
}

impl Check for CheckpointCheck {
    fn record(&mut self, r: &AuditRecord) -> Result<(), Problem> {
        if self.archived_upto.is_none() && self.last.is_none() {
            // An archive file: what comes before its first record is another file's.
            self.archived_upto = Some((r.seq - 1, r.prev_hash.clone()));
        }
        self.last = Some((r.seq, r.hash.clone()));
        Ok(())
    }

    fn checkpoint(&mut self, cp: &Checkpoint) -> Result<(), Problem> {
        let c = &cp.claims;
        if let Some((a_seq, a_hash)) = &self.archived_upto {
            if c.seq == *a_seq && *a_seq > 0 && c.hash != *a_hash {
                return Err(Problem::at(c.seq, format!("the chain's start does not match {}", cp.name())));
            }
            if c.seq <= *a_seq {
                // Covers archived records: checked against the archive file.
                return Ok(());
            }
        }
        match &self.last {
            Some((seq, hash)) if *seq == c.seq => {
                if *hash == c.hash {
                    Ok(())
                } else {
                    Err(Problem::at(c.seq, format!("record does not match {}: rewritten", cp.name())))
                }
            }
            Some((seq, _)) if *seq > c.seq => {
                Err(Problem::at(c.seq, format!("{} names a record the chain does not have", cp.name())))
            }
            last => {
                let first_missing =
                    last.as_ref().map_or_else(|| self.archived_upto.as_ref().map_or(1, |(s, _)| s + 1), |(s, _)| s + 1);
                Err(Problem::at(
                    first_missing,
                    format!("records {first_missing} to {} missing: {} covers them", c.seq, cp.name()),
                ))
            }
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainReport {
    /// Everything checks out.
    Intact {
        /// Records checked.
        records: i64,
        /// The first and last record's seq (0 when none).
        first: i64,
        /// The last record's seq.
        last: i64,
        /// Checkpoints checked (stored, witnesses, an archive's, the anchor).
        checkpoints: i64,
    },
    /// The first problem found.
    Broken {
        /// The record concerned.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

impl From<Problem> for ChainReport {
    fn from(p: Problem) -> Self {
        ChainReport::Broken { seq: p.seq, reason: p.reason }
    }
}

/// Feeds the checks and counts.
struct Run {
    checks: Vec<Box<dyn Check>>,
    records: i64,
    first: i64,
    last: i64,
    checkpoints: i64,
}

impl Run {
    fn new(checks: Vec<Box<dyn Check>>) -> Self {
        Run { checks, records: 0, first: 0, last: 0, checkpoints: 0 }
    }
    fn record(&mut self, r: &AuditRecord) -> Result<(), Problem> {
        for c in &mut self.checks {
            c.record(r)?;
        }
        if self.records == 0 {
            self.first = r.seq;
        }
        self.records += 1;
        self.last = r.seq;
        Ok(())
    }
    fn checkpoint(&mut self, cp: &Checkpoint) -> Result<(), Problem> {
        for c in &mut self.checks {
            c.checkpoint(cp)?;
        }
        self.checkpoints += 1;
        Ok(())
    }
    fn finish(mut self) -> ChainReport {
        for c in &mut self.checks {
            if let Err(p) = c.finish() {
                return p.into();
            }
        }
        ChainReport::Intact { records: self.records, first: self.first, last: self.last, checkpoints: self.checkpoints }
    }
}

/// Verifies a stored checkpoint: its signature, and that its columns say what it signed.
fn stored(cp: &checkpoint::StoredCheckpoint, keys: &dyn CheckpointKeys, origin: Origin) -> Result<Checkpoint, Problem> {
    let claims = checkpoint::verify_token(&cp.token, keys).map_err(|e| {
        Problem::at(cp.claims.seq, format!("the {origin} of seq {} does not verify: {e}", cp.claims.seq))
    })?;
    let s = &cp.claims;
    if claims.seq != s.seq
        || claims.hash != s.hash
        || claims.count != s.count
        || (origin == Origin::Stored && claims.iat != s.iat)
    {
        return Err(Problem::at(s.seq, format!("the {origin} of seq {} differs from the token it stores", s.seq)));
    }
    Ok(Checkpoint { claims, origin })
}

/// Verifies witness checkpoints given as tokens.
pub fn witnesses(tokens: &[String], keys: &dyn CheckpointKeys) -> Result<Vec<Checkpoint>, Problem> {
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        let claims = checkpoint::verify_token(t, keys)
            .map_err(|e| Problem::at(0, format!("the witness checkpoint does not verify: {e}")))?;
        out.push(Checkpoint { claims, origin: Origin::Witness });
    }
    out.sort_by_key(|c| c.claims.seq);
    Ok(out)
}

/// Verifies the chain in the database from its start (or its anchor), every stored
/// checkpoint and the `witnesses` against it, then the `extra` checks.
pub async fn verify_store(
    store: &Store,
    keys: &dyn CheckpointKeys,
    witnesses: Vec<Checkpoint>,
    extra: Vec<Box<dyn Check>>,
) -> Result<ChainReport, StoreError> {
    let anchor = checkpoint::anchor(store).await?;
    let (start_seq, start_hash) =
        anchor.as_ref().map_or((0, GENESIS.to_owned()), |a| (a.claims.seq, a.claims.hash.clone()));
    let mut checks: Vec<Box<dyn Check>> = vec![
        Box::new(ChainCheck::from(start_seq, &start_hash)),
        Box::new(CheckpointCheck::new(anchor.as_ref().map(|a| (a.claims.seq, a.claims.hash.clone())))),
    ];
    checks.extend(extra);
    let mut run = Run::new(checks);
    if let Some(a) = &anchor {
        match stored(a, keys, Origin::Anchor) {
            Ok(cp) => {
                if let Err(p) = run.checkpoint(&cp) {
                    return Ok(p.into());
                }
            }
            Err(p) => return Ok(p.into()),
        }
    }
    let mut witnesses = witnesses.into_iter().peekable();
    // Checkpoints up to `done` have been fed.
    let mut done = i64::MIN;
    let mut after = start_seq;
    loop {
        let page = chain::read_range(store, after, i64::MAX, PAGE).await?;
        let upto = page.last().map_or(i64::MAX, |r| r.seq);
        // The checkpoints of this page (all that remain, after the last page), in order.
        let mut cps = Vec::new();
        let mut from = done;
        loop {
            let got = checkpoint::range(store, from, upto, PAGE).await?;
            let n = got.len();
            if let Some(l) = got.last() {
                from = l.claims.seq;
            }
            for c in &got {
                match stored(c, keys, Origin::Stored) {
                    Ok(cp) => cps.push(cp),
                    Err(p) => return Ok(p.into()),
                }
            }
            if n < PAGE as usize {
                break;
            }
        }
        while let Some(w) = witnesses.next_if(|w| w.claims.seq <= upto) {
            cps.push(w);
        }
        cps.sort_by_key(|c| c.claims.seq);
        done = upto;
        let mut cps = cps.into_iter().peekable();
        for r in &page {
            // Checkpoints below this record (archived ones, or ones naming missing records).
            while let Some(cp) = cps.next_if(|c| c.claims.seq < r.seq) {
                if let Err(p) = run.checkpoint(&cp) {
                    return Ok(p.into());
                }
            }
            if let Err(p) = run.record(r) {
                return Ok(p.into());
            }
            while let Some(cp) = cps.next_if(|c| c.claims.seq == r.seq) {
                if let Err(p) = run.checkpoint(&cp) {
                    return Ok(p.into());
                }
            }
        }
        for cp in cps {
            if let Err(p) = run.checkpoint(&cp) {
                return Ok(p.into());
            }
        }
        let Some(last) = page.last() else { break };
        after = last.seq;
    }
    Ok(run.finish())
}

/// One line of an archive file that is not a record: the closing checkpoint.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosingLine {
    checkpoint: String,
}

/// Verifies an archive file on its own (design §16): JSON lines of records, then
/// `{"checkpoint": TOKEN}`, whose signature must verify and which must name the last record.
/// The first record's `prev_hash` is taken as given; `follows` (seq, hash), when known, is
/// the record it must continue from. `witnesses` falling within the file are checked too.
pub fn verify_archive(
    reader: impl BufRead,
    keys: &dyn CheckpointKeys,
    follows: Option<(i64, String)>,
    witnesses: Vec<Checkpoint>,
    extra: Vec<Box<dyn Check>>,
) -> std::io::Result<ChainReport> {
    let mut checks: Vec<Box<dyn Check>> = vec![
        Box::new(match &follows {
            Some((s, h)) => ChainCheck::from(*s, h),
            None => ChainCheck::from_first(),
        }),
        Box::new(CheckpointCheck::new(follows.clone())),
    ];
    checks.extend(extra);
    let mut run = Run::new(checks);
    let mut witnesses = witnesses.into_iter().peekable();
    let mut closing: Option<Checkpoint> = None;
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let at = |reason: String| Problem::at(run.last + 1, format!("line {}: {reason}", n + 1));
        if closing.is_some() {
            return Ok(at("a line after the closing checkpoint".into()).into());
        }
        if let Ok(c) = serde_json::from_str::<ClosingLine>(&line) {
            match checkpoint::verify_token(&c.checkpoint, keys) {
                Ok(claims) => closing = Some(Checkpoint { claims, origin: Origin::Archive }),
                Err(e) => return Ok(at(format!("the archive's checkpoint does not verify: {e}")).into()),
            }
            continue;
        }
        let r: AuditRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return Ok(at(format!("not a record: {e}")).into()),
        };
        while let Some(w) = witnesses.next_if(|w| w.claims.seq < r.seq) {
            // Below the file's first record, a witness belongs to an earlier file.
            if run.records > 0
                && let Err(p) = run.checkpoint(&w)
            {
                return Ok(p.into());
            }
        }
        if let Err(p) = run.record(&r) {
            return Ok(p.into());
        }
        while let Some(w) = witnesses.next_if(|w| w.claims.seq == r.seq) {
            if let Err(p) = run.checkpoint(&w) {
                return Ok(p.into());
            }
        }
    }
    let Some(closing) = closing else {
        return Ok(Problem::at(run.last + 1, "the archive does not end with its checkpoint: cut short?").into());
    };
    if let Err(p) = run.checkpoint(&closing) {
        return Ok(p.into());
    }
    if closing.claims.seq != run.last {
        return Ok(Problem::at(run.last, "the archive's checkpoint does not name its last record").into());
    }
    // Witnesses beyond the file's last record belong to later records.
    Ok(run.finish())
}
