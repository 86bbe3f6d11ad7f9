//! The approval gate: requests, operator decisions, capabilities and their one-time
//! redemption. Every function takes `now`; nothing here reads the clock.

use serde_json::{Value, json};

use crate::audit::{self, AuditEvent, Event, event};
use crate::domain::{Action, ApprovalId, CallerKind, ParamsDigest, Resource};
use crate::keys::Signer;
use crate::policy::Policy;
use crate::policy::rules::{ApprovalFacts, Facts, RuleAction};
use crate::store::approvals as rows;
// Reads of the noun, for the handlers: they import this module, never the table.
pub use crate::store::approvals::{ApprovalRow, Decision, Status, get as get_unchecked, recent_by_requester};
pub use crate::store::approvals::{HistoryFilter, history_ids};
use crate::store::clients::ClientRecord;
use crate::store::{Store, StoreError};
use crate::token::claims::Audience;
use crate::token::{AccessClaims, CapabilityClaims, b64};
use crate::verify::VerifyError;

/// Largest summary accepted, as serialized JSON.
pub const MAX_SUMMARY_BYTES: usize = 4096;
/// Largest presented parameters kept with a request, in bytes of canonical JSON.
pub const MAX_PARAMS_BYTES: usize = 8192;
/// Longest reason or note.
pub const MAX_TEXT_CHARS: usize = 1000;

/// Why an approval operation was refused. Each maps to one pinned error code.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// 400 `invalid_request`.
    #[error("{0}")]
    Invalid(String),
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 403 `forbidden`: an approval policy's `forbid` applies (design §19); names each policy.
    #[error("the approval policy forbids this request ({})", .0.join(", "))]
    ForbiddenByPolicy(Vec<String>),
    /// 403 `self_target_forbidden`.
    #[error("an agent may not write a platform secret into its own workspace; set configuration instead")]
    SelfTarget,
    /// 403 `bypass_not_allowed`.
    #[error("{0}")]
    BypassNotAllowed(String),
    /// 404 `not_found`.
    #[error("no such approval")]
    NotFound,
    /// 409 `conflict`.
    #[error("{0}")]
    Conflict(String),
    /// 410 `expired`.
    #[error("{0}")]
    Expired(String),
    /// 403 `passkey_required`: decisions on this action need a passkey, in the console.
    #[error("{0}")]
    PasskeyRequired(String),
    /// 429 `rate_limited`: too many of the requester's requests are pending.
    #[error("{0}")]
    TooMany(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error("signing failed")]
    Signing,
}

/// What the broker signs capabilities with and for.
#[derive(Debug, Clone, Copy)]
pub struct Issuing<'a> {
    /// The signing key.
    pub signer: &'a Signer,
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
}

/// The body of `POST /v1/approvals`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// The gated action.
    pub action: Action,
    /// Its target.
    pub resource: Resource,
    /// Digest of `params`: the broker recomputes it and refuses a mismatch.
    pub params_digest: ParamsDigest,
    /// The request parameters as presented (design §11): what the operator is shown and the
    /// capability binds, secret values replaced by their length and fingerprint.
    pub params: Value,
    /// The requester's own description, shown apart and marked unverified.
    #[serde(default)]
    pub summary: Option<Value>,
    /// Why the caller wants it.
    pub reason: String,
    /// Only from a `service` caller: the access token of the client it acts for, which then
    /// is the requester (design §13). The server layer resolves it; [`request`] ignores it.
    #[serde(default)]
    pub requester_token: Option<String>,
}

/// The audit detail of a decision. A passkey decision keeps its whole assertion and the nonce
/// of its challenge, so anyone with the credential's public key can check that this
/// authenticator signed this verdict on these parameters (`tessera audit verify` does).
fn decision_detail(d: &Decision, row: &ApprovalRow, proof: Proof<'_>) -> event::Decided {
    let plain = event::Decided {
        decision: d.decision,
        note: d.note.clone(),
        method: DecisionMethod::Secret,
        params_digest: None,
        nonce: None,
        credential_id: None,
        authenticator_data: None,
        client_data: None,
        signature: None,
        break_glass: false,
    };
    match proof {
        Proof::Secret => plain,
        Proof::Passkey { nonce, assertion } => event::Decided {
            method: DecisionMethod::Passkey,
            params_digest: Some(row.params_digest.clone()),
            nonce: Some(nonce.to_owned()),
            credential_id: Some(assertion.credential_id.clone()),
            authenticator_data: Some(assertion.authenticator_data.clone()),
            client_data: Some(assertion.client_data.clone()),
            signature: Some(assertion.signature.clone()),
            ..plain
        },
    }
}

/// Who asks for an approval: the verified token, its client's registration, and for a
/// delegated token each actor's registration, nearest first.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The verified claims.
    pub claims: &'a AccessClaims,
    /// The subject's registration as it is now.
    pub client: &'a ClientRecord,
    /// The actors' registrations as they are now, nearest first.
    pub actors: &'a [ClientRecord],
}

/// An operator's ruling on a request: the verdict, a note, and how it is proven.
#[derive(Debug, Clone)]
pub struct Ruling<'a> {
    /// Approve or deny.
    pub verdict: Verdict,
    /// The operator's note (for break-glass, the reason: at least [`BREAK_GLASS_REASON_CHARS`]).
    pub note: Option<String>,
    /// How the operator proves it.
    pub proof: Proof<'a>,
    /// Approve alone, whatever the quorum (design §19): only with a passkey, a reason, and a
    /// policy that permits `break_glass` to this operator.
    pub break_glass: bool,
}

/// The shortest reason a break-glass approval is taken with.
pub const BREAK_GLASS_REASON_CHARS: usize = 20;

/// How an operator proves a decision.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// The operator's own token, or a console session signed in with it (API, CLI, console).
    Secret,
    /// A user-verified passkey assertion over this decision's challenge, already checked by
    /// the console against the operator's enrolled credential; kept in the audit record.
    Passkey {
        /// The nonce the challenge was derived with.
        nonce: &'a str,
        /// The assertion.
        assertion: &'a crate::passkeys::Assertion,
    },
}

pub use crate::domain::{DecisionMethod, Verdict};

// What an approval's stored actor chain means, read with the token's own type (the row lives
// under `domain`, which knows no token).
impl ApprovalRow {
    /// The requester's actor chain, when the request was made on a delegated token.
    pub fn actor_chain(&self) -> Option<crate::token::Actor> {
        self.act.as_deref().and_then(|a| serde_json::from_str(a).ok())
    }

    /// The actors' client ids, nearest first (`[]` when none).
    pub fn actors(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = self.actor_chain();
        while let Some(a) = next {
            out.push(a.sub);
            next = a.act.map(|b| *b);
        }
        out
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApprovalError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| ApprovalError::Signing)?;
    Ok(b)
}

fn check_text(what: &str, s: &str, required: bool) -> Result<(), ApprovalError> {
    if required && s.trim().is_empty() {
        return Err(ApprovalError::Invalid(format!("{what} is required")));
    }
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(ApprovalError::Invalid(format!("{what} is longer than {MAX_TEXT_CHARS} characters")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApprovalError::Invalid(format!("{what} contains control characters")));
    }
    Ok(())
}

/// Checks the presented parameters and that `digest` is theirs; returns their canonical text.
fn check_params(params: &Value, digest: &ParamsDigest) -> Result<String, ApprovalError> {
    crate::token::presented::check_presented(params).map_err(|e| ApprovalError::Invalid(e.to_string()))?;
    let text = crate::token::jcs::canonicalize(params);
    if text.len() > MAX_PARAMS_BYTES {
        return Err(ApprovalError::Invalid(format!("params is larger than {MAX_PARAMS_BYTES} bytes")));
    }
    let actual = crate::token::jcs::params_digest(params);
    if &actual != digest {
        return Err(ApprovalError::Invalid(format!(
            "params_digest does not match params (the digest of params is {actual}): the digest must be of \
             exactly the parameters shown"
        )));
    }
    Ok(text)
}

fn check_summary(summary: &Option<Value>) -> Result<String, ApprovalError> {
    match summary {
        None | Some(Value::Null) => Ok("{}".to_owned()),
        Some(Value::Object(_)) => {
            let text = crate::token::jcs::canonicalize(summary.as_ref().unwrap_or(&Value::Null));
            if text.len() > MAX_SUMMARY_BYTES {
                Err(ApprovalError::Invalid(format!("summary is larger than {MAX_SUMMARY_BYTES} bytes")))
            } else {
                Ok(text)
            }
        }
        Some(_) => Err(ApprovalError::Invalid("summary must be a JSON object".into())),
    }
}

/// The capability claims of an approved (or bypassed) approval.
pub fn capability_claims(row: &ApprovalRow, issuing: Issuing<'_>) -> Option<CapabilityClaims> {
    let (jti, iat, exp) = (row.cap_jti.clone()?, row.cap_iat?, row.cap_exp?);
    Some(CapabilityClaims {
        iss: issuing.issuer.to_owned(),
        sub: row.requester.clone(),
        aud: Audience::One(issuing.audience.to_owned()),
        iat,
        nbf: iat,
        exp,
        jti,
        tenant: row.tenant.clone(),
        caller_kind: row.requester_kind,
        action: row.action.clone(),
        resource: row.resource.clone(),
        params_digest: row.params_digest.clone(),
        approval_id: row.approval_id.clone(),
        approvers: if row.bypass { Vec::new() } else { row.approvers() },
        bypass: row.bypass,
        act: row.actor_chain(),
        cnf: row.cnf_jkt.clone().map(|jkt| crate::token::Confirmation { jkt }),
    })
}

/// The signed capability of `row`, if it holds a live one. Ed25519 is deterministic, so the
/// same approval read twice with the same key gives the same token; no token is stored.
pub fn capability_token(row: &ApprovalRow, issuing: Issuing<'_>, now: i64) -> Result<Option<String>, ApprovalError> {
    if row.effective_status(now) != Status::Approved {
        return Ok(None);
    }
    match capability_claims(row, issuing) {
        Some(c) => issuing.signer.sign_capability(&c).map(Some).map_err(|_| ApprovalError::Signing),
        None => Ok(None),
    }
}

/// Creates an approval request for `caller`, or, for an install client allowed to, an
/// audited bypass that is approved at once.
pub async fn request(
    store: &Store,
    policy: &Policy,
    who: Requester<'_>,
    req: NewRequest,
    bypass_reason: Option<&str>,
    now: i64,
) -> Result<ApprovalRow, ApprovalError> {
    let Requester { claims: caller, client, actors } = who;
    if !caller.caller_kind.may_request_approvals() {
        return Err(ApprovalError::Forbidden(format!("a {} client cannot request approvals", caller.caller_kind)));
    }
    if !caller.has_scope("approvals:create") {
        return Err(ApprovalError::Forbidden("the token lacks the approvals:create scope".into()));
    }
    if !policy.is_gated(req.action.as_str()) {
        return Err(ApprovalError::Invalid(format!(
            "{} is not a gated action; gated actions are: {}",
            req.action,
            policy.gated_actions().collect::<Vec<_>>().join(", ")
        )));
    }
    check_text("reason", &req.reason, true)?;
    let summary = check_summary(&req.summary)?;
    let params = check_params(&req.params, &req.params_digest)?;
    // Every party counts (design §12): the subject and each actor of a delegated token.
    let parties = || std::iter::once(client).chain(actors.iter());
    let own_workspace = |c: &ClientRecord| {
        matches!(c.kind, CallerKind::Agent | CallerKind::Workspace)
            && c.workspace.as_ref().is_some_and(|w| req.resource.workspace() == Some(w.as_str()))
    };
    let subject_own = matches!(caller.caller_kind, CallerKind::Agent | CallerKind::Workspace)
        && caller.workspace.is_some()
        && req.resource.workspace() == caller.workspace.as_deref();
    if req.action.as_str() == "secret_write" && (subject_own || parties().any(own_workspace)) {
        return Err(ApprovalError::SelfTarget);
    }
    if let Some(reason) = bypass_reason {
        let may_bypass =
            |c: &ClientRecord| c.kind == CallerKind::Install && c.allow_bypass.iter().any(|a| a == &req.action);
        let allowed = caller.caller_kind == CallerKind::Install && parties().all(may_bypass);
        if !allowed {
            return Err(ApprovalError::BypassNotAllowed(format!(
                "this client (and every client acting for it) must be allowed the bypass for {}; ask an operator",
                req.action
            )));
        }
        check_text("the bypass reason", reason, true)?;
    }

    let id = ApprovalId::from_random(&random_bytes::<16>()?);
    if let Some(rules) = &policy.rules {
        let facts = Facts {
            principal: client,
            approval: ApprovalFacts {
                approval_id: &id.to_string(),
                action: req.action.as_str(),
                resource: req.resource.as_str(),
                tenant: caller.tenant.as_str(),
                params: &params,
                reason: &req.reason,
            },
            requester: client,
            actors,
            now,
        };
        let outcome = rules.evaluate(RuleAction::Request, &facts);
        if !outcome.allowed {
            let mut named = outcome.forbids;
            named.extend(outcome.errors.iter().map(|e| format!("a policy could not be evaluated: {e}")));
            // Nothing is stored but the record of the refusal.
            let forbidden = event::Forbidden {
                action: req.action.to_string(),
                resource: req.resource.to_string(),
                params_digest: req.params_digest.to_string(),
                policies: named.clone(),
            };
            let mut tx = audit::Change::begin(store).await?;
            tx.record(AuditEvent::of(
                Event::ApprovalForbidden(Box::new(forbidden)),
                &caller.sub,
                &caller.tenant,
                &id.to_string(),
            ));
            tx.commit(now).await?;
            return Err(ApprovalError::ForbiddenByPolicy(named));
        }
    }
    let mut row = ApprovalRow {
        approval_id: id.to_string(),
        tenant: caller.tenant.clone(),
        action: req.action.to_string(),
        resource: req.resource.to_string(),
        params_digest: req.params_digest.to_string(),
        summary,
        reason: req.reason.clone(),
        requester: caller.sub.clone(),
        requester_kind: caller.caller_kind,
        status: Status::Pending,
        quorum: i64::from(policy.quorum(req.action.as_str())),
        requirements: policy.requirements(req.action.as_str()),
        requester_owner: client.owner.as_ref().map(|o| o.as_str().to_owned()),
        break_glass: false,
        reviewed: None,
        created_at: now,
        expires_at: now + policy.pending_ttl(req.action.as_str()),
        decided_at: None,
        bypass: false,
        cap_jti: None,
        cap_iat: None,
        cap_exp: None,
        redeemed_at: None,
        redeemed_by: None,
        params: Some(params),
        act: caller.act.as_ref().map(|a| crate::token::jcs::canonicalize(&json!(a))),
        cnf_jkt: caller.jkt().map(str::to_owned),
        decisions: Vec::new(),
    };
    // The record says exactly what the operator will be shown and the capability binds, and
    // who stands behind the request, so a decision can be checked from the audit log alone.
    let requested = event::Requested {
        action: row.action.clone(),
        resource: row.resource.clone(),
        params: req.params.clone(),
        params_digest: row.params_digest.clone(),
        reason: row.reason.clone(),
        actors: row.actors(),
        cnf_jkt: row.cnf_jkt.clone(),
    };
    let mut events = vec![AuditEvent::of(
        Event::ApprovalRequested(Box::new(requested)),
        &row.requester,
        &row.tenant,
        &row.approval_id,
    )];
    if let Some(reason) = bypass_reason {
        let jti = b64::encode(&random_bytes::<16>()?);
        row.status = Status::Approved;
        row.bypass = true;
        row.decided_at = Some(now);
        row.cap_exp = Some(now + policy.capability_ttl(req.action.as_str()));
        row.cap_iat = Some(now);
        row.cap_jti = Some(jti.clone());
        let bypassed = event::Bypassed {
            bypass_reason: reason.to_owned(),
            action: row.action.clone(),
            resource: row.resource.clone(),
        };
        let issued = event::CapabilityIssued { jti, exp: row.cap_exp, requester: None, bypass: Some(true) };
        for e in [Event::ApprovalBypassed(bypassed), Event::CapabilityIssued(issued)] {
            events.push(AuditEvent::of(e, &row.requester, &row.tenant, &row.approval_id));
        }
    }
    let mut tx = audit::Change::begin(store).await?;
    if !row.bypass {
        // Counted under the append lock, so concurrent requests (on any replica) cannot all
        // see room for one more.
        tx.lock_chain().await?;
        let pending = rows::count_pending_of(&mut tx, &row.requester, now).await?;
        if pending >= policy.max_pending_per_requester {
            return Err(ApprovalError::TooMany(format!(
                "{pending} requests of this client are already pending (at most {}); wait for a decision, \
                 or withdraw one",
                policy.max_pending_per_requester
            )));
        }
    }
    rows::insert(&mut tx, &row).await?;
    for e in events {
        tx.record(e);
    }
    tx.commit(now).await?;
    Ok(row)
}

/// Whether `caller` may see `row` at all: its requester, or an operator of its tenant.
pub fn visible_to(row: &ApprovalRow, caller: &AccessClaims) -> bool {
    row.requester == caller.sub || (caller.caller_kind == CallerKind::Operator && caller.tenant == row.tenant)
}

/// Writes the expiry of an overdue approval, and its audit record, in `change`.
async fn write_expiry(change: &mut audit::Change, row: &ApprovalRow, now: i64) -> Result<bool, StoreError> {
    if row.status == Status::Expired || row.effective_status(now) != Status::Expired {
        return Ok(false);
    }
    if !rows::transition(change, &row.approval_id, row.status, Status::Expired, None).await? {
        return Ok(false);
    }
    let what = if row.status == Status::Pending { "request" } else { "capability" };
    let event = Event::ApprovalExpired(event::Expired { expired: what.to_owned() });
    change.record(AuditEvent::of(event, "broker", &row.tenant, &row.approval_id));
    Ok(true)
}

/// Records the expiry of every overdue approval; returns how many.
pub async fn sweep_expired(store: &Store, now: i64) -> Result<usize, StoreError> {
    let mut n = 0;
    for id in rows::due_for_expiry(store, now, 500).await? {
        let mut tx = audit::Change::begin(store).await?;
        if let Some(row) = rows::get_on(&mut tx, &id).await?
            && write_expiry(&mut tx, &row, now).await?
        {
            n += 1;
        }
        tx.commit(now).await?;
    }
    Ok(n)
}

/// Reads one approval as `caller` sees it, recording its expiry first if it is overdue.
pub async fn read(store: &Store, caller: &AccessClaims, id: &str, now: i64) -> Result<ApprovalRow, ApprovalError> {
    if ApprovalId::parse(id).is_err() {
        return Err(ApprovalError::NotFound);
    }
    let row = rows::get(store, id).await?.ok_or(ApprovalError::NotFound)?;
    if !visible_to(&row, caller) {
        return Err(ApprovalError::NotFound);
    }
    if row.requester != caller.sub && !caller.has_scope("approvals:read") {
        return Err(ApprovalError::Forbidden("the token lacks the approvals:read scope".into()));
    }
    if row.effective_status(now) == Status::Expired && row.status != Status::Expired {
        let mut tx = audit::Change::begin(store).await?;
        write_expiry(&mut tx, &row, now).await?;
        tx.commit(now).await?;
        return rows::get(store, id).await?.ok_or(ApprovalError::NotFound);
    }
    Ok(row)
}

/// Lists a tenant's approvals in `status` for an operator.
pub async fn list(
    store: &Store,
    caller: &AccessClaims,
    status: Status,
    after: Option<(i64, String)>,
    limit: i64,
    now: i64,
) -> Result<Vec<ApprovalRow>, ApprovalError> {
    if caller.caller_kind != CallerKind::Operator {
        return Err(ApprovalError::Forbidden("only operators list approvals".into()));
    }
    if !caller.has_scope("approvals:read") {
        return Err(ApprovalError::Forbidden("the token lacks the approvals:read scope".into()));
    }
    sweep_expired(store, now).await?;
    Ok(rows::list(store, &caller.tenant, status, after, limit).await?)
}

/// Loads an approval inside a write transaction, its row locked until the transaction ends,
/// if `caller` may see it.
async fn load_visible(
    tx: &mut crate::store::Conn,
    store: &Store,
    caller: &AccessClaims,
    id: &str,
) -> Result<ApprovalRow, ApprovalError> {
    if ApprovalId::parse(id).is_err() {
        return Err(ApprovalError::NotFound);
    }
    let row = rows::get_for_update(tx, store.backend(), id).await?.ok_or(ApprovalError::NotFound)?;
    if !visible_to(&row, caller) {
        return Err(ApprovalError::NotFound);
    }
    Ok(row)
}

fn refuse_unless_pending(row: &ApprovalRow, now: i64) -> Result<(), ApprovalError> {
    match row.effective_status(now) {
        Status::Pending => Ok(()),
        Status::Expired => Err(ApprovalError::Expired("the request has expired".into())),
        s => Err(ApprovalError::Conflict(format!("the request is no longer pending (it is {})", s.as_str()))),
    }
}

/// The facts the rules are asked about an existing approval, with `principal` deciding.
fn facts_of<'a>(
    row: &'a ApprovalRow,
    principal: &'a ClientRecord,
    requester: &'a ClientRecord,
    actors: &'a [ClientRecord],
    now: i64,
) -> Facts<'a> {
    Facts {
        principal,
        approval: ApprovalFacts {
            approval_id: &row.approval_id,
            action: &row.action,
            resource: &row.resource,
            tenant: &row.tenant,
            params: row.params.as_deref().unwrap_or("{}"),
            reason: &row.reason,
        },
        requester,
        actors,
        now,
    }
}

/// The parties behind a request as registered now: the requester (if still registered) and
/// each actor of a delegated request.
async fn parties(
    conn: &mut crate::store::Conn,
    row: &ApprovalRow,
) -> Result<(Option<ClientRecord>, Vec<ClientRecord>), ApprovalError> {
    let requester = crate::store::clients::get_on(conn, &row.requester).await?;
    let mut actors = Vec::new();
    for a in row.actors() {
        if let Some(c) = crate::store::clients::get_on(conn, &a).await? {
            actors.push(c);
        }
    }
    Ok((requester, actors))
}

/// Whether `operator` answers for the request: its client id, or its own owner, is the owner
/// of a party behind it: the requester when it asked (kept with the request), the requester
/// now, or any client that acted for it (every party counts, design §12).
fn is_owner(
    row: &ApprovalRow,
    requester: Option<&ClientRecord>,
    actors: &[ClientRecord],
    operator: &ClientRecord,
) -> bool {
    let mut owners = row
        .requester_owner
        .iter()
        .map(String::as_str)
        .chain(requester.into_iter().chain(actors).filter_map(|c| c.owner.as_ref().map(|o| o.as_str())));
    owners.any(|owner| {
        owner == operator.client_id.as_str() || operator.owner.as_ref().is_some_and(|o| o.as_str() == owner)
    })
}

/// Why `operator` may not count towards `row`, if it may not: the rules that always hold
/// (never the requester, an actor or the requester's owner), then the approval policy's
/// `decide` (or `break_glass`). Read on `conn`, inside the decision's transaction.
async fn ineligibility(
    conn: &mut crate::store::Conn,
    policy: &Policy,
    row: &ApprovalRow,
    operator: &ClientRecord,
    action: RuleAction,
    now: i64,
) -> Result<Option<String>, ApprovalError> {
    if row.requester == operator.client_id.as_str() || row.actors().iter().any(|a| a == operator.client_id.as_str()) {
        return Ok(Some("the requester, and any client that acted for it, can never decide its request".into()));
    }
    let (requester, actors) = parties(conn, row).await?;
    if is_owner(row, requester.as_ref(), &actors, operator) {
        return Ok(Some(
            "the requester's owner (or an owner of a client acting for it) never decides its requests".into(),
        ));
    }
    let Some(rules) = &policy.rules else {
        // Without rules, any operator decides, and nobody breaks glass.
        return Ok((action == RuleAction::BreakGlass).then(|| "no approval policy permits break-glass".to_owned()));
    };
    let Some(requester) = requester else {
        return Ok(Some("the requester is no longer registered".into()));
    };
    let outcome = rules.evaluate(action, &facts_of(row, operator, &requester, &actors, now));
    if outcome.allowed {
        return Ok(None);
    }
    let what = if action == RuleAction::BreakGlass { "break glass on" } else { "decide" };
    Ok(Some(if !outcome.forbids.is_empty() {
        format!("the approval policy forbids you to {what} this request ({})", outcome.forbids.join(", "))
    } else if !outcome.errors.is_empty() {
        format!("the approval policy could not be evaluated for you: {}", outcome.errors.join("; "))
    } else {
        format!("no approval policy permits you to {what} this request")
    }))
}

/// What one operator may do on a pending approval: what the console asks before it lists a
/// request as awaiting that operator or offers break-glass. The decision itself checks again,
/// inside its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Standing {
    /// Its approval would count, and no rule keeps it out.
    pub may_decide: bool,
    /// It may approve alone (design §19).
    pub may_break_glass: bool,
    /// Why it may not decide, when a rule keeps it out.
    pub why_not: Option<String>,
}

/// The standing of operator `operator_id` on `row` at `now`.
pub async fn standing(
    store: &Store,
    policy: &Policy,
    row: &ApprovalRow,
    operator_id: &str,
    now: i64,
) -> Result<Standing, ApprovalError> {
    let Some(operator) = crate::store::clients::get(store, operator_id).await? else {
        return Ok(Standing::default());
    };
    if operator.kind != CallerKind::Operator || operator.disabled || operator.tenant.as_str() != row.tenant {
        return Ok(Standing::default());
    }
    let mut conn = store.pool().acquire().await.map_err(StoreError::from)?;
    let why_not = ineligibility(&mut conn, policy, row, &operator, RuleAction::Decide, now).await?;
    let decided = row.decisions.iter().any(|d| d.operator == operator_id);
    let fits = row.requirements.iter().any(|r| r.admits(&operator.groups));
    let why_not = why_not.or_else(|| {
        (!fits).then(|| {
            format!(
                "your approval would count towards none of this request's requirements ({})",
                describe(&row.requirements)
            )
        })
    });
    let may_break_glass = policy.rules.is_some()
        && !decided
        && row.effective_status(now) == Status::Pending
        && ineligibility(&mut conn, policy, row, &operator, RuleAction::BreakGlass, now).await?.is_none();
    Ok(Standing { may_decide: why_not.is_none() && !decided, may_break_glass, why_not })
}

/// Why an operator may or may not decide an approval, policy by policy: what
/// `tessera policy explain` prints for someone debugging a rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    /// The approval.
    pub approval_id: String,
    /// The operator asked about.
    pub operator: String,
    /// Whether its decision would count now.
    pub may_decide: bool,
    /// Whether it may break glass on it.
    pub may_break_glass: bool,
    /// A rule that holds whatever the policies say, if one keeps it out (the requester, an
    /// actor, the requester's owner, not an enabled operator of the tenant).
    pub always: Option<String>,
    /// Each policy's part in `decide` (none without a policy file).
    pub decide: Vec<crate::policy::rules::PolicyVerdict>,
    /// Each policy's part in `break_glass`.
    pub break_glass: Vec<crate::policy::rules::PolicyVerdict>,
    /// The requirements its approval could count towards.
    pub counts_for: Vec<String>,
    /// The quorum so far.
    pub quorum: String,
}

/// Explains, policy by policy, whether `operator_id` may decide approval `id` at `now`.
pub async fn explain(
    store: &Store,
    policy: &Policy,
    id: &str,
    operator_id: &str,
    now: i64,
) -> Result<Explanation, ApprovalError> {
    let row = rows::get(store, id).await?.ok_or(ApprovalError::NotFound)?;
    let operator = crate::store::clients::get(store, operator_id)
        .await?
        .ok_or_else(|| ApprovalError::Invalid(format!("no client {operator_id}")))?;
    let mut conn = store.pool().acquire().await.map_err(StoreError::from)?;
    let (requester, actors) = parties(&mut conn, &row).await?;
    let always = if operator.kind != CallerKind::Operator {
        Some(format!("{operator_id} is a {} client: only operators decide", operator.kind))
    } else if operator.disabled {
        Some(format!("{operator_id} is disabled"))
    } else if operator.tenant.as_str() != row.tenant {
        Some(format!("{operator_id} belongs to another tenant"))
    } else if row.requester == operator_id || row.actors().iter().any(|a| a == operator_id) {
        Some("the requester, and any client that acted for it, can never decide its request".into())
    } else if is_owner(&row, requester.as_ref(), &actors, &operator) {
        Some("the requester's owner (or an owner of a client acting for it) never decides its requests".into())
    } else {
        None
    };
    let (mut decide, mut break_glass) = (Vec::new(), Vec::new());
    if let Some(rules) = &policy.rules
        && let Some(requester) = &requester
    {
        let facts = facts_of(&row, &operator, requester, &actors, now);
        decide = rules.explain(RuleAction::Decide, &facts).map_err(|e| ApprovalError::Invalid(e.0))?;
        break_glass = rules.explain(RuleAction::BreakGlass, &facts).map_err(|e| ApprovalError::Invalid(e.0))?;
    }
    let may_decide =
        always.is_none() && ineligibility(&mut conn, policy, &row, &operator, RuleAction::Decide, now).await?.is_none();
    let may_break_glass = always.is_none()
        && policy.rules.is_some()
        && ineligibility(&mut conn, policy, &row, &operator, RuleAction::BreakGlass, now).await?.is_none();
    let counts_for = row
        .requirements
        .iter()
        .filter(|r| r.admits(&operator.groups))
        .map(|r| r.group.as_ref().map_or("any operator".to_owned(), |g| g.to_string()))
        .collect();
    let quorum = row
        .progress()
        .iter()
        .map(|(r, f)| format!("{} {f} of {}", r.group.as_ref().map_or("any operator", |g| g.as_str()), r.count))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Explanation {
        approval_id: row.approval_id.clone(),
        operator: operator_id.to_owned(),
        may_decide,
        may_break_glass,
        always,
        decide,
        break_glass,
        counts_for,
        quorum,
    })
}

/// An operator approves or denies. Quorum counts distinct operators that are still enabled,
/// each filling at most one place of the requirements (design §19); one deny ends it.
/// Decisions on one approval are serialised by its row lock.
pub async fn decide(
    store: &Store,
    policy: &Policy,
    caller: &AccessClaims,
    id: &str,
    ruling: Ruling<'_>,
    now: i64,
) -> Result<ApprovalRow, ApprovalError> {
    let Ruling { verdict, note, proof, break_glass } = ruling;
    if let Some(n) = &note {
        check_text("note", n, false)?;
    }
    let mut tx = audit::Change::begin(store).await?;
    let row = load_visible(&mut tx, store, caller, id).await?;
    if row.requester == caller.sub || row.actors().iter().any(|a| a == &caller.sub) {
        return Err(ApprovalError::Forbidden(
            "the requester, and any client that acted for it, can never decide its request".into(),
        ));
    }
    if caller.act.is_some() {
        return Err(ApprovalError::Forbidden("a decision needs the operator's own token, not a delegated one".into()));
    }
    if caller.caller_kind != CallerKind::Operator || !caller.has_scope("approvals:decide") {
        return Err(ApprovalError::Forbidden("only operators holding approvals:decide may decide".into()));
    }
    if row.effective_status(now) == Status::Expired {
        write_expiry(&mut tx, &row, now).await?;
        tx.commit(now).await?;
        return Err(ApprovalError::Expired("the request has expired".into()));
    }
    refuse_unless_pending(&row, now)?;
    let operator = crate::store::clients::get_on(&mut tx, &caller.sub)
        .await?
        .filter(|c| !c.disabled)
        .ok_or_else(|| ApprovalError::Forbidden("this operator is no longer enabled".into()))?;
    if break_glass {
        // Without rules nobody is permitted `break_glass`: the quorum always holds.
        if policy.rules.is_none() {
            return Err(ApprovalError::Forbidden(
                "break-glass needs an approval policy that permits it to this operator".into(),
            ));
        }
        if verdict != Verdict::Approve || !matches!(proof, Proof::Passkey { .. }) {
            return Err(ApprovalError::PasskeyRequired(
                "break-glass approves only, in the console, with the operator's passkey".into(),
            ));
        }
        let reason = note.as_deref().map(str::trim).unwrap_or("");
        if reason.chars().count() < BREAK_GLASS_REASON_CHARS {
            return Err(ApprovalError::Invalid(format!(
                "break-glass needs a reason of at least {BREAK_GLASS_REASON_CHARS} characters"
            )));
        }
    }
    let rule = if break_glass { RuleAction::BreakGlass } else { RuleAction::Decide };
    if let Some(why) = ineligibility(&mut tx, policy, &row, &operator, rule, now).await? {
        return Err(ApprovalError::Forbidden(why));
    }
    if policy.needs_passkey(&row.action) && matches!(proof, Proof::Secret) {
        return Err(ApprovalError::PasskeyRequired(format!(
            "decisions on {} need an operator's passkey: decide in the console",
            row.action
        )));
    }
    if row.decisions.iter().any(|d| d.operator == caller.sub) {
        return Err(ApprovalError::Conflict("you have already decided this request".into()));
    }
    if verdict == Verdict::Approve && !break_glass && !row.requirements.iter().any(|r| r.admits(&operator.groups)) {
        return Err(ApprovalError::Forbidden(format!(
            "your approval would count towards none of this request's requirements ({}); it needs operators of \
             those groups",
            describe(&row.requirements)
        )));
    }
    let decision = Decision {
        operator: caller.sub.clone(),
        decision: verdict,
        note: note.clone(),
        at: now,
        method: match proof {
            Proof::Secret => DecisionMethod::Secret,
            Proof::Passkey { .. } => DecisionMethod::Passkey,
        },
        groups: operator.groups.clone(),
        break_glass,
    };
    rows::insert_decision(&mut tx, id, &decision).await.map_err(|e| {
        if e.is_unique_violation() {
            ApprovalError::Conflict("you have already decided this request".into())
        } else {
            e.into()
        }
    })?;
    let mut detail = decision_detail(&decision, &row, proof);
    detail.break_glass = break_glass;
    let decided = Event::ApprovalDecided(Box::new(detail));
    let mut events = vec![AuditEvent::of(decided, &caller.sub, &row.tenant, id)];
    // Counted after this decision is written, under the approval's row lock: every earlier
    // decision is visible, and only operators still enabled count.
    let approvers = rows::enabled_approvers(&mut tx, id).await?;
    let approvers: Vec<&[crate::domain::GroupName]> = approvers.iter().map(Vec::as_slice).collect();
    let filled = crate::domain::approval::quorum_progress(&row.requirements, &approvers);
    let met = filled.iter().zip(&row.requirements).all(|(f, r)| *f >= r.count);
    let approvals = i64::from(filled.iter().sum::<u32>());
    let moved = match verdict {
        Verdict::Deny => {
            events.push(AuditEvent::of(Event::ApprovalDenied, &caller.sub, &row.tenant, id));
            rows::transition(&mut tx, id, Status::Pending, Status::Denied, Some(now)).await?
        }
        Verdict::Approve if met || break_glass => {
            let jti = b64::encode(&random_bytes::<16>()?);
            let exp = now + policy.capability_ttl(&row.action);
            let issued = event::CapabilityIssued {
                jti: jti.clone(),
                exp: Some(exp),
                requester: Some(row.requester.clone()),
                bypass: None,
            };
            let approvals = approvals.max(1);
            for e in [Event::ApprovalApproved(event::Approved { approvals }), Event::CapabilityIssued(issued)] {
                events.push(AuditEvent::of(e, &caller.sub, &row.tenant, id));
            }
            rows::approve(&mut tx, id, &jti, now, exp, break_glass).await?
        }
        Verdict::Approve => true,
    };
    if !moved {
        return Err(ApprovalError::Conflict("the request was decided concurrently".into()));
    }
    for e in events {
        tx.record(e);
    }
    let updated = rows::get_on(&mut tx, id).await?.ok_or(ApprovalError::NotFound)?;
    tx.commit(now).await?;
    Ok(updated)
}

/// The requirements in words: "security ×2, any operator ×1".
pub fn describe(requirements: &[crate::domain::approval::Requirement]) -> String {
    requirements
        .iter()
        .map(|r| format!("{} ×{}", r.group.as_ref().map_or("any operator", |g| g.as_str()), r.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Another operator acknowledges a break-glass approval, ending its review (design §19).
pub async fn review(store: &Store, caller: &AccessClaims, id: &str, now: i64) -> Result<ApprovalRow, ApprovalError> {
    if caller.caller_kind != CallerKind::Operator || !caller.has_scope("approvals:decide") || caller.act.is_some() {
        return Err(ApprovalError::Forbidden(
            "only operators holding approvals:decide acknowledge a break-glass".into(),
        ));
    }
    let mut tx = audit::Change::begin(store).await?;
    let row = load_visible(&mut tx, store, caller, id).await?;
    if !row.break_glass {
        return Err(ApprovalError::Conflict("this approval was not a break-glass approval".into()));
    }
    if row.reviewed.is_some() {
        return Err(ApprovalError::Conflict("this break-glass approval was already acknowledged".into()));
    }
    if row.decisions.iter().any(|d| d.operator == caller.sub) || row.requester == caller.sub {
        return Err(ApprovalError::Forbidden(
            "a break-glass approval is acknowledged by another operator than the one who took it".into(),
        ));
    }
    if !rows::mark_reviewed(&mut tx, id, &caller.sub, now).await? {
        return Err(ApprovalError::Conflict("this break-glass approval was already acknowledged".into()));
    }
    tx.record(AuditEvent::of(Event::ApprovalReviewed, &caller.sub, &row.tenant, id));
    let updated = rows::get_on(&mut tx, id).await?.ok_or(ApprovalError::NotFound)?;
    tx.commit(now).await?;
    Ok(updated)
}

/// Lists a tenant's break-glass approvals awaiting another operator's acknowledgement.
pub async fn list_to_review(
    store: &Store,
    caller: &AccessClaims,
    after: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<ApprovalRow>, ApprovalError> {
    if caller.caller_kind != CallerKind::Operator || !caller.has_scope("approvals:read") {
        return Err(ApprovalError::Forbidden("only operators holding approvals:read list approvals".into()));
    }
    Ok(rows::list_to_review(store, &caller.tenant, after, limit).await?)
}

/// The requester withdraws its pending request.
pub async fn withdraw(store: &Store, caller: &AccessClaims, id: &str, now: i64) -> Result<ApprovalRow, ApprovalError> {
    let mut tx = audit::Change::begin(store).await?;
    let row = load_visible(&mut tx, store, caller, id).await?;
    if row.requester != caller.sub {
        return Err(ApprovalError::Forbidden("only the requester may withdraw a request".into()));
    }
    if row.effective_status(now) == Status::Expired {
        write_expiry(&mut tx, &row, now).await?;
        tx.commit(now).await?;
        return Err(ApprovalError::Expired("the request has expired".into()));
    }
    refuse_unless_pending(&row, now)?;
    if !rows::transition(&mut tx, id, Status::Pending, Status::Withdrawn, Some(now)).await? {
        return Err(ApprovalError::Conflict("the request was decided concurrently".into()));
    }
    tx.record(AuditEvent::of(Event::ApprovalWithdrawn, &caller.sub, &row.tenant, id));
    let updated = rows::get_on(&mut tx, id).await?.ok_or(ApprovalError::NotFound)?;
    tx.commit(now).await?;
    Ok(updated)
}

/// Maps a capability that failed verification to the refusal a redeemer gets.
pub fn refuse_capability(e: VerifyError) -> ApprovalError {
    match e {
        VerifyError::Expired => ApprovalError::Expired("the capability has expired".into()),
        e => ApprovalError::Invalid(format!("capability does not verify: {e}")),
    }
}

/// Redeems a verified capability exactly once. The caller must be its `sub` or a `service`
/// client of the same tenant.
pub async fn redeem(
    store: &Store,
    caller: &AccessClaims,
    cap: CapabilityClaims,
    now: i64,
) -> Result<CapabilityClaims, ApprovalError> {
    if caller.tenant != cap.tenant {
        return Err(ApprovalError::Forbidden("the capability belongs to another tenant".into()));
    }
    // A service redeems any capability of its tenant; that standing is not lent to an actor of
    // another kind acting for it.
    if !caller.every_party_is(&[CallerKind::Service]) {
        let cap_actors: Vec<&str> =
            cap.act.as_ref().map(|a| a.chain().into_iter().map(|x| x.sub.as_str()).collect()).unwrap_or_default();
        if caller.sub != cap.sub || caller.actors() != cap_actors {
            return Err(ApprovalError::Forbidden(
                "only the capability's holder (through the same chain of actors) or a service may redeem it".into(),
            ));
        }
        // A bound requester's capability is redeemed only with a token of the same key, whose
        // proof the broker checked on this request (design §13).
        if caller.cnf != cap.cnf {
            return Err(ApprovalError::Forbidden("the capability is bound to another key".into()));
        }
    }
    let mut tx = audit::Change::begin(store).await?;
    if !rows::redeem(&mut tx, &cap.approval_id, &cap.jti, &caller.sub, now).await? {
        let row = rows::get_on(&mut tx, &cap.approval_id).await?;
        return Err(match row.map(|r| (r.effective_status(now), r.cap_jti == Some(cap.jti.clone()))) {
            Some((Status::Redeemed, true)) => ApprovalError::Conflict("the capability was already redeemed".into()),
            Some((Status::Expired, true)) => ApprovalError::Expired("the capability has expired".into()),
            _ => ApprovalError::Conflict("the capability is no longer redeemable".into()),
        });
    }
    let redeemed = event::Redeemed {
        jti: cap.jti.clone(),
        action: cap.action.clone(),
        resource: cap.resource.clone(),
        params_digest: cap.params_digest.clone(),
        actors: caller.actors().into_iter().map(str::to_owned).collect(),
    };
    tx.record(AuditEvent::of(Event::CapabilityRedeemed(redeemed), &caller.sub, &cap.tenant, &cap.approval_id));
    tx.commit(now).await?;
    Ok(cap)
}
