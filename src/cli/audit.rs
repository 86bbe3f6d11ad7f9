//! `audit verify | export | archive`: act on the database directly (design §6, §16).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::Failure;
use super::admin::print_json;
use crate::audit::verify::{self, ChainReport, Checkpoint};
use crate::audit::{self, archive, checkpoint};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCmd {
    /// Recompute every hash and check every stored checkpoint against the chain; exit 1
    /// naming the first problem.
    Verify {
        /// A checkpoint kept elsewhere (a witness's copy) to check the chain against
        /// (repeatable).
        #[arg(long = "checkpoint", value_name = "TOKEN")]
        checkpoints: Vec<String>,
        /// Check archive files, each on its own unless several are given in order, which must
        /// then continue one another; when the last ends at the chain's anchor, the database
        /// is checked on from it (repeatable).
        #[arg(long = "archive", value_name = "FILE")]
        archives: Vec<PathBuf>,
        /// Public keys to check checkpoints with: a saved JWKS document or its URL
        /// (repeatable); default: the public halves of the keys folder's keys.
        #[arg(long, value_name = "FILE|URL")]
        jwks: Vec<String>,
    },
    /// Write the records as JSON lines on stdout.
    Export {
        /// Start after this sequence number (the last one a previous export wrote).
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
        /// Keep running, writing new records as they commit, until interrupted.
        #[arg(long)]
        follow: bool,
        /// How often --follow looks for new records, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 500)]
        poll_ms: u64,
    },
    /// Move the records up to the last checkpoint before a time to a file, check it, and
    /// delete them from the database in batches; the chain continues from that checkpoint.
    Archive {
        /// An RFC 3339 time: archive up to the last checkpoint signed before it.
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        before: i64,
        /// The archive file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Records per transaction when reading and deleting.
        #[arg(long, value_name = "N", default_value_t = archive::DEFAULT_BATCH)]
        batch: i64,
        /// Public keys to check checkpoints with: a saved JWKS document or its URL
        /// (repeatable); default: the public halves of the keys folder's keys.
        #[arg(long, value_name = "FILE|URL")]
        jwks: Vec<String>,
    },
}

pub(super) async fn run(config: &Config, cmd: AuditCmd) -> Result<(), Failure> {
    let store = Store::open(&config.database_url).await?;
    let result = run_on(config, &store, cmd).await;
    store.close().await;
    result
}

async fn run_on(config: &Config, store: &Store, cmd: AuditCmd) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Verify { checkpoints, archives, jwks } => {
            let (keys, source) = checkpoint_keys(config, &jwks).await?;
            println!("checkpoint keys: {source}");
            let witnesses = verify::witnesses(&checkpoints, &keys).map_err(|p| Failure(p.reason))?;
            let span = if archives.is_empty() { None } else { Some(verify_archives(&archives, &keys, &witnesses)?) };
            let anchor = checkpoint::anchor(store).await?;
            if let Some(span) = &span {
                // The archives alone, unless they end where the database's chain starts.
                let joins = anchor.as_ref().is_some_and(|a| a.claims.seq == span.last && a.claims.hash == span.hash);
                if !joins {
                    println!(
                        "database not checked: the archives end at record {}, {}",
                        span.last,
                        match &anchor {
                            Some(a) => format!("and the database's chain starts after record {}", a.claims.seq),
                            None => "and the database's chain starts at its genesis".into(),
                        }
                    );
                    return Ok(());
                }
            }
            let report = verify::verify_store(store, &keys, witnesses, span, Vec::new()).await?;
            report_chain("audit chain", report)?;
            // Every passkey decision, checked again against its stored key (design §15).
            let passkeys = crate::passkeys::verify_decisions(store, &config.passkey_rp_id)
                .await
                .map_err(|e| Failure(format!("passkey decisions: {e}")))?;
            println!("passkey decisions verified: {passkeys}");
            Ok(())
        }
        AuditCmd::Export { after, follow, poll_ms } => export(store, after, follow, poll_ms).await,
        AuditCmd::Archive { before, out, batch, jwks } => {
            let (keys, source) = checkpoint_keys(config, &jwks).await?;
            let done =
                archive::archive(store, &keys, before, &out, batch, Duration::from_millis(20), super::admin::now())
                    .await?;
            let mut out = serde_json::to_value(&done)?;
            out["checkpoint_keys"] = source.into();
            print_json(&out)
        }
    }
}

fn report_chain(what: &str, report: ChainReport) -> Result<(), Failure> {
    match report {
        ChainReport::Intact { records, first, last, checkpoints, rests_on } => {
            if records == 0 {
                println!("{what} intact: 0 records, {checkpoints} checkpoints");
            } else {
                println!("{what} intact: {records} records ({first} to {last}), {checkpoints} checkpoints");
            }
            if let Some(r) = rests_on {
                println!("{what} starts after {r}");
            }
            Ok(())
        }
        ChainReport::Broken { seq, reason } => Err(Failure(format!("{what} broken at record {seq}: {reason}"))),
    }
}

/// Verifies archive files in order, each continuing the one before; what they hold.
fn verify_archives(
    files: &[PathBuf],
    keys: &HashMap<String, Vec<u8>>,
    witnesses: &[Checkpoint],
) -> Result<verify::ArchiveSpan, Failure> {
    let mut follows: Option<(i64, String)> = None;
    let mut first = None;
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
        let report = verify::verify_archive(
            std::io::BufReader::new(file),
            keys,
            follows.clone(),
            witnesses.to_vec(),
            Vec::new(),
        )?;
        if let ChainReport::Intact { first: f, last, .. } = &report {
            first.get_or_insert(*f);
            follows = Some((*last, last_record_hash(path)?));
        }
        report_chain(&format!("archive {}", path.display()), report)?;
    }
    let (Some(first), Some((last, hash))) = (first, follows) else {
        return Err(Failure("no archive given".into()));
    };
    let name = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let name = if files.len() == 1 { format!("the archive {name}") } else { format!("the archives {name}") };
    Ok(verify::ArchiveSpan { first, last, hash, name })
}

/// The hash of an archive's last record (the line before its checkpoint).
fn last_record_hash(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)?;
    let mut last = None;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if let Ok(r) = serde_json::from_str::<audit::AuditRecord>(&line) {
            last = Some(r.hash);
        }
    }
    last.ok_or_else(|| Failure(format!("{} holds no record", path.display())))
}

/// The public keys checkpoints are checked with, never from the database under test (which
/// whoever rewrote it could have given a key of their own): the `--jwks` documents, files or
/// URLs, or else the public halves of the keys folder's keys; and which, to say so.
async fn checkpoint_keys(config: &Config, jwks: &[String]) -> Result<(HashMap<String, Vec<u8>>, String), Failure> {
    let mut keys = HashMap::new();
    if jwks.is_empty() {
        let dir = &config.keys_dir;
        for s in crate::keys::load_dir(dir).map_err(|e| Failure(e.to_string()))? {
            keys.insert(s.kid().to_owned(), s.public_key().to_vec());
        }
        if keys.is_empty() {
            return Err(Failure(format!(
                "the keys folder {} holds no key to check checkpoints with; give the broker's JWKS (--jwks FILE|URL)",
                dir.display()
            )));
        }
        let source = format!("the keys folder {} ({} keys)", dir.display(), keys.len());
        return Ok((keys, source));
    }
    for source in jwks {
        let found = if source.starts_with("http://") || source.starts_with("https://") {
            keys_from_url(source).await?
        } else {
            keys_from_jwks_file(std::path::Path::new(source))?
        };
        if found.is_empty() {
            return Err(Failure(format!("{source} holds no Ed25519 key")));
        }
        keys.extend(found);
    }
    let source = format!("the JWKS {} ({} keys)", jwks.join(", "), keys.len());
    Ok((keys, source))
}

/// The Ed25519 keys of a JWKS document read from its URL, as the verifier reads it.
async fn keys_from_url(url: &str) -> Result<HashMap<String, Vec<u8>>, Failure> {
    let client = crate::verify::JwksClient::new(url, crate::verify::JwksOptions::default());
    client.refresh().await.map_err(|e| Failure(format!("{url}: {e}")))?;
    Ok(ed25519_keys(&client.snapshot()))
}

/// The Ed25519 keys of a saved JWKS document.
fn keys_from_jwks_file(path: &std::path::Path) -> Result<HashMap<String, Vec<u8>>, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
    let set = crate::verify::jwks::parse_jwks(&bytes).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    Ok(ed25519_keys(&set))
}

fn ed25519_keys(set: &HashMap<String, std::sync::Arc<crate::verify::PublicKey>>) -> HashMap<String, Vec<u8>> {
    set.values().filter(|k| k.alg == crate::token::ALG_EDDSA).map(|k| (k.kid.clone(), k.raw.clone())).collect()
}

/// How long --follow waits for a missing record to appear before it gives up.
const GAP_PATIENCE: Duration = Duration::from_secs(30);

async fn export(store: &Store, after: Option<i64>, follow: bool, poll_ms: u64) -> Result<(), Failure> {
    let anchor = checkpoint::anchor(store).await?.map_or(0, |a| a.claims.seq);
    let mut after = match after {
        Some(a) if a < 0 => return Err(Failure("--after must be 0 or more".into())),
        Some(a) if a < anchor => {
            return Err(Failure(format!(
                "records up to {anchor} are archived: read them from the archive, or resume with --after {anchor}"
            )));
        }
        Some(a) => a,
        None => anchor,
    };
    let poll = Duration::from_millis(poll_ms.clamp(10, 60_000));
    let mut stop = std::pin::pin!(stop_signal());
    let mut gap_since: Option<std::time::Instant> = None;
    loop {
        let page = audit::read_page(store, after, 1000).await?;
        // Only the run that continues without a gap: a later record is written once the
        // one before it is visible, so a gap is waited out rather than skipped.
        let mut written = 0;
        {
            let mut out = std::io::stdout().lock();
            for r in &page {
                if r.seq != after + 1 {
                    break;
                }
                writeln!(out, "{}", serde_json::to_string(r)?)?;
                after = r.seq;
                written += 1;
            }
            out.flush()?;
        }
        if written < page.len() {
            let since = *gap_since.get_or_insert_with(std::time::Instant::now);
            if !follow || since.elapsed() > GAP_PATIENCE {
                return Err(Failure(format!("record {} missing (the next is {})", after + 1, page[written].seq)));
            }
        } else {
            gap_since = None;
            if written == 1000 {
                continue;
            }
            if !follow {
                return Ok(());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = &mut stop => return Ok(()),
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn parse_rfc3339(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}
