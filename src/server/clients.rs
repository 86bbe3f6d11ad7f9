//! `/v1/clients`: the platform's automation registers, lists, rotates and disables its agents'
//! clients over HTTP (design §20), as `tessera clients` does on the database.
//!
//! Who may: an `install` client whose token holds `clients:manage` manages clients of its own
//! tenant; an `operator` whose token holds `clients:read` reads them. Neither ever reaches an
//! `operator` or `service` client, nor gives a scope or a bypass it does not hold itself:
//! otherwise an install client could register an operator and approve its own requests
//! through it, the incident again. Those stay with `tessera clients` on the database.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Caller, StrictJson};
use super::{ApiError, ApiResult, AppState};
use crate::clients::{self, ClientError, ClientRecord, Credential, FederatedIdentity, NewClient};
use crate::domain::{Action, CallerKind, ClientId, Owner, Scope, ScopeSet, TenantId, WorkspaceId};

/// The scope with which an install client manages its tenant's clients.
pub const MANAGE_SCOPE: &str = "clients:manage";
/// The scope with which an operator reads them.
pub const READ_SCOPE: &str = "clients:read";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/clients", post(create).get(list))
        .route("/v1/clients/{id}", get(show))
        .route("/v1/clients/{id}/disable", post(disable))
        .route("/v1/clients/{id}/rotate-secret", post(rotate))
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid(m) => ApiError::invalid_request(m),
            ClientError::NotFound(_) => ApiError::not_found("no such client"),
            ClientError::Store(e) => ApiError::unavailable(&e),
        }
    }
}

/// What the caller may do with its tenant's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Manage,
    Read,
}

fn access(caller: &Caller) -> ApiResult<Access> {
    let claims = &caller.claims;
    // Managing takes the install client's own token: a delegated one would leave open whose
    // holdings bound what it may give.
    if claims.caller_kind == CallerKind::Install && claims.act.is_none() && claims.has_scope(MANAGE_SCOPE) {
        return Ok(Access::Manage);
    }
    if claims.every_party_is(&[CallerKind::Operator]) && claims.has_scope(READ_SCOPE) {
        return Ok(Access::Read);
    }
    Err(ApiError::forbidden(format!(
        "managing clients takes an install client's own token (not a delegated one) with {MANAGE_SCOPE}; reading \
         them, an operator's with {READ_SCOPE}"
    )))
}

fn manager(caller: &Caller) -> ApiResult<()> {
    match access(caller)? {
        Access::Manage => Ok(()),
        Access::Read => Err(ApiError::forbidden(format!(
            "{READ_SCOPE} reads clients only; changing them takes an install client's token with {MANAGE_SCOPE}"
        ))),
    }
}

/// Whether `caller` (an install client) may create or change a client that is, or will be,
/// `kind` with `scopes` and `bypass`: never an operator or service client, never more than
/// the caller holds itself: a scope both its token and its registration (as it is now) hold,
/// a bypass its registration allows.
fn within_reach(caller: &Caller, kind: CallerKind, scopes: &ScopeSet, bypass: &[Action]) -> ApiResult<()> {
    if matches!(kind, CallerKind::Operator | CallerKind::Service) {
        return Err(ApiError::forbidden(format!(
            "{kind} clients are registered and changed with `tessera clients` on the database only, never over HTTP"
        )));
    }
    let held: ScopeSet = caller.client.scopes.iter().filter(|s| caller.claims.has_scope(s.as_str())).cloned().collect();
    let beyond = scopes.difference(&held);
    if !beyond.is_empty() {
        return Err(ApiError::forbidden(format!(
            "{beyond}: a client cannot give a scope it does not hold itself (in its registration and this token)"
        )));
    }
    if let Some(a) = bypass.iter().find(|a| !caller.client.allow_bypass.contains(a)) {
        return Err(ApiError::forbidden(format!("{a}: a client cannot give a bypass it is not allowed itself")));
    }
    Ok(())
}

/// A client of the caller's tenant, or 404 (another tenant's included: ids are not disclosed).
async fn of_tenant(state: &AppState, caller: &Caller, id: &str) -> ApiResult<(ClientRecord, clients::Inventory)> {
    match clients::get_inventory(state.store(), id).await? {
        Some((c, inv)) if c.tenant.as_str() == caller.claims.tenant => Ok((c, inv)),
        _ => Err(ApiError::not_found("no such client")),
    }
}

fn no_store(status: StatusCode, body: Value) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    res
}

/// `POST /v1/clients`: the fields of `tessera clients create`, by the names its JSON uses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    tenant: Option<TenantId>,
    kind: CallerKind,
    name: String,
    workspace: Option<WorkspaceId>,
    /// Space-separated, as the CLI prints it; absent: the kind's defaults.
    scope: Option<String>,
    #[serde(default)]
    allow_bypass: Vec<Action>,
    #[serde(default)]
    delegates: Vec<ClientId>,
    #[serde(default)]
    require_dpop: bool,
    owner: Option<Owner>,
    #[serde(default)]
    federated: Vec<Identity>,
    /// A public JWK: the client authenticates with `private_key_jwt` and has no secret.
    key: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    issuer: String,
    subject: String,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    StrictJson(body): StrictJson<Create>,
) -> ApiResult<Response> {
    manager(&caller)?;
    let policy = &state.config().policy;
    let tenant: TenantId = caller.client.tenant.clone();
    if body.tenant.as_ref().is_some_and(|t| *t != tenant) {
        return Err(ApiError::forbidden("a client registers clients of its own tenant only"));
    }
    let scopes: Vec<Scope> = match &body.scope {
        Some(s) => {
            ScopeSet::parse_list(s).map_err(|e| ApiError::invalid_request(e.to_string()))?.iter().cloned().collect()
        }
        None => Vec::new(),
    };
    let effective: ScopeSet =
        if scopes.is_empty() { policy.defaults(body.kind) } else { scopes.iter().cloned().collect() };
    within_reach(&caller, body.kind, &effective, &body.allow_bypass)?;
    for d in &body.delegates {
        match clients::get(state.store(), d.as_str()).await? {
            Some(c) if c.tenant == tenant && !matches!(c.kind, CallerKind::Operator | CallerKind::Service) => {}
            Some(c) if c.tenant == tenant => {
                return Err(ApiError::forbidden(format!(
                    "delegates {d}: an {} client never acts for a client registered over HTTP",
                    c.kind
                )));
            }
            _ => return Err(ApiError::invalid_request(format!("delegates {d}: no such client in tenant {tenant}"))),
        }
    }
    let federated: Vec<FederatedIdentity> =
        body.federated.into_iter().map(|i| FederatedIdentity { issuer: i.issuer, subject: i.subject }).collect();
    for id in &federated {
        if !state.config().federation.iter().any(|f| f.issuer == id.issuer) {
            return Err(ApiError::invalid_request(format!("federated: {:?} is not a trusted issuer", id.issuer)));
        }
    }
    if body.key.is_some() && !federated.is_empty() {
        return Err(ApiError::invalid_request("give federated identities or a key, not both"));
    }
    let new = NewClient {
        tenant,
        kind: body.kind,
        name: body.name,
        workspace: body.workspace,
        scopes,
        allow_bypass: body.allow_bypass,
        delegates: body.delegates,
        require_dpop: body.require_dpop,
        groups: Vec::new(),
        owner: body.owner,
    };
    let actor = caller.client.client_id.as_str();
    let jwk = body.key.map(|k| Value::Object(k).to_string());
    let credential = match &jwk {
        Some(jwk) => Credential::Key(jwk),
        None if federated.is_empty() => Credential::Secret,
        None => Credential::Federated(&federated),
    };
    let (_, answer) = clients::register_answering(state.store(), policy, new, credential, actor, state.now()).await?;
    Ok(no_store(StatusCode::CREATED, answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    stale: Option<bool>,
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/clients`: the tenant's clients with their inventory, a page at a time by id.
async fn list(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> ApiResult<Response> {
    access(&caller)?;
    let q: ListQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_request(format!("query: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_request("limit must be between 1 and 500"));
    }
    if q.cursor.as_ref().is_some_and(|c| c.is_empty() || c.len() > 64) {
        return Err(ApiError::invalid_request("cursor must be the next of a previous page"));
    }
    let now = state.now();
    let days = state.config().policy.stale_after_days.unwrap_or(30);
    let idle_before = q.stale.unwrap_or(false).then(|| now - i64::from(days) * 86_400);
    let page =
        clients::page_inventory(state.store(), &caller.claims.tenant, idle_before, q.cursor.as_deref(), limit + 1)
            .await?;
    let more = page.len() as i64 > limit;
    let shown = &page[..page.len().min(limit as usize)];
    let next = if more { shown.last().map(|(c, _)| c.client_id.to_string()) } else { None };
    let items: Vec<Value> = shown.iter().map(|(c, inv)| clients::view(c, inv, now)).collect();
    Ok(no_store(StatusCode::OK, json!({ "clients": items, "next": next })))
}

/// `GET /v1/clients/{id}`: as `tessera clients show`.
async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    access(&caller)?;
    let (c, inv) = of_tenant(&state, &caller, &id).await?;
    Ok(no_store(StatusCode::OK, clients::view(&c, &inv, state.now())))
}

/// `POST /v1/clients/{id}/disable`: every secret stops working, every token is revoked.
async fn disable(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    manager(&caller)?;
    let (target, _) = of_tenant(&state, &caller, &id).await?;
    within_reach(&caller, target.kind, &target.scopes, &target.allow_bypass)?;
    let now = state.now();
    let c = clients::disable(state.store(), &id, caller.client.client_id.as_str(), now).await?;
    state.client_cache().forget(&id);
    Ok(no_store(StatusCode::OK, json!({ "client_id": c.client_id, "disabled": true })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    grace_secs: Option<i64>,
}

/// `POST /v1/clients/{id}/rotate-secret`, body `{grace_secs?}`: a new secret, shown once.
async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<Rotate>,
) -> ApiResult<Response> {
    manager(&caller)?;
    let (target, _) = of_tenant(&state, &caller, &id).await?;
    // Its new secret would be the caller's to use: never for a client holding more.
    within_reach(&caller, target.kind, &target.scopes, &target.allow_bypass)?;
    let now = state.now();
    let (c, secret, until) =
        clients::rotate_secret(state.store(), &id, body.grace_secs, caller.client.client_id.as_str(), now).await?;
    Ok(no_store(StatusCode::OK, clients::rotated_view(&c, &secret, until)))
}
