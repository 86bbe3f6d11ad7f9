//! The load generator: HTTP/1.1 keep-alive connections on a bare hyper client, each with one
//! request in flight (a closed loop), for a bounded time; latencies recorded per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::procs;

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    /// Connects to `addr` with `TCP_NODELAY`.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, host: HeaderValue::from_str(&addr.to_string())? })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(http::HeaderName, HeaderValue)],
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder().method(method).uri(path).body(Full::new(body))?;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        for (k, v) in headers {
            h.insert(k.clone(), v.clone());
        }
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// A JSON request with a bearer token; the answer's status and JSON body.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut headers = vec![(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {bearer}"))?)];
        let bytes = match body {
            Some(b) => {
                headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let (status, bytes) = self.send(method, path, &headers, bytes).await?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes)? };
        Ok((status, value))
    }
}

/// A token endpoint to drive: where, and the credentials to rotate through.
pub struct TokenTarget {
    /// The server's address.
    pub addr: SocketAddr,
    /// The token endpoint's path.
    pub path: &'static str,
    /// One `Authorization: Basic …` per client; connection `i` uses `auths[i % len]`.
    pub auths: Vec<HeaderValue>,
    /// The form body.
    pub body: Bytes,
    /// DPoP proofs made ahead of time, each sent once (a proof is single use); `None`: no
    /// proofs.
    pub proofs: Option<ProofPool>,
    /// More headers, sent after (and so replacing) the form's `Content-Type`.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// Proofs for the token endpoint, made before the step so that signing them does not load
/// the generator during it.
pub struct ProofPool {
    proofs: Vec<HeaderValue>,
    next: std::sync::atomic::AtomicUsize,
}

impl ProofPool {
    /// `n` proofs for `POST url` by `key`, made at `now`.
    pub fn new(key: &tessera::verify::dpop::DpopKey, url: &str, n: usize, now: i64) -> ProofPool {
        let proofs = (0..n)
            .filter_map(|_| key.proof("POST", url, None, None, now).ok())
            .filter_map(|p| HeaderValue::from_str(&p).ok())
            .collect();
        ProofPool { proofs, next: std::sync::atomic::AtomicUsize::new(0) }
    }

    fn take(&self) -> Option<HeaderValue> {
        self.proofs.get(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).cloned()
    }
}

/// The `Authorization` header of HTTP Basic client authentication.
pub fn basic(id: &str, secret: &str) -> HeaderValue {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    HeaderValue::from_str(&format!("Basic {raw}")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl TokenTarget {
    /// Asks for one token; the access token.
    pub async fn one(&self) -> anyhow::Result<String> {
        let mut conn = Conn::open(self.addr).await?;
        let (status, body) = conn.send(Method::POST, self.path, &self.request_headers(0), self.body.clone()).await?;
        if status != StatusCode::OK {
            bail!("token request: {status}: {}", String::from_utf8_lossy(&body));
        }
        let v: Value = serde_json::from_slice(&body)?;
        Ok(v["access_token"].as_str().context("no access_token in the answer")?.to_owned())
    }

    fn request_headers(&self, i: usize) -> Vec<(http::HeaderName, HeaderValue)> {
        let mut h = vec![
            (AUTHORIZATION, self.auths[i % self.auths.len()].clone()),
            (CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded")),
        ];
        if let Some(pool) = &self.proofs {
            h.push((http::HeaderName::from_static("dpop"), pool.take().unwrap_or(HeaderValue::from_static("spent"))));
        }
        h.extend(self.headers.iter().cloned());
        h
    }
}

/// The outcome of one step at one concurrency.
#[derive(Debug, Clone)]
pub struct Step {
    /// Connections, each with one request in flight.
    pub concurrency: usize,
    /// Successful answers completed in the measured window.
    pub ok: u64,
    /// Other answers and failures in the measured window.
    pub errors: u64,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
    /// Successful answers per second.
    pub per_sec: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// The server's CPU use in the window, in cores.
    pub server_cpu: f64,
    /// The load generator's CPU use in the window, in cores.
    pub client_cpu: f64,
    /// Core 0's busy time in the window not spent by the server, in cores: other processes
    /// on the server's core (noise).
    pub others_on_core0: f64,
}

impl Step {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "per_sec": round(self.per_sec, 0),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "server_cpu_cores": round(self.server_cpu, 2),
            // The server's CPU time per successful answer: comparable with one raw signature.
            "server_cpu_us_per_answer": (self.per_sec > 0.0).then(|| round(self.server_cpu / self.per_sec * 1e6, 1)),
            "client_cpu_cores": round(self.client_cpu, 2),
            "others_on_core0_cores": round(self.others_on_core0, 2),
        })
    }
}

/// Rounds for display in JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The `q` quantile of sorted microsecond latencies, in milliseconds.
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

struct WorkerOut {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Drives `target` with `concurrency` connections: `warm` unmeasured, then `measure`.
pub async fn step(
    target: &Arc<TokenTarget>,
    concurrency: usize,
    warm: Duration,
    measure: Duration,
    server_pid: u32,
) -> anyhow::Result<Step> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(Conn::open(target.addr).await?);
    }
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + measure;
    let mut tasks = Vec::with_capacity(concurrency);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = WorkerOut { latencies_us: Vec::with_capacity(4096), ok: 0, errors: 0, first_error: None };
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let headers = target.request_headers(i);
                let result = conn.send(Method::POST, target.path, &headers, target.body.clone()).await;
                let t1 = Instant::now();
                if t0 < measure_from || t1 > end {
                    if result.is_err() {
                        // A broken connection stays broken: stop this worker.
                        break;
                    }
                    continue;
                }
                match result {
                    Ok((StatusCode::OK, _)) => {
                        out.ok += 1;
                        out.latencies_us.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok((status, body)) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            out
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let server0 = procs::cpu_seconds(server_pid);
    let client0 = procs::cpu_seconds(std::process::id());
    let core0 = procs::cpu_busy_seconds(0);
    let t0 = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let server1 = procs::cpu_seconds(server_pid);
    let client1 = procs::cpu_seconds(std::process::id());
    let core1 = procs::cpu_busy_seconds(0);
    let window = t0.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        let out = t.await?;
        all.extend(out.latencies_us);
        ok += out.ok;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    all.sort_unstable();
    let cpu = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) / window,
        _ => f64::NAN,
    };
    Ok(Step {
        concurrency,
        ok,
        errors,
        first_error,
        per_sec: ok as f64 / measure.as_secs_f64(),
        p50_ms: quantile_ms(&all, 0.50),
        p99_ms: quantile_ms(&all, 0.99),
        max_ms: all.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
        server_cpu: cpu(server0, server1),
        client_cpu: cpu(client0, client1),
        others_on_core0: (cpu(core0, core1) - cpu(server0, server1)).max(0.0),
    })
}
