//! Client registration and authentication.
//!
//! A bootstrap secret is 256 random bits with the prefix `tessera_sk_`, so secret scanners
//! can recognise a leaked one. Only its SHA-256 is stored: with 256 bits of entropy a slow
//! password hash buys nothing and would cap the token endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEvent, Event, Fingerprints, Precondition, PreconditionReader, event};
use crate::domain::{Action, CallerKind, ClientId, GroupName, Owner, Scope, ScopeSet, TenantId, WorkspaceId};
use crate::policy::Policy;
use crate::store::clients as rows;
// Reads of the noun, for the handlers and the command line: they import this module, never
// the tables.
pub use crate::store::client_keys::{get as key_of, list as keys};
pub use crate::store::clients::{
    ClientRecord, Inventory, PreviousSecret, get, get_inventory, get_with_hash, list, list_inventory, page_inventory,
};
pub use crate::store::federation::{
    FederatedIdentity, client_for as federated_client, list as identities, use_jti as use_assertion_id,
};
use crate::store::{Store, StoreError};
use crate::token::b64;

pub mod key;

/// The prefix of every bootstrap secret.
pub const SECRET_PREFIX: &str = "tessera_sk_";

/// A bootstrap secret in memory: zeroed on drop, redacted in Debug.
pub struct ClientSecret(Zeroizing<String>);

impl ClientSecret {
    /// Wraps a presented secret.
    pub fn new(s: String) -> Self {
        ClientSecret(Zeroizing::new(s))
    }
    /// The secret text, for the one place that prints it or hashes it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(***)")
    }
}

/// Why a registration or change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// No such client.
    #[error("no client {0}")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Tenant.
    pub tenant: TenantId,
    /// Kind.
    pub kind: CallerKind,
    /// Human name.
    pub name: String,
    /// Bound workspace.
    pub workspace: Option<WorkspaceId>,
    /// Exactly these scopes; empty means the kind's defaults.
    pub scopes: Vec<Scope>,
    /// Gated actions the client may bypass (install clients only).
    pub allow_bypass: Vec<Action>,
    /// Clients of the same tenant that may exchange this client's tokens and act for it.
    pub delegates: Vec<ClientId>,
    /// Tokens only with a DPoP proof (design §13).
    pub require_dpop: bool,
    /// Operator groups (operators only; design §19).
    pub groups: Vec<GroupName>,
    /// Who is answerable for it.
    pub owner: Option<Owner>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| StoreError::Setup("system random source failed".into()))?;
    Ok(b)
}

fn new_secret() -> Result<ClientSecret, StoreError> {
    let bytes = Zeroizing::new(random_bytes::<32>()?);
    Ok(ClientSecret::new(format!("{SECRET_PREFIX}{}", b64::encode(bytes.as_ref()))))
}

/// The stored form of a secret: lowercase hex SHA-256.
pub fn hash_secret(secret: &str) -> String {
    crate::audit::hex(digest(&SHA256, secret.as_bytes()).as_ref())
}

/// Registers a client; returns it with its secret, which is shown once and never stored.
pub async fn create(
    store: &Store,
    policy: &Policy,
    new: NewClient,
    actor: &str,
    now: i64,
) -> Result<(ClientRecord, ClientSecret), ClientError> {
    let (record, secret) = register(store, policy, new, Authn::Secret, actor, now).await?;
    let secret =
        secret.ok_or_else(|| ClientError::Invalid("a client with a secret was registered without one".into()))?;
    Ok((record, secret))
}

/// Registers a client with no secret that an assertion naming one of `identities`
/// authenticates (the `jwt-bearer` grant, design §14). An identity may name one client only.
pub async fn create_federated(
    store: &Store,
    policy: &Policy,
    new: NewClient,
    identities: &[FederatedIdentity],
    actor: &str,
    now: i64,
) -> Result<ClientRecord, ClientError> {
    if identities.is_empty() {
        return Err(ClientError::Invalid("a federated client needs at least one identity".into()));
    }
    for id in identities {
        let printable = |v: &str| !v.is_empty() && v.len() <= 512 && !v.chars().any(char::is_control);
        if !printable(&id.issuer) || !printable(&id.subject) {
            return Err(ClientError::Invalid(
                "--federated ISSUER=SUBJECT: each part must be 1 to 512 printable characters".into(),
            ));
        }
    }
    Ok(register(store, policy, new, Authn::Federated(identities), actor, now).await?.0)
}

/// Registers a client with no secret that authenticates with an assertion signed by the
/// private half of `jwk`, a public JWK (`private_key_jwt`, RFC 7523 §2.2; design §18).
pub async fn create_with_key(
    store: &Store,
    policy: &Policy,
    new: NewClient,
    jwk: &str,
    actor: &str,
    now: i64,
) -> Result<ClientRecord, ClientError> {
    let key = key::parse_public_jwk(jwk).map_err(|e| ClientError::Invalid(format!("--jwk: {e}")))?;
    Ok(register(store, policy, new, Authn::Key(&key), actor, now).await?.0)
}

/// How a new client will authenticate.
enum Authn<'a> {
    Secret,
    Federated(&'a [FederatedIdentity]),
    Key(&'a crate::store::client_keys::ClientKey),
}

async fn register(
    store: &Store,
    policy: &Policy,
    new: NewClient,
    authn: Authn<'_>,
    actor: &str,
    now: i64,
) -> Result<(ClientRecord, Option<ClientSecret>), ClientError> {
    let identities = match authn {
        Authn::Federated(ids) => ids,
        _ => &[],
    };
    let key = match authn {
        Authn::Key(k) => Some(k),
        _ => None,
    };
    let name = new.name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ClientError::Invalid("name must be 1 to 128 printable characters".into()));
    }
    let ceiling = policy.ceiling(new.kind);
    let scopes: ScopeSet =
        if new.scopes.is_empty() { policy.defaults(new.kind) } else { new.scopes.into_iter().collect() };
    for s in scopes.iter() {
        if policy.is_gated(s.as_str()) {
            return Err(ClientError::Invalid(format!(
                "{s} is a gated action, never a scope; gated actions run only on an approved capability"
            )));
        }
        if !ceiling.contains(s.as_str()) {
            return Err(ClientError::Invalid(format!("{s} is outside the {} ceiling ({ceiling})", new.kind)));
        }
    }
    if new.workspace.is_some() && !matches!(new.kind, CallerKind::Workspace | CallerKind::Agent) {
        return Err(ClientError::Invalid("--workspace applies to workspace and agent clients only".into()));
    }
    if new.kind == CallerKind::Workspace && new.workspace.is_none() {
        return Err(ClientError::Invalid("a workspace client needs --workspace".into()));
    }
    if !new.allow_bypass.is_empty() && new.kind != CallerKind::Install {
        return Err(ClientError::Invalid("--allow-bypass applies to install clients only".into()));
    }
    for a in &new.allow_bypass {
        if !policy.is_gated(a.as_str()) {
            return Err(ClientError::Invalid(format!("{a} is not a gated action")));
        }
    }
    if !new.groups.is_empty() && new.kind != CallerKind::Operator {
        return Err(ClientError::Invalid("--group applies to operator clients only".into()));
    }
    let groups = sorted_groups(new.groups)?;
    for d in &new.delegates {
        match rows::get(store, d.as_str()).await? {
            Some(c) if c.tenant == new.tenant => {}
            _ => return Err(ClientError::Invalid(format!("--delegate {d}: no such client in tenant {}", new.tenant))),
        }
    }
    let client_id = ClientId::parse(&format!("tc_{}", b64::encode(&random_bytes::<16>()?)))
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    let secret = if matches!(authn, Authn::Secret) { Some(new_secret()?) } else { None };
    let record = ClientRecord {
        client_id,
        tenant: new.tenant,
        kind: new.kind,
        name: name.to_owned(),
        workspace: new.workspace,
        scopes,
        allow_bypass: new.allow_bypass,
        delegates: new.delegates,
        require_dpop: new.require_dpop,
        groups,
        owner: new.owner,
        disabled: false,
        created_at: now,
    };
    let detail = event::ClientCreated {
        kind: record.kind.as_str().to_owned(),
        name: record.name.clone(),
        workspace: record.workspace.as_ref().map(|w| w.as_str().to_owned()),
        scope: record.scopes.to_string(),
        allow_bypass: record.allow_bypass.iter().map(|a| a.as_str().to_owned()).collect(),
        delegates: record.delegates.iter().map(|d| d.as_str().to_owned()).collect(),
        require_dpop: record.require_dpop,
        federated: identities
            .iter()
            .map(|i| event::Identity { issuer: i.issuer.clone(), subject: i.subject.clone() })
            .collect(),
        key: key.map(|k| event::KeyNamed { kid: k.kid.clone(), alg: k.alg.clone() }),
        groups: record.groups.iter().map(|g| g.as_str().to_owned()).collect(),
        owner: record.owner.as_ref().map(|o| o.as_str().to_owned()),
    };
    let event = AuditEvent::of(
        Event::ClientCreated(Box::new(detail)),
        actor,
        record.tenant.as_str(),
        record.client_id.as_str(),
    );
    let mut tx = audit::Change::begin(store).await?;
    // A federated or key client's stored hash is empty: no presented secret hashes to it.
    let stored = secret.as_ref().map(|s| hash_secret(s.expose())).unwrap_or_default();
    rows::insert(&mut tx, &record, &stored, actor).await?;
    if let Err(e) = crate::store::federation::insert(&mut tx, record.client_id.as_str(), identities, now).await {
        if e.is_unique_violation() {
            return Err(ClientError::Invalid("one of these identities already names another client".into()));
        }
        return Err(e.into());
    }
    if let Some(k) = key {
        crate::store::client_keys::insert(&mut tx, record.client_id.as_str(), k, now).await?;
    }
    tx.record(event);
    tx.commit(now).await?;
    Ok((record, secret))
}

/// Most groups one operator may belong to.
pub const MAX_GROUPS: usize = 32;

fn sorted_groups(mut groups: Vec<GroupName>) -> Result<Vec<GroupName>, ClientError> {
    groups.sort();
    groups.dedup();
    if groups.len() > MAX_GROUPS {
        return Err(ClientError::Invalid(format!("an operator belongs to at most {MAX_GROUPS} groups")));
    }
    Ok(groups)
}

/// Replaces an operator client's groups (design §19). Decisions already made count by the
/// groups their operators belong to when the quorum is next counted.
pub async fn set_groups(
    store: &Store,
    client_id: &str,
    groups: Vec<GroupName>,
    actor: &str,
    now: i64,
) -> Result<ClientRecord, ClientError> {
    let record = rows::get(store, client_id).await?.ok_or_else(|| ClientError::NotFound(client_id.to_owned()))?;
    if record.kind != CallerKind::Operator {
        return Err(ClientError::Invalid(format!(
            "{client_id} is a {} client; only operator clients belong to groups",
            record.kind
        )));
    }
    let groups = sorted_groups(groups)?;
    let names = |g: &[GroupName]| g.iter().map(|g| g.as_str().to_owned()).collect::<Vec<_>>();
    let detail = event::GroupsSet { before: names(&record.groups), groups: names(&groups) };
    let mut tx = audit::Change::begin(store).await?;
    if !rows::set_groups(&mut tx, client_id, &groups, now).await? {
        return Err(ClientError::NotFound(client_id.to_owned()));
    }
    tx.record(AuditEvent::of(Event::ClientGroupsSet(detail), actor, record.tenant.as_str(), client_id));
    tx.commit(now).await?;
    Ok(ClientRecord { groups, ..record })
}

/// Longest a replaced secret may keep working (`rotate-secret --grace`, design §20): 7 days.
pub const MAX_GRACE_SECS: i64 = 7 * 24 * 3600;

/// Replaces a client's secret. With `grace_secs` (1 to [`MAX_GRACE_SECS`]) the old one keeps
/// working until then, each use of it counted; with `None` or 0 it stops working at once.
/// Rotating again within a grace ends the older secret now.
pub async fn rotate_secret(
    store: &Store,
    client_id: &str,
    grace_secs: Option<i64>,
    actor: &str,
    now: i64,
) -> Result<(ClientRecord, ClientSecret, Option<i64>), ClientError> {
    let grace = grace_secs.filter(|g| *g != 0);
    if let Some(g) = grace
        && !(1..=MAX_GRACE_SECS).contains(&g)
    {
        return Err(ClientError::Invalid(format!("grace must be 0 to {MAX_GRACE_SECS} seconds (7 days), not {g}")));
    }
    let record = rows::get(store, client_id).await?.ok_or_else(|| ClientError::NotFound(client_id.to_owned()))?;
    if record.disabled {
        return Err(ClientError::Invalid(format!("{client_id} is disabled; a disabled client gets no new secret")));
    }
    if crate::store::federation::is_federated(store, client_id).await? {
        return Err(ClientError::Invalid(format!(
            "{client_id} is a federated client: it has no secret, an assertion of its identity authenticates it"
        )));
    }
    if crate::store::client_keys::get(store, client_id).await?.is_some() {
        return Err(ClientError::Invalid(format!(
            "{client_id} authenticates by key (private_key_jwt): it has no secret; register a new client to change its key"
        )));
    }
    let secret = new_secret()?;
    let until = grace.map(|g| now + g);
    let mut tx = audit::Change::begin(store).await?;
    if !rows::rotate_secret(&mut tx, client_id, &hash_secret(secret.expose()), until, now).await? {
        return Err(ClientError::NotFound(client_id.to_owned()));
    }
    let detail = event::SecretRotated { previous_expires_at: until };
    tx.record(AuditEvent::of(Event::ClientSecretRotated(detail), actor, record.tenant.as_str(), client_id));
    tx.commit(now).await?;
    Ok((record, secret, until))
}

/// Disables a client: its secret stops working at once and every token it holds is revoked.
pub async fn disable(store: &Store, client_id: &str, actor: &str, now: i64) -> Result<ClientRecord, ClientError> {
    let record = rows::get(store, client_id).await?.ok_or_else(|| ClientError::NotFound(client_id.to_owned()))?;
    let mut tx = audit::Change::begin(store).await?;
    if !rows::disable(&mut tx, client_id, now).await? {
        return Err(ClientError::NotFound(client_id.to_owned()));
    }
    let revocation = crate::revocations::of_client(client_id, record.tenant.as_str(), now);
    crate::revocations::insert_in(&mut tx, &revocation, actor, now).await?;
    let event = Event::ClientDisabled(event::ClientDisabled {
        tokens_revoked: true,
        stale_after_days: None,
        last_used_at: None,
    });
    tx.record(AuditEvent::of(event, actor, record.tenant.as_str(), client_id));
    tx.commit(now).await?;
    Ok(ClientRecord { disabled: true, ..record })
}

/// Most clients one pass of the stale sweep disables; the next pass takes the rest.
const STALE_PER_PASS: i64 = 100;

/// The actor of the stale sweep's records.
pub const STALE_SWEEP: &str = "stale_sweep";

/// Disables the agent and workspace clients unused (no token, or since registration) for
/// `days` days at `now`, each with its tokens revoked and a `client.disabled` record naming
/// the policy's `stale_after_days` (design §20). Safe beside other replicas sweeping: a client
/// is disabled, and recorded, once. Returns the ids disabled.
pub async fn disable_stale(store: &Store, days: u32, now: i64) -> Result<Vec<ClientId>, ClientError> {
    let cutoff = now - i64::from(days) * 86_400;
    let mut disabled = Vec::new();
    for record in rows::idle_since_before(store, cutoff, STALE_PER_PASS).await? {
        let id = record.client_id.as_str();
        let last_used_at = rows::get_inventory(store, id).await?.and_then(|(_, inv)| inv.last_used_at);
        let mut tx = audit::Change::begin(store).await?;
        if !rows::disable_if_idle(&mut tx, id, cutoff, now).await? {
            continue;
        }
        let revocation = crate::revocations::of_client(id, record.tenant.as_str(), now);
        crate::revocations::insert_in(&mut tx, &revocation, STALE_SWEEP, now).await?;
        let event = Event::ClientDisabled(event::ClientDisabled {
            tokens_revoked: true,
            stale_after_days: Some(days),
            last_used_at,
        });
        tx.record(AuditEvent::of(event, STALE_SWEEP, record.tenant.as_str(), id));
        tx.commit(now).await?;
        disabled.push(record.client_id);
    }
    Ok(disabled)
}

/// When clients were last used and how often their previous secrets were, kept in memory by
/// the token endpoint and written by the broker's upkeep (design §20): a client's
/// `last_used_at` at most once a minute, uses of a previous secret at the next write. The
/// token endpoint only takes a lock and compares a number; it never waits for the database.
#[derive(Debug, Default)]
pub struct Usage {
    entries: Mutex<HashMap<String, UseEntry>>,
    previous_uses: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct UseEntry {
    /// The latest minute it was used in.
    minute: i64,
    /// The minute last written, and when (process time, Unix seconds).
    written_minute: i64,
    written_at: i64,
    /// Uses of its previous secret not yet written.
    previous: i64,
}

/// Most clients tracked between writes; beyond, entries already written are dropped.
const USAGE_CAPACITY: usize = 10_000;

/// Least time between two writes of one client's `last_used_at`, seconds.
pub const LAST_USED_WRITE_SECS: i64 = 60;

impl Usage {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, UseEntry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `client_id` got a token at `now`.
    pub fn used(&self, client_id: &str, now: i64) {
        self.note(client_id, now, 0);
    }

    /// Notes that `client_id` authenticated with its previous secret at `now`.
    pub fn used_previous_secret(&self, client_id: &str, now: i64) {
        self.previous_uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.note(client_id, now, 1);
    }

    fn note(&self, client_id: &str, now: i64, previous: i64) {
        let minute = now - now.rem_euclid(60);
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(client_id) {
            e.minute = e.minute.max(minute);
            e.previous += previous;
            return;
        }
        if entries.len() >= USAGE_CAPACITY {
            entries.retain(|_, e| e.minute > e.written_minute || e.previous > 0);
        }
        entries.insert(
            client_id.to_owned(),
            UseEntry { minute, written_minute: i64::MIN, written_at: i64::MIN, previous },
        );
    }

    /// Uses of previous secrets since start, for `/metrics`.
    pub fn previous_uses(&self) -> u64 {
        self.previous_uses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes what is due at `now`: each client's last use if it moved and its last write was
    /// at least [`LAST_USED_WRITE_SECS`] ago, with its previous secret's uses; those uses
    /// alone whenever there are any. What fails to be written is kept for the next call.
    pub async fn write_due(&self, store: &Store, now: i64) -> Result<usize, StoreError> {
        let due: Vec<(String, UseEntry)> = {
            let mut entries = self.entries();
            let mut due = Vec::new();
            for (id, e) in entries.iter_mut() {
                let moved = e.minute > e.written_minute && now.saturating_sub(e.written_at) >= LAST_USED_WRITE_SECS;
                if moved || e.previous > 0 {
                    due.push((id.clone(), *e));
                    if moved {
                        (e.written_minute, e.written_at) = (e.minute, now);
                    }
                    e.previous = 0;
                }
            }
            due
        };
        let mut written = 0;
        let mut failed = None;
        for (id, e) in due {
            // A last use written before is written again as it is: `record_use` keeps the later.
            match rows::record_use(store, &id, e.minute, e.previous).await {
                Ok(()) => written += 1,
                Err(err) => {
                    let mut entries = self.entries();
                    if let Some(cur) = entries.get_mut(&id) {
                        cur.previous += e.previous;
                        (cur.written_minute, cur.written_at) = (e.written_minute, e.written_at);
                    }
                    failed = Some(err);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Writes everything noted, whatever the time since the last write (at shutdown).
    pub async fn write_all(&self, store: &Store) -> Result<usize, StoreError> {
        for e in self.entries().values_mut() {
            e.written_at = i64::MIN;
        }
        self.write_due(store, i64::MAX).await
    }
}

/// A hash no secret has: compared against when the client is unknown or has no previous
/// secret, so every authentication costs the same work.
const UNKNOWN_CLIENT_HASH: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// Which of a client's secrets a presented one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUsed {
    /// The current secret.
    Current,
    /// The secret a rotation with grace replaced, still within its grace.
    Previous,
}

/// Compares `presented` (a hash) with both of `stored`'s secrets, always both, in constant
/// time; the previous one counts only before it expires.
fn matched(presented: &str, stored: Option<&rows::StoredSecrets>, now: i64) -> Option<SecretUsed> {
    let (current, previous, until) = match stored {
        Some(s) => (
            s.current.as_str(),
            if s.previous.is_empty() { UNKNOWN_CLIENT_HASH } else { s.previous.as_str() },
            s.previous_until,
        ),
        None => (UNKNOWN_CLIENT_HASH, UNKNOWN_CLIENT_HASH, None),
    };
    let is_current: bool = presented.as_bytes().ct_eq(current.as_bytes()).into();
    let is_previous: bool = presented.as_bytes().ct_eq(previous.as_bytes()).into();
    if is_current {
        Some(SecretUsed::Current)
    } else if is_previous && until.is_some_and(|u| u > now) {
        Some(SecretUsed::Previous)
    } else {
        None
    }
}

/// Checks a client id and secret at `now`. Unknown client, wrong or expired secret and
/// disabled client all give `None` after the same steps: one lookup, one hash, two
/// constant-time compares.
pub async fn authenticate(
    store: &Store,
    client_id: &str,
    secret: &ClientSecret,
    now: i64,
) -> Result<Option<(ClientRecord, SecretUsed)>, StoreError> {
    let found = rows::get_for_auth(store, client_id).await?;
    let presented = hash_secret(secret.expose());
    let used = matched(&presented, found.as_ref().map(|(_, s, _)| s), now);
    Ok(match (found, used) {
        (Some((r, _, _)), Some(used)) if !r.disabled => Some((r, used)),
        _ => None,
    })
}

/// Clients that authenticated successfully, with the row they authenticated against, so the
/// token endpoint need not read the database before signing. A hit is provisional: the
/// token's audit record carries a [`Precondition`] on the client's row (see
/// [`ClientPreconditions`]), and the group-commit writer refuses it
/// inside the commit's transaction if the row changed since (disabled, secret rotated), so
/// such changes still take effect on the next request. Failures are never cached: a wrong
/// secret, an unknown or a disabled client always costs the database lookup.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, Arc<CachedClient>>>,
}

/// A cached successful authentication.
#[derive(Debug)]
struct CachedClient {
    record: Arc<ClientRecord>,
    secrets: rows::StoredSecrets,
    check: Precondition,
}

/// Most clients cached; when full, the cache starts again empty.
const AUTH_CACHE_CAPACITY: usize = 10_000;

impl AuthCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CachedClient>>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, client_id: &str) -> Option<Arc<CachedClient>> {
        self.entries().get(client_id).cloned()
    }

    fn put(&self, entry: CachedClient) {
        let mut entries = self.entries();
        if entries.len() >= AUTH_CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(entry.check.key.clone(), Arc::new(entry));
    }

    /// Drops a client's entry.
    pub fn forget(&self, client_id: &str) {
        self.entries().remove(client_id);
    }
}

/// A successful authentication.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The client as it was read.
    pub record: Arc<ClientRecord>,
    /// For an answer from memory, what its token's audit record must still find at commit.
    pub check: Option<Precondition>,
    /// Which secret it presented.
    pub used: SecretUsed,
}

/// As [`authenticate`], answered from `cache` when the client authenticated before against the
/// same row. A cached answer comes with the [`Precondition`] its audit record must pass; an
/// answer read from the database comes with none, and refreshes the cache.
pub async fn authenticate_cached(
    store: &Store,
    cache: &AuthCache,
    client_id: &str,
    secret: &ClientSecret,
    now: i64,
) -> Result<Option<Authenticated>, StoreError> {
    let presented = hash_secret(secret.expose());
    if let Some(hit) = cache.get(client_id)
        && !hit.record.disabled
        && let Some(used) = matched(&presented, Some(&hit.secrets), now)
    {
        return Ok(Some(Authenticated { record: Arc::clone(&hit.record), check: Some(hit.check.clone()), used }));
    }
    // The same steps as `authenticate`: one lookup, two constant-time compares.
    let found = Box::pin(rows::get_for_auth(store, client_id)).await?;
    let used = matched(&presented, found.as_ref().map(|(_, s, _)| s), now);
    match (found, used) {
        (Some((r, secrets, updated_at)), Some(used)) if !r.disabled => {
            let check =
                Precondition { key: client_id.to_owned(), fingerprint: fingerprint(&secrets.current, updated_at) };
            let r = Arc::new(r);
            cache.put(CachedClient { record: Arc::clone(&r), secrets, check });
            Ok(Some(Authenticated { record: r, check: None, used }))
        }
        _ => {
            cache.forget(client_id);
            Ok(None)
        }
    }
}

/// What a client's row says that a cached authentication relies on: its secret hash and when
/// it last changed. A disabled client has none.
fn fingerprint(secret_hash: &str, updated_at: i64) -> String {
    format!("{secret_hash}:{updated_at}")
}

/// Reads clients' fingerprints inside the audit writer's transaction, so a token's record
/// commits only if its client is still enabled, with the same secret, unchanged since it was
/// authenticated from memory.
#[derive(Debug, Default)]
pub struct ClientPreconditions;

impl PreconditionReader for ClientPreconditions {
    fn read_sqlite(
        &self,
        conn: &crate::store::EmbeddedConn,
        keys: &[&str],
    ) -> Result<HashMap<String, String>, StoreError> {
        Ok(rows::auth_states_embedded(conn, keys)?
            .into_iter()
            .filter(|(_, s)| !s.disabled)
            .map(|(id, s)| (id, fingerprint(&s.secret_hash, s.updated_at)))
            .collect())
    }

    fn read_any<'a>(&'a self, conn: &'a mut crate::store::Conn, keys: &'a [&'a str]) -> Fingerprints<'a> {
        Box::pin(async move {
            let states = rows::auth_states(conn, keys).await?;
            Ok(states
                .into_iter()
                .filter(|(_, s)| !s.disabled)
                .map(|(id, s)| (id, fingerprint(&s.secret_hash, s.updated_at)))
                .collect())
        })
    }
}

/// What a client's registration says, as every answer about it shows it.
fn registration_json(c: &ClientRecord) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "client_id": c.client_id,
        "tenant": c.tenant,
        "kind": c.kind,
        "name": c.name,
        "workspace": c.workspace,
        "scope": c.scopes.to_string(),
        "allow_bypass": c.allow_bypass,
        "delegates": c.delegates,
        "require_dpop": c.require_dpop,
        "groups": c.groups,
        "owner": c.owner,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A client as `tessera clients show` and `GET /v1/clients/{id}` give it (design §20): its
/// registration, who made it, its last use, and its secrets with their ages (never a secret
/// or a hash). `secret_expires_at` is when a previous secret still working stops.
pub fn view(c: &ClientRecord, inv: &Inventory, now: i64) -> serde_json::Value {
    let mut secrets = Vec::new();
    if let Some(at) = inv.secret_created_at {
        secrets.push(serde_json::json!({ "secret": "current", "created_at": at, "age_secs": now - at }));
    }
    let previous = inv.previous_at(now);
    if let Some(p) = previous {
        secrets.push(serde_json::json!({
            "secret": "previous",
            "created_at": p.created_at,
            "age_secs": p.created_at.map(|at| now - at),
            "expires_at": p.expires_at,
            "uses": p.uses,
        }));
    }
    let mut m = registration_json(c);
    m.insert("state".into(), (if c.disabled { "disabled" } else { "active" }).into());
    m.insert("created_at".into(), c.created_at.into());
    m.insert("created_by".into(), inv.created_by.clone().into());
    m.insert("last_used_at".into(), inv.last_used_at.into());
    m.insert("secret_expires_at".into(), previous.map(|p| p.expires_at).into());
    m.insert("secrets".into(), secrets.into());
    serde_json::Value::Object(m)
}

/// How a client registered from the command line or over HTTP authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A bootstrap secret, generated and shown once.
    Secret,
    /// Assertions of these workload identities (design §14).
    Federated(&'a [FederatedIdentity]),
    /// Assertions signed by the private half of this public JWK (`private_key_jwt`).
    Key(&'a str),
}

/// Registers a client as `tessera clients create` and `POST /v1/clients` do, by `actor`, and
/// the answer both give: the registration, `client_secret` (this once; `null` without a
/// secret), the federated identities or the key's `kid` and `alg`, and `created_by`.
pub async fn register_answering(
    store: &Store,
    policy: &Policy,
    new: NewClient,
    credential: Credential<'_>,
    actor: &str,
    now: i64,
) -> Result<(ClientRecord, serde_json::Value), ClientError> {
    let (c, secret, key) = match credential {
        Credential::Key(jwk) => {
            let c = create_with_key(store, policy, new, jwk, actor, now).await?;
            let key = key_of(store, c.client_id.as_str()).await?;
            (c, None, key.map(|k| serde_json::json!({"kid": k.kid, "alg": k.alg})))
        }
        Credential::Secret => {
            let (c, secret) = create(store, policy, new, actor, now).await?;
            (c, Some(secret), None)
        }
        Credential::Federated(ids) => (create_federated(store, policy, new, ids, actor, now).await?, None, None),
    };
    let federated = match credential {
        Credential::Federated(ids) => ids,
        _ => &[],
    };
    let mut m = registration_json(&c);
    m.insert("client_secret".into(), secret.as_ref().map(|s| s.expose()).into());
    m.insert("federated".into(), serde_json::json!(federated));
    m.insert("key".into(), key.into());
    m.insert("created_by".into(), actor.into());
    Ok((c, serde_json::Value::Object(m)))
}

/// The answer to a rotation (command line and HTTP): the new secret, shown this once, and when
/// the previous one stops working (`null`: it already has).
pub fn rotated_view(c: &ClientRecord, secret: &ClientSecret, until: Option<i64>) -> serde_json::Value {
    serde_json::json!({ "client_id": c.client_id, "client_secret": secret.expose(), "secret_expires_at": until })
}
