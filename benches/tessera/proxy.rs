//! The gate proxy's step: requests per second through `tessera gate` to a trivial upstream,
//! against the upstream alone, all on core 0, with the CPU each spends per request; the
//! upstream reached over loopback TCP, and over a Unix socket. Three trivial upstreams, none
//! with Tessera code: hyper (Rust), Node.js's `http` and Python's `http.server`.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{Value, json};

use crate::Opts;
use crate::load::{self, TokenTarget, basic, round};
use crate::procs::{self, Pinning};

/// The trivial upstream: answers every request `200 ok` over HTTP/1.1 keep-alive, on a
/// current-thread runtime, at `addr` and, when given, on the Unix socket `socket` too. No
/// Tessera code; this is what "the upstream's own per-request CPU" is measured on.
pub fn serve_upstream(addr: &str, socket: Option<&str>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if let Some(path) = socket {
            let _ = std::fs::remove_file(path);
            let unix = tokio::net::UnixListener::bind(path).unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = unix.accept().await else { continue };
                    tokio::spawn(serve_ok(stream));
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_ok(stream));
        }
    });
}

async fn serve_ok<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) {
    let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))))
    });
    let _ =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
}

const C: usize = 16;

/// The URL the bench's gates say clients reach them at, and so the audience of their tokens.
const GATE_PUBLIC_URL: &str = "http://gate.bench.test";

fn per_request_us(s: &load::Step) -> f64 {
    s.server_cpu * 1e6 / s.per_sec.max(1.0)
}

/// Runs the step; the JSON has both rates, each process's CPU per request, and their ratio.
pub async fn proxy_step(opts: &Opts, pin: &Pinning, dir: &Path) -> Value {
    match run(opts, pin, dir).await {
        Ok(v) => v,
        Err(e) => json!({"error": format!("{e:#}")}),
    }
}

/// A trivial upstream in Node.js (`node:http`): what an MCP server in TypeScript sits on.
const NODE_UPSTREAM: &str = r#"
const http = require('http'), fs = require('fs');
const [port, sock] = process.argv.slice(-2);
const ok = (req, res) => { req.resume(); req.on('end', () => res.end('ok')); };
http.createServer({ keepAliveTimeout: 120000 }, ok).listen(Number(port), '127.0.0.1');
try { fs.unlinkSync(sock); } catch (e) {}
http.createServer({ keepAliveTimeout: 120000 }, ok).listen(sock);
"#;

/// A trivial upstream in Python's standard library (`http.server`, a thread per connection).
const PYTHON_UPSTREAM: &str = r#"
import http.server, os, socketserver, sys
class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_POST = do_GET
    def address_string(self):
        return "-"
    def log_message(self, *args):
        pass
class OkTcp(Ok):
    # TCP_NODELAY: without it, a keep-alive answer written in two pieces waits for the
    # client's delayed acknowledgement (some 40 ms).
    disable_nagle_algorithm = True
class Tcp(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
class Unix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
port, sock = int(sys.argv[-2]), sys.argv[-1]
if os.path.exists(sock):
    os.unlink(sock)
import threading
unix = Unix(sock, Ok)
threading.Thread(target=unix.serve_forever, daemon=True).start()
Tcp(("127.0.0.1", port), OkTcp).serve_forever()
"#;

async fn run(opts: &Opts, pin: &Pinning, dir: &Path) -> anyhow::Result<Value> {
    let url = format!("sqlite://{}/tessera.db", dir.display());
    let agent = procs::create_client(dir, &url, "agent", "proxy-agent")?;
    // Every gate below is reached, as far as its tokens say, at one public URL: the broker's
    // default audience, so the agent's tokens are for the gates (design §18).
    let mut broker = procs::start_broker(pin, dir, &url, "broker-for-proxy", &[("TESSERA_AUDIENCE", GATE_PUBLIC_URL)])?;
    broker.wait_ready("/readyz").await?;
    let minting = TokenTarget {
        addr: broker.addr,
        path: "/oauth/token",
        auths: vec![basic(&agent.0, &agent.1)],
        body: Bytes::from_static(b"grant_type=client_credentials"),
        proofs: None,
        headers: vec![],
    };
    let token = minting.one().await?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let node_js = dir.join("upstream.js");
    std::fs::write(&node_js, NODE_UPSTREAM)?;
    let node_js = node_js.to_string_lossy().into_owned();
    let python_py = dir.join("upstream.py");
    std::fs::write(&python_py, PYTHON_UPSTREAM)?;
    let python_py = python_py.to_string_lossy().into_owned();

    let mut out = json!({
        "concurrency": C,
        "route": "POST /ping, not gated, scope workspaces:read",
    });
    // hyper first: the leanest upstream there is, the hardest baseline for the proxy.
    for kind in ["hyper", "node", "python"] {
        let up_addr = procs::free_addr()?;
        let socket = dir.join(format!("upstream-{kind}.sock"));
        let socket_text = socket.to_string_lossy().into_owned();
        let port = up_addr.port().to_string();
        let up_text = up_addr.to_string();
        let (program, args): (&str, Vec<&str>) = match kind {
            "hyper" => (&me, vec!["--upstream-serve", &up_text, "--upstream-socket", &socket_text]),
            "node" => ("node", vec![&node_js, &port, &socket_text]),
            _ => ("python3", vec![&python_py, &port, &socket_text]),
        };
        let v = match measure_upstream(opts, pin, dir, &broker, &bearer, kind, up_addr, &socket_text, program, &args)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                eprintln!("  gate proxy ({kind} upstream): {e:#}");
                json!({"error": format!("{e:#}")})
            }
        };
        out[kind] = v;
    }
    out["mcp"] = match measure_mcp(opts, pin, dir, &broker, &bearer).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("  gate proxy (MCP): {e:#}");
            json!({"error": format!("{e:#}")})
        }
    };
    // The figure judged against the target: the recommended deployment (a Unix socket),
    // against the hyper upstream's own CPU per request when it serves the load generator
    // alone — the strictest of the three baselines.
    out["proxy_over_upstream_cpu"] = out["hyper"]["unix"]["proxy_over_upstream_alone_cpu"].clone();
    Ok(out)
}

/// One upstream: alone, then through a proxy reaching it over loopback TCP and one reaching
/// it over its Unix socket.
#[allow(clippy::too_many_arguments)]
async fn measure_upstream(
    opts: &Opts,
    pin: &Pinning,
    dir: &Path,
    broker: &procs::Server,
    bearer: &HeaderValue,
    kind: &str,
    up_addr: std::net::SocketAddr,
    socket: &str,
    program: &str,
    args: &[&str],
) -> anyhow::Result<Value> {
    let mut upstream = procs::start_on_core0(pin, dir, &format!("upstream-{kind}"), up_addr, program, args)?;
    upstream.wait_ready("/").await?;
    let mut gates = Vec::new();
    for (how, upstream) in [
        ("tcp", format!("upstream = \"http://{up_addr}\"")),
        ("unix", format!("upstream = \"http://{up_addr}\"\nupstream_socket = \"{socket}\"")),
    ] {
        let gate_addr = procs::free_addr()?;
        let config = dir.join(format!("gate-{kind}-{how}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"{gate_addr}\"\npublic_url = \"{GATE_PUBLIC_URL}\"\n{upstream}\nbroker = \"http://{}\"\n\n\
                 [[route]]\nmethod = \"POST\"\npath = \"/ping\"\nscope = \"workspaces:read\"\n",
                broker.addr
            ),
        )?;
        let config = config.to_string_lossy().into_owned();
        let mut gate = procs::start_on_core0(
            pin,
            dir,
            &format!("gate-{kind}-{how}"),
            gate_addr,
            &procs::tessera_bin(),
            &["gate", "--config", &config],
        )?;
        gate.wait_ready("/.well-known/oauth-protected-resource").await?;
        gates.push((how, gate_addr, gate));
    }
    let target = |addr| {
        Arc::new(TokenTarget {
            addr,
            path: "/ping",
            auths: vec![bearer.clone()],
            body: Bytes::new(),
            proofs: None,
            headers: vec![],
        })
    };
    let alone = load::step(&target(up_addr), C, opts.warm, opts.measure, upstream.pid()).await?;
    let upstream_us = per_request_us(&alone);
    let total = opts.warm + opts.measure;
    let mut out = json!({
        "upstream_alone_per_sec": round(alone.per_sec, 0),
        "upstream_cpu_us_per_request": round(upstream_us, 1),
        "errors": alone.errors,
        "first_error": alone.first_error,
    });
    for (how, gate_addr, gate) in &gates {
        let upstream_cpu0 = procs::cpu_seconds(upstream.pid());
        let proxied = load::step(&target(*gate_addr), C, opts.warm, opts.measure, gate.pid()).await?;
        let upstream_cpu1 = procs::cpu_seconds(upstream.pid());
        let proxy_us = per_request_us(&proxied);
        // The upstream's own CPU per request while it served the proxied requests: the same
        // traffic, the same sharing of core 0.
        let upstream_while = upstream_cpu0
            .zip(upstream_cpu1)
            .map(|(a, b)| (b - a) * 1e6 / (proxied.per_sec * total.as_secs_f64()).max(1.0));
        let ratio = proxy_us / upstream_us.max(0.001);
        let ratio_while = upstream_while.map(|u| proxy_us / u.max(0.001));
        eprintln!(
            "  gate proxy ({kind} upstream, {how}) c={C}: upstream alone {:.0}/s ({upstream_us:.1} µs CPU each), \
             through the proxy {:.0}/s ({proxy_us:.1} µs of proxy CPU each: {ratio:.2}× the upstream's alone, {}× the \
             upstream's while proxied at {} µs), errors {}",
            alone.per_sec,
            proxied.per_sec,
            ratio_while.map_or("-".into(), |r| format!("{r:.2}")),
            upstream_while.map_or("-".into(), |u| format!("{u:.1}")),
            proxied.errors
        );
        out[*how] = json!({
            "proxied_per_sec": round(proxied.per_sec, 0),
            "proxy_cpu_us_per_request": round(proxy_us, 1),
            "upstream_cpu_us_per_request_while_proxied": upstream_while.map(|u| round(u, 1)),
            "proxy_over_upstream_alone_cpu": round(ratio, 2),
            "proxy_over_upstream_while_proxied_cpu": ratio_while.map(|r| round(r, 2)),
            "errors": proxied.errors,
            "first_error": proxied.first_error,
        });
    }
    Ok(out)
}

/// The MCP SDK the MCP step's upstream is written with (as scripts/mcp-interop pins it).
const MCP_SDK: &str = "mcp==2.3.0";

/// A venv with the official MCP Python SDK, made once under `target/` and reused.
fn mcp_python() -> anyhow::Result<String> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-mcp-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(format!(".{MCP_SDK}"));
    if !ready.exists() {
        let run = |program: &std::path::Path, args: &[&str]| -> anyhow::Result<()> {
            let out = std::process::Command::new(program).args(args).output()?;
            anyhow::ensure!(out.status.success(), "{}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        run(std::path::Path::new("python3"), &["-m", "venv", &venv.to_string_lossy()])?;
        run(&python, &["-m", "pip", "install", "-q", "--disable-pip-version-check", MCP_SDK])?;
        std::fs::write(&ready, b"")?;
    }
    Ok(python.to_string_lossy().into_owned())
}

/// An MCP `tools/call` of an ungated tool: to a streamable-HTTP server written with the
/// official MCP Python SDK (stateless, JSON answers), alone and through `tessera gate` with an
/// `[[mcp]]` endpoint listing the tool, over loopback TCP (the SDK's server listens on TCP
/// only). The ratio is the proxy's CPU per call over the server's own.
async fn measure_mcp(
    opts: &Opts,
    pin: &Pinning,
    dir: &Path,
    broker: &procs::Server,
    bearer: &HeaderValue,
) -> anyhow::Result<Value> {
    let python = mcp_python()?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mcp_interop/upstream.py");
    let up_addr = procs::free_addr()?;
    let port = up_addr.port().to_string();
    let script = script.to_string_lossy().into_owned();
    let mut upstream = procs::start_on_core0(pin, dir, "upstream-mcp", up_addr, &python, &[&script, &port, "-"])?;
    upstream.wait_listening().await?;
    let gate_addr = procs::free_addr()?;
    let config = dir.join("gate-mcp.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{gate_addr}\"\npublic_url = \"{GATE_PUBLIC_URL}\"\nupstream = \"http://{up_addr}\"\n\
             broker = \"http://{}\"\n\n[[mcp]]\npath = \"/mcp\"\nscope = \"workspaces:read\"\n\n\
             [[mcp.tool]]\nname = \"read_workspace\"\n",
            broker.addr
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let mut gate =
        procs::start_on_core0(pin, dir, "gate-mcp", gate_addr, &procs::tessera_bin(), &["gate", "--config", &config])?;
    gate.wait_ready("/.well-known/oauth-protected-resource").await?;
    let call = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_workspace","arguments":{"workspace":"ws-1"}}}"#,
    );
    let target = |addr| {
        Arc::new(TokenTarget {
            addr,
            path: "/mcp",
            auths: vec![bearer.clone()],
            body: call.clone(),
            proofs: None,
            headers: vec![
                (http::header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (http::header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream")),
            ],
        })
    };
    // One call each way first: an answer that is not the tool's result fails the step.
    for (what, addr) in [("upstream", up_addr), ("proxy", gate_addr)] {
        let t = target(addr);
        let mut conn = load::Conn::open(addr).await?;
        let headers: Vec<_> =
            std::iter::once((http::header::AUTHORIZATION, bearer.clone())).chain(t.headers.iter().cloned()).collect();
        let (status, body) = conn.send(http::Method::POST, "/mcp", &headers, call.clone()).await?;
        let text = String::from_utf8_lossy(&body);
        anyhow::ensure!(status.is_success() && text.contains("workspace ws-1"), "{what}: {status}: {text}");
    }
    let total = opts.warm + opts.measure;
    let alone = load::step(&target(up_addr), C, opts.warm, opts.measure, upstream.pid()).await?;
    let upstream_us = per_request_us(&alone);
    let upstream_cpu0 = procs::cpu_seconds(upstream.pid());
    let proxied = load::step(&target(gate_addr), C, opts.warm, opts.measure, gate.pid()).await?;
    let upstream_cpu1 = procs::cpu_seconds(upstream.pid());
    let proxy_us = per_request_us(&proxied);
    let upstream_while =
        upstream_cpu0.zip(upstream_cpu1).map(|(a, b)| (b - a) * 1e6 / (proxied.per_sec * total.as_secs_f64()).max(1.0));
    let ratio = proxy_us / upstream_us.max(0.001);
    eprintln!(
        "  gate proxy (MCP tools/call, Python SDK server) c={C}: server alone {:.0}/s ({upstream_us:.1} µs CPU each), \
         through the proxy {:.0}/s ({proxy_us:.1} µs of proxy CPU each: {ratio:.3}× the server's alone; target ≤ 1.5), \
         errors {} / {}",
        alone.per_sec, proxied.per_sec, alone.errors, proxied.errors
    );
    Ok(json!({
        "call": "tools/call read_workspace (ungated), stateless streamable HTTP, JSON answers",
        "server": format!("official MCP Python SDK ({MCP_SDK})"),
        "server_alone_per_sec": round(alone.per_sec, 0),
        "server_cpu_us_per_call": round(upstream_us, 1),
        "proxied_per_sec": round(proxied.per_sec, 0),
        "proxy_cpu_us_per_call": round(proxy_us, 1),
        "server_cpu_us_per_call_while_proxied": upstream_while.map(|u| round(u, 1)),
        "proxy_over_server_cpu": round(ratio, 3),
        "errors": alone.errors + proxied.errors,
        "first_error": alone.first_error.or(proxied.first_error),
    }))
}
