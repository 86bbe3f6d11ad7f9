//! Tessera's benchmark: `cargo bench --bench tessera [-- --quick] [-- --json PATH] [-- --no-peer]`
//! (`-- --in-process-only`: the raw limits and the library's verify figures alone;
//! `-- --mint-only`: raw sign and the token endpoint on SQLite, both load generators).
//!
//! One run measures, and reports as a table and as JSON:
//!
//! - raw ring Ed25519 sign and verify rates on one core, and in-process minting
//!   (`Signer::sign_access`) and verification (`Policy::verify_access`, keys cached) against
//!   them;
//! - the broker's `client_credentials` throughput and p50/p99 latency over HTTP/1.1
//!   keep-alive at several concurrencies: the real `tessera serve` (release build, the shipped
//!   defaults, SQLite) as a separate process on core 0, the load generator on core 1;
//! - the broker's resident memory (`VmHWM`, `VmRSS`) and that the audit chain still verifies;
//! - the approval round trip (create, decide, fetch the capability, redeem) over HTTP;
//! - DPoP: verifying a bound token with its proof in-process against raw verify, and minting
//!   with a proof over HTTP against plain minting at concurrency 16, adjacent in the run;
//! - the gate proxy: requests per second through `tessera gate` to a trivial upstream against
//!   the upstream alone, both on core 0, and the CPU each spends per request
//!   (`-- --proxy-only` runs this step alone);
//! - approval policy (`-- --policy-only`, a step of its own): Cedar evaluation per decision in
//!   µs, and the approval round trip with a ten-policy file against none, side by side;
//! - a peer, node-oidc-provider, configured for the same grant with EdDSA JWT access tokens,
//!   installed by `benches/peer/setup` and driven the same way on the same core;
//! - with `TESSERA_BENCH_POSTGRES_URL` or `TESSERA_TEST_POSTGRES_URL` set (an admin URL; a
//!   fresh database is created and dropped), the token endpoint on PostgreSQL too.
//!
//! Every figure sits next to a limit measured in the same run (raw sign, raw verify, the
//! peer), because these machines are noisy and absolute times are not stable. See
//! docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

#[path = "tessera/load.rs"]
mod load;
#[path = "tessera/policy.rs"]
mod policy;
#[path = "tessera/procs.rs"]
mod procs;
#[path = "tessera/proxy.rs"]
mod proxy;
#[path = "tessera/wrk.rs"]
mod wrk;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use tessera::domain::CallerKind;
use tessera::token::AccessClaims;
use tessera::token::claims::Audience;
use tessera::verify::{Policy, PublicKey};

use load::{Conn, Step, TokenTarget, basic, quantile_ms, round};
use procs::Pinning;

/// Concurrencies of the HTTP steps: connections, each with one request in flight.
const CONCURRENCIES: [usize; 4] = [1, 4, 16, 64];
/// Clients registered on each server; connection `i` authenticates as client `i % CLIENTS`.
const CLIENTS: usize = 8;

struct Opts {
    quick: bool,
    json_out: Option<String>,
    peer: bool,
    /// Budget of each in-process rate.
    budget: Duration,
    /// Unmeasured start of each HTTP step.
    warm: Duration,
    /// Measured part of each HTTP step.
    measure: Duration,
}

/// Runs `f` repeatedly for about `budget` and returns operations per second (best of 3).
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    (0..3).map(|_| rate_once(budget / 3, &mut f)).fold(0.0, f64::max)
}

/// The rates of a raw operation and of the measured one, taken in alternating slices of
/// `budget / 12` (best slice of six each), so that both see the same machine: a ratio from
/// slices minutes apart on a shared machine says more about the neighbours than the code.
fn paired_rates(budget: Duration, mut raw: impl FnMut(), mut measured: impl FnMut()) -> (f64, f64) {
    let slice = budget / 12;
    let (mut best_raw, mut best_measured) = (0.0f64, 0.0f64);
    for _ in 0..6 {
        best_raw = best_raw.max(rate_once(slice, &mut raw));
        best_measured = best_measured.max(rate_once(slice, &mut measured));
    }
    (best_raw, best_measured)
}

fn rate_once(slice: Duration, f: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < slice {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct InProcess {
    /// The faster library's raw sign (the limit the targets are stated against) and verify.
    raw_sign: f64,
    /// Raw sign and verify of each library, paired: ring, then ed25519-dalek.
    libraries: [(&'static str, f64, f64); 2],
    /// Which library `raw_sign` and `raw_verify` are.
    raw_library: &'static str,
    mint: f64,
    raw_verify: f64,
    verify: f64,
    /// Raw verify and verify with a DPoP proof (token and proof, replay cache), paired.
    dpop_raw_verify: f64,
    dpop_verify: f64,
    token_bytes: usize,
    /// Per-call costs of the other in-process stages of a mint, microseconds.
    stages_us: Vec<(&'static str, f64)>,
}

/// Microseconds per call of the token endpoint's in-process stages other than signing, for
/// comparison with the signature itself.
fn stage_costs(budget: Duration) -> Vec<(&'static str, f64)> {
    use tessera::audit::{AuditRecord, GENESIS, record_hash};
    let secret = "tessera_sk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let detail = json!({"grant": "client_credentials", "sub": "tc_AAAAAAAAAAAAAAAAAAAAAA", "kind": "agent",
        "scope": "approvals:create workspaces:read workspaces:write", "exp": 1_800_000_300});
    let record = AuditRecord {
        seq: 12345,
        at: 1_800_000_000,
        event: "token.issued".into(),
        actor: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
        tenant: "org-1".into(),
        subject: "BBBBBBBBBBBBBBBBBBBBBB".into(),
        detail: tessera::token::jcs::canonicalize(&detail),
        prev_hash: GENESIS.into(),
        hash: String::new(),
    };
    let us = |r: f64| 1e6 / r;
    vec![
        (
            "client secret hash (SHA-256, hex)",
            us(rate(budget, || {
                black_box(tessera::clients::hash_secret(black_box(secret)));
            })),
        ),
        (
            "audit detail to canonical JSON",
            us(rate(budget, || {
                black_box(tessera::token::jcs::canonicalize(black_box(&detail)));
            })),
        ),
        (
            "audit record hash (JCS + SHA-256)",
            us(rate(budget, || {
                black_box(record_hash(black_box(&record)));
            })),
        ),
    ]
}

fn in_process(budget: Duration) -> InProcess {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signer = tessera::keys::generate(dir.path()).unwrap();
    let now = 1_800_000_000;
    let claims = AccessClaims {
        iss: "http://127.0.0.1:8700".into(),
        sub: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
        client_id: "tc_AAAAAAAAAAAAAAAAAAAAAA".into(),
        aud: Audience::One("core".into()),
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: "BBBBBBBBBBBBBBBBBBBBBB".into(),
        scope: "approvals:create workspaces:read workspaces:write".into(),
        tenant: "org-1".into(),
        caller_kind: CallerKind::Agent,
        workspace: None,
        act: None,
        cnf: None,
    };
    let token = signer.sign_access(&claims).unwrap();
    let signing_input_len = token.rfind('.').unwrap();
    let message = token.as_bytes()[..signing_input_len].to_vec();
    let raw_sig = pair.sign(&message);
    let raw_pk = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    // The same key in ed25519-dalek (the seed is bytes 16..48 of ring's document).
    let dalek = ed25519_dalek::SigningKey::from_bytes(&doc.as_ref()[16..48].try_into().unwrap());
    let dalek_pk = dalek.verifying_key().to_bytes();
    let dalek_sig = ed25519_dalek::Signature::from_bytes(&raw_sig.as_ref().try_into().unwrap());
    let (ring_sign, dalek_sign) = paired_rates(
        budget,
        || {
            black_box(pair.sign(black_box(&message)));
        },
        || {
            black_box(ed25519_dalek::Signer::sign(&dalek, black_box(&message)));
        },
    );
    // Verification from the raw 32-byte key, as a JWKS gives it: each library decodes it.
    let dalek_verify = || {
        let key = ed25519_dalek::VerifyingKey::from_bytes(black_box(&dalek_pk)).unwrap();
        ed25519_dalek::Verifier::verify(&key, black_box(&message), black_box(&dalek_sig)).unwrap();
    };
    let (ring_verify, dalek_verify_rate) = paired_rates(
        budget,
        || {
            raw_pk.verify(black_box(&message), black_box(raw_sig.as_ref())).unwrap();
        },
        dalek_verify,
    );
    let dalek_faster = dalek_sign > ring_sign;
    let raw_library = if dalek_faster { "ed25519-dalek" } else { "ring" };
    let libraries = [("ring", ring_sign, ring_verify), ("ed25519-dalek", dalek_sign, dalek_verify_rate)];
    let mut raw_sign_op = || {
        if dalek_faster {
            black_box(ed25519_dalek::Signer::sign(&dalek, black_box(&message)));
        } else {
            black_box(pair.sign(black_box(&message)));
        }
    };
    let raw_verify_op = || {
        if dalek_faster {
            dalek_verify();
        } else {
            raw_pk.verify(black_box(&message), black_box(raw_sig.as_ref())).unwrap();
        }
    };

    let (raw_sign, mint) = paired_rates(budget, &mut raw_sign_op, || {
        black_box(signer.sign_access(black_box(&claims)).unwrap());
    });
    let mut keys = HashMap::new();
    keys.insert(
        signer.kid().to_owned(),
        Arc::new(PublicKey { kid: signer.kid().to_owned(), alg: "EdDSA".into(), raw: signer.public_key().to_vec() }),
    );
    let policy = Policy::new("http://127.0.0.1:8700", "core");
    let (raw_verify, verify) = paired_rates(budget, raw_verify_op, || {
        black_box(policy.verify_access(&keys, black_box(&token), now + 1).unwrap());
    });
    // The same token bound to a key, presented with a fresh proof each time: proofs are made
    // ahead (a proof is single use) and the replay cache starts afresh each round of them.
    let key = tessera::verify::dpop::DpopKey::generate_ed25519().unwrap();
    let bound = signer
        .sign_access(&AccessClaims {
            cnf: Some(tessera::token::Confirmation { jkt: key.jkt().to_owned() }),
            ..claims.clone()
        })
        .unwrap();
    let url = "https://core.example/workspaces/ws-1";
    let proofs: Vec<String> = (0..4096).map(|_| key.proof("GET", url, Some(&bound), None, now).unwrap()).collect();
    let mut dpop = tessera::verify::dpop::DpopVerifier::default();
    let mut i = 0usize;
    let (dpop_raw_verify, dpop_verify) = paired_rates(budget, raw_verify_op, || {
        if i == proofs.len() {
            i = 0;
            dpop = tessera::verify::dpop::DpopVerifier::default();
        }
        let c = policy.verify_access(&keys, black_box(&bound), now + 1).unwrap();
        let scheme = tessera::verify::dpop::Scheme::Dpop;
        black_box(dpop.check_presentation(&c, scheme, &bound, Some(&proofs[i]), "GET", url, now + 1).unwrap());
        i += 1;
    });
    let stages_us = stage_costs(budget / 3);
    InProcess {
        raw_sign,
        libraries,
        raw_library,
        mint,
        raw_verify,
        verify,
        dpop_raw_verify,
        dpop_verify,
        token_bytes: token.len(),
        stages_us,
    }
}

/// Raw sign on both cores: one thread per core, each signing the token's signing input with
/// the faster library for `budget`; the sum of their rates.
fn two_core_raw_sign(budget: Duration, dalek: bool) -> f64 {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let message = vec![b'a'; 597];
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (doc, message) = (doc.as_ref().to_vec(), message.clone());
            std::thread::spawn(move || {
                let pair = Ed25519KeyPair::from_pkcs8(&doc).unwrap();
                let key = ed25519_dalek::SigningKey::from_bytes(&doc[16..48].try_into().unwrap());
                rate(budget, || {
                    if dalek {
                        black_box(ed25519_dalek::Signer::sign(&key, black_box(&message)));
                    } else {
                        black_box(pair.sign(black_box(&message)));
                    }
                })
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Fetches the JWKS and verifies `token` with the verifier library: the tokens measured are
/// real ones.
async fn check_token(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<()> {
    let mut conn = Conn::open(addr).await?;
    let (status, body) = conn.send(Method::GET, "/.well-known/jwks.json", &[], Bytes::new()).await?;
    anyhow::ensure!(status == StatusCode::OK, "JWKS: {status}");
    let jwks: Value = serde_json::from_slice(&body)?;
    let mut keys = HashMap::new();
    for k in jwks["keys"].as_array().cloned().unwrap_or_default() {
        let kid = k["kid"].as_str().unwrap_or_default().to_owned();
        let raw = tessera::token::b64::decode(k["x"].as_str().unwrap_or_default())?;
        keys.insert(kid.clone(), Arc::new(PublicKey { kid, alg: "EdDSA".into(), raw }));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    Policy::new(format!("http://{addr}"), "core").verify_access(&keys, token, now)?;
    Ok(())
}

/// Drives a token endpoint at every concurrency.
async fn token_steps(opts: &Opts, target: &Arc<TokenTarget>, pid: u32, label: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for c in CONCURRENCIES {
        match load::step(target, c, opts.warm, opts.measure, pid).await {
            Ok(s) => {
                eprintln!(
                    "  {label:<26} c={c:<3} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server cpu {:.2}  others on core 0 {:.2}  errors {}",
                    s.per_sec, s.p50_ms, s.p99_ms, s.server_cpu, s.others_on_core0, s.errors
                );
                steps.push(s);
            }
            Err(e) => eprintln!("  {label} c={c}: failed: {e:#}"),
        }
    }
    steps
}

/// The token steps again with wrk as the load generator (when installed), at 16 and 64
/// connections: the figures the targets are judged on when present.
async fn wrk_steps(opts: &Opts, pin: &Pinning, dir: &Path, target: &TokenTarget, pid: u32, label: &str) -> Vec<Step> {
    if !pin.enabled || !wrk::available() {
        eprintln!("  {label}: wrk not installed (or no second core): the steps above are the only HTTP figures");
        return Vec::new();
    }
    let body = String::from_utf8_lossy(&target.body).into_owned();
    let mut steps = Vec::new();
    for c in [16, 64] {
        let warm = opts.warm.max(Duration::from_secs(1));
        let measure = opts.measure.max(Duration::from_secs(2));
        // Let the previous step's connections close first (the broker caps connections per
        // address), and keep this runtime turning while wrk runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (pin, dir, addr, path, auths, body) =
            (pin.clone(), dir.to_owned(), target.addr, target.path, target.auths.clone(), body.clone());
        let run = tokio::task::spawn_blocking(move || {
            wrk::step(&pin, &dir, addr, path, &auths, &body, c, warm, measure, pid)
        })
        .await;
        match run.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(s) => {
                eprintln!(
                    "  {label:<26} wrk c={c:<3} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server cpu {:.2} ({:.1} µs/token)  wrk cpu {:.2} ({:.1} µs/request)  errors {}",
                    s.per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.server_cpu,
                    s.server_cpu / s.per_sec.max(1.0) * 1e6,
                    s.client_cpu,
                    s.client_cpu / s.per_sec.max(1.0) * 1e6,
                    s.errors
                );
                steps.push(s);
            }
            Err(e) => eprintln!("  {label} wrk c={c}: failed: {e:#}"),
        }
    }
    steps
}

/// Minting with a DPoP proof against plain minting, at one concurrency, adjacent steps of the
/// same run: the broker checks each proof (signature, claims, replay cache) and binds the token.
async fn dpop_mint(opts: &Opts, plain: &Arc<TokenTarget>, pid: u32, label: &str) -> Value {
    const C: usize = 16;
    let key = tessera::verify::dpop::DpopKey::generate_ed25519().unwrap();
    let url = format!("http://{}/oauth/token", plain.addr);
    let secs = (opts.warm + opts.measure).as_secs_f64();
    let n = (30_000.0 * secs) as usize + 1000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let with_proofs = Arc::new(TokenTarget {
        addr: plain.addr,
        path: plain.path,
        auths: plain.auths.clone(),
        body: plain.body.clone(),
        proofs: Some(load::ProofPool::new(&key, &url, n, now)),
        headers: vec![],
    });
    let base = load::step(plain, C, opts.warm, opts.measure, pid).await;
    let bound = load::step(&with_proofs, C, opts.warm, opts.measure, pid).await;
    match (base, bound) {
        (Ok(b), Ok(d)) => {
            eprintln!(
                "  {label:<26} c={C:<3} plain {:>8.0}/s, with DPoP {:>8.0}/s (p99 {:.2} ms), errors {}",
                b.per_sec, d.per_sec, d.p99_ms, d.errors
            );
            json!({
                "concurrency": C, "plain_per_sec": round(b.per_sec, 0), "dpop_per_sec": round(d.per_sec, 0),
                "ratio": round(d.per_sec / b.per_sec.max(1.0), 3), "dpop_p99_ms": d.p99_ms, "errors": d.errors,
                "first_error": d.first_error,
            })
        }
        (Err(e), _) | (_, Err(e)) => json!({"error": format!("{e:#}")}),
    }
}

/// The approval round trip, sequentially: the agent creates a request, an operator
/// approves it, the agent reads its capability and redeems it.
async fn approval_round_trips(
    addr: std::net::SocketAddr,
    agent: &(String, String),
    operator: &(String, String),
    budget: Duration,
) -> anyhow::Result<Value> {
    let token_of = |c: &(String, String)| TokenTarget {
        addr,
        path: "/oauth/token",
        auths: vec![basic(&c.0, &c.1)],
        body: Bytes::from_static(b"grant_type=client_credentials"),
        proofs: None,
        headers: vec![],
    };
    let at = token_of(agent).one().await?;
    let ot = token_of(operator).one().await?;
    let mut a = Conn::open(addr).await?;
    let mut o = Conn::open(addr).await?;
    let mut stages: [Vec<u32>; 5] = Default::default();
    let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < budget && i < 2000 {
        i += 1;
        let params =
            tessera::verify::presented(&json!({"key": format!("K{i}"), "value": "sk-bench-value"}), &["value"])?;
        let body = json!({
            "action": "secret_write",
            "resource": format!("workspaces/ws-bench/secrets/K{i}"),
            "params": params,
            "params_digest": tessera::verify::params_digest(&params).to_string(),
            "summary": {"key": format!("K{i}")},
            "reason": "benchmark",
        });
        let t0 = Instant::now();
        let (s, v) = a.json(Method::POST, "/v1/approvals", &at, Some(&body)).await?;
        anyhow::ensure!(s == StatusCode::ACCEPTED, "create: {s} {v}");
        let id = v["approval_id"].as_str().unwrap_or_default().to_owned();
        let t1 = Instant::now();
        let decision = json!({"decision": "approve", "note": "benchmark"});
        let (s, v) = o.json(Method::POST, &format!("/v1/approvals/{id}/decision"), &ot, Some(&decision)).await?;
        anyhow::ensure!(s.is_success(), "decide: {s} {v}");
        let t2 = Instant::now();
        let (s, v) = a.json(Method::GET, &format!("/v1/approvals/{id}"), &at, None).await?;
        anyhow::ensure!(s == StatusCode::OK, "fetch: {s} {v}");
        let cap = v["capability"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!cap.is_empty(), "no capability once approved: {v}");
        let t3 = Instant::now();
        let (s, v) = a.json(Method::POST, "/v1/capabilities/redeem", &at, Some(&json!({"capability": cap}))).await?;
        anyhow::ensure!(s == StatusCode::OK, "redeem: {s} {v}");
        let t4 = Instant::now();
        for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0].into_iter().enumerate() {
            stages[k].push(us(d));
        }
    }
    for s in &mut stages {
        s.sort_unstable();
    }
    let names = ["create", "decide", "fetch_capability", "redeem", "round_trip"];
    let mut out = serde_json::Map::new();
    out.insert("round_trips".into(), json!(i));
    for (name, s) in names.iter().zip(&stages) {
        out.insert(
            (*name).into(),
            json!({"p50_ms": round(quantile_ms(s, 0.5), 3), "p99_ms": round(quantile_ms(s, 0.99), 3)}),
        );
    }
    Ok(Value::Object(out))
}

fn steps_json(steps: &[Step]) -> Value {
    Value::Array(steps.iter().map(Step::to_json).collect())
}

fn peak(steps: &[Step]) -> f64 {
    steps.iter().map(|s| s.per_sec).fold(0.0, f64::max)
}

/// Tessera on one database: token endpoint steps, memory, optionally the approval round
/// trip, then the audit chain check.
async fn run_tessera(
    opts: &Opts,
    pin: &Pinning,
    dir: &Path,
    database_url: &str,
    label: &str,
    approvals: bool,
    extra_env: &[(&str, &str)],
) -> Value {
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        match procs::create_client(dir, database_url, "agent", &format!("bench-agent-{i}")) {
            Ok(c) => clients.push(c),
            Err(e) => return json!({"error": format!("{e:#}")}),
        }
    }
    let operator = match procs::create_client(dir, database_url, "operator", "bench-operator") {
        Ok(c) => c,
        Err(e) => return json!({"error": format!("{e:#}")}),
    };
    let mut server = match procs::start_broker(pin, dir, database_url, label, extra_env) {
        Ok(s) => s,
        Err(e) => return json!({"error": format!("{e:#}")}),
    };
    if let Err(e) = server.wait_ready("/readyz").await {
        return json!({"error": format!("{e:#}")});
    }
    let target = Arc::new(TokenTarget {
        addr: server.addr,
        path: "/oauth/token",
        auths: clients.iter().map(|(id, secret)| basic(id, secret)).collect(),
        body: Bytes::from_static(b"grant_type=client_credentials"),
        proofs: None,
        headers: vec![],
    });
    let checked = match target.one().await {
        Ok(t) => check_token(server.addr, &t).await.map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    // On both cores only wrk drives the broker (the benchmark's own generator stays on core 1).
    let steps = if pin.spread { Vec::new() } else { token_steps(opts, &target, server.pid(), label).await };
    let wrk_steps = wrk_steps(opts, pin, dir, &target, server.pid(), label).await;
    let memory_after_tokens = procs::memory_mib(server.pid());
    let dpop = if approvals { dpop_mint(opts, &target, server.pid(), label).await } else { Value::Null };
    let approval = if approvals {
        let budget = if opts.quick { Duration::from_millis(600) } else { Duration::from_secs(3) };
        match approval_round_trips(server.addr, &clients[0], &operator, budget).await {
            Ok(v) => {
                eprintln!(
                    "  {label:<22} approval round trip: p50 {} ms, p99 {} ms ({} round trips)",
                    v["round_trip"]["p50_ms"], v["round_trip"]["p99_ms"], v["round_trips"]
                );
                v
            }
            Err(e) => json!({"error": format!("{e:#}")}),
        }
    } else {
        Value::Null
    };
    let memory = procs::memory_mib(server.pid());
    server.stop();
    // `audit verify` over everything the steps wrote: every hash and every checkpoint.
    let started = std::time::Instant::now();
    let (audit_ok, audit_text) = procs::audit_verify(dir, database_url);
    let audit_secs = started.elapsed().as_secs_f64();
    let audit_records = audit_text
        .split_once("intact: ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    let mem =
        |m: Option<(f64, f64)>| m.map(|(hwm, rss)| json!({"vm_hwm_mib": round(hwm, 1), "vm_rss_mib": round(rss, 1)}));
    json!({
        "steps": steps_json(&steps),
        "peak_per_sec": round(peak(&steps), 0),
        "wrk_steps": steps_json(&wrk_steps),
        "wrk_peak_per_sec": (!wrk_steps.is_empty()).then(|| round(peak(&wrk_steps), 0)),
        "token_verified": checked.is_ok(),
        "token_check_error": checked.err(),
        "memory_after_token_steps": mem(memory_after_tokens),
        "memory": mem(memory),
        "approval_round_trip": approval,
        "dpop_mint": dpop,
        "audit_verify": {
            "ok": audit_ok, "output": audit_text, "seconds": round(audit_secs, 3),
            "records_per_sec": audit_records.map(|n| round(n / audit_secs, 0)),
        },
    })
}

/// The peer, installed and driven the same way.
async fn run_peer(opts: &Opts, pin: &Pinning, dir: &Path) -> Value {
    let peer_dir = match procs::install_peer() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("  peer: not installed: {e:#}");
            return json!({"error": format!("not installed: {e:#}")});
        }
    };
    let rng = SystemRandom::new();
    let clients: Vec<(String, String)> = (0..CLIENTS)
        .map(|i| {
            let mut b = [0u8; 32];
            rng.fill(&mut b).unwrap();
            (format!("peer-client-{i}"), tessera::token::b64::encode(&b))
        })
        .collect();
    let mut server = match procs::start_peer(pin, &peer_dir, &clients, dir) {
        Ok(s) => s,
        Err(e) => return json!({"error": format!("{e:#}")}),
    };
    if let Err(e) = server.wait_ready("/.well-known/openid-configuration").await {
        return json!({"error": format!("{e:#}")});
    }
    // The same claims as Tessera's default grant: the scopes are asked for explicitly,
    // since the peer grants none unless asked.
    let target = Arc::new(TokenTarget {
        addr: server.addr,
        path: "/token",
        auths: clients.iter().map(|(id, secret)| basic(id, secret)).collect(),
        body: Bytes::from_static(
            b"grant_type=client_credentials&scope=approvals%3Acreate+workspaces%3Aread+workspaces%3Awrite",
        ),
        proofs: None,
        headers: vec![],
    });
    let sample = match target.one().await {
        Ok(t) => t,
        Err(e) => return json!({"error": format!("{e:#}"), "log": server.log_tail()}),
    };
    let header = sample.split('.').next().and_then(|h| tessera::token::b64::decode(h).ok());
    let header: Value = header.and_then(|h| serde_json::from_slice(&h).ok()).unwrap_or(Value::Null);
    let steps = token_steps(opts, &target, server.pid(), "peer (oidc-provider)").await;
    let wrk_steps = wrk_steps(opts, pin, dir, &target, server.pid(), "peer (oidc-provider)").await;
    let memory = procs::memory_mib(server.pid());
    server.stop();
    json!({
        "package": "oidc-provider",
        "version": procs::peer_version(&peer_dir),
        "node": procs::node_version(),
        "token_header": header,
        "token_bytes": sample.len(),
        "steps": steps_json(&steps),
        "peak_per_sec": round(peak(&steps), 0),
        "wrk_steps": steps_json(&wrk_steps),
        "wrk_peak_per_sec": (!wrk_steps.is_empty()).then(|| round(peak(&wrk_steps), 0)),
        "memory": memory.map(|(hwm, rss)| json!({"vm_hwm_mib": round(hwm, 1), "vm_rss_mib": round(rss, 1)})),
    })
}

/// A fresh PostgreSQL database on the server named by the admin URL; returns its URL and
/// name.
async fn fresh_postgres(admin: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    let mut b = [0u8; 6];
    SystemRandom::new().fill(&mut b).map_err(|_| anyhow::anyhow!("random"))?;
    let name = format!("tessera_bench_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (admin.to_owned(), String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| i + scheme_end);
    Ok((format!("{}/{name}{query}", &base[..path_start]), name))
}

async fn drop_postgres(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
    }
}

async fn http_part(opts: &Opts, pin: &Pinning) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let fsync = procs::fsync_ms(dir.path());
    eprintln!("HTTP (fsync of 4 KiB on this disk: {fsync:.2} ms):");

    let sqlite_dir = dir.path().join("sqlite");
    std::fs::create_dir_all(&sqlite_dir).unwrap();
    let url = format!("sqlite://{}/tessera.db", sqlite_dir.display());
    let sqlite = run_tessera(opts, pin, &sqlite_dir, &url, "tessera (SQLite)", true, &[]).await;

    // The same with a checkpoint of the audit chain signed every second instead of every
    // minute: what checkpoints cost the token endpoint, as a ratio of peaks in this run.
    let cp_dir = dir.path().join("sqlite-checkpoint-1s");
    std::fs::create_dir_all(&cp_dir).unwrap();
    let url = format!("sqlite://{}/tessera.db", cp_dir.display());
    let sqlite_cp = run_tessera(
        opts,
        pin,
        &cp_dir,
        &url,
        "tessera (SQLite, checkpoint 1 s)",
        false,
        &[("TESSERA_AUDIT_CHECKPOINT_SECS", "1")],
    )
    .await;

    // The same with `synchronous=normal`: commits are not fsynced (durable against a crash
    // of the process, not of the machine). Not the default; measured to show what the
    // fsync costs.
    let normal_dir = dir.path().join("sqlite-normal");
    std::fs::create_dir_all(&normal_dir).unwrap();
    let url = format!("sqlite://{}/tessera.db?synchronous=normal", normal_dir.display());
    let sqlite_normal = run_tessera(opts, pin, &normal_dir, &url, "tessera (SQLite, normal)", false, &[]).await;

    let peer = if opts.peer { run_peer(opts, pin, dir.path()).await } else { json!({"skipped": "--no-peer"}) };

    let admin =
        std::env::var("TESSERA_BENCH_POSTGRES_URL").or_else(|_| std::env::var("TESSERA_TEST_POSTGRES_URL")).ok();
    let postgres = match admin {
        None => json!({"skipped": "set TESSERA_BENCH_POSTGRES_URL or TESSERA_TEST_POSTGRES_URL"}),
        Some(admin) => match fresh_postgres(&admin).await {
            Err(e) => json!({"error": format!("{e:#}")}),
            Ok((url, name)) => {
                let pg_dir = dir.path().join("postgres");
                std::fs::create_dir_all(&pg_dir).unwrap();
                let mut v = run_tessera(opts, pin, &pg_dir, &url, "tessera (PostgreSQL)", true, &[]).await;
                drop_postgres(&admin, &name).await;
                v["note"] = json!("the PostgreSQL server itself is not pinned: it shares both cores");
                v
            }
        },
    };
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let gate_proxy = proxy::proxy_step(opts, pin, &proxy_dir).await;

    json!({
        "fsync_4k_ms": round(fsync, 3),
        "gate_proxy": gate_proxy,
        "tessera_sqlite": sqlite,
        "tessera_sqlite_checkpoint_1s": sqlite_cp,
        "tessera_sqlite_synchronous_normal": sqlite_normal,
        "peer": peer,
        "tessera_postgres": postgres,
    })
}

/// The broker on both cores, driven by wrk on both cores, against raw sign on both cores (two
/// threads): how the token endpoint scales with a second core. wrk shares the cores, so the
/// broker has less than two to itself.
async fn two_core_part(opts: &Opts, pin: &Pinning, dalek: bool, one_core: Option<f64>) -> Value {
    if !pin.enabled || !wrk::available() {
        return json!({"skipped": "needs taskset, two cores and wrk"});
    }
    let both = pin.both_cores();
    both.pin_self(0);
    let raw = two_core_raw_sign(opts.budget, dalek);
    pin.pin_self(1);
    eprintln!("two cores: raw sign {raw:.0}/s (two threads)");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/tessera.db", dir.path().display());
    let run = run_tessera(opts, &both, dir.path(), &url, "tessera (SQLite, 2 cores)", false, &[]).await;
    let peak = run["wrk_peak_per_sec"].as_f64();
    json!({
        "raw_sign_per_sec": round(raw, 0),
        "mint_http_per_sec": peak,
        "mint_http_ratio": peak.map(|p| round(p / raw, 3)),
        "over_one_core": peak.zip(one_core).map(|(p, o)| round(p / o, 3)),
        "steps": run["wrk_steps"],
        "memory": run["memory"],
        "audit_verify": {"ok": run["audit_verify"]["ok"], "output": run["audit_verify"]["output"]},
    })
}

/// Tessera's tokens/s over the peer's at 16 and at 64 connections (wrk's figures when both
/// have them, else the benchmark's own generator's).
fn peer_ratios(tessera: &Value, peer: &Value) -> Vec<(u64, Option<f64>)> {
    let at = |run: &Value, c: u64| {
        let find = |steps: &Value| {
            steps.as_array().and_then(|s| s.iter().find(|s| s["concurrency"] == c)).and_then(|s| s["per_sec"].as_f64())
        };
        find(&run["wrk_steps"]).or_else(|| find(&run["steps"]))
    };
    [16, 64]
        .into_iter()
        .map(|c| (c, at(tessera, c).zip(at(peer, c).filter(|p| *p > 0.0)).map(|(t, p)| t / p)))
        .collect()
}

fn print_peer_ratios(ratios: &[(u64, Option<f64>)]) {
    let text: Vec<String> = ratios.iter().map(|(c, r)| format!("c={c} {}", fmt_opt(*r, 2))).collect();
    println!("tessera / peer (tokens/s, target >= 4): {}", text.join(", "));
}

/// The peak tokens/s and the p99 at 16 connections the targets are judged on, and which load
/// generator measured them: wrk's when it ran (the leaner client), else the benchmark's own.
fn headline(run: &Value) -> (Option<f64>, Option<f64>, &'static str) {
    let p99_at_16 = |steps: &Value| {
        steps.as_array().and_then(|s| s.iter().find(|s| s["concurrency"] == 16)).and_then(|s| s["p99_ms"].as_f64())
    };
    match run["wrk_peak_per_sec"].as_f64() {
        Some(peak) => (Some(peak), p99_at_16(&run["wrk_steps"]), "wrk"),
        None => (run["peak_per_sec"].as_f64(), p99_at_16(&run["steps"]), "the benchmark's own load generator"),
    }
}

fn libraries_json(ip: &InProcess) -> Value {
    Value::Array(
        ip.libraries
            .iter()
            .map(|(name, sign, verify)| json!({"library": name, "sign_per_sec": round(*sign, 0), "verify_per_sec": round(*verify, 0)}))
            .collect(),
    )
}

fn print_libraries(ip: &InProcess) {
    for (name, sign, verify) in &ip.libraries {
        println!(
            "{name:<14} Ed25519 sign {sign:>8.0}/s ({:.1} µs), verify {verify:>8.0}/s ({:.1} µs)",
            1e6 / sign,
            1e6 / verify
        );
    }
    let [(_, ring_sign, ring_verify), (_, dalek_sign, dalek_verify)] = ip.libraries;
    println!(
        "ed25519-dalek / ring: sign {:.3}, verify {:.3}; the raw limit below is {}'s",
        dalek_sign / ring_sign,
        dalek_verify / ring_verify,
        ip.raw_library
    );
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.filter(|x| x.is_finite()).map_or("-".to_owned(), |x| format!("{x:.digits$}"))
}

fn print_steps(name: &str, v: &Value) {
    if let Some(e) = v.get("error").or_else(|| v.get("skipped")) {
        println!("{name:<26} {}", e.as_str().unwrap_or_default());
        return;
    }
    for s in v["steps"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<26} {:>5} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.1} {:>7.2} {:>7.2} {:>7}",
            name,
            s["concurrency"],
            s["per_sec"].as_f64().unwrap_or(0.0),
            s["p50_ms"].as_f64().unwrap_or(f64::NAN),
            s["p99_ms"].as_f64().unwrap_or(f64::NAN),
            s["max_ms"].as_f64().unwrap_or(f64::NAN),
            s["server_cpu_cores"].as_f64().unwrap_or(f64::NAN),
            s["server_cpu_us_per_answer"].as_f64().unwrap_or(f64::NAN),
            s["client_cpu_cores"].as_f64().unwrap_or(f64::NAN),
            s["others_on_core0_cores"].as_f64().unwrap_or(f64::NAN),
            s["errors"],
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The proxy step's trivial upstream is this binary, started again in this mode.
    if let Some(i) = args.iter().position(|a| a == "--upstream-serve") {
        let socket = args.iter().position(|a| a == "--upstream-socket").and_then(|j| args.get(j + 1));
        proxy::serve_upstream(args.get(i + 1).map_or("127.0.0.1:0", String::as_str), socket.map(String::as_str));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let opts = Opts {
        quick,
        json_out: args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned(),
        peer: !args.iter().any(|a| a == "--no-peer"),
        budget: if quick { Duration::from_millis(1200) } else { Duration::from_secs(6) },
        warm: if quick { Duration::from_millis(300) } else { Duration::from_secs(1) },
        measure: if quick { Duration::from_secs(1) } else { Duration::from_secs(3) },
    };
    let pin = Pinning::detect();
    if args.iter().any(|a| a == "--policy-only") {
        pin.pin_self(1);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let v = runtime.block_on(policy::policy_step(&opts, &pin, dir.path()));
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return;
    }
    if args.iter().any(|a| a == "--proxy-only") {
        pin.pin_self(1);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let v = runtime.block_on(proxy::proxy_step(&opts, &pin, dir.path()));
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return;
    }
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = procs::loadavg();
    let priority = if procs::raise_priority() { "nice -20" } else { "not raised (renice refused)" };
    eprintln!("pinning: {}; priority {priority}; load average {load_before:.2}", pin.note);

    // The raw limits and the in-process figures, on the core the servers will have.
    pin.pin_self(0);
    let ip = in_process(opts.budget);
    eprintln!("in-process: raw sign {:.0}/s, raw verify {:.0}/s", ip.raw_sign, ip.raw_verify);
    if args.iter().any(|a| a == "--in-process-only") {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "raw_sign_per_sec": ip.raw_sign, "raw_library": ip.raw_library,
                "libraries": libraries_json(&ip), "mint_per_sec": ip.mint,
                "raw_verify_per_sec": ip.raw_verify, "verify_per_sec": ip.verify,
                "verify_ratio": ip.verify / ip.raw_verify,
                "dpop_raw_verify_per_sec": ip.dpop_raw_verify, "dpop_verify_per_sec": ip.dpop_verify,
                "dpop_verify_ratio": ip.dpop_verify / ip.dpop_raw_verify,
            }))
            .unwrap_or_default()
        );
        return;
    }

    // Everything after this, the load generator included, on the other core.
    pin.pin_self(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    if args.iter().any(|a| a == "--mint-only") {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/tessera.db", dir.path().display());
        let run = runtime.block_on(run_tessera(&opts, &pin, dir.path(), &url, "tessera (SQLite)", false, &[]));
        let (peak, p99_16, generator) = headline(&run);
        let two = runtime.block_on(two_core_part(&opts, &pin, ip.raw_library == "ed25519-dalek", peak));
        let peer = if opts.peer {
            runtime.block_on(run_peer(&opts, &pin, dir.path()))
        } else {
            json!({"skipped": "--no-peer"})
        };
        let ratios = peer_ratios(&run, &peer);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "raw_sign_per_sec": round(ip.raw_sign, 0),
                "raw_library": ip.raw_library,
                "libraries": libraries_json(&ip),
                "mint_http_per_sec": peak,
                "mint_http_ratio": peak.map(|p| round(p / ip.raw_sign, 3)),
                "p99_ms_at_16": p99_16,
                "generator": generator,
                "steps": run["steps"],
                "wrk_steps": run["wrk_steps"],
                "memory": run["memory"],
                "audit_verify": {"ok": run["audit_verify"]["ok"], "output": run["audit_verify"]["output"]},
                "two_cores": two,
                "peer_wrk_steps": peer["wrk_steps"],
                "tessera_over_peer": ratios.iter().map(|(c, r)| (format!("c{c}"), json!(r.map(|r| round(r, 3))))).collect::<serde_json::Map<_, _>>(),
            }))
            .unwrap_or_default()
        );
        print_libraries(&ip);
        println!(
            "one core: mint over HTTP / raw sign {} (target >= 0.5); p99 at c=16 {} ms (target < 5)",
            fmt_opt(peak.map(|p| p / ip.raw_sign), 3),
            fmt_opt(p99_16, 2)
        );
        println!(
            "two cores: mint over HTTP / two cores' raw sign {}; over one core's tokens/s {} (target >= 1.8)",
            fmt_opt(two["mint_http_ratio"].as_f64(), 3),
            fmt_opt(two["over_one_core"].as_f64(), 3)
        );
        print_peer_ratios(&ratios);
        return;
    }
    let http = runtime.block_on(http_part(&opts, &pin));
    let sqlite = &http["tessera_sqlite"];
    let (mint_http, p99_16, generator) = headline(sqlite);
    let two = runtime.block_on(two_core_part(&opts, &pin, ip.raw_library == "ed25519-dalek", mint_http));
    let load_after = procs::loadavg();
    let hwm = sqlite["memory"]["vm_hwm_mib"].as_f64();
    let peer_peak = headline(&http["peer"]).0.filter(|p| *p > 0.0);
    let mint_ratio = mint_http.map(|m| m / ip.raw_sign);
    let verify_ratio = ip.verify / ip.raw_verify;
    let peer_ratio = mint_http.zip(peer_peak).map(|(m, p)| m / p);
    let dpop_verify_ratio = ip.dpop_verify / ip.dpop_raw_verify;
    let dpop_mint_ratio = sqlite["dpop_mint"]["ratio"].as_f64();
    let proxy_ratio = http["gate_proxy"]["proxy_over_upstream_cpu"].as_f64();
    let proxy_ratio_of = |kind: &str| http["gate_proxy"][kind]["unix"]["proxy_over_upstream_alone_cpu"].as_f64();
    let (proxy_node, proxy_python) = (proxy_ratio_of("node"), proxy_ratio_of("python"));
    eprintln!("the HTTP targets are judged on the figures of {generator}");
    let targets = [
        ("mint over HTTP / raw sign", mint_ratio, ">= 0.50", mint_ratio.map(|r| r >= 0.5)),
        ("p99 at concurrency 16 (ms)", p99_16, "< 5", p99_16.map(|p| p < 5.0)),
        ("verify / raw verify", Some(verify_ratio), ">= 0.85", Some(verify_ratio >= 0.85)),
        ("broker peak RSS (MiB)", hwm, "< 100", hwm.map(|h| h < 100.0)),
        ("tessera / peer throughput", peer_ratio, ">= 4", peer_ratio.map(|r| r >= 4.0)),
        ("verify with proof / raw verify", Some(dpop_verify_ratio), ">= 0.45", Some(dpop_verify_ratio >= 0.45)),
        ("mint with proof / plain (c=16)", dpop_mint_ratio, ">= 0.60", dpop_mint_ratio.map(|r| r >= 0.6)),
        ("gate proxy CPU / hyper upstream", proxy_ratio, "<= 2", proxy_ratio.map(|r| r <= 2.0)),
        ("gate proxy CPU / Node upstream", proxy_node, "<= 2", proxy_node.map(|r| r <= 2.0)),
        ("gate proxy CPU / Python upstream", proxy_python, "<= 2", proxy_python.map(|r| r <= 2.0)),
    ];

    println!();
    println!("pinning: {}; priority {priority}", pin.note);
    println!(
        "cpu: {} ({cores} cores); load average {load_before:.2} before, {load_after:.2} after",
        procs::cpu_model()
    );
    println!("fsync of 4 KiB: {} ms (median of 50)", http["fsync_4k_ms"]);
    println!();
    println!("{:<36} {:>12} {:>8}", "in-process (core 0)", "ops/s", "ratio");
    for (name, r, ratio) in [
        ("raw Ed25519 sign (faster library)", ip.raw_sign, None),
        ("mint access token (in-process)", ip.mint, Some(ip.mint / ip.raw_sign)),
        ("raw Ed25519 verify (same library)", ip.raw_verify, None),
        ("verify access token (in-process)", ip.verify, Some(verify_ratio)),
        ("raw verify (paired with DPoP)", ip.dpop_raw_verify, None),
        ("verify bound token + proof", ip.dpop_verify, Some(dpop_verify_ratio)),
    ] {
        println!("{:<36} {:>12.0} {:>8}", name, r, fmt_opt(ratio, 3));
    }
    println!("{:<36} {:>12.1}", "raw sign, microseconds each", 1e6 / ip.raw_sign);
    print_libraries(&ip);
    for (name, us) in &ip.stages_us {
        println!("{name:<36} {us:>12.1}");
    }
    println!();
    println!(
        "{:<26} {:>5} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "token endpoint (HTTP)",
        "conc",
        "tokens/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu",
        "µs/token",
        "gen cpu",
        "noise",
        "errors"
    );
    print_steps("tessera (SQLite)", sqlite);
    print_steps("tessera (SQLite), wrk", &json!({"steps": sqlite["wrk_steps"]}));
    print_steps("tessera (SQLite, normal)", &http["tessera_sqlite_synchronous_normal"]);
    print_steps("peer (oidc-provider)", &http["peer"]);
    print_steps("peer (oidc-provider), wrk", &json!({"steps": http["peer"]["wrk_steps"]}));
    print_steps("tessera (PostgreSQL)", &http["tessera_postgres"]);
    println!();
    for (name, v) in [("SQLite", sqlite), ("PostgreSQL", &http["tessera_postgres"])] {
        let rt = &v["approval_round_trip"];
        if rt.get("round_trip").is_some() {
            println!(
                "approval round trip ({name}): p50 {} ms, p99 {} ms over {} (create {} / decide {} / fetch {} / redeem {} ms p50)",
                rt["round_trip"]["p50_ms"],
                rt["round_trip"]["p99_ms"],
                rt["round_trips"],
                rt["create"]["p50_ms"],
                rt["decide"]["p50_ms"],
                rt["fetch_capability"]["p50_ms"],
                rt["redeem"]["p50_ms"],
            );
        } else if let Some(e) = rt.get("error") {
            println!("approval round trip ({name}): failed: {e}");
        }
    }
    for (name, v) in [
        ("broker (SQLite)", sqlite),
        ("broker (SQLite, normal)", &http["tessera_sqlite_synchronous_normal"]),
        ("peer", &http["peer"]),
        ("broker (PostgreSQL)", &http["tessera_postgres"]),
    ] {
        if let Some(m) = v.get("memory").filter(|m| !m.is_null()) {
            println!("memory {name}: peak {} MiB, now {} MiB", m["vm_hwm_mib"], m["vm_rss_mib"]);
        }
    }
    for (name, v) in [
        ("SQLite", sqlite),
        ("SQLite, checkpoint 1 s", &http["tessera_sqlite_checkpoint_1s"]),
        ("SQLite, normal", &http["tessera_sqlite_synchronous_normal"]),
        ("PostgreSQL", &http["tessera_postgres"]),
    ] {
        if let Some(a) = v.get("audit_verify") {
            println!(
                "audit verify ({name}): {} {} in {} s, {} records/s",
                if a["ok"] == true { "ok" } else { "FAILED" },
                a["output"],
                a["seconds"],
                a["records_per_sec"]
            );
        }
    }
    let cp_peak = http["tessera_sqlite_checkpoint_1s"]["peak_per_sec"].as_f64();
    println!(
        "checkpoint every 1 s vs every 60 s (SQLite, peak tokens/s): {} vs {}, ratio {}",
        fmt_opt(cp_peak, 0),
        fmt_opt(sqlite["peak_per_sec"].as_f64(), 0),
        fmt_opt(cp_peak.zip(sqlite["peak_per_sec"].as_f64()).map(|(c, d)| c / d), 3),
    );
    println!();
    println!("{:<30} {:>10} {:>8} {:>6}", "target", "measured", "target", "met");
    for (name, value, target, met) in &targets {
        let met = met.map_or("n/a", |m| if m { "yes" } else { "NO" });
        println!("{:<30} {:>10} {:>8} {:>6}", name, fmt_opt(*value, 3), target, met);
    }

    let normal_peak = http["tessera_sqlite_synchronous_normal"]["peak_per_sec"].as_f64();
    println!();
    println!(
        "with synchronous=normal (not the default): mint over HTTP / raw sign {}, tessera / peer {}",
        fmt_opt(normal_peak.map(|m| m / ip.raw_sign), 3),
        fmt_opt(normal_peak.zip(peer_peak).map(|(m, p)| m / p), 2),
    );
    println!(
        "two cores: mint over HTTP / two cores' raw sign {}; over one core's tokens/s {} (target >= 1.8)",
        fmt_opt(two["mint_http_ratio"].as_f64(), 3),
        fmt_opt(two["over_one_core"].as_f64(), 3)
    );
    let ratios = peer_ratios(sqlite, &http["peer"]);

    let report = json!({
        "quick": opts.quick,
        "cores": cores,
        "load_average": {"before": load_before, "after": load_after},
        "pinning": {"enabled": pin.enabled, "note": pin.note},
        "priority": priority,
        "broker_bin": procs::tessera_bin(),
        "cpu": procs::cpu_model(),
        "raw_sign_per_sec": ip.raw_sign,
        "raw_library": ip.raw_library,
        "libraries": libraries_json(&ip),
        "two_cores": two,
        "tessera_over_peer_at": ratios.iter().map(|(c, r)| (format!("c{c}"), json!(r))).collect::<serde_json::Map<_, _>>(),
        "mint_in_process_per_sec": ip.mint,
        "mint_in_process_ratio": ip.mint / ip.raw_sign,
        "raw_verify_per_sec": ip.raw_verify,
        "verify_per_sec": ip.verify,
        "verify_ratio": verify_ratio,
        "dpop_verify_per_sec": ip.dpop_verify,
        "dpop_verify_ratio": dpop_verify_ratio,
        "dpop_mint_ratio": dpop_mint_ratio,
        "token_bytes": ip.token_bytes,
        "stage_us": ip.stages_us.iter().map(|(k, v)| ((*k).to_owned(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
        "mint_http_per_sec": mint_http,
        "mint_http_generator": generator,
        "mint_http_ratio": mint_ratio,
        "peer_per_sec": peer_peak,
        "tessera_over_peer": peer_ratio,
        "http": http,
        "targets": targets.iter().map(|(name, value, target, met)| {
            json!({"name": name, "value": value, "target": target, "met": met})
        }).collect::<Vec<_>>(),
    });
    println!();
    println!("{report}");
    if let Some(path) = opts.json_out {
        std::fs::write(path, report.to_string()).unwrap();
    }
    // The lead over the peer, last, so that it is always in view.
    println!();
    print_peer_ratios(&ratios);
}
