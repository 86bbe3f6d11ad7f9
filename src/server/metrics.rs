//! `GET /metrics`: counters and histograms in the Prometheus text format (version 0.0.4).
//!
//! A small hand-written registry: every series is a fixed atomic slot chosen from closed
//! lists (routes, status classes, error codes, caller kinds), so a request costs a few relaxed
//! atomic additions and no allocation, and no label value ever comes from the request.
//! Routes are labelled by their template (axum's `MatchedPath`), never by the raw path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::approvals::Status;
use crate::domain::CallerKind;

/// Every route template the broker serves, as axum matches them. Anything else (the
/// fallback) is counted as `other`.
pub const ROUTE_TEMPLATES: [&str; 42] = [
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/oauth/token",
    "/oauth/introspect",
    "/oauth/revoke",
    "/v1/approvals",
    "/v1/approvals/{id}",
    "/v1/approvals/{id}/decision",
    "/v1/approvals/{id}/withdraw",
    "/v1/capabilities/redeem",
    "/v1/approvals/{id}/review",
    "/v1/revocations",
    "/v1/audit/checkpoint",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/console",
    "/console/",
    "/console/sign-in",
    "/console/sign-out",
    "/console/history",
    "/console/review",
    "/console/approvals/{id}/review",
    "/console/approvals/{id}",
    "/console/approvals/{id}/decision",
    "/console/approvals/{id}/audit",
    "/console/approvals/{id}/passkey",
    "/console/passkeys",
    "/console/passkeys/options",
    "/console/passkeys/{id}/remove",
    "/console/sign-in/passkey/options",
    "/console/sign-in/passkey",
    "/console/static/passkey.js",
    "/console/static/console.css",
    "/console/static/favicon.svg",
    "/console/{*rest}",
    "/v1/clients",
    "/v1/clients/{id}",
    "/v1/clients/{id}/disable",
    "/v1/clients/{id}/rotate-secret",
    "/console/agents",
];
const OTHER_ROUTE: usize = ROUTE_TEMPLATES.len();
const TOKEN_ROUTE: usize = 2;
const REDEEM_ROUTE: usize = 9;
// The two routes counted by position are where the positions say.
const _: () = assert!(matches!(ROUTE_TEMPLATES[TOKEN_ROUTE].as_bytes(), b"/oauth/token"));
const _: () = assert!(matches!(ROUTE_TEMPLATES[REDEEM_ROUTE].as_bytes(), b"/v1/capabilities/redeem"));

/// Why the accept loop closed a connection that hyper itself did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// On arrival: `max_connections` were open.
    ConnectionLimit,
    /// On arrival: its address held `max_connections_per_address`.
    PerAddressLimit,
    /// No first request within `header_read_timeout_secs` of the accept.
    FirstRequestTimeout,
    /// A later request's headers not complete within `header_read_timeout_secs` of its first byte.
    HeaderTimeout,
    /// No request within `idle_timeout_secs` of the last answer.
    IdleTimeout,
}

impl ConnectionClose {
    /// Every reason, in the order of the series.
    pub const ALL: [ConnectionClose; 5] = [
        ConnectionClose::ConnectionLimit,
        ConnectionClose::PerAddressLimit,
        ConnectionClose::FirstRequestTimeout,
        ConnectionClose::HeaderTimeout,
        ConnectionClose::IdleTimeout,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionClose::ConnectionLimit => "connection_limit",
            ConnectionClose::PerAddressLimit => "per_address_limit",
            ConnectionClose::FirstRequestTimeout => "first_request_timeout",
            ConnectionClose::HeaderTimeout => "header_timeout",
            ConnectionClose::IdleTimeout => "idle_timeout",
        }
    }
}

/// Upper bounds of the latency histogram buckets, seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Error codes of the token endpoint; anything else is `other`.
const TOKEN_ERRORS: [&str; 11] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "invalid_target",
    "unauthorized_client",
    "unsupported_grant_type",
    "rate_limited",
    "temporarily_unavailable",
    "server_error",
    "other",
];

/// Outcomes of a redemption: `redeemed`, or the refusal's error code.
const REDEEM_OUTCOMES: [&str; 8] =
    ["redeemed", "conflict", "expired", "forbidden", "invalid_request", "invalid_token", "not_found", "other"];

/// The grants a token is issued by.
const GRANTS: [&str; 2] = ["client_credentials", "token_exchange"];

#[derive(Debug, Default)]
struct RouteStats {
    status: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// The broker's counters.
#[derive(Debug)]
pub struct Metrics {
    routes: Vec<RouteStats>,
    tokens_issued: [[AtomicU64; GRANTS.len()]; CallerKind::ALL.len()],
    token_errors: [AtomicU64; TOKEN_ERRORS.len()],
    approvals: [AtomicU64; Status::ALL.len()],
    redemptions: [AtomicU64; REDEEM_OUTCOMES.len()],
    rate_limited: [AtomicU64; OTHER_ROUTE + 1],
    connections_closed: [AtomicU64; ConnectionClose::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: (0..=OTHER_ROUTE).map(|_| RouteStats::default()).collect(),
            tokens_issued: Default::default(),
            token_errors: Default::default(),
            approvals: Default::default(),
            redemptions: Default::default(),
            rate_limited: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_closed: Default::default(),
        }
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn route_index(template: Option<&str>) -> usize {
    template.and_then(|t| ROUTE_TEMPLATES.iter().position(|r| *r == t)).unwrap_or(OTHER_ROUTE)
}

fn route_name(i: usize) -> &'static str {
    ROUTE_TEMPLATES.get(i).copied().unwrap_or("other")
}

impl Metrics {
    /// Counts one access token issued to a caller of `kind` by `grant` (the grant type as
    /// sent; token exchange by its URN).
    pub fn token_issued(&self, kind: CallerKind, grant: &str) {
        let g = usize::from(grant != "client_credentials");
        let k = CallerKind::ALL.iter().position(|x| *x == kind).unwrap_or(0);
        add(&self.tokens_issued[k][g]);
    }

    /// Counts a connection the accept loop closed, for `reason`.
    pub fn connection_closed(&self, reason: ConnectionClose) {
        let i = ConnectionClose::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        add(&self.connections_closed[i]);
    }

    /// Counts an approval entering `status` (created pending, approved, denied, withdrawn).
    pub fn approval(&self, status: Status) {
        let i = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        add(&self.approvals[i]);
    }

    /// Records one answered request on the route with index `route`.
    pub(super) fn observe(&self, route: usize, status: u16, elapsed_secs: f64, code: Option<&'static str>) {
        let Some(stats) = self.routes.get(route) else { return };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        add(&stats.status[class]);
        add(&stats.count);
        stats.sum_nanos.fetch_add((elapsed_secs * 1e9) as u64, Ordering::Relaxed);
        if let Some(b) = BUCKETS.iter().position(|b| elapsed_secs <= *b) {
            add(&stats.buckets[b]);
        }
        if code == Some("rate_limited") {
            add(&self.rate_limited[route]);
        }
        if route == TOKEN_ROUTE
            && let Some(code) = code
        {
            let i = TOKEN_ERRORS.iter().position(|c| *c == code).unwrap_or(TOKEN_ERRORS.len() - 1);
            add(&self.token_errors[i]);
        }
        if route == REDEEM_ROUTE {
            let outcome = match code {
                None if (200..300).contains(&status) => "redeemed",
                Some(c) => c,
                None => "other",
            };
            let i = REDEEM_OUTCOMES.iter().position(|c| *c == outcome).unwrap_or(REDEEM_OUTCOMES.len() - 1);
            add(&self.redemptions[i]);
        }
    }

    /// The text exposition, with the gauges read at scrape time.
    pub fn render(&self, key_ages: &[(String, i64)], failed_auth_blocked: u64, audit: (u64, u64, f64)) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);

        let _ = writeln!(out, "# HELP tessera_build_info The running version.");
        let _ = writeln!(out, "# TYPE tessera_build_info gauge");
        let _ = writeln!(out, "tessera_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

        let (batches, records, seconds) = audit;
        let _ = writeln!(
            out,
            "# HELP tessera_audit_batches_total Transactions the token audit writer has written (group commit)."
        );
        let _ = writeln!(out, "# TYPE tessera_audit_batches_total counter");
        let _ = writeln!(out, "tessera_audit_batches_total {batches}");
        let _ = writeln!(out, "# HELP tessera_audit_batch_records_total Audit records in those transactions.");
        let _ = writeln!(out, "# TYPE tessera_audit_batch_records_total counter");
        let _ = writeln!(out, "tessera_audit_batch_records_total {records}");
        let _ = writeln!(out, "# HELP tessera_audit_batch_seconds_total Time spent writing and committing them.");
        let _ = writeln!(out, "# TYPE tessera_audit_batch_seconds_total counter");
        let _ = writeln!(out, "tessera_audit_batch_seconds_total {seconds}");

        let _ =
            writeln!(out, "# HELP tessera_http_requests_total Requests answered, by route template and status class.");
        let _ = writeln!(out, "# TYPE tessera_http_requests_total counter");
        for (i, r) in self.routes.iter().enumerate() {
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                let n = v(&r.status[c]);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tessera_http_requests_total{{route=\"{}\",status=\"{class}\"}} {n}",
                        route_name(i)
                    );
                }
            }
        }

        let _ = writeln!(out, "# HELP tessera_http_request_duration_seconds Time to answer, by route template.");
        let _ = writeln!(out, "# TYPE tessera_http_request_duration_seconds histogram");
        for (i, r) in self.routes.iter().enumerate() {
            let count = v(&r.count);
            if count == 0 {
                continue;
            }
            let route = route_name(i);
            let mut cumulative = 0;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += v(&r.buckets[b]);
                let _ = writeln!(
                    out,
                    "tessera_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ =
                writeln!(out, "tessera_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
            let sum = v(&r.sum_nanos) as f64 / 1e9;
            let _ = writeln!(out, "tessera_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(out, "tessera_http_request_duration_seconds_count{{route=\"{route}\"}} {count}");
        }

        let _ = writeln!(out, "# HELP tessera_tokens_issued_total Access tokens issued, by caller kind and grant.");
        let _ = writeln!(out, "# TYPE tessera_tokens_issued_total counter");
        for (k, kind) in CallerKind::ALL.iter().enumerate() {
            for (g, grant) in GRANTS.iter().enumerate() {
                let n = v(&self.tokens_issued[k][g]);
                let _ =
                    writeln!(out, "tessera_tokens_issued_total{{kind=\"{}\",grant=\"{grant}\"}} {n}", kind.as_str());
            }
        }

        let _ = writeln!(out, "# HELP tessera_token_errors_total Refusals of POST /oauth/token, by error code.");
        let _ = writeln!(out, "# TYPE tessera_token_errors_total counter");
        for (i, code) in TOKEN_ERRORS.iter().enumerate() {
            let _ = writeln!(out, "tessera_token_errors_total{{error=\"{code}\"}} {}", v(&self.token_errors[i]));
        }

        let _ = writeln!(
            out,
            "# HELP tessera_approvals_total Approval status changes made through the API or the console, by new status."
        );
        let _ = writeln!(out, "# TYPE tessera_approvals_total counter");
        for (i, s) in Status::ALL.iter().enumerate() {
            let _ = writeln!(out, "tessera_approvals_total{{status=\"{}\"}} {}", s.as_str(), v(&self.approvals[i]));
        }

        let _ = writeln!(out, "# HELP tessera_redemptions_total Capability redemptions, by outcome.");
        let _ = writeln!(out, "# TYPE tessera_redemptions_total counter");
        for (i, o) in REDEEM_OUTCOMES.iter().enumerate() {
            let _ = writeln!(out, "tessera_redemptions_total{{outcome=\"{o}\"}} {}", v(&self.redemptions[i]));
        }

        let _ = writeln!(out, "# HELP tessera_rate_limited_total Requests refused with 429, by route template.");
        let _ = writeln!(out, "# TYPE tessera_rate_limited_total counter");
        for (i, c) in self.rate_limited.iter().enumerate() {
            let n = v(c);
            if n > 0 || i == TOKEN_ROUTE {
                let _ = writeln!(out, "tessera_rate_limited_total{{route=\"{}\"}} {n}", route_name(i));
            }
        }
        let _ = writeln!(
            out,
            "# HELP tessera_failed_auth_blocked_total Client authentications refused because the client id or peer failed too often (token endpoint and console)."
        );
        let _ = writeln!(out, "# TYPE tessera_failed_auth_blocked_total counter");
        let _ = writeln!(out, "tessera_failed_auth_blocked_total {failed_auth_blocked}");

        let _ = writeln!(
            out,
            "# HELP tessera_connections_closed_total Connections the broker closed before a request or between requests, by reason."
        );
        let _ = writeln!(out, "# TYPE tessera_connections_closed_total counter");
        for (i, r) in ConnectionClose::ALL.iter().enumerate() {
            let n = v(&self.connections_closed[i]);
            let _ = writeln!(out, "tessera_connections_closed_total{{reason=\"{}\"}} {n}", r.as_str());
        }

        let _ = writeln!(
            out,
            "# HELP tessera_signing_key_age_seconds Age of each published key since it began (or begins) to sign."
        );
        let _ = writeln!(out, "# TYPE tessera_signing_key_age_seconds gauge");
        for (kid, age) in key_ages {
            let _ = writeln!(out, "tessera_signing_key_age_seconds{{kid=\"{kid}\"}} {age}");
        }
        out
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> Response {
    let now = state.now();
    // Key ages come from the database; if it does not answer, the rest is still worth having.
    let key_ages: Vec<(String, i64)> = match crate::keys::list(state.store()).await {
        Ok(rows) => rows
            .into_iter()
            .filter(|r| r.unpublish_at.is_none_or(|t| t > now))
            .map(|r| (r.kid, now - r.activates_at))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut body = state.metrics().render(&key_ages, state.auth_failures().refusals(), state.audit().stats().totals());
    let n = state.notifier();
    for (name, help, value) in [
        ("tessera_webhook_delivered_total", "Webhook notifications delivered.", n.delivered()),
        ("tessera_webhook_failed_total", "Webhook notifications that failed after every retry.", n.failed()),
        (
            "tessera_webhook_retried_total",
            "Webhook delivery attempts made again, with backoff, after one failed.",
            n.retried(),
        ),
        (
            "tessera_webhook_dropped_total",
            "Webhook notifications dropped, oldest first, from a full queue.",
            n.dropped(),
        ),
        (
            "tessera_client_previous_secret_uses_total",
            "Client authentications with a secret a rotation replaced, within its grace.",
            state.usage().previous_uses(),
        ),
    ] {
        body.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
    }
    let name = "tessera_dpop_replay_full_total";
    body.push_str(&format!(
        "# HELP {name} DPoP proofs refused because the replay cache's share was full: a key's, a client's, or all.\n# TYPE {name} counter\n"
    ));
    for (share, n) in state.dpop().verifier().cache().full_refusals() {
        body.push_str(&format!("{name}{{share=\"{}\"}} {n}\n", share.as_str()));
    }
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_series() {
        let m = Metrics::default();
        m.observe(TOKEN_ROUTE, 401, 0.002, Some("invalid_client"));
        m.observe(TOKEN_ROUTE, 200, 0.002, None);
        m.observe(REDEEM_ROUTE, 409, 0.002, Some("conflict"));
        m.observe(route_index(None), 404, 0.5, Some("not_found"));
        m.token_issued(CallerKind::Agent, "client_credentials");
        m.approval(Status::Pending);
        let text = m.render(&[("k1".to_owned(), 5)], 2, (3, 40, 0.25));
        for line in [
            "tessera_http_requests_total{route=\"/oauth/token\",status=\"4xx\"} 1",
            "tessera_http_requests_total{route=\"other\",status=\"4xx\"} 1",
            "tessera_http_request_duration_seconds_bucket{route=\"/oauth/token\",le=\"0.0025\"} 2",
            "tessera_http_request_duration_seconds_bucket{route=\"/oauth/token\",le=\"0.001\"} 0",
            "tessera_http_request_duration_seconds_count{route=\"/oauth/token\"} 2",
            "tessera_token_errors_total{error=\"invalid_client\"} 1",
            "tessera_redemptions_total{outcome=\"conflict\"} 1",
            "tessera_tokens_issued_total{kind=\"agent\",grant=\"client_credentials\"} 1",
            "tessera_approvals_total{status=\"pending\"} 1",
            "tessera_failed_auth_blocked_total 2",
            "tessera_signing_key_age_seconds{kid=\"k1\"} 5",
            "tessera_audit_batches_total 3",
            "tessera_audit_batch_records_total 40",
            "tessera_audit_batch_seconds_total 0.25",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
