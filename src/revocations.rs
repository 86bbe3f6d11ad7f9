//! Revocations: one token by `jti`, or every token of a client issued up to a time, each with
//! its audit record in one [`Change`]; and the pages of the feed offline verifiers poll.
//!
//! The HTTP handlers (RFC 7009 revocation, operator revocations, the signed feed) and client
//! disabling call this module; it alone writes the `revocations` table.

use crate::audit::{AuditEvent, Change, Event, event};
use crate::store::revocations as rows;
pub use crate::store::revocations::Revocation;
use crate::store::{Store, StoreError};
use crate::token::{AccessClaims, MAX_LEEWAY_SECS, MAX_LIFETIME_SECS};

/// Why a revocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// Nothing of that name in the caller's tenant.
    #[error("{0}")]
    NotFound(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A revocation of every token `client_id` (of `tenant`) holds at `now`.
pub fn of_client(client_id: &str, tenant: &str, now: i64) -> Revocation {
    Revocation {
        seq: 0,
        kind: "client".into(),
        jti: None,
        client_id: client_id.to_owned(),
        tenant: tenant.to_owned(),
        not_after: Some(now),
        expires_at: now + MAX_LIFETIME_SECS + MAX_LEEWAY_SECS,
    }
}

/// Writes `r` in `change`, taking its chain lock (the feed is numbered in append order); the
/// caller records what happened (disabling a client says so in its own record).
pub(crate) async fn insert_in(change: &mut Change, r: &Revocation, by: &str, now: i64) -> Result<(), StoreError> {
    change.lock_chain().await?;
    rows::insert(change, r, now, by).await?;
    Ok(())
}

/// Writes `r` and its audit record in `change`.
async fn record_in(change: &mut Change, r: &Revocation, by: &str, now: i64) -> Result<(), StoreError> {
    insert_in(change, r, by, now).await?;
    let subject = r.jti.clone().unwrap_or_else(|| r.client_id.clone());
    let detail = event::Revoked { client_id: r.client_id.clone(), not_after: r.not_after };
    let event = if r.kind == "token" { Event::TokenRevoked(detail) } else { Event::ClientTokensRevoked(detail) };
    change.record(AuditEvent::of(event, by, &r.tenant, &subject));
    Ok(())
}

async fn record(store: &Store, r: &Revocation, by: &str, now: i64) -> Result<(), StoreError> {
    let mut change = Change::begin(store).await?;
    record_in(&mut change, r, by, now).await?;
    change.commit(now).await
}

/// Whether a token (`jti`, of `client_id`, issued at `iat`) is revoked.
pub async fn is_revoked(store: &Store, jti: &str, client_id: &str, iat: i64) -> Result<bool, StoreError> {
    rows::is_revoked(store, jti, client_id, iat).await
}

/// RFC 7009: revokes a verified access token `token` at its holder's request (`by`); a token
/// already revoked is left as it is.
pub async fn revoke_own(store: &Store, token: &AccessClaims, by: &str, now: i64) -> Result<(), StoreError> {
    if rows::is_revoked(store, &token.jti, &token.sub, token.iat).await? {
        return Ok(());
    }
    let r = Revocation {
        seq: 0,
        kind: "token".into(),
        jti: Some(token.jti.clone()),
        client_id: token.sub.clone(),
        tenant: token.tenant.clone(),
        not_after: None,
        expires_at: token.exp + MAX_LEEWAY_SECS,
    };
    record(store, &r, by, now).await
}

/// An operator (`by`) of `tenant` revokes the token issued as `jti`.
pub async fn revoke_token(
    store: &Store,
    tenant: &str,
    jti: &str,
    by: &str,
    now: i64,
) -> Result<Revocation, RevocationError> {
    let (client_id, t, exp) = rows::issued(store, jti)
        .await?
        .filter(|(_, t, _)| t == tenant)
        .ok_or(RevocationError::NotFound("no token with that jti in this tenant"))?;
    let r = Revocation {
        seq: 0,
        kind: "token".into(),
        jti: Some(jti.to_owned()),
        client_id,
        tenant: t,
        not_after: None,
        expires_at: exp + MAX_LEEWAY_SECS,
    };
    record(store, &r, by, now).await?;
    Ok(r)
}

/// An operator (`by`) of `tenant` revokes every token `client_id` holds now.
pub async fn revoke_client(
    store: &Store,
    tenant: &str,
    client_id: &str,
    by: &str,
    now: i64,
) -> Result<Revocation, RevocationError> {
    crate::store::clients::get(store, client_id)
        .await?
        .filter(|c| c.tenant.as_str() == tenant)
        .ok_or(RevocationError::NotFound("no such client in this tenant"))?;
    let r = of_client(client_id, tenant, now);
    record(store, &r, by, now).await?;
    Ok(r)
}

/// One page of a tenant's feed after `since`.
#[derive(Debug)]
pub struct Page {
    /// The entries, in feed order, still in force at `now`.
    pub entries: Vec<Revocation>,
    /// Whether more follow `next`.
    pub more: bool,
    /// The feed's position after this page (never raised to `since`).
    pub next: i64,
    /// The id of the entry at `since` (`None` at 0).
    pub since_id: Option<String>,
    /// The id of the entry at `next` (`None` at 0).
    pub next_id: Option<String>,
}

/// Reads at most `limit` entries of `tenant`'s feed after `since`.
pub async fn page(store: &Store, tenant: &str, since: i64, now: i64, limit: i64) -> Result<Page, StoreError> {
    let head = rows::last_seq(store, tenant).await?;
    let entries = rows::since(store, tenant, since, head, now, limit + 1).await?;
    let more = entries.len() as i64 > limit;
    let entries: Vec<Revocation> = entries.into_iter().take(limit as usize).collect();
    let next = match entries.last() {
        Some(e) if more => e.seq,
        _ => head,
    };
    let since_id = if since > 0 { rows::entry_id(store, tenant, since).await? } else { None };
    let next_id = if next > 0 { rows::entry_id(store, tenant, next).await? } else { None };
    Ok(Page { entries, more, next, since_id, next_id })
}
