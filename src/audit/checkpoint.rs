//! Signed checkpoints of the chain's head (design §16).
//!
//! A checkpoint is a compact JWS, `typ: audit-checkpoint+jwt`, over `iss`, `iat`, `seq` (the
//! head record's sequence number), `hash` (its record hash) and `count` (records in the chain
//! since its first, archived ones included: sequence numbers start at 1 and have no gaps, so
//! `count` equals `seq`). Checkpoints are signed under the chain lock, reading the head
//! inside that transaction: whichever replica signs, it signs a head that exists, and two
//! replicas signing the same head keep one row. The chain itself is never forked by a
//! checkpoint, which only reads it.
//!
//! This module signs through a function it is given (the key ring lives above the audit
//! log) and verifies through a key lookup it is given.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::chain::{head_on, lock};
use crate::store::{Store, StoreError};
use crate::token::jws::UnverifiedJws;

/// The `typ` of a checkpoint.
pub const TYP: &str = "audit-checkpoint+jwt";

/// The claims of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// When it was signed, Unix seconds.
    pub iat: i64,
    /// The head record's sequence number.
    pub seq: i64,
    /// The head record's hash.
    pub hash: String,
    /// Records in the chain since its first, archived ones included.
    pub count: i64,
}

/// A stored checkpoint: its token and the claims it was signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The claims, as stored beside the token.
    pub claims: CheckpointClaims,
    /// The key that signed it.
    pub kid: String,
    /// The compact JWS.
    pub token: String,
}

/// Why a checkpoint could not be signed or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The token does not verify; the text says why.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs a checkpoint of the chain's head with `sign` (which returns the compact JWS) and
/// stores it, unless the chain is empty or its head already has one. Returns the checkpoint
/// stored now, if any.
pub async fn sign_head(
    store: &Store,
    issuer: &str,
    now: i64,
    sign: &(dyn Fn(&CheckpointClaims) -> Result<String, String> + Sync),
) -> Result<Option<StoredCheckpoint>, CheckpointError> {
    // Without the lock first: most ticks find the head already signed.
    if let (Some((seq, _)), Some(latest)) = (super::chain::head(store).await?, latest_seq(store).await?)
        && seq <= latest
    {
        return Ok(None);
    }
    let mut tx = store.begin_write().await?;
    lock(&mut tx, store.backend()).await?;
    let Some((seq, hash)) = head_on(&mut tx).await? else {
        return Ok(None);
    };
    let signed: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_checkpoints WHERE seq = $1")
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    if signed.is_some() {
        return Ok(None);
    }
    let claims = CheckpointClaims { iss: issuer.to_owned(), iat: now, seq, hash, count: seq };
    let token = sign(&claims).map_err(CheckpointError::Invalid)?;
    let kid = UnverifiedJws::parse(&token).map_err(|e| CheckpointError::Invalid(e.to_string()))?.header().kid.clone();
    sqlx::query("INSERT INTO audit_checkpoints (seq, hash, count, iat, kid, token) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(claims.seq)
        .bind(&claims.hash)
        .bind(claims.count)
        .bind(claims.iat)
        .bind(&kid)
        .bind(&token)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Some(StoredCheckpoint { claims, kid, token }))
}

async fn latest_seq(store: &Store) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM audit_checkpoints").fetch_one(store.pool()).await?)
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        claims: CheckpointClaims {
            iss: String::new(),
            iat: r.try_get("iat")?,
            seq: r.try_get("seq")?,
            hash: r.try_get("hash")?,
            count: r.try_get("count")?,
        },
        kid: r.try_get("kid")?,
        token: r.try_get("token")?,
    })
}

/// The latest stored checkpoint (the highest `seq`).
pub async fn latest(store: &Store) -> Result<Option<StoredCheckpoint>, StoreError> {
    let row = sqlx::query("SELECT seq, hash, count, iat, kid, token FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The last stored checkpoint signed before `before` (Unix seconds).
pub async fn last_before(store: &Store, before: i64) -> Result<Option<StoredCheckpoint>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, hash, count, iat, kid, token FROM audit_checkpoints WHERE iat < $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(before)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Stored checkpoints with `after < seq <= upto`, at most `limit`, in order of `seq`.
pub async fn range(store: &Store, after: i64, upto: i64, limit: i64) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, hash, count, iat, kid, token FROM audit_checkpoints WHERE seq > $1 AND seq <= $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(after)
    .bind(upto)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// The anchor the chain continues from after an archive: its seq, hash and checkpoint.
pub async fn anchor(store: &Store) -> Result<Option<StoredCheckpoint>, StoreError> {
    let row =
        sqlx::query("SELECT seq, hash, token FROM audit_anchor WHERE id = 1").fetch_optional(store.pool()).await?;
    let Some(r) = row else { return Ok(None) };
    let seq: i64 = r.try_get("seq")?;
    Ok(Some(StoredCheckpoint {
        claims: CheckpointClaims { iss: String::new(), iat: 0, seq, hash: r.try_get("hash")?, count: seq },
        kid: String::new(),
        token: r.try_get("token")?,
    }))
}

/// Public Ed25519 keys by `kid`, for checking checkpoints.
pub trait CheckpointKeys {
    /// The raw 32-byte public key named `kid`, if known.
    fn key(&self, kid: &str) -> Option<Vec<u8>>;
}

impl CheckpointKeys for std::collections::HashMap<String, Vec<u8>> {
    fn key(&self, kid: &str) -> Option<Vec<u8>> {
        self.get(kid).cloned()
    }
}

/// Verifies a checkpoint token: the format, `alg: EdDSA`, `typ`, a known key, the
/// signature, and claims of the right shape (`hash` 64 lowercase hex digits, `seq` at least
/// 1, `count` equal to `seq`).
pub fn verify_token(token: &str, keys: &dyn CheckpointKeys) -> Result<CheckpointClaims, String> {
    let jws = UnverifiedJws::parse(token.trim()).map_err(|e| e.to_string())?;
    let h = jws.header();
    if h.alg != crate::token::ALG_EDDSA {
        return Err(format!("alg {:?} is not EdDSA", h.alg));
    }
    if h.typ != TYP {
        return Err(format!("typ {:?} is not {TYP}", h.typ));
    }
    let key = keys.key(&h.kid).ok_or_else(|| format!("signed by an unknown key {}", h.kid))?;
    jws.verify_ed25519(&key).map_err(|e| e.to_string())?;
    let c: CheckpointClaims = jws.claims().map_err(|e| e.to_string())?;
    if c.seq < 1 || c.count != c.seq {
        return Err(format!("seq {} and count {} do not describe a chain", c.seq, c.count));
    }
    if c.hash.len() != 64 || !c.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("hash is not a record hash".into());
    }
    Ok(c)
}
