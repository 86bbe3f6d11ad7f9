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
    /// The first line of an archive file: the checkpoint its records follow.
    Opening,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Stored => "stored checkpoint",
            Origin::Witness => "witness checkpoint",
            Origin::Archive => "archive's checkpoint",
            Origin::Anchor => "anchor checkpoint",
            Origin::Opening => "archive's opening checkpoint",
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

use crate::domain::rfc3339;

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
    /// The seq and hash the next record must follow.
    prev: Option<(i64, String)>,
}

impl ChainCheck {
    /// A chain continuing from `seq` and `hash` (0 and [`GENESIS`] for a whole chain).
    pub fn from(seq: i64, hash: &str) -> Self {
        ChainCheck { prev: Some((seq, hash.to_owned())) }
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
        /// What the first record rests on, when it is not the chain's genesis: the checkpoint
        /// that proves the anchor, or the one an archive names on its first line.
        rests_on: Option<String>,
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
    rests_on: Option<String>,
    records: i64,
    first: i64,
    last: i64,
    checkpoints: i64,
}

impl Run {
    fn new(checks: Vec<Box<dyn Check>>) -> Self {
        Run { checks, rests_on: None, records: 0, first: 0, last: 0, checkpoints: 0 }
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
        ChainReport::Intact {
            records: self.records,
            first: self.first,
            last: self.last,
            checkpoints: self.checkpoints,
            rests_on: self.rests_on,
        }
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

/// What proves the anchor `cp`, or why nothing does. A witness proves it when at or above it:
/// the chain then continues from the anchor's hash to the record the witness signed (the
/// run checks that link); archives prove it when they end at it.
fn anchor_proof(cp: &Checkpoint, witnesses: &[Checkpoint], archives: Option<&ArchiveSpan>) -> Result<String, Problem> {
    let a = &cp.claims;
    let covered_from = archives.map_or(i64::MAX, |s| s.first);
    if let Some(w) = witnesses.iter().find(|w| w.claims.seq < a.seq && w.claims.seq < covered_from) {
        let hold = if archives.is_some() { "the archives given start later" } else { "no archive was given" };
        return Err(Problem::at(
            w.claims.seq,
            format!(
                "{} is below the chain's start, {}, and {hold}: records up to {} are gone from the database; \
                 give the archive files that hold them (--archive FILE, in order)",
                w.name(),
                cp.name(),
                a.seq
            ),
        ));
    }
    if let Some(s) = archives {
        if s.last == a.seq && s.hash == a.hash {
            return Ok(format!("{}, proven by {}, which ends at it", cp.name(), s.name));
        }
        return Err(Problem::at(
            a.seq,
            format!("{} ends at record {}, not at the chain's start, {}", s.name, s.last, cp.name()),
        ));
    }
    match witnesses.iter().find(|w| w.claims.seq >= a.seq) {
        Some(w) => Ok(format!("{}, proven by {}", cp.name(), w.name())),
        None => Err(Problem::at(
            a.seq,
            format!(
                "the chain starts at {}, and nothing given proves it: records up to {} were archived, or \
                 deleted; give the archive that ends at it (--archive FILE) or a witness checkpoint at or \
                 above it (--checkpoint TOKEN)",
                cp.name(),
                a.seq
            ),
        )),
    }
}

/// What archive files given beside the database hold: the records `first..=last`, the last
/// with `hash`, having verified on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSpan {
    /// The first record's seq.
    pub first: i64,
    /// The last record's seq.
    pub last: i64,
    /// The last record's hash.
    pub hash: String,
    /// The files, to name them.
    pub name: String,
}

/// Verifies the chain in the database from its start (or its anchor), every stored
/// checkpoint and the `witnesses` against it, then the `extra` checks.
///
/// A chain that starts at an anchor (records archived) verifies only when the anchor is
/// proven: by `archives` ending at it, or by a witness checkpoint at or above it. Anyone who
/// can write the database can make any stored checkpoint the anchor and delete the records
/// below it; a witness below the anchor that no archive covers is then named with the anchor.
pub async fn verify_store(
    store: &Store,
    keys: &dyn CheckpointKeys,
    witnesses: Vec<Checkpoint>,
    archives: Option<ArchiveSpan>,
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
        let cp = match stored(a, keys, Origin::Anchor) {
            Ok(cp) => cp,
            Err(p) => return Ok(p.into()),
        };
        match anchor_proof(&cp, &witnesses, archives.as_ref()) {
            Ok(proof) => run.rests_on = Some(proof),
            Err(p) => return Ok(p.into()),
        }
        if let Err(p) = run.checkpoint(&cp) {
            return Ok(p.into());
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

/// The last line of an archive file: the checkpoint of its last record.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosingLine {
    checkpoint: String,
}

/// The first line of an archive file that does not start at the chain's genesis: the
/// checkpoint its first record follows (the anchor the chain had when it was written).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OpeningLine {
    after_checkpoint: String,
}

/// The opening line `audit archive` writes before records that follow `token`.
pub fn opening_line(token: &str) -> serde_json::Value {
    serde_json::json!({ "after_checkpoint": token })
}

/// Verifies an archive file on its own (design §16): JSON lines of records, then
/// `{"checkpoint": TOKEN}`, whose signature must verify and which must name the last record.
/// The file starts at the chain's genesis (record 1), or names on its first line the
/// checkpoint its first record follows, `{"after_checkpoint": TOKEN}`: a file whose first
/// records were cut is detected. `follows` (seq, hash), when known (the end of the file
/// before it), is where it must start. `witnesses` falling within the file are checked too.
pub fn verify_archive(
    reader: impl BufRead,
    keys: &dyn CheckpointKeys,
    follows: Option<(i64, String)>,
    witnesses: Vec<Checkpoint>,
    extra: Vec<Box<dyn Check>>,
) -> std::io::Result<ChainReport> {
    let mut lines = reader.lines().enumerate().peekable();
    // Where the records start: an opening checkpoint, the file before, or the genesis.
    let mut opening: Option<Checkpoint> = None;
    if let Some((_, Ok(first))) = lines.peek()
        && let Ok(o) = serde_json::from_str::<OpeningLine>(first)
    {
        let claims = match checkpoint::verify_token(&o.after_checkpoint, keys) {
            Ok(c) => c,
            Err(e) => {
                return Ok(
                    Problem::at(0, format!("line 1: the archive's opening checkpoint does not verify: {e}")).into()
                );
            }
        };
        if let Some((seq, hash)) = &follows
            && (claims.seq != *seq || claims.hash != *hash)
        {
            return Ok(Problem::at(
                seq + 1,
                format!("line 1: the archive follows the checkpoint of seq {}, not record {seq} where the file before it ends", claims.seq),
            )
            .into());
        }
        opening = Some(Checkpoint { claims, origin: Origin::Opening });
        lines.next();
    }
    let start = match (&opening, follows) {
        (Some(o), _) => (o.claims.seq, o.claims.hash.clone()),
        (None, Some(f)) => f,
        (None, None) => (0, GENESIS.to_owned()),
    };
    let from_genesis = start.0 == 0;
    let mut checks: Vec<Box<dyn Check>> =
        vec![Box::new(ChainCheck::from(start.0, &start.1)), Box::new(CheckpointCheck::new(Some(start.clone())))];
    checks.extend(extra);
    let mut run = Run::new(checks);
    if let Some(o) = &opening {
        run.rests_on = Some(o.name());
        if let Err(p) = run.checkpoint(o) {
            return Ok(p.into());
        }
    }
    // Below the file's start, a witness belongs to an earlier file.
    let mut witnesses = witnesses.into_iter().filter(|w| w.claims.seq >= start.0).peekable();
    let mut closing: Option<Checkpoint> = None;
    for (n, line) in lines {
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
        if run.records == 0 && from_genesis && (r.seq != 1 || r.prev_hash != GENESIS) {
            return Ok(Problem::at(
                1,
                format!(
                    "line {}: the archive starts at record {}, neither at the chain's genesis nor after a \
                     checkpoint named on its first line: its first records were cut",
                    n + 1,
                    r.seq
                ),
            )
            .into());
        }
        while let Some(w) = witnesses.next_if(|w| w.claims.seq < r.seq) {
            if let Err(p) = run.checkpoint(&w) {
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
