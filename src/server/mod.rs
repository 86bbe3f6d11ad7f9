//! The HTTP server: `app(state)` builds the router; [`Application`] binds and serves it.

/// Logs a `tracing` event (`request_log!(INFO, field = value, "message")`, any level) in
/// the span of the request being answered, made only when the event is enabled (see
/// [`request_id`]). Every event under `src/server` goes through it; a test holds it so.
macro_rules! request_log {
    ($level:ident, $($arg:tt)+) => {
        if ::tracing::enabled!(::tracing::Level::$level) {
            let _entered = $crate::server::request_id::span().entered();
            ::tracing::event!(::tracing::Level::$level, $($arg)+);
        }
    };
}

mod approvals;
pub mod audit;
pub mod auth;
mod client_assertion;
mod clients;
pub mod connection;
mod console;
pub mod dpop;
pub mod error;
pub mod form;
mod health;
pub mod issue;
pub mod jwt_bearer;
pub mod metrics;
mod notices;
pub mod oauth;
pub mod openapi;
pub mod ratelimit;
pub mod request_id;
mod tokens;
mod wellknown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::audit::AuditWriter;
use crate::config::Config;
use crate::keys::KeyRing;
use crate::store::Store;
use crate::webhooks::Notifier;
pub use error::{ApiError, ApiResult};

/// Wall-clock time in Unix seconds, with an offset tests can move. Domain code takes `now`
/// as a parameter; this is read once per request at the edge.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    /// Now, Unix seconds.
    pub fn now(&self) -> i64 {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        secs + self.offset.load(Ordering::Relaxed)
    }
    /// Moves this clock forward (tests).
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::Relaxed);
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Store,
    keys: KeyRing,
    audit: AuditWriter,
    client_cache: crate::clients::AuthCache,
    usage: crate::clients::Usage,
    clock: Clock,
    verifier: crate::verify::Policy,
    dpop: dpop::DpopState,
    notifier: Arc<Notifier>,
    auth_failures: ratelimit::FailureLimiter,
    token_requests: Option<ratelimit::RequestLimiter>,
    passkey_challenges: Option<ratelimit::RequestLimiter>,
    metrics: metrics::Metrics,
    rotation: tokio::sync::Mutex<()>,
    federation: crate::federation::Federation,
}

impl AsRef<metrics::Metrics> for AppState {
    fn as_ref(&self) -> &metrics::Metrics {
        self.metrics()
    }
}

impl AppState {
    /// Opens storage and keys for `config`.
    pub async fn open(config: Config, clock: Clock) -> anyhow::Result<AppState> {
        let store = Store::open(&config.database_url).await?;
        let keys = KeyRing::load(store.clone(), &config.keys_dir, clock.now()).await?;
        let audit = AuditWriter::start(store.clone(), Arc::new(crate::clients::ClientPreconditions));
        let mut verifier = crate::verify::Policy::new(config.issuer.clone(), config.audience.clone());
        verifier.leeway_secs = config.leeway_secs;
        let replay = crate::verify::dpop::ReplayLimits {
            per_key: config.dpop_replay_per_key,
            per_client: config.dpop_replay_per_client,
            total: crate::verify::dpop::DEFAULT_REPLAY_CAPACITY,
        };
        let dpop = dpop::DpopState::new(config.dpop_nonce, config.dpop_nonce_secs, replay)?;
        let notifier = Arc::new(Notifier::new(config.webhooks.clone(), Duration::from_millis(500)));
        let auth_failures = ratelimit::FailureLimiter::new(config.failed_auth_per_minute);
        let token_requests = ratelimit::RequestLimiter::new(config.token_requests_per_minute);
        // Anonymous passkey sign-in challenges, per peer address: each is a stored row.
        let passkey_challenges = ratelimit::RequestLimiter::new(60);
        let federation =
            crate::federation::Federation::new(&config.federation, config.leeway_secs).map_err(anyhow::Error::msg)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                config,
                store,
                keys,
                audit,
                client_cache: crate::clients::AuthCache::default(),
                usage: crate::clients::Usage::default(),
                clock,
                verifier,
                dpop,
                notifier,
                auth_failures,
                token_requests,
                passkey_challenges,
                metrics: metrics::Metrics::default(),
                rotation: tokio::sync::Mutex::new(()),
                federation,
            }),
        })
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    /// The keys.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }
    /// The group-commit audit writer.
    pub fn audit(&self) -> &AuditWriter {
        &self.inner.audit
    }
    /// The clients authenticated from memory, whose tokens' audit records carry a
    /// precondition the writer checks at commit (see [`crate::clients::authenticate_cached`]).
    pub fn client_cache(&self) -> &crate::clients::AuthCache {
        &self.inner.client_cache
    }
    /// Clients' last uses and previous-secret uses, noted by the token endpoint and written by
    /// the upkeep (design §20).
    pub fn usage(&self) -> &crate::clients::Usage {
        &self.inner.usage
    }
    /// The trusted issuers of workload identities (design §14).
    pub fn federation(&self) -> &crate::federation::Federation {
        &self.inner.federation
    }
    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }
    /// Now, Unix seconds.
    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }
    /// How the broker verifies tokens presented to it.
    pub fn verifier(&self) -> &crate::verify::Policy {
        &self.inner.verifier
    }
    /// Proof-of-possession checks, their replay cache and nonces.
    pub fn dpop(&self) -> &dpop::DpopState {
        &self.inner.dpop
    }
    /// The limiter of failed client authentications (token endpoint and console sign-in).
    pub fn auth_failures(&self) -> &ratelimit::FailureLimiter {
        &self.inner.auth_failures
    }
    /// The limiter of successful token requests per client, when `token_requests_per_minute`
    /// is set.
    pub fn token_requests(&self) -> Option<&ratelimit::RequestLimiter> {
        self.inner.token_requests.as_ref()
    }
    /// The limiter of anonymous passkey sign-in challenges, per peer address.
    pub fn passkey_challenges(&self) -> Option<&ratelimit::RequestLimiter> {
        self.inner.passkey_challenges.as_ref()
    }
    /// The counters `GET /metrics` shows.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }
    /// The webhook notifier.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.inner.notifier
    }
}

/// The router, without a socket: tests may drive it with `oneshot`.
pub fn app(state: AppState) -> Router {
    let timeout = Duration::from_secs(state.config().request_timeout_secs);
    Router::new()
        .merge(wellknown::routes())
        .merge(oauth::routes())
        .merge(health::routes())
        .merge(approvals::routes())
        .merge(clients::routes())
        .merge(audit::routes())
        .merge(console::routes())
        .merge(tokens::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state((state.clone(), timeout), edge))
        .with_state(state)
}

/// What every request goes through, in one layer (one future per request, not one per
/// concern): its id, its span, its time limit, its metrics, and the pinned error shape for
/// the answers the framework makes itself.
async fn edge(State((state, limit)): State<(AppState, Duration)>, mut req: Request, next: Next) -> Response {
    let id = request_id::take_or_make(req.headers_mut());
    // The request span carries the method, the path and the request id only: never the
    // query, never another header.
    let context = request_id::RequestContext::new(req.method(), req.uri(), &id);
    let route = metrics::route_index(req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str()));
    let started = std::time::Instant::now();
    let mut res = request_id::scope(context, async {
        let res = match tokio::time::timeout(limit, next.run(req)).await {
            Ok(res) => error_shape(res),
            Err(_) => ApiError::unavailable(&"request timed out").into_response(),
        };
        let elapsed = started.elapsed();
        request_log!(DEBUG, status = res.status().as_u16(), latency_us = elapsed.as_micros() as u64, "answered");
        res
    })
    .await;
    let code = res.extensions().get::<error::ErrorCode>().map(|c| c.0);
    state.metrics().observe(route, res.status().as_u16(), started.elapsed().as_secs_f64(), code);
    res.headers_mut().insert(request_id::X_REQUEST_ID, id);
    res
}

/// Gives framework-made answers (405 and the like, which have no JSON body) the pinned shape.
fn error_shape(res: Response) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if is_json || res.status().is_success() || res.status().is_redirection() {
        return res;
    }
    match res.status() {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = res.headers().get(header::ALLOW).cloned();
            let mut out = ApiError::method_not_allowed().into_response();
            if let Some(a) = allow {
                out.headers_mut().insert(header::ALLOW, a);
            }
            out
        }
        StatusCode::NOT_FOUND => ApiError::not_found("no such endpoint").into_response(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::invalid_request("request body too large").into_response(),
        s if s.is_client_error() => ApiError::invalid_request("malformed request").into_response(),
        _ => res,
    }
}

/// A bound, ready-to-serve broker.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Opens storage and keys and binds the configured address.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(config.listen).await?;
        Self::build_with_listener(config, listener, Clock::default()).await
    }

    /// Opens storage and keys and serves on `listener` (tests bind port 0 first).
    pub async fn build_with_listener(
        config: Config,
        listener: TcpListener,
        clock: Clock,
    ) -> anyhow::Result<Application> {
        let state = AppState::open(config, clock).await?;
        // A checkpoint at start: of the head the last run left, should it have stopped
        // without signing one.
        audit::sign_checkpoint(&state).await?;
        Ok(Application { listener, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or ctrl-c, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then lets in-flight requests finish (at most 10 s).
    ///
    /// The accept loop is hyper's own rather than `axum::serve`, for the limits a security
    /// service needs (see [`connection`]): a connection's first request must arrive within
    /// `header_read_timeout_secs` of the accept, a later one's headers within that time of
    /// its first byte, and a connection idle for `idle_timeout_secs` is closed; headers are
    /// capped in number and size; beyond `max_connections`, or `max_connections_per_address`
    /// from one address, new connections are closed on arrival; and a connection hyper closes
    /// is closed lingering, so a client still sending a refused body reads its answer.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let config = self.state.config().clone();
        let router = app(self.state.clone());
        let background = tokio::spawn(background(self.state.clone()));
        let notices = tokio::spawn(notices::follow(self.state.clone(), self.state.store().subscribe()));
        let checkpoints = tokio::spawn(audit::checkpoints(self.state.clone()));
        let limits = connection::ServeLimits {
            deadlines: connection::Deadlines {
                header: Duration::from_secs(config.header_read_timeout_secs),
                idle: Duration::from_secs(config.idle_timeout_secs),
            },
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
        };
        connection::serve(self.listener, router, limits, self.state.clone(), stop).await;
        background.abort();
        checkpoints.abort();
        notices.abort();
        // Last uses noted since the last write, so that none is lost by stopping.
        if let Err(e) = self.state.usage().write_all(self.state.store()).await {
            request_log!(WARN, error = %e, "writing clients' last uses on shutdown failed");
        }
        // A checkpoint on shutdown, once every answered request's record is committed.
        if let Err(e) = audit::sign_checkpoint(&self.state).await {
            request_log!(WARN, error = %e, "signing the shutdown audit checkpoint failed");
        }
        self.state.store().close().await;
        Ok(())
    }
}

/// Background upkeep. Every 5 seconds: follow key rotations (switch to a rotated-in key once
/// its activation time comes, re-read every replica's published keys) and rotate on schedule;
/// write clients' last uses that are due. Every 30 seconds: record the expiry of overdue
/// approvals, so the audit log shows them even when nobody reads them; with
/// `stale_after_days`, disable the agent and workspace clients unused that long.
async fn background(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let now = state.now();
        if let Err(e) = rotate_on_schedule(&state, now).await {
            request_log!(WARN, error = %e, "scheduled key rotation failed");
        }
        if let Err(e) = state.keys().tick(now).await {
            request_log!(WARN, error = %e, "following key rotation failed");
        }
        if let Err(e) = state.usage().write_due(state.store(), now).await {
            request_log!(WARN, error = %e, "writing clients' last uses failed");
        }
        if n % 6 == 0
            && let Err(e) = crate::approvals::sweep_expired(state.store(), now).await
        {
            request_log!(WARN, error = %e, "approval expiry sweep failed");
        }
        if n % 6 == 0
            && let Some(days) = state.config().policy.stale_after_days
        {
            match crate::clients::disable_stale(state.store(), days, now).await {
                Ok(ids) => {
                    for id in ids {
                        state.client_cache().forget(id.as_str());
                        request_log!(INFO, client_id = %id, stale_after_days = days, "disabled a stale client");
                    }
                }
                Err(e) => request_log!(WARN, error = %e, "stale client sweep failed"),
            }
        }
    }
}

/// Rotates this replica's key when it is older than `key_rotation_days` and no successor is
/// already waiting.
pub async fn rotate_on_schedule(state: &AppState, now: i64) -> anyhow::Result<()> {
    let days = state.config().key_rotation_days;
    if days == 0 {
        return Ok(());
    }
    // One check at a time in this process: the schedule and a caller must not both rotate.
    let _one_at_a_time = state.inner.rotation.lock().await;
    let rows = crate::keys::list(state.store()).await?;
    let current = state.keys().signer();
    let Some(row) = rows.iter().find(|r| r.kid == current.kid()) else { return Ok(()) };
    let local: Vec<String> =
        crate::keys::load_dir(&state.config().keys_dir)?.into_iter().map(|s| s.kid().to_owned()).collect();
    let successor_waiting = rows.iter().any(|r| r.activates_at > now && local.contains(&r.kid));
    if row.activates_at + i64::from(days) * 86_400 <= now && !successor_waiting {
        let r = crate::keys::rotate(
            state.store(),
            &state.config().keys_dir,
            now,
            state.config().key_publish_lead_secs(),
            "schedule",
        )
        .await?;
        request_log!(INFO, kid = %r.kid, activates_at = r.activates_at, "rotated the signing key on schedule");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    request_log!(INFO, "shutting down");
}
