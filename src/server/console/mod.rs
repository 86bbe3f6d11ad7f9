//! The operator console: server-rendered pages under `/console` where on-call operators see
//! and decide approval requests.
//!
//! - Sign-in takes an operator client's `client_id` and `client_secret`, through the same
//!   constant-work check and the same failure limiter as `/oauth/token`; any other kind of
//!   client gets exactly the refusal a wrong secret gets. See [`session`].
//! - Every read and every decision goes through the approval functions the API uses
//!   (`crate::approvals::{list, read, decide}`) as an `AccessClaims` identity built from the
//!   operator's client record, so the console cannot decide anything the API would refuse.
//! - Every POST carries the session's CSRF token, compared in constant time; browsers'
//!   cross-site POSTs are refused before that (`Sec-Fetch-Site`).
//! - Pages carry a strict Content-Security-Policy, `X-Frame-Options: DENY` and
//!   `Cache-Control: no-store`; the stylesheet is the only asset, served here.

mod pages;
mod passkeys;

mod session;

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use maud::Markup;
use ring::digest::{SHA256, digest};

use self::pages::{CanDecide, ClientName, Names, SignInNote};
use super::AppState;
use crate::approvals::HistoryFilter;
use crate::approvals::{self, ApprovalError, Verdict};
use crate::approvals::{self as approval_rows, ApprovalRow, Status};
use crate::clients as client_rows;
use crate::clients::{self, ClientSecret};
use crate::domain::CallerKind;
use crate::store::StoreError;
use crate::token::{AccessClaims, b64};

/// The stylesheet, compiled in.
const CSS: &str = include_str!("console.css");
/// The icon, compiled in.
const FAVICON: &str = include_str!("favicon.svg");

/// The first 12 hex digits of the stylesheet's SHA-256: its URL changes when it does.
static CSS_VERSION: LazyLock<String> =
    LazyLock::new(|| digest(&SHA256, CSS.as_bytes()).as_ref().iter().take(6).map(|b| format!("{b:02x}")).collect());

/// The Content-Security-Policy of every console response: nothing from elsewhere, no
/// framing, forms post only here.
pub const CSP: &str = "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// How many pending requests the list shows at once.
const PENDING_PAGE: i64 = 100;
/// How many rows a history page shows.
const HISTORY_PAGE: i64 = 50;
/// Longest client id or secret considered at sign-in.
const MAX_CREDENTIAL_LEN: usize = 256;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/history", get(history))
        .route("/console/approvals/{id}", get(detail))
        .route("/console/approvals/{id}/decision", post(decision))
        .route("/console/approvals/{id}/audit", get(audit_trail))
        .route("/console/approvals/{id}/review", post(review))
        .route("/console/review", get(to_review))
        .route("/console/agents", get(agents))
        .route("/console/approvals/{id}/passkey", post(passkeys::decision_options))
        .route("/console/passkeys", get(passkeys::page_).post(passkeys::enrol))
        .route("/console/passkeys/options", post(passkeys::enrol_options))
        .route("/console/passkeys/{id}/remove", post(passkeys::remove))
        .route("/console/sign-in/passkey/options", post(passkeys::sign_in_options))
        .route("/console/sign-in/passkey", post(passkeys::sign_in))
        .route("/console/static/passkey.js", get(passkeys::script))
        .route("/console/static/console.css", get(css))
        .route("/console/static/favicon.svg", get(favicon))
        .route("/console/", get(|| async { see_other("/console") }))
        .route("/console/{*rest}", any(not_found))
        .layer(middleware::from_fn(security_headers))
}

/// Headers on every console response. Pages are never stored by caches; the static assets
/// set their own long cache lifetime.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// A console failure, answered with an HTML page that says what happened and what was not.
#[derive(Debug)]
enum Failure {
    /// 400: the form was malformed.
    BadRequest(String),
    /// 403: the form did not come from this session (CSRF), or from another site.
    Forged,
    /// The approval functions refused.
    Approval(ApprovalError),
    /// 503: the database failed.
    Unavailable(String),
    /// 500.
    Internal,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Unavailable(e.to_string())
    }
}

impl From<ApprovalError> for Failure {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Store(e) => Failure::Unavailable(e.to_string()),
            e => Failure::Approval(e),
        }
    }
}

impl From<super::ApiError> for Failure {
    fn from(e: super::ApiError) -> Self {
        if e.status() == StatusCode::SERVICE_UNAVAILABLE {
            Failure::Unavailable(e.code().into())
        } else {
            Failure::Internal
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let back = Some(("/console", "Back to the pending list"));
        let (status, title, text) = match self {
            Failure::BadRequest(m) => {
                (StatusCode::BAD_REQUEST, "That did not work", format!("{m}. Nothing was changed."))
            }
            Failure::Forged => (
                StatusCode::FORBIDDEN,
                "Refused: the form did not come from your session",
                "The form was missing its security token, or the token belongs to another session (for example \
                 after you signed out and in again). Nothing was changed. Go back, reload the page and try again."
                    .to_owned(),
            ),
            Failure::Approval(e) => {
                let (status, title) = match &e {
                    ApprovalError::NotFound => (StatusCode::NOT_FOUND, "No such approval"),
                    ApprovalError::Conflict(_) => (StatusCode::CONFLICT, "Already decided"),
                    ApprovalError::Expired(_) => (StatusCode::GONE, "Expired"),
                    ApprovalError::Invalid(_) => (StatusCode::BAD_REQUEST, "That did not work"),
                    ApprovalError::Signing => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong"),
                    _ => (StatusCode::FORBIDDEN, "Not allowed"),
                };
                let text = match &e {
                    ApprovalError::NotFound => {
                        "There is no approval with this ID that you may see. Nothing was changed.".to_owned()
                    }
                    ApprovalError::Signing => "The broker could not sign. Nothing was changed.".to_owned(),
                    e => format!("Nothing was changed: {e}."),
                };
                (status, title, text)
            }
            Failure::Unavailable(cause) => {
                request_log!(ERROR, %cause, "console request failed: dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The broker is unavailable",
                    "The broker cannot reach its database right now. Nothing was changed. Try again in a minute."
                        .to_owned(),
                )
            }
            Failure::Internal => {
                request_log!(ERROR, "console request failed: internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "Nothing was changed.".to_owned())
            }
        };
        page(status, pages::message(None, title, &text, back))
    }
}

type PageResult = Result<Response, Failure>;

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn see_other(location: &str) -> Response {
    match HeaderValue::try_from(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, HeaderValue::from_static("/console"))]).into_response(),
    }
}

/// Where to send someone with no live session: the sign-in page, remembering where they were
/// going, and dropping a stale cookie.
fn to_sign_in(state: &AppState, headers: &HeaderMap, next: Option<&str>) -> Response {
    let stale = session::has_cookie(headers);
    let mut query = Vec::new();
    if let Some(n) = next.filter(|n| safe_next(n) && *n != "/console") {
        query.push(format!("next={}", percent_encoding::utf8_percent_encode(n, percent_encoding::NON_ALPHANUMERIC)));
    }
    if stale {
        query.push("ended=1".to_owned());
    }
    let location =
        if query.is_empty() { "/console/sign-in".to_owned() } else { format!("/console/sign-in?{}", query.join("&")) };
    let mut res = see_other(&location);
    if stale && let Ok(c) = session::clear_cookie(state) {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

/// A place inside the console to return to after sign-in: a console path, nothing else.
fn safe_next(next: &str) -> bool {
    (next == "/console" || next.starts_with("/console/") || next.starts_with("/console?"))
        && !next.starts_with("/console/sign-")
        && next.len() <= 200
        && next.bytes().all(|c| c.is_ascii_alphanumeric() || b"/_-.?=&".contains(&c))
        && !next.contains("//")
        && !next.contains("..")
}

/// Whether a browser says the request came from another site. Browsers send
/// `Sec-Fetch-Site` on every request; a value other than `same-origin` (or `none`, typed by
/// the user) means another page made this one. Non-browser clients send none.
fn cross_site(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        None => false,
        Some(v) => !(v.eq_ignore_ascii_case("same-origin") || v.eq_ignore_ascii_case("none")),
    }
}

/// A form body: urlencoded, bounded, no field twice.
async fn read_form(state: &AppState, req: Request) -> Result<(HeaderMap, HashMap<String, String>), Failure> {
    let (parts, body) = req.into_parts();
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Failure::BadRequest("The form was not sent as a form".into()));
    }
    let limit = state.config().max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| Failure::BadRequest("The form was too large".into()))?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&bytes).map_err(|_| Failure::BadRequest("The form could not be read".into()))?;
    let mut map = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if map.insert(k, v).is_some() {
            return Err(Failure::BadRequest("The form repeated a field".into()));
        }
    }
    Ok((parts.headers, map))
}

fn peer_of(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// The names of the clients `ids` that belong to `tenant`.
async fn names_of(state: &AppState, tenant: &str, ids: impl IntoIterator<Item = String>) -> Result<Names, StoreError> {
    let mut out = Names::new();
    let unique: HashSet<String> = ids.into_iter().collect();
    for id in unique {
        if let Some(c) = client_rows::get(state.store(), &id).await?
            && c.tenant.as_str() == tenant
        {
            out.insert(id, ClientName { name: c.name.clone(), kind: c.kind });
        }
    }
    Ok(out)
}

/// Everyone an approval names: its requester, the clients that acted for it, its deciders.
fn people(row: &ApprovalRow) -> Vec<String> {
    std::iter::once(row.requester.clone())
        .chain(row.actors())
        .chain(row.decisions.iter().map(|d| d.operator.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Pages

async fn home(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, None));
    };
    let now = state.now();
    let mut rows = approvals::list(state.store(), &op.claims, Status::Pending, None, PENDING_PAGE + 1, now).await?;
    let more = rows.len() as i64 > PENDING_PAGE;
    rows.truncate(PENDING_PAGE as usize);
    // The list sweeps expiry first, but a request may pass its deadline between the two.
    rows.retain(|r| r.effective_status(now) == Status::Pending);
    // Awaiting me only where my decision would count (design §19).
    let policy = &state.config().policy;
    let mut mine = Vec::with_capacity(rows.len());
    for r in rows {
        if approvals::standing(state.store(), policy, &r, &op.claims.sub, now).await?.may_decide {
            mine.push(r);
        }
    }
    let names = names_of(&state, &op.claims.tenant, mine.iter().flat_map(people)).await?;
    let to_review = approvals::list_to_review(state.store(), &op.claims, None, 100).await?.len();
    Ok(page(StatusCode::OK, pages::pending(&op, &mine, more, &names, now, to_review)))
}

#[derive(Debug, serde::Deserialize)]
struct SignInQuery {
    next: Option<String>,
    signed_out: Option<String>,
    ended: Option<String>,
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> PageResult {
    let q: SignInQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or(SignInQuery {
        next: None,
        signed_out: None,
        ended: None,
    });
    let next = q.next.as_deref().filter(|n| safe_next(n));
    if session::current(&state, &headers).await?.is_some() {
        return Ok(see_other(next.unwrap_or("/console")));
    }
    let note = if q.signed_out.is_some() {
        SignInNote::SignedOut
    } else if q.ended.is_some() {
        SignInNote::Ended
    } else {
        SignInNote::None
    };
    let hint = passkeys::ip_origin_hint(&state, &headers);
    Ok(page(StatusCode::OK, pages::sign_in(note, next, hint.as_deref())))
}

/// The one answer to credentials that do not sign anyone in, whatever the reason.
fn sign_in_refused(next: Option<&str>) -> Response {
    page(StatusCode::UNAUTHORIZED, pages::sign_in(SignInNote::Failed, next, None))
}

async fn sign_in(State(state): State<AppState>, req: Request) -> PageResult {
    let peer = peer_of(&req);
    let (headers, mut form) = read_form(&state, req).await?;
    if cross_site(&headers) {
        return Err(Failure::Forged);
    }
    // The secret leaves the form map at once, into a type that zeroes it and never prints it.
    let secret = ClientSecret::new(form.remove("client_secret").unwrap_or_default());
    let next = form.get("next").map(String::as_str).filter(|n| safe_next(n));
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("").trim().to_owned();

    // The same keys as the token endpoint: failures there and here count together.
    let keys = crate::server::ratelimit::auth_keys(&client_id, peer);
    let keys = [keys[0].as_str(), keys[1].as_str()];
    if let Some(wait) = state.auth_failures().blocked(&keys) {
        let secs = wait.as_secs().max(1);
        let mut res = page(
            StatusCode::TOO_MANY_REQUESTS,
            pages::message(
                None,
                "Too many failed sign-ins",
                &format!(
                    "Sign-in is paused for this client ID from this address, or for this address, after too many failures. \
                     Try again in {secs} seconds."
                ),
                Some(("/console/sign-in", "Back to sign-in")),
            ),
        );
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(res);
    }

    let well_formed =
        !client_id.is_empty() && client_id.len() <= MAX_CREDENTIAL_LEN && secret.expose().len() <= MAX_CREDENTIAL_LEN;
    let now = state.now();
    let found = if well_formed { clients::authenticate(state.store(), &client_id, &secret, now).await? } else { None };
    // Only operators sign in, with their current secret (a session lives as long as the secret
    // it was opened with). Any other client or secret, however right, is refused with exactly
    // the answer a wrong secret gets, and counts as a failure.
    let Some((client, _)) =
        found.filter(|(c, used)| c.kind == CallerKind::Operator && *used == clients::SecretUsed::Current)
    else {
        state.auth_failures().record_failure(&keys);
        request_log!(INFO, client_id = %client_id.chars().take(64).collect::<String>(), "console sign-in refused");
        return Ok(sign_in_refused(next));
    };
    if state.config().policy.console_passkey_only
        && !crate::passkeys::ceremonies::of_client(state.store(), client.client_id.as_str()).await?.is_empty()
    {
        request_log!(INFO, client_id = %client.client_id, "console sign-in with a secret refused: this operator signs in with a passkey");
        return Ok(page(StatusCode::UNAUTHORIZED, pages::sign_in(SignInNote::PasskeyOnly, next, None)));
    }
    let cookie = session::start(&state, &client, &clients::hash_secret(secret.expose()), "secret", now).await?;
    let mut res = see_other(next.unwrap_or("/console"));
    res.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(res)
}

async fn sign_out(State(state): State<AppState>, req: Request) -> PageResult {
    let (headers, form) = read_form(&state, req).await?;
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, None));
    };
    if cross_site(&headers) || !op.csrf_matches(form.get("csrf").map(String::as_str)) {
        return Err(Failure::Forged);
    }
    session::end(&state, &op, state.now()).await?;
    let mut res = see_other("/console/sign-in?signed_out=1");
    res.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(&state)?);
    Ok(res)
}

/// What the operator `me` may do with `row` now. Only what the page offers: the decision
/// itself is checked again by `approvals::decide`.
fn can_decide(me: &AccessClaims, row: &ApprovalRow, now: i64) -> CanDecide {
    if row.requester == me.sub {
        CanDecide::OwnRequest
    } else if row.effective_status(now) != Status::Pending {
        CanDecide::NotPending
    } else if !me.has_scope("approvals:decide") {
        CanDecide::NoScope
    } else if row.decisions.iter().any(|d| d.operator == me.sub) {
        CanDecide::AlreadyDecided
    } else {
        CanDecide::Yes
    }
}

#[derive(Debug, serde::Deserialize)]
struct DetailQuery {
    decided: Option<String>,
    reviewed: Option<String>,
}

async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some(&format!("/console/approvals/{id}"))));
    };
    let now = state.now();
    let row = approvals::read(state.store(), &op.claims, &id, now).await?;
    let recent: Vec<ApprovalRow> = approval_rows::recent_by_requester(state.store(), &row.requester, 11)
        .await?
        .into_iter()
        .filter(|r| r.approval_id != row.approval_id && approvals::visible_to(r, &op.claims))
        .take(10)
        .collect();
    let names = names_of(&state, &op.claims.tenant, people(&row)).await?;
    let q: Option<DetailQuery> = serde_urlencoded::from_str(q.as_deref().unwrap_or("")).ok();
    let flash = match q.as_ref().and_then(|q| q.decided.as_deref()) {
        Some("approve") => Some("You approved this request."),
        Some("deny") => Some("You denied this request."),
        Some("break_glass") => {
            Some("You approved this request alone (break-glass). It is listed for another operator to review.")
        }
        _ => None,
    };
    let standing = approvals::standing(state.store(), &state.config().policy, &row, &op.claims.sub, now).await?;
    let mut can = can_decide(&op.claims, &row, now);
    if can == CanDecide::Yes && !standing.may_decide {
        can = CanDecide::NotPermitted;
    }
    let flash = flash.or(match q.as_ref().and_then(|q| q.reviewed.as_deref()) {
        Some(_) => Some("You acknowledged this break-glass approval."),
        None => None,
    });
    let view = pages::Detail {
        row: &row,
        names: &names,
        recent: &recent,
        can_decide: can,
        why_not: standing.why_not.as_deref(),
        may_break_glass: standing.may_break_glass && op.claims.has_scope("approvals:decide"),
        may_review: row.break_glass
            && row.reviewed.is_none()
            && op.claims.has_scope("approvals:decide")
            && !row.decisions.iter().any(|d| d.operator == op.claims.sub),
        flash,
        now,
    };
    Ok(page(StatusCode::OK, pages::detail(&op, &view)))
}

/// The Approve and Deny buttons post here. Without `confirm=yes` it shows the confirmation
/// step; with it, it decides through `crate::approvals::decide`, which checks everything
/// again (operator kind and scope, tenant, requester ≠ decider, pending, not decided twice).
async fn decision(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> PageResult {
    let (headers, form) = read_form(&state, req).await?;
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some(&format!("/console/approvals/{id}"))));
    };
    if cross_site(&headers) || !op.csrf_matches(form.get("csrf").map(String::as_str)) {
        request_log!(WARN, client_id = %op.claims.sub, "console form refused: CSRF token missing or wrong");
        return Err(Failure::Forged);
    }
    let (verdict, break_glass) = match form.get("decision").map(String::as_str) {
        Some("approve") => (Verdict::Approve, false),
        Some("deny") => (Verdict::Deny, false),
        // Break-glass is its own confirmation: a reason and the passkey's user verification.
        Some("break_glass") => (Verdict::Approve, true),
        _ => return Err(Failure::BadRequest("Choose Approve or Deny".into())),
    };
    let note = form.get("note").map(|n| n.trim().to_owned()).unwrap_or_default();
    let now = state.now();
    if !break_glass && form.get("confirm").map(String::as_str) != Some("yes") {
        let row = approvals::read(state.store(), &op.claims, &id, now).await?;
        if can_decide(&op.claims, &row, now) != CanDecide::Yes {
            return Ok(see_other(&format!("/console/approvals/{}", row.approval_id)));
        }
        let names = names_of(&state, &op.claims.tenant, people(&row)).await?;
        let ttl = state.config().policy.capability_ttl_secs;
        let passkey = state.config().policy.needs_passkey(&row.action);
        let approve = verdict == Verdict::Approve;
        return Ok(page(StatusCode::OK, pages::confirm(&op, &row, &names, approve, &note, ttl, passkey)));
    }
    let note = if note.is_empty() { None } else { Some(note) };
    let policy = &state.config().policy;
    let current = approvals::read(state.store(), &op.claims, &id, now).await?;
    let word = match (verdict, break_glass) {
        (_, true) => "break_glass",
        (Verdict::Approve, false) => "approve",
        (Verdict::Deny, false) => "deny",
    };
    let evidence = if break_glass || policy.needs_passkey(&current.action) {
        match passkeys::check_decision(&state, &op, &current, word, &form, now).await? {
            Ok(e) => Some(e),
            Err(why) => {
                request_log!(INFO, client_id = %op.claims.sub, approval_id = %current.approval_id, %why, "passkey decision refused");
                return Err(Failure::Approval(ApprovalError::PasskeyRequired(why)));
            }
        }
    } else {
        None
    };
    let proof = match &evidence {
        Some((nonce, assertion)) => approvals::Proof::Passkey { nonce, assertion },
        None => approvals::Proof::Secret,
    };
    let ruling = approvals::Ruling { verdict, note, proof, break_glass };
    let row = approvals::decide(state.store(), policy, &op.claims, &id, ruling, now).await?;
    if row.status != Status::Pending {
        state.metrics().approval(row.status);
    }
    Ok(see_other(&format!("/console/approvals/{}?decided={word}", row.approval_id)))
}

/// Another operator acknowledges a break-glass approval (design §19).
async fn review(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> PageResult {
    let (headers, form) = read_form(&state, req).await?;
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some(&format!("/console/approvals/{id}"))));
    };
    if cross_site(&headers) || !op.csrf_matches(form.get("csrf").map(String::as_str)) {
        request_log!(WARN, client_id = %op.claims.sub, "console form refused: CSRF token missing or wrong");
        return Err(Failure::Forged);
    }
    let row = approvals::review(state.store(), &op.claims, &id, state.now()).await?;
    Ok(see_other(&format!("/console/approvals/{}?reviewed=1", row.approval_id)))
}

/// Break-glass approvals awaiting another operator's acknowledgement.
async fn to_review(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some("/console/review")));
    };
    let now = state.now();
    let rows = approvals::list_to_review(state.store(), &op.claims, None, PENDING_PAGE).await?;
    let names = names_of(&state, &op.claims.tenant, rows.iter().flat_map(people)).await?;
    Ok(page(StatusCode::OK, pages::to_review(&op, &rows, &names, now)))
}

async fn audit_trail(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some(&format!("/console/approvals/{id}/audit"))));
    };
    let now = state.now();
    let row = approvals::read(state.store(), &op.claims, &id, now).await?;
    let records = crate::audit::of_subject(state.store(), &row.tenant, &row.approval_id, 500).await?;
    let names = names_of(&state, &op.claims.tenant, records.iter().map(|r| r.actor.clone())).await?;
    Ok(page(StatusCode::OK, pages::audit_trail(&op, &row, &records, &names)))
}

#[derive(Debug, Default, serde::Deserialize)]
struct HistoryQuery {
    status: Option<String>,
    action: Option<String>,
    requester: Option<String>,
    before: Option<String>,
}

fn encode_cursor(row: &ApprovalRow) -> String {
    b64::encode(format!("{}:{}", row.created_at, row.approval_id).as_bytes())
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(b64::decode(c).ok()?).ok()?;
    let (t, id) = text.split_once(':')?;
    Some((t.parse().ok()?, id.to_owned()))
}

#[derive(Debug, serde::Deserialize)]
struct AgentsQuery {
    stale: Option<String>,
}

/// Most clients the Agents page shows.
const AGENTS_PAGE: i64 = 500;

/// The tenant's clients, with owner, kind, scopes, last use and state (design §20), for
/// operators holding `clients:read`; `?stale=1`: only agents and workspaces unused for the
/// policy's `stale_after_days` (30 without one).
async fn agents(State(state): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some("/console/agents")));
    };
    let q: AgentsQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|_| Failure::BadRequest("The filter could not be read".into()))?;
    if op.claims.caller_kind != CallerKind::Operator || !op.claims.has_scope(super::clients::READ_SCOPE) {
        return Err(Failure::Approval(ApprovalError::Forbidden(format!(
            "your client lacks {}, which reading the clients takes",
            super::clients::READ_SCOPE
        ))));
    }
    let now = state.now();
    let days = state.config().policy.stale_after_days.unwrap_or(30);
    let stale = matches!(q.stale.as_deref(), Some("1" | "true" | "on"));
    let idle_before = stale.then(|| now - i64::from(days) * 86_400);
    let mut rows =
        clients::page_inventory(state.store(), &op.claims.tenant, idle_before, None, AGENTS_PAGE + 1).await?;
    let more = rows.len() as i64 > AGENTS_PAGE;
    rows.truncate(AGENTS_PAGE as usize);
    rows.sort_by(|a, b| (a.0.kind.as_str(), &a.0.name).cmp(&(b.0.kind.as_str(), &b.0.name)));
    let view = pages::AgentsView { stale, stale_days: days, policy_days: state.config().policy.stale_after_days, more };
    Ok(page(StatusCode::OK, pages::agents(&op, &view, &rows, now)))
}

async fn history(State(state): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> PageResult {
    let Some(op) = session::current(&state, &headers).await? else {
        return Ok(to_sign_in(&state, &headers, Some("/console/history")));
    };
    let q: HistoryQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|_| Failure::BadRequest("The filters could not be read".into()))?;
    let nonempty = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let status = match nonempty(&q.status) {
        None => None,
        Some(s) => Some(s.parse::<Status>().map_err(|_| Failure::BadRequest("Unknown status".into()))?),
    };
    let filter = HistoryFilter { status, action: nonempty(&q.action), requester: nonempty(&q.requester) };
    let before = match nonempty(&q.before) {
        None => None,
        Some(c) => Some(decode_cursor(&c).ok_or_else(|| Failure::BadRequest("The page link is malformed".into()))?),
    };
    // Only operators holding approvals:read see the history, as with the API's list.
    if op.claims.caller_kind != CallerKind::Operator || !op.claims.has_scope("approvals:read") {
        return Err(Failure::Approval(ApprovalError::Forbidden("your client lacks approvals:read".into())));
    }
    let now = state.now();
    approvals::sweep_expired(state.store(), now).await?;
    let ids =
        crate::approvals::history_ids(state.store(), &op.claims.tenant, &filter, before, HISTORY_PAGE + 1).await?;
    let more = ids.len() as i64 > HISTORY_PAGE;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids.iter().take(HISTORY_PAGE as usize) {
        match approvals::read(state.store(), &op.claims, id, now).await {
            Ok(r) => rows.push(r),
            Err(ApprovalError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let older = if more {
        rows.last().map(|last| {
            let mut pairs: Vec<(&str, String)> = Vec::new();
            if let Some(s) = filter.status {
                pairs.push(("status", s.as_str().to_owned()));
            }
            if let Some(a) = &filter.action {
                pairs.push(("action", a.clone()));
            }
            if let Some(r) = &filter.requester {
                pairs.push(("requester", r.clone()));
            }
            pairs.push(("before", encode_cursor(last)));
            format!("/console/history?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
        })
    } else {
        None
    };
    let requesters: Vec<(String, String, CallerKind)> = client_rows::list(state.store())
        .await?
        .into_iter()
        .filter(|c| c.tenant.as_str() == op.claims.tenant && c.kind.may_request_approvals())
        .map(|c| (c.client_id.to_string(), c.name, c.kind))
        .collect();
    let names = names_of(&state, &op.claims.tenant, rows.iter().flat_map(people)).await?;
    let view = pages::HistoryView {
        status: filter.status,
        action: filter.action.as_deref(),
        requester: filter.requester.as_deref(),
        actions: state.config().policy.gated_actions().map(str::to_owned).collect(),
        requesters,
        older,
    };
    Ok(page(StatusCode::OK, pages::history(&op, &view, &rows, &names, now)))
}

async fn not_found(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let op = session::current(&state, &headers).await?;
    Ok(page(
        StatusCode::NOT_FOUND,
        pages::message(
            op.as_ref(),
            "No such page",
            "There is nothing at this address.",
            Some(("/console", "Go to the pending list")),
        ),
    ))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_returned_to() {
        for ok in ["/console", "/console/approvals/apr_abc", "/console/history?status=denied&action=secret_write"] {
            assert!(safe_next(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/console",
            "/console//evil",
            "/consolex/../v1",
            "/consolex",
            "/console/sign-in",
            "/v1/approvals",
            "/console/<script>",
            "/console/a b",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }

    fn claims(sub: &str, scope: &str) -> AccessClaims {
        AccessClaims {
            iss: "http://127.0.0.1:8700".into(),
            sub: sub.into(),
            client_id: sub.into(),
            aud: crate::token::claims::Audience::One("core".into()),
            iat: 0,
            nbf: 0,
            exp: 100,
            jti: "console:test".into(),
            scope: scope.into(),
            tenant: "acme".into(),
            caller_kind: CallerKind::Operator,
            workspace: None,
            act: None,
            cnf: None,
        }
    }

    fn row(requester: &str) -> ApprovalRow {
        ApprovalRow {
            approval_id: "apr_AAAAAAAAAAAAAAAAAAAAAA".into(),
            tenant: "acme".into(),
            action: "secret_write".into(),
            resource: "workspaces/ws-1/secrets/K".into(),
            params_digest: "sha256:x".into(),
            summary: "{}".into(),
            reason: "r".into(),
            requester: requester.into(),
            requester_kind: CallerKind::Agent,
            status: Status::Pending,
            quorum: 2,
            requirements: vec![crate::domain::approval::Requirement { group: None, count: 2 }],
            requester_owner: None,
            break_glass: false,
            reviewed: None,
            created_at: 0,
            expires_at: 3600,
            decided_at: None,
            bypass: false,
            cap_jti: None,
            cap_iat: None,
            cap_exp: None,
            redeemed_at: None,
            redeemed_by: None,
            params: None,
            act: None,
            cnf_jkt: None,
            decisions: Vec::new(),
        }
    }

    #[test]
    fn buttons_are_offered_only_where_a_decision_could_stand() {
        let me = claims("tc_me", "approvals:read approvals:decide");
        assert_eq!(can_decide(&me, &row("tc_agent"), 10), CanDecide::Yes);
        // Never on a request the operator made, whatever else holds.
        assert_eq!(can_decide(&me, &row("tc_me"), 10), CanDecide::OwnRequest);
        assert_eq!(can_decide(&me, &row("tc_agent"), 3600), CanDecide::NotPending);
        let reader = claims("tc_me", "approvals:read");
        assert_eq!(can_decide(&reader, &row("tc_agent"), 10), CanDecide::NoScope);
        let mut voted = row("tc_agent");
        voted.decisions.push(approval_rows::Decision {
            operator: "tc_me".into(),
            decision: crate::domain::Verdict::Approve,
            note: None,
            at: 5,
            method: crate::domain::DecisionMethod::Secret,
            groups: vec![],
            break_glass: false,
        });
        assert_eq!(can_decide(&me, &voted, 10), CanDecide::AlreadyDecided);
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h));
        for (v, cross) in [("same-origin", false), ("none", false), ("same-site", true), ("cross-site", true)] {
            h.insert("sec-fetch-site", HeaderValue::from_static(v));
            assert_eq!(cross_site(&h), cross, "{v}");
        }
    }
}
