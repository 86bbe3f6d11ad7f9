//! `/v1/approvals` and `/v1/capabilities/redeem`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Caller, StrictJson};
use super::{ApiError, ApiResult, AppState};
use crate::approvals::{self, ApprovalError, Issuing, NewRequest, Verdict};
use crate::approvals::{ApprovalRow, Status};
use crate::token::b64;

/// The header with which an allowed install client bypasses the gate, giving its reason.
pub const BYPASS_HEADER: &str = "Tessera-Gate-Bypass";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/approvals", post(create).get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/decision", post(decide))
        .route("/v1/approvals/{id}/withdraw", post(withdraw))
        .route("/v1/approvals/{id}/review", post(review))
        .route("/v1/capabilities/redeem", post(redeem))
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Invalid(m) => ApiError::invalid_request(m),
            ApprovalError::Forbidden(m) => ApiError::forbidden(m),
            e @ ApprovalError::ForbiddenByPolicy(_) => ApiError::forbidden(e.to_string()),
            e @ ApprovalError::SelfTarget => ApiError::self_target_forbidden(e.to_string()),
            ApprovalError::BypassNotAllowed(m) => ApiError::bypass_not_allowed(m),
            ApprovalError::NotFound => ApiError::not_found("no such approval"),
            ApprovalError::Conflict(m) => ApiError::conflict(m),
            ApprovalError::Expired(m) => ApiError::expired(m),
            ApprovalError::TooMany(m) => ApiError::rate_limited_because(60, m),
            ApprovalError::PasskeyRequired(m) => ApiError::passkey_required(m),
            ApprovalError::Store(e) => ApiError::unavailable(&e),
            ApprovalError::Signing => ApiError::internal(&"capability signing failed"),
        }
    }
}

pub(crate) use crate::domain::rfc3339;

/// An approval as the API shows it. `capability` only in the requester's own reading.
pub(crate) fn approval_json(row: &ApprovalRow, now: i64, capability: Option<String>) -> Value {
    let status = row.effective_status(now);
    let decisions: Vec<Value> = row
        .decisions
        .iter()
        .map(|d| {
            json!({
                "operator": d.operator,
                "decision": d.decision,
                "note": d.note,
                "at": rfc3339(d.at),
                "method": d.method,
                "break_glass": d.break_glass,
            })
        })
        .collect();
    let summary: Value = serde_json::from_str(&row.summary).unwrap_or_else(|_| json!({}));
    let params: Value = row.params.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or(Value::Null);
    let mut v = json!({
        "approval_id": row.approval_id,
        "status": status.as_str(),
        "action": row.action,
        "resource": row.resource,
        "params_digest": row.params_digest,
        "params": params,
        "summary": summary,
        "reason": row.reason,
        "tenant": row.tenant,
        "requester": row.requester,
        "requester_kind": row.requester_kind,
        "actors": row.actors(),
        "created_at": rfc3339(row.created_at),
        "expires_at": rfc3339(row.expires_at),
        "quorum": quorum_json(row),
        "decisions": decisions,
        "bypass": row.bypass,
        "break_glass": row.break_glass,
        "requester_owner": row.requester_owner,
    });
    if row.break_glass {
        v["reviewed"] = match &row.reviewed {
            Some((by, at)) => json!({ "by": by, "at": rfc3339(*at) }),
            None => Value::Null,
        };
    }
    if let Some(exp) = row.cap_exp {
        v["capability_expires_at"] = json!(rfc3339(exp));
    }
    if let Some(c) = capability {
        v["capability"] = json!(c);
    }
    v
}

/// The quorum as its requirements, each with the approvals counted towards it so far (design
/// §19): `[{"group": "security", "count": 2, "approvals": 1}]`; `group` is null where any
/// operator counts.
pub(crate) fn quorum_json(row: &ApprovalRow) -> Value {
    Value::Array(
        row.progress()
            .into_iter()
            .map(|(r, filled)| json!({ "group": r.group, "count": r.count, "approvals": filled }))
            .collect(),
    )
}

/// The capability of an approved request, for `audience` when given (one of the configured
/// audiences), else the broker's default one.
fn capability_for_audience(
    state: &AppState,
    row: &ApprovalRow,
    now: i64,
    audience: Option<&str>,
) -> ApiResult<Option<String>> {
    let signer = state.keys().signer();
    let cfg = state.config();
    let issuing = Issuing { signer: &signer, issuer: &cfg.issuer, audience: audience.unwrap_or(&cfg.audience) };
    Ok(approvals::capability_token(row, issuing, now)?)
}

/// The audience of a token a `service` client named with `requester_token`: the resource
/// server the requester meant, so its capability is for that same one (design §18).
fn requester_audience(state: &AppState, requester: &Caller) -> Option<String> {
    let configured = state.config().audiences();
    let aud = &requester.claims.aud;
    configured.into_iter().find(|a| aud.contains(a))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    StrictJson(mut req): StrictJson<NewRequest>,
) -> ApiResult<Response> {
    let now = state.now();
    // Core acting for a bound caller names it (design §13); the approval is the caller's.
    let (caller, audience) = match req.requester_token.take() {
        Some(token) => {
            let requester = super::auth::requester_of(&state, &caller, &token, now).await?;
            let audience = requester_audience(&state, &requester);
            (requester, audience)
        }
        None => (caller, None),
    };
    let bypass = match headers.get(BYPASS_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid_request("Tessera-Gate-Bypass must be printable text"))?
                .trim()
                .to_owned(),
        ),
    };
    let row = approvals::request(
        state.store(),
        &state.config().policy,
        approvals::Requester { claims: &caller.claims, client: &caller.client, actors: &caller.actors },
        req,
        bypass.as_deref(),
        now,
    )
    .await?;
    state.metrics().approval(row.status);
    if row.bypass {
        let capability = capability_for_audience(&state, &row, now, audience.as_deref())?;
        let mut body = approval_json(&row, now, capability);
        body["status"] = json!("approved");
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    // Its webhook notification follows the audit record (`server::notices`).
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "approval_id": row.approval_id, "status": "pending", "expires_at": rfc3339(row.expires_at) })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

fn encode_cursor(row: &ApprovalRow) -> String {
    b64::encode(format!("{}:{}", row.created_at, row.approval_id).as_bytes())
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(b64::decode(c).ok()?).ok()?;
    let (t, id) = text.split_once(':')?;
    Some((t.parse().ok()?, id.to_owned()))
}

async fn list(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q: ListQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_request(format!("query: {e}")))?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::invalid_request("malformed cursor"))?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid_request("limit must be between 1 and 200"));
    }
    let now = state.now();
    let page = match q.status.as_deref().unwrap_or("pending") {
        // Break-glass approvals another operator has not yet acknowledged (design §19).
        "to_review" => approvals::list_to_review(state.store(), &caller.claims, after, limit + 1).await?,
        s => {
            let status: Status =
                s.parse().map_err(|e: String| ApiError::invalid_request(format!("{e}, or to_review")))?;
            approvals::list(state.store(), &caller.claims, status, after, limit + 1, now).await?
        }
    };
    let more = page.len() as i64 > limit;
    let shown: Vec<&ApprovalRow> = page.iter().take(limit as usize).collect();
    let next = if more { shown.last().map(|r| encode_cursor(r)) } else { None };
    let items: Vec<Value> = shown.iter().map(|r| approval_json(r, now, None)).collect();
    Ok(Json(json!({ "approvals": items, "next": next })))
}

/// The header with which a `service` client reads an approval as the requester whose token it
/// holds (design §18: the gate proxy fetching the capability it then redeems itself).
pub const REQUESTER_TOKEN_HEADER: &str = "Tessera-Requester-Token";

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let now = state.now();
    let (caller, audience) = match headers.get(REQUESTER_TOKEN_HEADER) {
        None => (caller, None),
        Some(v) => {
            let token = v.to_str().map_err(|_| ApiError::invalid_request("Tessera-Requester-Token must be a token"))?;
            let requester = super::auth::requester_of(&state, &caller, token.trim(), now).await?;
            let audience = requester_audience(&state, &requester);
            (requester, audience)
        }
    };
    let row = approvals::read(state.store(), &caller.claims, &id, now).await?;
    let capability = if row.requester == caller.claims.sub {
        capability_for_audience(&state, &row, now, audience.as_deref())?
    } else {
        None
    };
    Ok(Json(approval_json(&row, now, capability)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: Verdict,
    #[serde(default)]
    note: Option<String>,
}

async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<DecisionBody>,
) -> ApiResult<Json<Value>> {
    let now = state.now();
    let row = approvals::decide(
        state.store(),
        &state.config().policy,
        &caller.claims,
        &id,
        approvals::Ruling {
            verdict: body.decision,
            note: body.note,
            proof: approvals::Proof::Secret,
            break_glass: false,
        },
        now,
    )
    .await?;
    if row.status != crate::approvals::Status::Pending {
        state.metrics().approval(row.status);
    }
    Ok(Json(approval_json(&row, now, None)))
}

async fn withdraw(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let now = state.now();
    let row = approvals::withdraw(state.store(), &caller.claims, &id, now).await?;
    state.metrics().approval(row.status);
    Ok(Json(approval_json(&row, now, None)))
}

async fn review(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let now = state.now();
    let row = approvals::review(state.store(), &caller.claims, &id, now).await?;
    Ok(Json(approval_json(&row, now, None)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    capability: String,
}

async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    StrictJson(body): StrictJson<RedeemBody>,
) -> ApiResult<Json<Value>> {
    let now = state.now();
    let cap = super::auth::verify_capability_any_audience(&state, &body.capability, now)
        .await
        .map_err(approvals::refuse_capability)?;
    let cap = approvals::redeem(state.store(), &caller.claims, cap, now).await?;
    state.metrics().approval(crate::approvals::Status::Redeemed);
    Ok(Json(json!({
        "redeemed": true,
        "approval_id": cap.approval_id,
        "jti": cap.jti,
        "sub": cap.sub,
        "action": cap.action,
        "resource": cap.resource,
        "params_digest": cap.params_digest,
    })))
}
