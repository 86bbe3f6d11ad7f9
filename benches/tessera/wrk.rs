//! The token endpoint driven by wrk (Debian's package) on core 1, beside the benchmark's own
//! load generator: a C client with no runtime of its own, so that the figure is the broker's
//! and not the generator's. Each step reports wrk's CPU per request next to the broker's.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http::HeaderValue;

use crate::load::Step;
use crate::procs::{self, Pinning};

/// Whether `wrk` can be run.
pub fn available() -> bool {
    std::process::Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// One fixed request, the first client's: wrk sends it as formatted once, with no Lua run per
/// request (a `request()` function costs wrk enough CPU to lower what it measures).
fn script(path: &str, auth: &HeaderValue, body: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.path = {path:?}\nwrk.body = {body:?}\n\
         wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
         wrk.headers[\"Authorization\"] = {:?}\n",
        auth.to_str().unwrap_or_default()
    )
}

/// `1.31ms`, `850.00us`, `1.02s` → milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

struct Parsed {
    requests: u64,
    secs: f64,
    non_2xx: u64,
    socket_errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn parse(out: &str) -> anyhow::Result<Parsed> {
    let mut p = Parsed {
        requests: 0,
        secs: 0.0,
        non_2xx: 0,
        socket_errors: 0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
    };
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [n, "requests", "in", secs, ..] => {
                p.requests = n.parse()?;
                p.secs = secs.trim_end_matches(',').trim_end_matches('s').parse()?;
            }
            ["50%", v] => p.p50_ms = millis(v).unwrap_or(f64::NAN),
            ["99%", v] => p.p99_ms = millis(v).unwrap_or(f64::NAN),
            ["Latency", _avg, _stdev, max, ..] => p.max_ms = millis(max).unwrap_or(f64::NAN),
            ["Non-2xx", "or", "3xx", "responses:", n] => p.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                p.socket_errors = rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum();
            }
            _ => {}
        }
    }
    if p.secs <= 0.0 {
        bail!("wrk printed no summary: {out}");
    }
    Ok(p)
}

/// Runs wrk on core 1 for `secs`; its output and its CPU seconds (sampled every 10 ms until
/// it exits).
fn run(pin: &Pinning, script: &Path, url: &str, c: usize, d: Duration) -> anyhow::Result<(String, f64)> {
    let secs = format!("{}s", d.as_secs().max(1));
    let mut child = pin
        .command(1, "wrk")
        .args(["-t1", &format!("-c{c}"), &format!("-d{secs}"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start wrk")?;
    let pid = child.id();
    let mut cpu = 0.0;
    let deadline = Instant::now() + d + Duration::from_secs(30);
    loop {
        if let Some(c) = procs::cpu_seconds(pid) {
            cpu = c;
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), cpu))
}

/// One step at `c` connections: a warm-up run, then a measured one.
#[allow(clippy::too_many_arguments)]
pub fn step(
    pin: &Pinning,
    dir: &Path,
    addr: std::net::SocketAddr,
    path: &str,
    auths: &[HeaderValue],
    body: &str,
    c: usize,
    warm: Duration,
    measure: Duration,
    server_pid: u32,
) -> anyhow::Result<Step> {
    let script_path = dir.join("wrk-mint.lua");
    let auth = auths.first().context("no client credentials")?;
    std::fs::write(&script_path, script(path, auth, body))?;
    let url = format!("http://{addr}{path}");
    run(pin, &script_path, &url, c, warm)?;
    let server0 = procs::cpu_seconds(server_pid);
    let core0 = procs::cpu_busy_seconds(0);
    let t0 = Instant::now();
    let (out, client_cpu) = run(pin, &script_path, &url, c, measure)?;
    let window = t0.elapsed().as_secs_f64();
    let server1 = procs::cpu_seconds(server_pid);
    let core1 = procs::cpu_busy_seconds(0);
    let p = parse(&out)?;
    let server = server0.zip(server1).map_or(f64::NAN, |(a, b)| (b - a) / window);
    let ok = p.requests.saturating_sub(p.non_2xx);
    Ok(Step {
        concurrency: c,
        ok,
        errors: p.non_2xx + p.socket_errors,
        first_error: (p.non_2xx + p.socket_errors > 0).then(|| {
            let socket = out.lines().find(|l| l.contains("Socket errors")).unwrap_or_default().trim();
            format!("{} non-2xx answers; {socket}", p.non_2xx)
        }),
        per_sec: ok as f64 / p.secs,
        p50_ms: p.p50_ms,
        p99_ms: p.p99_ms,
        max_ms: p.max_ms,
        server_cpu: server,
        client_cpu: client_cpu / p.secs,
        others_on_core0: (core0.zip(core1).map_or(f64::NAN, |(a, b)| (b - a) / window) - server).max(0.0),
    })
}
