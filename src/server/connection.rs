//! What the accept loop owes every connection, beyond what hyper gives it.
//!
//! - **Deadlines.** A connection's first request must arrive (its headers complete) within
//!   `header_read_timeout_secs` of the accept, whether or not it sends a byte: a silent socket,
//!   or one that sends only the HTTP/2 preface, is closed then. Between requests a connection
//!   may stay idle for `idle_timeout_secs`; on HTTP/1.1, once the next request's first byte
//!   arrives, its headers must be complete within `header_read_timeout_secs` of that byte. A
//!   [`Watchdog`] per connection enforces these from request starts and ends that the service
//!   reports ([`Activity::begin`]) and bytes the socket reports ([`Watched`]).
//! - **A cap per address.** [`PerAddress`] counts open connections per peer address (per /64
//!   for IPv6, where one host holds a whole prefix); beyond `max_connections_per_address`, and
//!   never beyond half of `max_connections`, a new connection is closed on arrival. Refusals
//!   are counted in the metrics and logged at most once per [`REFUSAL_LOG_INTERVAL`], so a
//!   flood cannot flood the logs.
//! - **A slot for health checks.** The last of `max_connections` is kept for loopback peers,
//!   and a connection admitted into it is answered on `/healthz` and `/readyz` only: a full
//!   listener still tells its supervisor it is alive.
//! - **A lingering close.** When hyper closes a connection, [`Watched`] first sends its FIN,
//!   then reads and discards what the client still sends (a request body the broker refused
//!   before reading it), for a bounded time and amount. Closing with unread data makes the
//!   kernel send a reset, which can destroy the answer before the client reads it (RFC 9112
//!   §9.6).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::metrics::{ConnectionClose, Metrics};

/// How often, at most, refused connections are logged (with the count since the last line).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a lingering close reads for in all.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// Longest a lingering close waits for the client's next bytes.
pub const LINGER_GAP: Duration = Duration::from_secs(1);
/// Most bytes a lingering close reads and discards.
pub const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// The per-connection deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From accept to the first request's headers; from a later request's first byte to its
    /// headers.
    pub header: Duration,
    /// From the end of one response to the start of the next request.
    pub idle: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What one connection is doing, as its service and its socket report it.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    phase: Mutex<Phase>,
}

#[derive(Debug)]
struct Phase {
    /// Requests begun and not yet answered in full.
    in_flight: usize,
    /// Whether a request has begun on this connection.
    served: bool,
    /// Whether the connection speaks HTTP/2 (its pings and settings are not requests).
    http2: bool,
    /// When the connection last became idle (the accept, or the end of a response).
    idle_since: Instant,
    /// The first byte read while idle, after a first request: the next request has begun.
    first_byte: Option<Instant>,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Activity> {
        let now = Instant::now();
        Arc::new(Activity {
            accepted: now,
            phase: Mutex::new(Phase { in_flight: 0, served: false, http2: false, idle_since: now, first_byte: None }),
        })
    }

    /// A request's headers are in; the guard marks its end when dropped (with the response
    /// body, once hyper has written it, or with the request if it is abandoned).
    pub fn begin(self: &Arc<Self>, http2: bool) -> RequestGuard {
        let mut p = lock(&self.phase);
        p.in_flight += 1;
        p.served = true;
        p.http2 |= http2;
        p.first_byte = None;
        RequestGuard { activity: Arc::clone(self) }
    }

    fn bytes_read(&self) {
        let mut p = lock(&self.phase);
        if p.in_flight == 0 && p.served && !p.http2 && p.first_byte.is_none() {
            p.first_byte = Some(Instant::now());
        }
    }

    /// Whether the connection is past a deadline at `now` (and which), or else when to look
    /// again.
    fn check(&self, limits: Deadlines, now: Instant) -> Result<ConnectionClose, Instant> {
        let p = lock(&self.phase);
        let (deadline, reason) = if p.in_flight > 0 {
            // A request in progress has its own time limit (request_timeout_secs).
            return Err(now + limits.idle);
        } else if !p.served {
            (self.accepted + limits.header, ConnectionClose::FirstRequestTimeout)
        } else if let Some(t) = p.first_byte {
            (t + limits.header, ConnectionClose::HeaderTimeout)
        } else {
            (p.idle_since + limits.idle, ConnectionClose::IdleTimeout)
        };
        if now >= deadline { Ok(reason) } else { Err(deadline) }
    }
}

/// One request in progress on a connection.
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut p = lock(&self.activity.phase);
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            p.idle_since = Instant::now();
            p.first_byte = None;
        }
    }
}

/// Drives `conn` until it finishes or its connection passes a deadline; in the latter case
/// drops it, which closes the socket.
pub async fn watch<F: Future>(conn: F, activity: &Activity, limits: Deadlines, metrics: &Metrics) {
    tokio::pin!(conn);
    loop {
        let wake = match activity.check(limits, Instant::now()) {
            Ok(reason) => {
                metrics.connection_closed(reason);
                request_log!(DEBUG, reason = reason.as_str(), "closing a connection past its deadline");
                return;
            }
            Err(wake) => wake,
        };
        tokio::select! {
            _ = &mut conn => return,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Open connections per peer address.
#[derive(Debug)]
pub struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// At most `cap` connections per address.
    pub fn new(cap: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress { cap, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more connection from `peer`, or `None` if it holds `cap` already.
    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let key = address_key(peer);
        let mut open = lock(&self.open);
        let n = open.entry(key).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: Arc::clone(self), key })
    }

    /// How many addresses hold a connection now (the table never holds more).
    pub fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

/// The address a connection is counted against: IPv4 as is (an IPv4-mapped IPv6 address as
/// its IPv4 address), IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// One connection's place in [`PerAddress`], given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Refused connections, logged at most once per [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
pub struct Refusals {
    last_logged: Mutex<Option<Instant>>,
    per_address: AtomicU64,
    limit: AtomicU64,
}

impl Refusals {
    /// Counts one refused connection from `peer` and logs the tally if it is time to.
    pub fn refused(&self, reason: ConnectionClose, peer: IpAddr, metrics: &Metrics) {
        metrics.connection_closed(reason);
        match reason {
            ConnectionClose::PerAddressLimit => self.per_address.fetch_add(1, Ordering::Relaxed),
            _ => self.limit.fetch_add(1, Ordering::Relaxed),
        };
        let now = Instant::now();
        let mut last = lock(&self.last_logged);
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        let per_address = self.per_address.swap(0, Ordering::Relaxed);
        let limit = self.limit.swap(0, Ordering::Relaxed);
        request_log!(WARN,
            per_address_limit = per_address,
            connection_limit = limit,
            latest_peer = %address_key(peer),
            "connections closed on arrival since the last report (connection limits reached)"
        );
    }
}

/// The accepted socket: tells its connection's [`Activity`] of bytes read, and closes
/// lingering.
#[derive(Debug)]
pub struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    linger: Linger,
}

#[derive(Debug)]
enum Linger {
    Open,
    Draining { until: Instant, gap: Pin<Box<tokio::time::Sleep>>, drained: usize },
    Done,
}

impl Watched {
    /// Wraps an accepted socket.
    pub fn new(inner: TcpStream, activity: Arc<Activity>) -> Watched {
        Watched { inner, activity, linger: Linger::Open }
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Sends the FIN, then reads and discards what the client still sends until it closes its
    /// side, pauses for [`LINGER_GAP`], or [`LINGER_TIME`] or [`LINGER_BYTES`] is reached.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.linger {
                Linger::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    let now = Instant::now();
                    let until = now + LINGER_TIME;
                    this.linger = Linger::Draining {
                        until,
                        gap: Box::pin(tokio::time::sleep_until((now + LINGER_GAP).into())),
                        drained: 0,
                    };
                }
                Linger::Draining { until, gap, drained } => {
                    let mut scratch = [0u8; 8 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *drained += buf.filled().len();
                            let now = Instant::now();
                            if *drained >= LINGER_BYTES || now >= *until {
                                this.linger = Linger::Done;
                            } else {
                                gap.as_mut().reset((now + LINGER_GAP).min(*until).into());
                            }
                        }
                        // The client closed its side, or the connection failed: done.
                        Poll::Ready(_) => this.linger = Linger::Done,
                        Poll::Pending => {
                            ready!(gap.as_mut().poll(cx));
                            this.linger = Linger::Done;
                        }
                    }
                }
                Linger::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// How often a server pings an HTTP/2 client, to find connections whose peer is gone.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long an HTTP/2 client has to answer a ping before its connection is closed.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection in the reserved slot may ask for.
const HEALTH_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Connections one address may hold: as configured, but at most half of the listener's
/// (never below one).
pub fn per_address_cap(limits: ServeLimits) -> usize {
    limits.max_connections_per_address.min((limits.max_connections / 2).max(1))
}

/// The answer to anything but a health check on the connection kept for health checks.
fn at_limit() -> axum::response::Response {
    let body = serde_json::json!({
        "error": "temporarily_unavailable",
        "error_description": "the server is at its connection limit: this connection is answered on /healthz and /readyz only",
    });
    let mut res = axum::response::IntoResponse::into_response((
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::CONNECTION, "close"), (axum::http::header::RETRY_AFTER, "1")],
        axum::Json(body),
    ));
    res.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    res
}

/// The limits of a served listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// The first-request, header and idle deadlines of each connection.
    pub deadlines: Deadlines,
    /// Connections open at once; beyond it, new ones are closed on arrival.
    pub max_connections: usize,
    /// Connections open at once from one address (see [`address_key`]); never more than
    /// half of `max_connections` ([`per_address_cap`]).
    pub max_connections_per_address: usize,
}

/// Serves `router` on `listener` until `stop` completes, then lets in-flight requests finish
/// (at most 10 s). The accept loop is hyper's own rather than `axum::serve`, for the limits a
/// security service needs, on the broker and on the gate proxy alike: a connection's first
/// request must arrive within the header deadline of the accept, a later one's headers within
/// it of their first byte, and a connection idle past the idle deadline is closed; headers are
/// capped in number and size; beyond `max_connections`, or `max_connections_per_address` from
/// one address, new connections are closed on arrival; and a connection hyper closes is
/// closed lingering, so a client still sending a refused body reads its answer.
pub async fn serve<M: AsRef<Metrics> + Clone + Send + Sync + 'static>(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ServeLimits,
    metrics: M,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use tower::ServiceExt;

    let deadlines = limits.deadlines;
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's own header timer is off: it would also run between keep-alive requests, where the
    // idle deadline applies. The watchdog of each connection keeps both.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_headers(64).max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Some(HTTP2_PING_INTERVAL))
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    let graceful = GracefulShutdown::new();
    // One slot is kept for health checks from loopback (a connection admitted into it is
    // answered on /healthz and /readyz only), and one address may hold at most half of the
    // rest, whatever is configured: no single peer fills the listener.
    let reserve = usize::from(limits.max_connections >= 2);
    let general = limits.max_connections - reserve;
    let slots = Arc::new(tokio::sync::Semaphore::new(general));
    let health_slots = Arc::new(tokio::sync::Semaphore::new(reserve));
    let per_address = PerAddress::new(per_address_cap(limits));
    let refusals = Arc::new(Refusals::default());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    request_log!(WARN, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Some(address_slot) = per_address.try_take(peer.ip()) else {
            refusals.refused(ConnectionClose::PerAddressLimit, peer.ip(), metrics.as_ref());
            drop(stream);
            continue;
        };
        let (slot, health_only) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match health_slots.clone().try_acquire_owned() {
                Ok(slot) if peer.ip().is_loopback() => (slot, true),
                _ => {
                    refusals.refused(ConnectionClose::ConnectionLimit, peer.ip(), metrics.as_ref());
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let service = {
            let (router, activity) = (router.clone(), activity.clone());
            hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                // Marks the request in progress until its answer is written (or it is
                // abandoned): the guard lives in this future, then in the answer's body.
                let guard = activity.begin(req.version() == axum::http::Version::HTTP_2);
                let refuse = health_only && !HEALTH_PATHS.contains(&req.uri().path());
                let answer = router.clone().oneshot(req);
                async move {
                    let res = if refuse { at_limit() } else { answer.await? };
                    Ok::<_, std::convert::Infallible>(res.map(move |body| {
                        body.map_frame(move |frame| {
                            let _in_progress = &guard;
                            frame
                        })
                    }))
                }
            })
        };
        let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            watch(conn, &activity, deadlines, metrics.as_ref()).await;
            drop(slot);
            drop(address_slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        request_log!(WARN, "connections still open after 10 s; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_host_or_ipv6_prefix() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
    }

    #[test]
    fn the_cap_holds_per_address_and_slots_come_back() {
        let table = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = table.try_take(a).unwrap();
        let two = table.try_take(a).unwrap();
        assert!(table.try_take(a).is_none());
        let other = table.try_take(b).unwrap();
        drop(one);
        let three = table.try_take(a).unwrap();
        drop((two, three, other));
        assert_eq!(table.addresses(), 0, "no entry outlives its connections");
    }

    #[test]
    fn deadlines_follow_the_connection() {
        let limits = Deadlines { header: Duration::from_secs(2), idle: Duration::from_secs(5) };
        let act = Activity::new();
        let t0 = act.accepted;
        // Silent: the first-request deadline, from accept; bytes do not move it.
        act.bytes_read();
        assert_eq!(act.check(limits, t0), Err(t0 + limits.header));
        assert_eq!(act.check(limits, t0 + limits.header), Ok(ConnectionClose::FirstRequestTimeout));
        // In flight: no deadline of the watchdog's.
        let guard = act.begin(false);
        assert!(act.check(limits, t0 + Duration::from_secs(60)).is_err());
        drop(guard);
        let idle = lock(&act.phase).idle_since;
        assert_eq!(act.check(limits, idle), Err(idle + limits.idle));
        assert_eq!(act.check(limits, idle + limits.idle), Ok(ConnectionClose::IdleTimeout));
        // A byte while idle on HTTP/1.1 starts the header deadline.
        act.bytes_read();
        let first = lock(&act.phase).first_byte.unwrap();
        assert_eq!(act.check(limits, first + limits.header), Ok(ConnectionClose::HeaderTimeout));
        // On HTTP/2, frames between requests (pings, settings) are not a request.
        let h2 = Activity::new();
        drop(h2.begin(true));
        h2.bytes_read();
        assert!(lock(&h2.phase).first_byte.is_none());
    }
}
