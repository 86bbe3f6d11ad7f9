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
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;

use super::session::{self, Operator};
use super::{AppState, Failure, PageResult, cross_site, page, pages, read_form, see_other, to_sign_in};
use crate::audit::{self, AuditEvent};
use crate::domain::CallerKind;
use crate::passkeys::{self as webauthn, Assertion, CredentialKey, Registration};
use crate::store::StoreError;
use crate::store::passkeys::{self as rows, ChallengeRow, PasskeyRow};
use crate::token::b64;

/// How long a ceremony's challenge can be answered, seconds.
const CHALLENGE_SECS: i64 = 120;
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

fn random(n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(b)
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

/// The key of a stored passkey.
fn key_of(row: &PasskeyRow) -> Option<CredentialKey> {
    Some(CredentialKey { alg: row.alg, raw: b64::decode(&row.public_key).ok()? })
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

/// Whether this session may add or remove passkeys: an operator who has one must be signed in
/// with one, so a secret alone cannot replace the operator's authenticator.
fn may_manage(op: &Operator, keys: &[PasskeyRow]) -> bool {
    keys.is_empty() || op.method == "passkey"
}

/// The stored key of an enrolment code: base64url SHA-256 of the code, never the code.
pub fn enrolment_key(code: &str) -> String {
    b64::encode(ring::digest::digest(&ring::digest::SHA256, code.trim().as_bytes()).as_ref())
}

/// An operator's first passkey needs an enrolment code from an administrator
/// (`tessera clients passkey-enrolment`), so that an operator secret alone, in whatever hands,
/// can never enrol an authenticator of its own and then approve with it. `take` consumes it.
async fn enrolment_code_ok(
    conn: &mut sqlx::AnyConnection,
    op: &Operator,
    code: Option<&str>,
    take: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty() && c.len() <= 128) else { return Ok(false) };
    let key = enrolment_key(code);
    if take {
        let row = rows::take_challenge(conn, &key, "enrol_code", now).await?;
        return Ok(row.is_some_and(|r| r.client_id.as_deref() == Some(op.claims.sub.as_str())));
    }
    let row = rows::peek_challenge(conn, &key, "enrol_code", now).await?;
    Ok(row.is_some_and(|r| r.client_id.as_deref() == Some(op.claims.sub.as_str())))
}

pub(super) async fn page_(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some("/console/passkeys")));
    };
    let keys = rows::of_client(state.store(), op.claims.sub.as_str()).await?;
    let hint = ip_origin_hint(&state, &headers);
    Ok(page(StatusCode::OK, pages::passkeys(&op, &keys, hint.as_deref(), !may_manage(&op, &keys), None)))
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
    let keys = match rows::of_client(state.store(), op.claims.sub.as_str()).await {
        Ok(k) => k,
        Err(e) => return unavailable(&e),
    };
    if !may_manage(&op, &keys) {
        return refuse(StatusCode::FORBIDDEN, "forbidden", "sign in with your passkey to add another");
    }
    if keys.is_empty() {
        let ok = match state.store().pool().acquire().await {
            Ok(mut conn) => {
                enrolment_code_ok(&mut conn, &op, form.get("code").map(String::as_str), false, state.now()).await
            }
            Err(e) => Err(e.into()),
        };
        match ok {
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
    let Some(challenge) = random(32) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no randomness");
    };
    let now = state.now();
    let row = ChallengeRow {
        challenge: b64::encode(&challenge),
        purpose: "enrol".into(),
        client_id: Some(op.claims.sub.clone()),
        session_hash: Some(op.session_hash.clone()),
        expires_at: now + CHALLENGE_SECS,
        ..ChallengeRow::default()
    };
    if let Err(e) = rows::insert_challenge(state.store(), &row, now).await {
        return unavailable(&e);
    }
    Json(json!({
        "challenge": row.challenge,
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
    let now = state.now();
    let store = state.store();
    let result: Result<Result<PasskeyRow, String>, StoreError> = async {
        let mut tx = store.begin_write().await?;
        let Some(ch) = rows::take_challenge(&mut tx, &a.challenge, "enrol", now).await? else {
            return Ok(Err("the challenge is unknown, used or expired; start again".to_owned()));
        };
        if ch.client_id.as_deref() != Some(op.claims.sub.as_str()) || ch.session_hash.as_deref() != Some(&op.session_hash)
        {
            return Ok(Err("the challenge was issued to another session".to_owned()));
        }
        let keys = rows::of_client(store, op.claims.sub.as_str()).await?;
        if !may_manage(&op, &keys) {
            return Ok(Err("sign in with your passkey to add another".to_owned()));
        }
        if keys.is_empty() && !enrolment_code_ok(&mut tx, &op, a.code.as_deref(), true, now).await? {
            return Ok(Err("the enrolment code is unknown, used, expired or another operator's".to_owned()));
        }
        let reg = Registration { credential_id, client_data_json, authenticator_data, public_key, alg: a.alg };
        let challenge = b64::decode(&ch.challenge).unwrap_or_default();
        let (key, count) = match webauthn::verify_registration(&state.config().relying_party(), &reg, &challenge) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if rows::get(store, &a.credential_id).await?.is_some() {
            return Ok(Err("this passkey is enrolled already".to_owned()));
        }
        let row = PasskeyRow {
            credential_id: a.credential_id.clone(),
            client_id: op.claims.sub.clone(),
            alg: key.alg,
            public_key: b64::encode(&key.raw),
            sign_count: i64::from(count),
            name: name.to_owned(),
            created_at: now,
            last_used_at: None,
            removed_at: None,
        };
        rows::insert(&mut tx, &row).await?;
        let event = AuditEvent::new(
            "passkey.enrolled",
            op.claims.sub.as_str(),
            &op.claims.tenant,
            op.claims.sub.as_str(),
            json!({ "credential_id": row.credential_id, "alg": row.alg, "public_key": row.public_key, "name": row.name }),
        );
        audit::append(&mut tx, store.backend(), &[event], now).await?;
        tx.commit().await?;
        Ok(Ok(row))
    }
    .await;
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
    let keys = rows::of_client(state.store(), op.claims.sub.as_str()).await?;
    if !may_manage(&op, &keys) {
        return Err(Failure::BadRequest("Sign in with your passkey to remove one".into()));
    }
    let now = state.now();
    let store = state.store();
    let mut tx = store.begin_write().await?;
    if rows::remove(&mut tx, op.claims.sub.as_str(), Some(&id), now).await? == 1 {
        let event = AuditEvent::new(
            "passkey.removed",
            op.claims.sub.as_str(),
            &op.claims.tenant,
            op.claims.sub.as_str(),
            json!({ "credential_id": id }),
        );
        audit::append(&mut tx, store.backend(), &[event], now).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
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
    let Some(challenge) = random(32) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no randomness");
    };
    let now = state.now();
    let row = ChallengeRow {
        challenge: b64::encode(&challenge),
        purpose: "sign_in".into(),
        expires_at: now + CHALLENGE_SECS,
        ..ChallengeRow::default()
    };
    if let Err(e) = rows::insert_challenge(state.store(), &row, now).await {
        return unavailable(&e);
    }
    Json(json!({ "challenge": row.challenge, "rp_id": state.config().passkey_rp_id })).into_response()
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
    let store = state.store();
    let outcome: Result<Result<crate::store::clients::ClientRecord, String>, StoreError> = async {
        let mut tx = store.begin_write().await?;
        if rows::take_challenge(&mut tx, &a.challenge, "sign_in", now).await?.is_none() {
            return Ok(Err("the challenge is unknown, used or expired".to_owned()));
        }
        let Some(pk) = rows::get(store, &a.assertion.credential_id).await?.filter(|p| p.removed_at.is_none()) else {
            return Ok(Err("no such passkey".to_owned()));
        };
        let client = crate::store::clients::get(store, &pk.client_id)
            .await?
            .filter(|c| !c.disabled && c.kind == CallerKind::Operator);
        let Some(client) = client else { return Ok(Err("the passkey's operator is disabled".to_owned())) };
        let challenge = b64::decode(&a.challenge).unwrap_or_default();
        let Some(key) = key_of(&pk) else { return Ok(Err("the stored key is unreadable".to_owned())) };
        let stored = u32::try_from(pk.sign_count).unwrap_or(u32::MAX);
        let count =
            match webauthn::verify_assertion(&state.config().relying_party(), &a.assertion, &challenge, &key, stored) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e.to_string())),
            };
        if !rows::advance(&mut tx, &pk.credential_id, pk.sign_count, i64::from(count), now).await? {
            return Ok(Err("the passkey was used concurrently".to_owned()));
        }
        tx.commit().await?;
        Ok(Ok(client))
    }
    .await;
    let client = match outcome {
        Ok(Ok(c)) => c,
        Ok(Err(why)) => {
            state.auth_failures().record_failure(&keys);
            request_log!(INFO, %why, "console passkey sign-in refused");
            return refuse(StatusCode::UNAUTHORIZED, "invalid_client", "the passkey did not sign you in");
        }
        Err(e) => return unavailable(&e),
    };
    let secret_hash = match crate::store::clients::get_with_hash(store, client.client_id.as_str()).await {
        Ok(Some((_, h))) => h,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "invalid_client", "the passkey did not sign you in"),
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
        Some(d @ ("approve" | "deny")) => d.to_owned(),
        _ => return refuse(StatusCode::BAD_REQUEST, "invalid_request", "decision must be approve or deny"),
    };
    let now = state.now();
    let row = match crate::approvals::read(state.store(), &op.claims, &id, now).await {
        Ok(r) => r,
        Err(crate::approvals::ApprovalError::Store(e)) => return unavailable(&e),
        Err(_) => return refuse(StatusCode::NOT_FOUND, "not_found", "no such approval"),
    };
    let keys = match rows::of_client(state.store(), op.claims.sub.as_str()).await {
        Ok(k) => k,
        Err(e) => return unavailable(&e),
    };
    if keys.is_empty() {
        return refuse(StatusCode::FORBIDDEN, "passkey_required", "enrol a passkey first (Passkeys, in the menu)");
    }
    let Some(nonce) = random(16).map(|n| b64::encode(&n)) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "no randomness");
    };
    let challenge = webauthn::decision_challenge(&row.approval_id, &row.params_digest, &decision, &nonce);
    let ch = ChallengeRow {
        challenge: b64::encode(&challenge),
        purpose: "decide".into(),
        client_id: Some(op.claims.sub.clone()),
        session_hash: Some(op.session_hash.clone()),
        approval_id: Some(row.approval_id.clone()),
        decision: Some(decision),
        params_digest: Some(row.params_digest.clone()),
        nonce: Some(nonce),
        expires_at: now + CHALLENGE_SECS,
    };
    if let Err(e) = rows::insert_challenge(state.store(), &ch, now).await {
        return unavailable(&e);
    }
    Json(json!({
        "challenge": ch.challenge,
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
    row: &crate::store::approvals::ApprovalRow,
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
    let store = state.store();
    let mut tx = store.begin_write().await?;
    let Some(ch) = rows::take_challenge(&mut tx, &challenge, "decide", now).await? else {
        return Ok(Err("the passkey challenge is unknown, used or expired: start the decision again".into()));
    };
    let nonce = ch.nonce.clone().unwrap_or_default();
    let expected = webauthn::decision_challenge(&row.approval_id, &row.params_digest, verdict, &nonce);
    let bound = ch.client_id.as_deref() == Some(op.claims.sub.as_str())
        && ch.session_hash.as_deref() == Some(op.session_hash.as_str())
        && ch.approval_id.as_deref() == Some(row.approval_id.as_str())
        && ch.decision.as_deref() == Some(verdict)
        && ch.params_digest.as_deref() == Some(row.params_digest.as_str())
        && ch.challenge == b64::encode(&expected);
    if !bound {
        return Ok(Err("the passkey signed another decision".into()));
    }
    let Some(pk) = rows::get(store, &assertion.credential_id)
        .await?
        .filter(|p| p.removed_at.is_none() && p.client_id == op.claims.sub)
    else {
        return Ok(Err("that passkey is not one of yours".into()));
    };
    let Some(key) = key_of(&pk) else { return Ok(Err("the stored key is unreadable".into())) };
    let stored = u32::try_from(pk.sign_count).unwrap_or(u32::MAX);
    let count = match webauthn::verify_assertion(&state.config().relying_party(), &assertion, &expected, &key, stored) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if !rows::advance(&mut tx, &pk.credential_id, pk.sign_count, i64::from(count), now).await? {
        return Ok(Err("the passkey was used concurrently".into()));
    }
    tx.commit().await?;
    Ok(Ok((nonce, assertion)))
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
