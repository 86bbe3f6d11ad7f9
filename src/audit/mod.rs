//! The append-only, hash-chained audit log, and what proves it complete.
//!
//! Each row of `audit_log` holds its content in readable columns and its own hash: SHA-256
//! over the RFC 8785 canonical JSON of its content together with the previous record's hash
//! ([`chain`]). The broker signs checkpoints of the chain's head ([`checkpoint`]), so deleting
//! the tail or rewriting records and recomputing every later hash is detected by
//! [`verify`]. Old records move to archive files ([`archive`]) that verify on their own.
//!
//! State changes append their records inside their own transaction, through one unit of work
//! ([`Change`]). Issued tokens, which
//! change nothing else, go through [`AuditWriter`], which groups concurrent records into one
//! transaction (group commit) and answers each caller only once its record is durable. The
//! writer knows nothing of clients: a record may carry a [`Precondition`], checked inside the
//! commit through a [`PreconditionReader`] that the module writing the record provides.
//!
//! This module sits under the modules that write to it: it depends on the store and the
//! token encoding only.

pub mod archive;
mod chain;
mod change;
pub mod checkpoint;
pub mod event;
pub mod verify;
mod writer;

use serde::Serialize;
use serde_json::Value;

pub use chain::{GENESIS, append, append_now, head, hex, lock, of_subject, read_page, read_range, record_hash};
pub use change::Change;
pub use event::{Event, EventName};
pub use verify::{ChainReport, Problem};
pub use writer::{AuditWriter, CheckedError, Fingerprints, MAX_BATCH, Precondition, PreconditionReader, WriterStats};

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
    /// Further facts: a JSON object, as its RFC 8785 canonical text (what the record stores
    /// and its hash covers).
    pub detail: String,
}

impl AuditEvent {
    /// Builds an event; `detail` is a JSON object.
    fn new(event: EventName, actor: &str, tenant: &str, subject: &str, detail: Value) -> Self {
        Self::with_canonical_detail(event, actor, tenant, subject, crate::token::jcs::canonicalize(&detail))
    }

    /// Builds the record of `event`, with its details in their shape.
    pub fn of(event: Event, actor: &str, tenant: &str, subject: &str) -> Self {
        let name = event.name();
        Self::new(name, actor, tenant, subject, event.into_detail())
    }

    /// As [`AuditEvent::new`], with the detail already in canonical form: for the token
    /// endpoint, which writes its fixed facts directly instead of building a JSON tree per
    /// token (a test holds the two forms equal).
    pub(crate) fn with_canonical_detail(
        event: EventName,
        actor: &str,
        tenant: &str,
        subject: &str,
        detail: String,
    ) -> Self {
        AuditEvent {
            event: event.as_str().to_owned(),
            actor: actor.to_owned(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            detail,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Why an audited request could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("audit write failed: {0}")]
pub struct AuditError(pub String);
