//! The console's pages, as maud templates: every value is HTML-escaped unless it is wrapped
//! in `PreEscaped`, which nothing here does with request or database data.
//!
//! Written for a tired operator on a phone: one column, large targets, states in words (never
//! colour alone), whole ids shown, and nothing loaded from outside the broker.

use std::collections::HashMap;

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::session::Operator;
use crate::approvals::{ApprovalRow, Status, Verdict};
use crate::audit::AuditRecord;
use crate::domain::CallerKind;

/// The stylesheet's URL, versioned by its content so it can be cached for a year.
pub fn css_href() -> String {
    format!("/console/static/console.css?v={}", super::CSS_VERSION.as_str())
}

/// A client as the pages name it.
#[derive(Debug, Clone)]
pub struct ClientName {
    /// Its registered name.
    pub name: String,
    /// Its kind.
    pub kind: CallerKind,
}

/// Client names by id.
pub type Names = HashMap<String, ClientName>;

/// Which tab of the navigation is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The pending list.
    Pending,
    /// The history.
    History,
    /// Break-glass approvals to review.
    Review,
    /// The operator's passkeys.
    Passkeys,
    /// The tenant's clients.
    Agents,
    /// Neither.
    Other,
}

/// The page frame: head, bar with navigation and sign-out, main.
pub fn layout(title: &str, op: Option<&Operator>, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                meta name="referrer" content="no-referrer";
                title { (title) " · Tessera console" }
                link rel="stylesheet" href=(css_href());
                link rel="icon" type="image/svg+xml" href="/console/static/favicon.svg";
                script src="/console/static/passkey.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.bar {
                    a.brand href="/console" { "Tessera" span.brand-sub { "operator console" } }
                    @if let Some(op) = op {
                        nav aria-label="Console" {
                            a href="/console" aria-current=[(nav == Nav::Pending).then_some("page")] { "Pending" }
                            a href="/console/review" aria-current=[(nav == Nav::Review).then_some("page")] { "To review" }
                            a href="/console/history" aria-current=[(nav == Nav::History).then_some("page")] { "History" }
                            a href="/console/agents" aria-current=[(nav == Nav::Agents).then_some("page")] { "Agents" }
                            a href="/console/passkeys" aria-current=[(nav == Nav::Passkeys).then_some("page")] { "Passkeys" }
                        }
                        div.who {
                            span.who-name {
                                span.visually-hidden { "Signed in as " }
                                strong { (op.client.name) }
                                " · " (op.client.tenant.as_str())
                                @if !op.client.groups.is_empty() {
                                    span.small { " · " (op.client.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ")) }
                                }
                            }
                            form.inline method="post" action="/console/sign-out" {
                                input type="hidden" name="csrf" value=(op.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// "12 min", "2 h 5 min", "3 days": a span of seconds for people.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => "less than a minute".to_owned(),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 if s % 3600 < 60 => format!("{} h", s / 3600),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ if s < 2 * 86_400 => "1 day".to_owned(),
        _ => format!("{} days", s / 86_400),
    }
}

/// "2026-11-28 20:00 UTC".
pub fn utc(t: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(t).ok().and_then(|d| d.format(&f).ok()).unwrap_or_default()
}

/// A status in words, with the class that styles it.
pub fn status_badge(status: Status) -> Markup {
    let label = match status {
        Status::Pending => "Pending",
        Status::Approved => "Approved",
        Status::Denied => "Denied",
        Status::Expired => "Expired",
        Status::Redeemed => "Redeemed",
        Status::Withdrawn => "Withdrawn",
    };
    html! { span class={ "status status-" (status.as_str()) } { (label) } }
}

/// What a gated action does, in words, for the actions the design names.
fn action_label(action: &str) -> Option<&'static str> {
    match action {
        "org_token_mint" => Some("Mint an org API token"),
        "secret_write" => Some("Write a secret"),
        "workspace_delete" => Some("Delete a workspace"),
        "workspace_deprovision" => Some("Deprovision a workspace"),
        "workspace_token_mint" => Some("Mint a workspace token"),
        _ => None,
    }
}

fn who(names: &Names, id: &str) -> Markup {
    html! {
        @match names.get(id) {
            Some(c) => { strong { (c.name) } " " span.kind { (c.kind.as_str()) } }
            None => { code { (id) } }
        }
    }
}

fn who_with_id(names: &Names, id: &str) -> Markup {
    html! {
        (who(names, id))
        @if names.contains_key(id) { br; code.small { (id) } }
    }
}

/// The quorum in words: one line per requirement when groups are named (design §19).
fn quorum_text(row: &ApprovalRow) -> String {
    let progress = row.progress();
    let got: u32 = progress.iter().map(|(_, f)| *f).sum();
    let need: u32 = progress.iter().map(|(r, _)| r.count).sum();
    let parts: Vec<String> =
        progress.iter().filter_map(|(r, f)| r.group.as_ref().map(|g| format!("{g}: {f} of {}", r.count))).collect();
    let mut text = if got >= need {
        format!("{got} of {need} approvals")
    } else {
        format!("{got} of {need} approvals · needs {} more", need - got)
    };
    if !parts.is_empty() {
        text.push_str(&format!(" ({})", parts.join(", ")));
    }
    text
}

/// The pending list.
pub fn pending(op: &Operator, rows: &[ApprovalRow], more: bool, names: &Names, now: i64, to_review: usize) -> Markup {
    let body = html! {
        div.page-head {
            h1 { "Waiting for a decision" }
            span.count aria-label="requests" { (rows.len()) @if more { "+" } }
        }
        p.lede { "Oldest first: the requests your decision counts for. Nothing here runs unless operators approve it, and the requester can never decide its own request." }
        @if to_review > 0 {
            p.notice role="status" {
                strong { (to_review) " break-glass approval" (if to_review == 1 { "" } else { "s" }) } " await another operator's review. "
                a href="/console/review" { "Review them" }
            }
        }
        @if rows.is_empty() {
            div.empty {
                p { strong { "Nothing is waiting for you." } }
                p { "New requests appear here. Reload to check again." }
                a.button.secondary href="/console" { "Reload" }
            }
        } @else {
            ol.cards {
                @for row in rows {
                    @let left = row.expires_at - now;
                    li {
                        a.card href={ "/console/approvals/" (row.approval_id) } {
                            div.card-top {
                                (status_badge(row.effective_status(now)))
                                span.action { (row.action) }
                                @if let Some(l) = action_label(&row.action) { span.action-label { (l) } }
                                span.left.urgent[left < 600] { "expires in " (span(left)) }
                            }
                            div.resource { code { (row.resource) } }
                            dl.facts.compact {
                                dt { "Requested by" } dd { (requested_by(names, row, false)) }
                                dt { "Reason" } dd.reason { (row.reason) }
                                dt { "Asked" } dd { (span(now - row.created_at)) " ago" }
                                dt { "Approvals" } dd { (quorum_text(row)) }
                                dt { "ID" } dd { code.id { (row.approval_id) } }
                            }
                            span.cta { "Review and decide" span aria-hidden="true" { " →" } }
                        }
                    }
                }
            }
            @if more { p.hint { "More requests are waiting than are shown; decide these first." } }
        }
        p.refresh { a href="/console" { "Reload the list" } }
    };
    layout("Pending", Some(op), Nav::Pending, body)
}

/// What the detail page says about an approval's state.
fn state_text(row: &ApprovalRow, names: &Names, now: i64) -> String {
    let name = |id: &str| names.get(id).map_or_else(|| id.to_owned(), |c| c.name.clone());
    let approvers: Vec<String> = row.approvers().iter().map(|a| name(a)).collect();
    match row.effective_status(now) {
        Status::Pending => {
            let progress = row.progress();
            let got: u32 = progress.iter().map(|(_, f)| *f).sum();
            let more = (i64::from(progress.iter().map(|(r, _)| r.count).sum::<u32>()) - i64::from(got)).max(1);
            format!(
                "Waiting for {more} more approval{}. Expires in {} ({}).",
                if more == 1 { "" } else { "s" },
                span(row.expires_at - now),
                utc(row.expires_at)
            )
        }
        Status::Approved => format!(
            "Approved by {}. The requester may use its one-time capability until {}.",
            if row.bypass { "install bypass".to_owned() } else { approvers.join(", ") },
            row.cap_exp.map(utc).unwrap_or_default()
        ),
        Status::Denied => {
            let by: Vec<String> =
                row.decisions.iter().filter(|d| d.decision == Verdict::Deny).map(|d| name(&d.operator)).collect();
            format!("Denied by {}. The request is over.", by.join(", "))
        }
        Status::Expired if row.cap_jti.is_some() => {
            "Approved, but the capability was not used in time. Nothing ran.".to_owned()
        }
        Status::Expired => "Nobody decided before it expired. Nothing ran.".to_owned(),
        Status::Redeemed => format!(
            "Approved by {} and used{}: the action ran once.",
            if row.bypass { "install bypass".to_owned() } else { approvers.join(", ") },
            row.redeemed_at.map(|t| format!(" at {}", utc(t))).unwrap_or_default()
        ),
        Status::Withdrawn => "The requester withdrew it. Nothing ran.".to_owned(),
    }
}

/// A secret value as the presented parameters carry it (design §11):
/// `{"$secret": {"length", "sha256"}}`, shown as its length and fingerprint.
fn secret_mark(map: &serde_json::Map<String, Value>) -> Option<Markup> {
    let fp = map.get(crate::token::presented::SECRET_MARK)?.as_object()?;
    let length = fp.get("length").and_then(Value::as_u64);
    let sha = fp.get("sha256").and_then(Value::as_str);
    Some(html! {
        span.redacted { "secret value withheld" }
        @if let Some(n) = length { " · " (n) " bytes" }
        @if let Some(fp) = sha { br; span.small { "fingerprint " } code.small { (fp) } }
    })
}

/// The requester, and when it came through a delegation, who acted for it: "A, acting for B".
fn requested_by(names: &Names, row: &ApprovalRow, with_id: bool) -> Markup {
    let actors = row.actors();
    let one = |id: &str| if with_id { who_with_id(names, id) } else { who(names, id) };
    html! {
        @for a in &actors { (one(a)) ", acting for " }
        (one(&row.requester))
    }
}

/// The presented parameters: exactly what the capability binds and core will run.
fn params_section(row: &ApprovalRow) -> Markup {
    html! {
        @match row.params.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(map))) => {
                p.hint { "Exactly these parameters, and no others, can run: the capability binds their digest, and core refuses a request whose parameters differ. Secret values are shown as their length and fingerprint; they never reach Tessera." }
                @if map.is_empty() { p { "No parameters (an empty request body)." } } @else { (table(&map, 1)) }
            }
            _ => {
                p.muted { "This request was made before parameters were kept: only the digest above binds it." }
            }
        }
    }
}

/// A summary value, readably: text as text, objects as nested tables, lists as lists.
fn value(v: &Value, depth: usize) -> Markup {
    html! {
        @match v {
            Value::String(s) => { span.val { (s) } }
            Value::Null => { span.muted { "none" } }
            Value::Bool(b) => { span.val { (if *b { "yes" } else { "no" }) } }
            Value::Number(n) => { span.val { (n.to_string()) } }
            Value::Array(items) if items.is_empty() => { span.muted { "empty list" } }
            Value::Array(items) => {
                ul.plain { @for i in items { li { (value(i, depth + 1)) } } }
            }
            Value::Object(map) => {
                @if let Some(m) = secret_mark(map) { (m) }
                @else if depth >= 4 { code.small { (Value::Object(map.clone()).to_string()) } }
                @else { (table(map, depth + 1)) }
            }
        }
    }
}

fn table(map: &serde_json::Map<String, Value>, depth: usize) -> Markup {
    html! {
        table.kv {
            tbody {
                @for (k, v) in map {
                    tr { th scope="row" { (k) } td { (value(v, depth)) } }
                }
            }
        }
    }
}

/// What the detail page may offer the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanDecide {
    /// Approve and Deny buttons.
    Yes,
    /// The operator made the request (operators cannot request, but the page guards anyway).
    OwnRequest,
    /// The operator has decided already.
    AlreadyDecided,
    /// The request is no longer pending.
    NotPending,
    /// The operator lacks `approvals:decide`.
    NoScope,
    /// The approval policy does not count this operator's decision.
    NotPermitted,
}

/// The detail page.
pub struct Detail<'a> {
    /// The approval.
    pub row: &'a ApprovalRow,
    /// Names of the requester and deciders.
    pub names: &'a Names,
    /// The requester's other recent requests, newest first.
    pub recent: &'a [ApprovalRow],
    /// Whether the operator may decide.
    pub can_decide: CanDecide,
    /// Why the approval policy keeps the operator out, if it does.
    pub why_not: Option<&'a str>,
    /// Whether the operator may approve alone (break-glass).
    pub may_break_glass: bool,
    /// Whether the operator may acknowledge this break-glass approval.
    pub may_review: bool,
    /// A decision just made by this operator, to confirm.
    pub flash: Option<&'a str>,
    /// Now.
    pub now: i64,
}

/// The detail page of one approval.
pub fn detail(op: &Operator, d: &Detail<'_>) -> Markup {
    let row = d.row;
    let now = d.now;
    let status = row.effective_status(now);
    let body = html! {
        p.back { a href="/console" { span aria-hidden="true" { "← " } "Pending list" } }
        @if let Some(f) = d.flash {
            div.notice role="status" { (f) }
        }
        div.page-head {
            h1 { span.action { (row.action) } }
            (status_badge(status))
        }
        p.resource-big {
            @if let Some(l) = action_label(&row.action) { span.action-label { (l) } " " }
            span.small { "on " } code { (row.resource) }
        }
        div class={ "banner banner-" (status.as_str()) } {
            strong { (status_badge_text(status)) } " — " (state_text(row, d.names, now))
        }

        section aria-labelledby="req-h" {
            h2 #req-h { "The request" }
            dl.facts {
                dt { "Action" } dd { code { (row.action) } }
                dt { "Resource" } dd { code { (row.resource) } }
                dt { "Requested by" } dd { (requested_by(d.names, row, true)) }
                @if let Some(owner) = &row.requester_owner {
                    dt { "Owner" } dd { (owner) span.muted { " · never counts towards it" } }
                }
                dt { "Reason" } dd.reason { (row.reason) }
                dt { "Asked" } dd { (utc(row.created_at)) span.muted { " · " (span(now - row.created_at)) " ago" } }
                @if status == Status::Pending {
                    dt { "Expires" } dd { (utc(row.expires_at)) span.muted { " · in " (span(row.expires_at - now)) } }
                }
                dt { "Approvals" } dd { (quorum_text(row)) }
                dt { "Tenant" } dd { (row.tenant) }
                @if row.bypass { dt { "Bypass" } dd { "Install bypass (audited), no operator decided" } }
                dt { "Approval ID" } dd { code.id { (row.approval_id) } }
                dt { "Parameters digest" } dd { code.digest { (row.params_digest) } }
            }
        }

        section aria-labelledby="params-h" {
            h2 #params-h { "What will run" }
            (params_section(row))
        }

        @if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&row.summary) {
            @if !map.is_empty() {
                section.unverified aria-labelledby="sum-h" {
                    h2 #sum-h { "The requester's description " span.muted { "(unverified)" } }
                    p.hint { "Written by the requester and not checked against what will run. Where it and the parameters above disagree, the parameters are what runs." }
                    (table(&map, 1))
                }
            }
        }

        @if d.can_decide == CanDecide::Yes {
            section.decide aria-labelledby="decide-h" {
                h2 #decide-h { "Your decision" }
                form method="post" action={ "/console/approvals/" (row.approval_id) "/decision" } {
                    input type="hidden" name="csrf" value=(op.csrf);
                    label for="note" { "Note " span.muted { "(optional, kept in the audit log)" } }
                    textarea #note name="note" rows="2" maxlength="1000" {}
                    div.buttons {
                        button.approve type="submit" name="decision" value="approve" { "Approve" }
                        button.deny type="submit" name="decision" value="deny" { "Deny" }
                    }
                    p.hint { "Nothing happens yet: the next screen asks you to confirm." }
                }
            }
        } @else {
            @let why = match d.can_decide {
                CanDecide::OwnRequest => "You made this request, so you cannot decide it.",
                CanDecide::AlreadyDecided => "You have decided this request already.",
                CanDecide::NoScope => "Your client may read approvals but not decide them (it lacks approvals:decide).",
                CanDecide::NotPermitted => d.why_not.unwrap_or("The approval policy does not count your decision on this request."),
                CanDecide::NotPending | CanDecide::Yes => "This request is no longer waiting for a decision.",
            };
            p.no-decide { (why) }
        }

        @if d.may_break_glass && status == Status::Pending {
            section.break-glass aria-labelledby="bg-h" {
                h2 #bg-h { "Break glass" }
                p { "You may approve this request " strong { "alone" } ", whatever the quorum. Every eligible approver is told, and the approval is listed for another operator to review. Use it only when waiting would do harm." }
                form method="post" action={ "/console/approvals/" (row.approval_id) "/decision" } {
                    input type="hidden" name="csrf" value=(op.csrf);
                    input type="hidden" name="decision" value="break_glass";
                    label for="bg-reason" { "Why it cannot wait " span.muted { "(at least 20 characters, kept in the audit log)" } }
                    textarea #bg-reason name="note" rows="2" minlength="20" maxlength="1000" required {}
                    @for f in ["challenge", "credential_id", "client_data", "authenticator_data", "signature"] {
                        input type="hidden" name=(f) value="";
                    }
                    div.buttons {
                        button #passkey-decide.deny type="button"
                            data-url={ "/console/approvals/" (row.approval_id) "/passkey" } data-decision="break_glass" {
                            "Break glass: approve alone with my passkey"
                        }
                    }
                    p.small #passkey-status role="status" {}
                }
            }
        }
        @if row.break_glass {
            section.break-glass aria-labelledby="bgr-h" {
                h2 #bgr-h { "Break-glass review" }
                @if let Some((by, at)) = &row.reviewed {
                    p { "Acknowledged by " (who(d.names, by)) " at " (utc(*at)) "." }
                } @else {
                    p { strong { "One operator approved this alone." } " It stays listed under To review until another operator acknowledges it." }
                    @if d.may_review {
                        form method="post" action={ "/console/approvals/" (row.approval_id) "/review" } {
                            input type="hidden" name="csrf" value=(op.csrf);
                            button.approve type="submit" { "Acknowledge this break-glass approval" }
                        }
                    }
                }
            }
        }

        section aria-labelledby="dec-h" {
            h2 #dec-h { "Decisions" }
            @if row.decisions.is_empty() {
                p.muted { "No operator has decided yet." }
            } @else {
                table.list {
                    thead { tr { th scope="col" { "Operator" } th scope="col" { "Decision" } th scope="col" { "Note" } th scope="col" { "When" } } }
                    tbody {
                        @for dec in &row.decisions {
                            tr {
                                td { (who(d.names, &dec.operator)) }
                                td {
                                    strong { (if dec.decision == Verdict::Approve { "Approved" } else { "Denied" }) }
                                    @if dec.break_glass { " " span.badge.badge-expired { "break-glass" } }
                                }
                                td { @if let Some(n) = &dec.note { (n) } @else { span.muted { "—" } } }
                                td { (utc(dec.at)) }
                            }
                        }
                    }
                }
            }
        }

        section aria-labelledby="hist-h" {
            h2 #hist-h { "Recent requests by this requester" }
            @if d.recent.is_empty() {
                p.muted { "None before this one." }
            } @else {
                ul.mini {
                    @for r in d.recent {
                        li {
                            (status_badge(r.effective_status(now)))
                            " " a href={ "/console/approvals/" (r.approval_id) } { code { (r.action) } }
                            " " code.small { (r.resource) }
                            span.muted { " · " (span(now - r.created_at)) " ago" }
                        }
                    }
                }
                p { a href={ "/console/history?requester=" (row.requester) } { "All requests by this requester" } }
            }
        }

        p { a href={ "/console/approvals/" (row.approval_id) "/audit" } { "Audit trail of this approval" } }
    };
    layout(&row.action, Some(op), Nav::Other, body)
}

fn status_badge_text(status: Status) -> &'static str {
    match status {
        Status::Pending => "Pending",
        Status::Approved => "Approved",
        Status::Denied => "Denied",
        Status::Expired => "Expired",
        Status::Redeemed => "Redeemed",
        Status::Withdrawn => "Withdrawn",
    }
}

/// The confirmation step: names the verdict, the action and the resource, and repeats the
/// form with `confirm=yes`.
pub fn confirm(
    op: &Operator,
    row: &ApprovalRow,
    names: &Names,
    approve: bool,
    note: &str,
    capability_ttl_secs: i64,
    passkey: bool,
) -> Markup {
    let verb = if approve { "approve" } else { "deny" };
    let back = format!("/console/approvals/{}", row.approval_id);
    let body = html! {
        p.back { a href=(back) { span aria-hidden="true" { "← " } "Back to the request" } }
        h1 { (if approve { "Approve this request?" } else { "Deny this request?" }) }
        div class={ "confirm confirm-" (verb) } {
            p.lede { "You are about to " strong { (verb) } ":" }
            dl.facts {
                dt { "Action" } dd {
                    code.big { (row.action) }
                    @if let Some(l) = action_label(&row.action) { " · " (l) }
                }
                dt { "Resource" } dd { code.big { (row.resource) } }
                dt { "Parameters" } dd { (params_section(row)) }
                dt { "Requested by" } dd { (requested_by(names, row, false)) }
                dt { "Reason" } dd.reason { (row.reason) }
                dt { "Your note" } dd { @if note.is_empty() { span.muted { "none" } } @else { (note) } }
            }
            p {
                @if approve {
                    "If your approval completes the quorum, the requester receives a one-time capability, valid for "
                    (span(capability_ttl_secs)) ", to run exactly this action on this resource with these parameters."
                } @else {
                    "The request ends now and nothing runs. The requester would have to ask again."
                }
            }
            form method="post" action={ "/console/approvals/" (row.approval_id) "/decision" } {
                input type="hidden" name="csrf" value=(op.csrf);
                input type="hidden" name="decision" value=(verb);
                input type="hidden" name="note" value=(note);
                input type="hidden" name="confirm" value="yes";
                @if passkey {
                    p.notice {
                        "Decisions on " code { (row.action) } " need your passkey. Your authenticator will ask you to verify; it signs this decision on exactly these parameters."
                    }
                    @for f in ["challenge", "credential_id", "client_data", "authenticator_data", "signature"] {
                        input type="hidden" name=(f) value="";
                    }
                }
                div.buttons {
                    @if passkey {
                        button #passkey-decide class=(if approve { "approve" } else { "deny" }) type="button"
                            data-url={ "/console/approvals/" (row.approval_id) "/passkey" } data-decision=(verb) {
                            "Yes, " (verb) " " (row.action) " with my passkey"
                        }
                    } @else if approve {
                        button.approve type="submit" { "Yes, approve " (row.action) }
                    } @else {
                        button.deny type="submit" { "Yes, deny " (row.action) }
                    }
                    a.button.secondary href=(back) { "Cancel" }
                }
                @if passkey { p.small #passkey-status role="status" {} }
            }
        }
    };
    layout(if approve { "Confirm approval" } else { "Confirm denial" }, Some(op), Nav::Other, body)
}

/// Break-glass approvals awaiting another operator's acknowledgement.
pub fn to_review(op: &Operator, rows: &[ApprovalRow], names: &Names, now: i64) -> Markup {
    let body = html! {
        div.page-head {
            h1 { "Break-glass approvals to review" }
            span.count aria-label="approvals" { (rows.len()) }
        }
        p.lede { "Each was approved by one operator alone. Read what ran and why, then acknowledge it; it stays here until another operator does." }
        @if rows.is_empty() {
            div.empty { p { strong { "Nothing to review." } } }
        } @else {
            ol.cards {
                @for row in rows {
                    li {
                        a.card href={ "/console/approvals/" (row.approval_id) } {
                            div.card-top {
                                (status_badge(row.effective_status(now)))
                                span.action { (row.action) }
                                span.badge.badge-expired { "break-glass" }
                            }
                            div.resource { code { (row.resource) } }
                            dl.facts.compact {
                                dt { "Requested by" } dd { (requested_by(names, row, false)) }
                                @for dec in row.decisions.iter().filter(|d| d.break_glass) {
                                    dt { "Approved by" } dd { (who(names, &dec.operator)) }
                                    dt { "Why" } dd.reason { (dec.note.as_deref().unwrap_or("")) }
                                }
                                dt { "ID" } dd { code.id { (row.approval_id) } }
                            }
                            span.cta { "Review" span aria-hidden="true" { " →" } }
                        }
                    }
                }
            }
        }
    };
    layout("To review", Some(op), Nav::Review, body)
}

/// The history page's filters, as chosen.
#[derive(Debug, Clone, Default)]
pub struct HistoryView<'a> {
    /// The chosen status, if any.
    pub status: Option<Status>,
    /// The chosen action, if any.
    pub action: Option<&'a str>,
    /// The chosen requester, if any.
    pub requester: Option<&'a str>,
    /// The gated actions, for the action filter.
    pub actions: Vec<String>,
    /// The tenant's clients that may request, for the requester filter: (id, name, kind).
    pub requesters: Vec<(String, String, CallerKind)>,
    /// The link to the next, older page.
    pub older: Option<String>,
}

/// The history with its filters.
pub fn history(op: &Operator, v: &HistoryView<'_>, rows: &[ApprovalRow], names: &Names, now: i64) -> Markup {
    let body = html! {
        h1 { "History" }
        form.filters method="get" action="/console/history" {
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" selected[v.status.is_none()] { "Any status" }
                    @for s in Status::ALL {
                        option value=(s.as_str()) selected[v.status == Some(s)] { (status_badge_text(s)) }
                    }
                }
            }
            div.field {
                label for="f-action" { "Action" }
                select #f-action name="action" {
                    option value="" selected[v.action.is_none()] { "Any action" }
                    @for a in &v.actions {
                        option value=(a) selected[v.action == Some(a.as_str())] { (a) }
                    }
                }
            }
            div.field {
                label for="f-requester" { "Requester" }
                select #f-requester name="requester" {
                    option value="" selected[v.requester.is_none()] { "Anyone" }
                    @for (id, name, kind) in &v.requesters {
                        option value=(id) selected[v.requester == Some(id.as_str())] { (name) " (" (kind.as_str()) ")" }
                    }
                }
            }
            div.field.field-buttons {
                button.primary type="submit" { "Show" }
                a.button.secondary href="/console/history" { "Clear" }
            }
        }
        @if rows.is_empty() {
            p.empty { "No approvals match." }
        } @else {
            table.list.history {
                thead {
                    tr {
                        th scope="col" { "Status" } th scope="col" { "Request" } th scope="col" { "Requested by" }
                        th scope="col" { "Asked" } th scope="col" { "Decided by" }
                    }
                }
                tbody {
                    @for row in rows {
                        tr {
                            td data-label="Status" { (status_badge(row.effective_status(now))) }
                            td data-label="Request" {
                                a href={ "/console/approvals/" (row.approval_id) } { code { (row.action) } }
                                br; code.small { (row.resource) }
                                br; code.small.id { (row.approval_id) }
                            }
                            td data-label="Requested by" { (who(names, &row.requester)) }
                            td.nowrap data-label="Asked" { (utc(row.created_at)) }
                            td data-label="Decided by" {
                                @if row.decisions.is_empty() { span.muted { "—" } }
                                @for (i, dec) in row.decisions.iter().enumerate() {
                                    @if i > 0 { br; }
                                    (who(names, &dec.operator)) " "
                                    span.small { (if dec.decision == Verdict::Approve { "approved" } else { "denied" }) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(href) = &v.older {
            p { a.button.secondary rel="next" href=(href) { "Older" span aria-hidden="true" { " →" } } }
        }
    };
    layout("History", Some(op), Nav::History, body)
}

/// What the Agents page shows beside its rows.
#[derive(Debug, Clone)]
pub struct AgentsView {
    /// Only stale clients.
    pub stale: bool,
    /// The days that count as stale.
    pub stale_days: u32,
    /// The policy's `stale_after_days`, if set.
    pub policy_days: Option<u32>,
    /// More clients than shown.
    pub more: bool,
}

/// When a client was last used, in words.
fn last_use(inv: &crate::clients::Inventory, now: i64) -> Markup {
    match inv.last_used_at {
        None => html! { span.muted { "never" } },
        Some(t) => {
            let days = (now - t) / 86_400;
            html! {
                (utc(t))
                @if days >= 1 { br; span.small.muted { (days) (if days == 1 { " day ago" } else { " days ago" }) } }
            }
        }
    }
}

/// The tenant's clients: owner, kind, scopes, last use and state (design §20).
pub fn agents(
    op: &Operator,
    v: &AgentsView,
    rows: &[(crate::clients::ClientRecord, crate::clients::Inventory)],
    now: i64,
) -> Markup {
    let body = html! {
        h1 { "Agents" }
        p.lede {
            "Every client of " strong { (op.client.tenant.as_str()) } ": who answers for it, what it may do, and when it last got a token. "
            @match v.policy_days {
                Some(d) => { "Agents and workspaces unused for " (d) " days are disabled automatically." }
                None => { "Nothing is disabled automatically (the policy sets no " code { "stale_after_days" } ")." }
            }
        }
        nav.filters aria-label="Filter" {
            @if v.stale {
                a.button.secondary href="/console/agents" { "Show all" }
            } @else {
                a.button.secondary href="/console/agents?stale=1" { "Only unused for " (v.stale_days) " days" }
            }
        }
        @if rows.is_empty() {
            p.empty { @if v.stale { "No agent or workspace has gone unused that long." } @else { "No clients." } }
        } @else {
            table.list.agents {
                thead {
                    tr {
                        th scope="col" { "Client" } th scope="col" { "Kind" } th scope="col" { "Owner" }
                        th scope="col" { "Scopes" } th scope="col" { "Last use" } th scope="col" { "State" }
                    }
                }
                tbody {
                    @for (c, inv) in rows {
                        tr {
                            td data-label="Client" { strong { (c.name) } br; code.small.id { (c.client_id.as_str()) } }
                            td data-label="Kind" {
                                (c.kind.as_str())
                                @if let Some(w) = &c.workspace { br; code.small { (w.as_str()) } }
                            }
                            td data-label="Owner" {
                                @match (&c.owner, c.kind) {
                                    (Some(o), _) => { (o.as_str()) }
                                    (None, CallerKind::Agent | CallerKind::Workspace) => { span.urgent { "unowned" } }
                                    (None, _) => { span.muted { "—" } }
                                }
                            }
                            td data-label="Scopes" {
                                @for s in c.scopes.iter() { code.small.scope { (s.as_str()) } " " }
                            }
                            td.nowrap data-label="Last use" { (last_use(inv, now)) }
                            td data-label="State" {
                                @if c.disabled { span class="status status-denied" { "Disabled" } } @else { span class="status status-approved" { "Active" } }
                                @if let Some(p) = inv.previous_at(now) {
                                    br; span.small { "old secret until " (utc(p.expires_at)) ", used " (p.uses) "×" }
                                }
                            }
                        }
                    }
                }
            }
            @if v.more { p.muted { "Only the first 500 are shown; " code { "GET /v1/clients" } " pages through all." } }
        }
    };
    layout("Agents", Some(op), Nav::Agents, body)
}

/// One approval's audit trail.
pub fn audit_trail(op: &Operator, row: &ApprovalRow, records: &[AuditRecord], names: &Names) -> Markup {
    let body = html! {
        p.back { a href={ "/console/approvals/" (row.approval_id) } { span aria-hidden="true" { "← " } "Back to the request" } }
        h1 { "Audit trail" }
        p.lede {
            "Every record of the hash-chained audit log about " code.id { (row.approval_id) }
            " (" code { (row.action) } " on " code { (row.resource) } "), oldest first. "
            code { "tessera audit verify" } " checks the whole chain."
        }
        @if records.is_empty() {
            p.muted { "No records." }
        } @else {
            table.list.audit {
                thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "By" } th scope="col" { "Details" } } }
                tbody {
                    @for r in records {
                        tr {
                            td data-label="#" { (r.seq) }
                            td.nowrap data-label="When" { (utc(r.at)) }
                            td data-label="Event" { code.event { (r.event) } }
                            td data-label="By" { (who(names, &r.actor)) }
                            td data-label="Details" {
                                @match serde_json::from_str::<Value>(&r.detail) {
                                    Ok(Value::Object(map)) if !map.is_empty() => {
                                        ul.plain.small {
                                            @for (k, v) in &map {
                                                li { span.muted { (k) ": " } (detail_value(k, v)) }
                                            }
                                        }
                                    }
                                    _ => { span.muted { "—" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Audit trail", Some(op), Nav::Other, body)
}

fn detail_value(key: &str, v: &Value) -> String {
    match v {
        Value::Number(n)
            if matches!(key, "exp" | "expires_at" | "at") && n.as_i64().is_some_and(|t| t > 1_000_000_000) =>
        {
            utc(n.as_i64().unwrap_or_default())
        }
        Value::String(s) => s.clone(),
        Value::Null => "none".to_owned(),
        other => other.to_string(),
    }
}

/// Why the sign-in page is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInNote {
    /// First visit.
    None,
    /// The credentials did not sign anyone in (wrong, unknown, disabled or not an operator:
    /// one text for all).
    Failed,
    /// The operator signed out.
    SignedOut,
    /// A session cookie came with the request but names no live session.
    Ended,
    /// The secret was right, but this operator signs in with a passkey (`console_passkey_only`).
    PasskeyOnly,
}

/// The sign-in page.
/// `ip_origin`: the console was opened on an IP address, where browsers refuse passkeys; the
/// address to open instead.
pub fn sign_in(note: SignInNote, next: Option<&str>, ip_origin: Option<&str>) -> Markup {
    let body = html! {
        div.narrow {
            h1 { "Sign in" }
            @match note {
                SignInNote::Failed => {
                    div.alert role="alert" {
                        strong { "Not signed in." }
                        " That client ID and secret did not sign you in. Check both and try again."
                    }
                }
                SignInNote::SignedOut => { div.notice role="status" { "You are signed out." } }
                SignInNote::Ended => { div.notice role="status" { "Your session has ended. Sign in again." } }
                SignInNote::PasskeyOnly => {
                    div.alert role="alert" {
                        strong { "Use your passkey." }
                        " This operator signs in with a passkey, not with its secret."
                    }
                }
                SignInNote::None => {}
            }
            section.passkey-sign-in aria-labelledby="pk-h" {
                h2 #pk-h { "With a passkey" }
                @if let Some(url) = ip_origin {
                    p.notice {
                        "Browsers refuse passkeys on an IP address. To use yours, open the console as "
                        a href=(url) { code { (url) } } "."
                    }
                } @else {
                    p { "If you enrolled a passkey, sign in with it: your authenticator asks you to verify." }
                    button.primary #passkey-sign-in type="button" data-next=[next] { "Sign in with a passkey" }
                    p.small #passkey-status role="status" {}
                }
            }
            h2 { "With the client secret" }
            p { "Sign in with your " strong { "operator" } " client's ID and secret. Only operator clients can sign in." }
            form.stack method="post" action="/console/sign-in" {
                @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                label for="client_id" { "Client ID" }
                input #client_id type="text" name="client_id" required autocomplete="username"
                    autocapitalize="none" spellcheck="false" autofocus;
                label for="client_secret" { "Client secret" }
                input #client_secret type="password" name="client_secret" required autocomplete="current-password";
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    layout("Sign in", None, Nav::Other, body)
}

/// A page that explains a refusal or a failure, with a way back.
pub fn message(op: Option<&Operator>, title: &str, text: &str, back: Option<(&str, &str)>) -> Markup {
    let body = html! {
        div.narrow {
            h1 { (title) }
            p.lede { (text) }
            @if let Some((href, label)) = back {
                p { a.button.secondary href=(href) { (label) } }
            }
        }
    };
    layout(title, op, Nav::Other, body)
}

/// The operator's passkeys: a list, enrolment, removal.
pub fn passkeys(
    op: &Operator,
    keys: &[crate::passkeys::ceremonies::PasskeyRow],
    ip_origin: Option<&str>,
    needs_passkey_session: bool,
    flash: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Your passkeys" }
        @if let Some(f) = flash { div.notice role="status" { (f) } }
        p.lede {
            "A passkey is a key held by your authenticator (a phone, a security key, a laptop's fingerprint reader). "
            "Decisions on the most dangerous actions can only be made with one, in this console, and the audit log keeps the proof."
        }
        @if keys.is_empty() {
            p.muted { "You have no passkey yet." }
        } @else {
            table.list {
                thead { tr { th { "Name" } th { "Enrolled" } th { "Last used" } th { span.visually-hidden { "Remove" } } } }
                tbody {
                    @for k in keys {
                        tr {
                            td data-label="Name" { (k.name) br; code.small { (k.credential_id.chars().take(16).collect::<String>()) "…" } }
                            td data-label="Enrolled" { (utc(k.created_at)) }
                            td data-label="Last used" { @if let Some(t) = k.last_used_at { (utc(t)) } @else { span.muted { "never" } } }
                            td {
                                @if !needs_passkey_session {
                                    form.inline method="post" action={ "/console/passkeys/" (k.credential_id) "/remove" } {
                                        input type="hidden" name="csrf" value=(op.csrf);
                                        button.link type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="enrol-h" {
            h2 #enrol-h { "Enrol a passkey" }
            @if let Some(url) = ip_origin {
                p.notice {
                    "Browsers refuse passkeys on an IP address. To enrol one, open the console as "
                    a href=(url) { code { (url) } } " and sign in there."
                }
            } @else if needs_passkey_session {
                p.notice { "You already have a passkey: sign in with it to add or remove passkeys." }
            } @else {
                @if keys.is_empty() {
                    p { "Your first passkey needs a one-time enrolment code from an administrator ("
                        code { "tessera clients passkey-enrolment <your client id>" } "): an operator secret alone never enrols an authenticator." }
                    label for="passkey-code" { "Enrolment code" }
                    input #passkey-code type="text" maxlength="128" autocomplete="one-time-code" spellcheck="false";
                }
                label for="passkey-name" { "Name " span.muted { "(to tell your passkeys apart)" } }
                input #passkey-name type="text" maxlength="60" value="My passkey";
                div.buttons {
                    button.primary #passkey-enrol type="button" data-csrf=(op.csrf) { "Enrol a passkey" }
                }
                p.small #passkey-status role="status" {}
            }
        }
    };
    layout("Passkeys", Some(op), Nav::Passkeys, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_well() {
        assert_eq!(span(-5), "less than a minute");
        assert_eq!(span(59), "less than a minute");
        assert_eq!(span(60), "1 min");
        assert_eq!(span(3599), "59 min");
        assert_eq!(span(3600), "1 h");
        assert_eq!(span(3600 + 5 * 60), "1 h 5 min");
        assert_eq!(span(86_400), "1 day");
        assert_eq!(span(3 * 86_400 + 5), "3 days");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn summaries_render_as_tables_and_escape_everything() {
        let v: Value = serde_json::json!({
            "key": "<script>alert(1)</script>",
            "value": {"$secret": {"length": 51, "sha256": "sha256:abc"}},
            "tags": ["a", "b"],
        });
        let html = value(&v, 0).into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("secret value withheld") && html.contains("51 bytes") && html.contains("sha256:abc"));
        assert!(html.contains("<table"));
    }
}
