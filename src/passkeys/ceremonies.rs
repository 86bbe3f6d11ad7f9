//! Passkey ceremonies as the broker keeps them (design §15): the challenges it issues, an
//! operator's enrolment, sign-in, a decision's assertion, removal and the enrolment codes an
//! administrator hands out. Each state change and its audit record commit in one [`Change`].
//!
//! The console's handlers and the command line call these; the browser's answers are checked
//! by the functions of [`crate::passkeys`]. A refusal is `Ok(Err(why))`: `why` names the
//! check that failed, never a secret.

use super::{Assertion, CredentialKey, Registration, RelyingParty};
use crate::audit::{AuditEvent, Change, Event, event};
use crate::domain::CallerKind;
use crate::store::clients::{self as client_rows, ClientRecord};
pub use crate::store::passkeys::PasskeyRow;
use crate::store::passkeys::{self as rows, ChallengeRow};
use crate::store::{Store, StoreError};
use crate::token::b64;

/// How long a ceremony's challenge can be answered, seconds.
pub const CHALLENGE_SECS: i64 = 120;
/// How long an enrolment code can be used, seconds.
pub const ENROLMENT_CODE_SECS: i64 = 1800;

/// A refusal's reason, or the result.
pub type Checked<T> = Result<Result<T, String>, StoreError>;

/// The signed-in operator a ceremony is for.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// The operator's client id.
    pub client_id: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// The stored key of the session the ceremony runs in.
    pub session_hash: &'a str,
    /// How the session was signed in: `secret` or `passkey`.
    pub method: &'a str,
}

impl Holder<'_> {
    /// Whether this session may add or remove passkeys, given the operator's `keys`: an
    /// operator who has one must be signed in with one, so a secret alone cannot replace the
    /// operator's authenticator.
    pub fn may_manage(&self, keys: &[PasskeyRow]) -> bool {
        keys.is_empty() || self.method == "passkey"
    }
}

/// The stored key of an enrolment code: base64url SHA-256 of the code, never the code.
pub fn enrolment_key(code: &str) -> String {
    b64::encode(ring::digest::digest(&ring::digest::SHA256, code.trim().as_bytes()).as_ref())
}

fn random(n: usize) -> Result<Vec<u8>, StoreError> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| StoreError::Setup("the system's random source failed".into()))?;
    Ok(b)
}

fn key_of(row: &PasskeyRow) -> Option<CredentialKey> {
    Some(CredentialKey { alg: row.alg, raw: b64::decode(&row.public_key).ok()? })
}

/// The passkeys `client_id` has enrolled (and not removed).
pub async fn of_client(store: &Store, client_id: &str) -> Result<Vec<PasskeyRow>, StoreError> {
    rows::of_client(store, client_id).await
}

/// Whether `code` is an enrolment code issued to `client_id`; `take` uses it up.
async fn enrolment_code_ok(
    conn: &mut crate::store::Conn,
    client_id: &str,
    code: Option<&str>,
    take: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty() && c.len() <= 128) else { return Ok(false) };
    let key = enrolment_key(code);
    let row = if take {
        rows::take_challenge(conn, &key, "enrol_code", now).await?
    } else {
        rows::peek_challenge(conn, &key, "enrol_code", now).await?
    };
    Ok(row.is_some_and(|r| r.client_id.as_deref() == Some(client_id)))
}

/// Whether `code` would let `client_id` enrol its first passkey (without using it up).
pub async fn enrolment_code_valid(
    store: &Store,
    client_id: &str,
    code: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let mut conn = store.pool().acquire().await?;
    enrolment_code_ok(&mut conn, client_id, code, false, now).await
}

/// Issues a challenge for enrolment in `holder`'s session.
pub async fn enrolment_challenge(store: &Store, holder: Holder<'_>, now: i64) -> Result<String, StoreError> {
    let row = ChallengeRow {
        challenge: b64::encode(&random(32)?),
        purpose: "enrol".into(),
        client_id: Some(holder.client_id.to_owned()),
        session_hash: Some(holder.session_hash.to_owned()),
        expires_at: now + CHALLENGE_SECS,
        ..ChallengeRow::default()
    };
    rows::insert_challenge(store, &row, now).await?;
    Ok(row.challenge)
}

/// Issues a challenge for a sign-in (discoverable credentials: no list is given out).
pub async fn sign_in_challenge(store: &Store, now: i64) -> Result<String, StoreError> {
    let row = ChallengeRow {
        challenge: b64::encode(&random(32)?),
        purpose: "sign_in".into(),
        expires_at: now + CHALLENGE_SECS,
        ..ChallengeRow::default()
    };
    rows::insert_challenge(store, &row, now).await?;
    Ok(row.challenge)
}

/// Issues the challenge of `holder`'s `decision` on an approval: it commits to the approval
/// id, its `params_digest`, the verdict and a fresh nonce.
pub async fn decision_challenge(
    store: &Store,
    holder: Holder<'_>,
    approval_id: &str,
    params_digest: &str,
    decision: &str,
    now: i64,
) -> Result<String, StoreError> {
    let nonce = b64::encode(&random(16)?);
    let challenge = super::decision_challenge(approval_id, params_digest, decision, &nonce);
    let row = ChallengeRow {
        challenge: b64::encode(&challenge),
        purpose: "decide".into(),
        client_id: Some(holder.client_id.to_owned()),
        session_hash: Some(holder.session_hash.to_owned()),
        approval_id: Some(approval_id.to_owned()),
        decision: Some(decision.to_owned()),
        params_digest: Some(params_digest.to_owned()),
        nonce: Some(nonce),
        expires_at: now + CHALLENGE_SECS,
    };
    rows::insert_challenge(store, &row, now).await?;
    Ok(row.challenge)
}

/// A browser's answer to an enrolment challenge. Its `Debug` leaves the enrolment code out.
pub struct Enrolment<'a> {
    /// The challenge answered.
    pub challenge: &'a str,
    /// The credential, as registered.
    pub registration: Registration,
    /// The credential id, base64url.
    pub credential_id: &'a str,
    /// The name the operator gave it.
    pub name: &'a str,
    /// The administrator's enrolment code, for a first passkey.
    pub code: Option<&'a str>,
}

impl std::fmt::Debug for Enrolment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("credential_id", &self.credential_id)
            .field("name", &self.name)
            .field("code", &self.code.map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Checks an enrolment answer in `holder`'s session and stores the passkey, with its record.
pub async fn enrol(
    store: &Store,
    rp: &RelyingParty,
    holder: Holder<'_>,
    e: Enrolment<'_>,
    now: i64,
) -> Checked<PasskeyRow> {
    let mut change = Change::begin(store).await?;
    let Some(ch) = rows::take_challenge(&mut change, e.challenge, "enrol", now).await? else {
        return Ok(Err("the challenge is unknown, used or expired; start again".to_owned()));
    };
    if ch.client_id.as_deref() != Some(holder.client_id) || ch.session_hash.as_deref() != Some(holder.session_hash) {
        return Ok(Err("the challenge was issued to another session".to_owned()));
    }
    let keys = rows::of_client(store, holder.client_id).await?;
    if !holder.may_manage(&keys) {
        return Ok(Err("sign in with your passkey to add another".to_owned()));
    }
    if keys.is_empty() && !enrolment_code_ok(&mut change, holder.client_id, e.code, true, now).await? {
        return Ok(Err("the enrolment code is unknown, used, expired or another operator's".to_owned()));
    }
    let challenge = b64::decode(&ch.challenge).unwrap_or_default();
    let (key, count) = match super::verify_registration(rp, &e.registration, &challenge) {
        Ok(k) => k,
        Err(err) => return Ok(Err(err.to_string())),
    };
    if rows::get(store, e.credential_id).await?.is_some() {
        return Ok(Err("this passkey is enrolled already".to_owned()));
    }
    let row = PasskeyRow {
        credential_id: e.credential_id.to_owned(),
        client_id: holder.client_id.to_owned(),
        alg: key.alg,
        public_key: b64::encode(&key.raw),
        sign_count: i64::from(count),
        name: e.name.to_owned(),
        created_at: now,
        last_used_at: None,
        removed_at: None,
    };
    rows::insert(&mut change, &row).await?;
    let event = Event::PasskeyEnrolled(event::Enrolled {
        credential_id: row.credential_id.clone(),
        alg: row.alg,
        public_key: row.public_key.clone(),
        name: row.name.clone(),
    });
    change.record(AuditEvent::of(event, holder.client_id, holder.tenant, holder.client_id));
    change.commit(now).await?;
    Ok(Ok(row))
}

/// Removes one of `holder`'s passkeys, with its record; `Ok(false)` when it had none of that id.
pub async fn remove(store: &Store, holder: Holder<'_>, credential_id: &str, now: i64) -> Checked<bool> {
    let keys = rows::of_client(store, holder.client_id).await?;
    if !holder.may_manage(&keys) {
        return Ok(Err("Sign in with your passkey to remove one".to_owned()));
    }
    let mut change = Change::begin(store).await?;
    let removed = rows::remove(&mut change, holder.client_id, Some(credential_id), now).await? == 1;
    if removed {
        let event = Event::PasskeyRemoved(event::Removed {
            credential_id: Some(credential_id.to_owned()),
            all: None,
            removed: None,
        });
        change.record(AuditEvent::of(event, holder.client_id, holder.tenant, holder.client_id));
    }
    change.commit(now).await?;
    Ok(Ok(removed))
}

/// Removes every passkey of `client` (an administrator, `actor`), with the record; returns how
/// many.
pub async fn remove_all(store: &Store, client: &ClientRecord, actor: &str, now: i64) -> Result<u64, StoreError> {
    let id = client.client_id.as_str();
    let mut change = Change::begin(store).await?;
    let removed = rows::remove(&mut change, id, None, now).await?;
    let event = Event::PasskeyRemoved(event::Removed { credential_id: None, all: Some(true), removed: Some(removed) });
    change.record(AuditEvent::of(event, actor, client.tenant.as_str(), id));
    change.commit(now).await?;
    Ok(removed)
}

/// Issues a one-time enrolment code for `client`'s first passkey (an administrator, `actor`),
/// with the record; returns the code (shown once, stored only as its hash) and its expiry.
pub async fn issue_enrolment_code(
    store: &Store,
    client: &ClientRecord,
    actor: &str,
    now: i64,
) -> Result<(String, i64), StoreError> {
    let code = b64::encode(&random(15)?);
    let row = ChallengeRow {
        challenge: enrolment_key(&code),
        purpose: "enrol_code".into(),
        client_id: Some(client.client_id.to_string()),
        expires_at: now + ENROLMENT_CODE_SECS,
        ..Default::default()
    };
    let mut change = Change::begin(store).await?;
    rows::insert_challenge_on(&mut change, &row, now).await?;
    let event = Event::PasskeyEnrolmentIssued(event::EnrolmentIssued { expires_at: row.expires_at });
    change.record(AuditEvent::of(event, actor, client.tenant.as_str(), client.client_id.as_str()));
    change.commit(now).await?;
    Ok((code, row.expires_at))
}

/// Checks a sign-in assertion: the challenge is used up, the passkey's operator must be an
/// enabled operator, and the signature counter moves on. Returns the operator and the stored
/// hash of its secret (which its session is tied to).
pub async fn sign_in(
    store: &Store,
    rp: &RelyingParty,
    challenge: &str,
    assertion: &Assertion,
    now: i64,
) -> Checked<(ClientRecord, String)> {
    let mut change = Change::begin(store).await?;
    if rows::take_challenge(&mut change, challenge, "sign_in", now).await?.is_none() {
        return Ok(Err("the challenge is unknown, used or expired".to_owned()));
    }
    let Some(pk) = rows::get(store, &assertion.credential_id).await?.filter(|p| p.removed_at.is_none()) else {
        return Ok(Err("no such passkey".to_owned()));
    };
    let client =
        client_rows::get(store, &pk.client_id).await?.filter(|c| !c.disabled && c.kind == CallerKind::Operator);
    let Some(client) = client else { return Ok(Err("the passkey's operator is disabled".to_owned())) };
    let challenge = b64::decode(challenge).unwrap_or_default();
    let Some(key) = key_of(&pk) else { return Ok(Err("the stored key is unreadable".to_owned())) };
    let stored = u32::try_from(pk.sign_count).unwrap_or(u32::MAX);
    let count = match super::verify_assertion(rp, assertion, &challenge, &key, stored) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if !rows::advance(&mut change, &pk.credential_id, pk.sign_count, i64::from(count), now).await? {
        return Ok(Err("the passkey was used concurrently".to_owned()));
    }
    change.commit(now).await?;
    let Some((client, secret_hash)) = client_rows::get_with_hash(store, client.client_id.as_str()).await? else {
        return Ok(Err("the passkey's operator is gone".to_owned()));
    };
    Ok(Ok((client, secret_hash)))
}

/// The approval a decision is on, as its challenge commits to it.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// The approval's id.
    pub approval_id: &'a str,
    /// Its `params_digest`.
    pub params_digest: &'a str,
    /// `approve` or `deny`.
    pub verdict: &'a str,
}

/// Checks the assertion of `holder`'s decision: the challenge is used up, must be this
/// session's for exactly this approval, digest and verdict, and the assertion must verify with
/// one of the operator's passkeys. Returns the challenge's nonce, for the audit record.
pub async fn check_decision(
    store: &Store,
    rp: &RelyingParty,
    holder: Holder<'_>,
    decided: Decided<'_>,
    challenge: &str,
    assertion: &Assertion,
    now: i64,
) -> Checked<String> {
    let mut change = Change::begin(store).await?;
    let Some(ch) = rows::take_challenge(&mut change, challenge, "decide", now).await? else {
        return Ok(Err("the passkey challenge is unknown, used or expired: start the decision again".into()));
    };
    let nonce = ch.nonce.clone().unwrap_or_default();
    let expected = super::decision_challenge(decided.approval_id, decided.params_digest, decided.verdict, &nonce);
    let bound = ch.client_id.as_deref() == Some(holder.client_id)
        && ch.session_hash.as_deref() == Some(holder.session_hash)
        && ch.approval_id.as_deref() == Some(decided.approval_id)
        && ch.decision.as_deref() == Some(decided.verdict)
        && ch.params_digest.as_deref() == Some(decided.params_digest)
        && ch.challenge == b64::encode(&expected);
    if !bound {
        return Ok(Err("the passkey signed another decision".into()));
    }
    let Some(pk) = rows::get(store, &assertion.credential_id)
        .await?
        .filter(|p| p.removed_at.is_none() && p.client_id == holder.client_id)
    else {
        return Ok(Err("that passkey is not one of yours".into()));
    };
    let Some(key) = key_of(&pk) else { return Ok(Err("the stored key is unreadable".into())) };
    let stored = u32::try_from(pk.sign_count).unwrap_or(u32::MAX);
    let count = match super::verify_assertion(rp, assertion, &expected, &key, stored) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if !rows::advance(&mut change, &pk.credential_id, pk.sign_count, i64::from(count), now).await? {
        return Ok(Err("the passkey was used concurrently".into()));
    }
    change.commit(now).await?;
    Ok(Ok(nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrolment_never_shows_its_code() {
        let e = Enrolment {
            challenge: "c",
            registration: Registration {
                credential_id: vec![1],
                client_data_json: vec![],
                authenticator_data: vec![],
                public_key: vec![],
                alg: -8,
            },
            credential_id: "AQ",
            name: "laptop",
            code: Some("the-one-time-code"),
        };
        let shown = format!("{e:?}");
        assert!(!shown.contains("the-one-time-code") && shown.contains("<redacted>"), "{shown}");
    }
}
