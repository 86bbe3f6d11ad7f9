//! The console's passkey ceremonies (design §15): enrolment by a signed-in operator, sign-in
//! with a passkey, and the assertion a decision on a `passkey_actions` action needs.
//!
//! Every ceremony starts with a challenge the broker issues and stores (two minutes, answered
//! once); the browser's answer is checked by [`crate::passkeys`]. A decision's challenge is
//! derived from the approval id, its `params_digest`, the verdict and a nonce, and is bound to
//! the operator's session.

use axum::Json;
use axum::body::to_bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::session::{self, Operator};
use super::{AppState, Failure, PageResult, cross_site, page, pages, read_form, see_other, to_sign_in};
use crate::passkeys::ceremonies::{self as ceremony, Decided, Enrolment, Holder};
use crate::passkeys::{self as webauthn, Assertion, Registration};
use crate::store::StoreError;
use crate::token::b64;
/// Largest JSON body of a ceremony's answer.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// A JSON refusal of a ceremony step, in the pinned error shape.
fn refuse(status: StatusCode, code: &str, description: impl Into<String>) -> Response {
    (status, Json(json!({ "error": code, "error_description": description.into() }))).into_response()
}

fn unavailable(e: &StoreError) -> Response {
    request_log!(ERROR, error = %e, "passkey ceremony: database unavailable");
    refuse(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the service is temporarily unavailable")
}

/// The address to open the console at for passkeys, when this request came to an IP address.
pub(super) fn ip_origin_hint(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok())?;
    let bare = match host.rsplit_once(']') {
        Some((h, _)) => format!("{h}]"),
        None => host.rsplit_once(':').map_or(host.to_owned(), |(h, _)| h.to_owned()),
    };
    if !webauthn::is_ip_host(&bare) {
        return None;
    }
    state.config().passkey_origins().first().map(|o| format!("{o}/console"))
}

async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<(HeaderMap, T), Response> {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "the answer is too large"))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid_request", format!("the answer is malformed: {e}")))?;
    Ok((parts.headers, value))
}

// -------------------------------------------------------------------------------------------
// The passkeys page, enrolment and removal

/// The operator of a session, as the ceremonies see it.
fn holder(op: &Operator) -> Holder<'_> {
    Holder {
        client_id: op.claims.sub.as_str(),
        tenant: op.claims.tenant.as_str(),
        session_hash: op.session_hash.as_str(),
        method: op.method.as_str(),
    }
}

pub(super) async fn page_(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some("/console/passkeys")));
    };
    let keys = ceremony::of_client(state.store(), op.claims.sub.as_str()).await?;
    let hint = ip_origin_hint(&state, &headers);
    Ok(page(StatusCode::OK, pages::passkeys(&op, &keys, hint.as_deref(), !holder(&op).may_manage(&keys), None)))
}

/// The operator of a form posted from its own session (CSRF token and same site), and the form.
async fn signed_in_form(
    state: &AppState,
    req: Request,
) -> Result<(Operator, std::collections::HashMap<String, String>), Response> {
    let (headers, form) = read_form(state, req)
        .await
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "invalid_request", "the form could not be read"))?;
    let op = match session::current(state, &headers).await {
        Ok(Some(op)) => op,
        Ok(None) => return Err(refuse(StatusCode::UNAUTHORIZED, "invalid_token", "sign in first")),
        Err(e) => return Err(unavailable(&e)),
    };
    if cross_site(&headers) || !op.csrf_matches(form.get("csrf").map(String::as_str)) {
        return Err(refuse(StatusCode::FORBIDDEN, "forbidden", "the form did not come from this session"));
    }
    Ok((op, form))
}

/// Step one of enrolment: the options for `navigator.credentials.create()`.
pub(super) async fn enrol_options(State(state): State<AppState>, req: Request) -> Response {
    let (op, form) = match signed_in_form(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let keys = match ceremony::of_client(state.store(), op.claims.sub.as_str()).await {
        Ok(k) => k,
        Err(e) => return unavailable(&e),
    };
    if !holder(&op).may_manage(&keys) {
        return refuse(StatusCode::FORBIDDEN, "forbidden", "sign in with your passkey to add another");
    }
    let now = state.now();
    if keys.is_empty() {
        match ceremony::enrolment_code_valid(state.store(), &op.claims.sub, form.get("code").map(String::as_str), now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "your first passkey needs an enrolment code from an administrator (tessera clients passkey-enrolment)",
                );
            }
            Err(e) => return unavailable(&e),
        }
    }
    let challenge = match ceremony::enrolment_challenge(state.store(), holder(&op), now).await {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    Json(json!({
        "challenge": challenge,
        "rp_id": state.config().passkey_rp_id,
        "user_id": b64::encode(op.claims.sub.as_bytes()),
        "user_name": format!("{} ({})", op.client.name, op.client.tenant.as_str()),
        "exclude": keys.iter().map(|k| k.credential_id.clone()).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct EnrolAnswer {
    csrf: String,
    challenge: String,
    credential_id: String,
    client_data: String,
    authenticator_data: String,
    public_key: String,
    alg: i64,
    name: String,
    #[serde(default)]
    code: Option<String>,
}

/// Step two of enrolment: the browser's answer, checked and stored.
pub(super) async fn enrol(State(state): State<AppState>, req: Request) -> Response {
    let (headers, a): (_, EnrolAnswer) = match json_body(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = match session::current(&state, &headers).await {
        Ok(Some(op)) => op,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "invalid_token", "sign in first"),
        Err(e) => return unavailable(&e),
    };
    if cross_site(&headers) || !op.csrf_matches(Some(&a.csrf)) {
        return refuse(StatusCode::FORBIDDEN, "forbidden", "the answer did not come from this session");
    }
    let name = a.name.trim();
    if name.is_empty() || name.chars().count() > 60 || name.chars().any(char::is_control) {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "name the passkey (at most 60 characters)");
    }
    let decode = |s: &str| b64::decode(s).ok();
    let (Some(credential_id), Some(client_data_json), Some(authenticator_data), Some(public_key)) =
        (decode(&a.credential_id), decode(&a.client_data), decode(&a.authenticator_data), decode(&a.public_key))
    else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "the answer is not base64url");
    };
    let enrolment = Enrolment {
        challenge: &a.challenge,
        registration: Registration { credential_id, client_data_json, authenticator_data, public_key, alg: a.alg },
        credential_id: &a.credential_id,
        name,
        code: a.code.as_deref(),
    };
    let rp = state.config().relying_party();
    let result = ceremony::enrol(state.store(), &rp, holder(&op), enrolment, state.now()).await;
    match result {
        Ok(Ok(row)) => Json(json!({ "enrolled": row.credential_id })).into_response(),
        Ok(Err(why)) => {
            request_log!(INFO, client_id = %op.claims.sub, %why, "passkey enrolment refused");
            refuse(StatusCode::BAD_REQUEST, "invalid_request", why)
        }
        Err(e) => unavailable(&e),
    }
}

pub(super) async fn remove(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> PageResult {
    let (headers, form) = read_form(&state, req).await?;
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some("/console/passkeys")));
    };
    if cross_site(&headers) || !op.csrf_matches(form.get("csrf").map(String::as_str)) {
        return Err(Failure::Forged);
    }
    if let Err(why) = ceremony::remove(state.store(), holder(&op), &id, state.now()).await? {
        return Err(Failure::BadRequest(why));
    }
    Ok(see_other("/console/passkeys"))
}

// -------------------------------------------------------------------------------------------
// Sign-in with a passkey

/// Options for a sign-in assertion (discoverable credentials: no list is given out).
pub(super) async fn sign_in_options(State(state): State<AppState>, req: Request) -> Response {
    let peer = super::peer_of(&req);
    if let Some(limiter) = state.passkey_challenges()
        && let Err(wait) = limiter.check(&peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()))
    {
        let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many sign-in attempts; retry later");
        r.headers_mut().insert(header::RETRY_AFTER, (wait.as_secs() + 1).into());
        return r;
    }
    let challenge = match ceremony::sign_in_challenge(state.store(), state.now()).await {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    Json(json!({ "challenge": challenge, "rp_id": state.config().passkey_rp_id })).into_response()
}

#[derive(Deserialize)]
pub(super) struct SignInAnswer {
    challenge: String,
    #[serde(flatten)]
    assertion: Assertion,
    next: Option<String>,
}

/// The sign-in assertion: checked against the enrolled passkey, then a session starts.
pub(super) async fn sign_in(State(state): State<AppState>, req: Request) -> Response {
    let peer = super::peer_of(&req);
    let (headers, a): (_, SignInAnswer) = match json_body(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if cross_site(&headers) {
        return refuse(StatusCode::FORBIDDEN, "forbidden", "a cross-site sign-in");
    }
    let keys = crate::server::ratelimit::auth_keys(&a.assertion.credential_id, peer);
    let keys = [keys[0].as_str(), keys[1].as_str()];
    if let Some(wait) = state.auth_failures().blocked(&keys) {
        let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many failed sign-ins; retry later");
        r.headers_mut().insert(header::RETRY_AFTER, (wait.as_secs() + 1).into());
        return r;
    }
    let now = state.now();
    let rp = state.config().relying_party();
    let (client, secret_hash) = match ceremony::sign_in(state.store(), &rp, &a.challenge, &a.assertion, now).await {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => {
            state.auth_failures().record_failure(&keys);
            request_log!(INFO, %why, "console passkey sign-in refused");
            return refuse(StatusCode::UNAUTHORIZED, "invalid_client", "the passkey did not sign you in");
        }
        Err(e) => return unavailable(&e),
    };
    let cookie = match session::start(&state, &client, &secret_hash, "passkey", now).await {
        Ok(c) => c,
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again"),
    };
    let next = a.next.as_deref().filter(|n| super::safe_next(n)).unwrap_or("/console").to_owned();
    let mut res = Json(json!({ "signed_in": true, "next": next })).into_response();
    res.headers_mut().insert(header::SET_COOKIE, cookie);
    res
}

// -------------------------------------------------------------------------------------------
// Decisions

/// Options for a decision's assertion: the challenge commits to the approval id, its
/// `params_digest` and the verdict.
pub(super) async fn decision_options(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let (op, form) = match signed_in_form(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let decision = match form.get("decision").map(String::as_str) {
        Some(d @ ("approve" | "deny" | "break_glass")) => d.to_owned(),
        _ => return refuse(StatusCode::BAD_REQUEST, "invalid_request", "decision must be approve or deny"),
    };
    let now = state.now();
    let row = match crate::approvals::read(state.store(), &op.claims, &id, now).await {
        Ok(r) => r,
        Err(crate::approvals::ApprovalError::Store(e)) => return unavailable(&e),
        Err(_) => return refuse(StatusCode::NOT_FOUND, "not_found", "no such approval"),
    };
    let keys = match ceremony::of_client(state.store(), op.claims.sub.as_str()).await {
        Ok(k) => k,
        Err(e) => return unavailable(&e),
    };
    if keys.is_empty() {
        return refuse(StatusCode::FORBIDDEN, "passkey_required", "enrol a passkey first (Passkeys, in the menu)");
    }
    let challenge =
        ceremony::decision_challenge(state.store(), holder(&op), &row.approval_id, &row.params_digest, &decision, now)
            .await;
    let challenge = match challenge {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    Json(json!({
        "challenge": challenge,
        "rp_id": state.config().passkey_rp_id,
        "allow": keys.iter().map(|k| k.credential_id.clone()).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Checks the passkey fields of a decision form for `op` deciding `verdict` on `row`: the
/// challenge is taken (once), must be this session's for exactly this approval, digest and
/// verdict, and the assertion must verify with one of the operator's passkeys. Returns the
/// nonce and the assertion for the audit record.
pub(super) async fn check_decision(
    state: &AppState,
    op: &Operator,
    row: &crate::approvals::ApprovalRow,
    verdict: &str,
    form: &std::collections::HashMap<String, String>,
    now: i64,
) -> Result<Result<(String, Assertion), String>, StoreError> {
    let field = |n: &str| form.get(n).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let (Some(challenge), Some(credential_id), Some(client_data), Some(authenticator_data), Some(signature)) = (
        field("challenge"),
        field("credential_id"),
        field("client_data"),
        field("authenticator_data"),
        field("signature"),
    ) else {
        return Ok(Err(format!("decisions on {} need your passkey", row.action)));
    };
    let assertion = Assertion { credential_id, client_data, authenticator_data, signature };
    let decided = Decided { approval_id: &row.approval_id, params_digest: &row.params_digest, verdict };
    let rp = state.config().relying_party();
    let nonce = ceremony::check_decision(state.store(), &rp, holder(op), decided, &challenge, &assertion, now).await?;
    Ok(nonce.map(|n| (n, assertion)))
}

/// The script of the ceremonies, served as a file (the console's policy allows no inline
/// script).
pub(super) const SCRIPT: &str = include_str!("passkey.js");

pub(super) async fn script() -> Response {
    let mut res = SCRIPT.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    res
}
