//! Processes: CPU pinning through `taskset`, the broker and the peer as child processes,
//! and what `/proc` says about them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The `tessera` binary cargo built for this benchmark, in the same (release) profile, or
/// another one named by `TESSERA_BENCH_BIN` (to compare two builds).
pub fn tessera_bin() -> String {
    std::env::var("TESSERA_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").to_owned())
}

/// How the benchmark places work on cores.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// Whether `taskset` exists and there are at least two cores.
    pub enabled: bool,
    /// Why not, when not.
    pub note: String,
    /// Everything on both cores (the two-core step): servers and load generator alike.
    pub spread: bool,
}

impl Pinning {
    /// Finds `taskset` and counts the cores this process may use.
    pub fn detect() -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let taskset = Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        match (taskset, cores) {
            (Ok(s), c) if s.success() && c >= 2 => Pinning {
                enabled: true,
                note: "server processes on core 0, the load generator on core 1 (taskset)".into(),
                spread: false,
            },
            (Ok(s), _) if s.success() => {
                Pinning { enabled: false, note: format!("only {cores} core available: nothing pinned"), spread: false }
            }
            _ => Pinning {
                enabled: false,
                note: "taskset not found: nothing pinned, figures are not per core".into(),
                spread: false,
            },
        }
    }

    /// The same placement with everything on cores 0 and 1: the two-core step.
    pub fn both_cores(&self) -> Pinning {
        Pinning { spread: true, ..self.clone() }
    }

    fn cpus(&self, cpu: u32) -> String {
        if self.spread { "0,1".to_owned() } else { cpu.to_string() }
    }

    /// Moves every thread of this process to `cpu` (to both cores when spread). Threads
    /// started later inherit it.
    pub fn pin_self(&self, cpu: u32) {
        if !self.enabled {
            return;
        }
        let pid = std::process::id().to_string();
        let cpu = self.cpus(cpu);
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu, &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "taskset could not pin the benchmark to core {cpu}");
    }

    /// A command for `program`, pinned to `cpu` when pinning is on (to both cores when
    /// spread).
    pub fn command(&self, cpu: u32, program: &str) -> Command {
        if self.enabled {
            let mut c = Command::new("taskset");
            c.args(["-c", &self.cpus(cpu), program]);
            c
        } else {
            Command::new(program)
        }
    }
}

/// Raises this process's scheduling priority to nice -20 where allowed (root), so that on a
/// shared machine other work interferes less; the servers started later inherit it.
pub fn raise_priority() -> bool {
    Command::new("renice")
        .args(["-n", "-20", "-p", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// User plus system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Busy time of one CPU since boot, in seconds, from `/proc/stat` (everything but idle and
/// iowait).
pub fn cpu_busy_seconds(cpu: u32) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with(&format!("cpu{cpu} ")))?;
    let v: Vec<f64> = line.split_ascii_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) / clock_ticks())
}

/// The load average over the last minute.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_ascii_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process from `/proc/PID/status`: (peak `VmHWM`, current `VmRSS`) in MiB.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A server started as a child process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    /// What it is, for messages.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `GET path` answers 200.
    /// Waits until the server accepts connections (for servers with no plain `GET` that
    /// answers 2xx, like a streamable-HTTP MCP server).
    pub async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready:\n{}", self.name, self.log_tail());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not start listening:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_ready(&mut self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready:\n{}", self.name, self.log_tail());
            }
            if let Ok(mut c) = crate::load::Conn::open(self.addr).await {
                if let Ok((s, _)) = c.send(http::Method::GET, path, &[], bytes::Bytes::new()).await {
                    if s.is_success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not become ready:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it: SIGTERM, up to five seconds' grace, then SIGKILL.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The broker's environment for a database and keys folder.
fn broker_env(cmd: &mut Command, dir: &Path, database_url: &str) {
    cmd.env("TESSERA_DATABASE_URL", database_url)
        .env("TESSERA_KEYS_DIR", dir.join("keys"))
        .env_remove("TESSERA_CONFIG")
        .env_remove("TESSERA_LOG");
}

/// Registers a client with the real command line; returns (client_id, client_secret).
pub fn create_client(dir: &Path, database_url: &str, kind: &str, name: &str) -> anyhow::Result<(String, String)> {
    let mut cmd = Command::new(tessera_bin());
    broker_env(&mut cmd, dir, database_url);
    let out = cmd.args(["clients", "create", "--tenant", "org-bench", "--kind", kind, "--name", name]).output()?;
    if !out.status.success() {
        bail!("tessera clients create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let id = v["client_id"].as_str().context("client_id")?.to_owned();
    let secret = v["client_secret"].as_str().context("client_secret")?.to_owned();
    Ok((id, secret))
}

/// Runs `tessera audit verify` on a database; its one line of output and whether it passed.
pub fn audit_verify(dir: &Path, database_url: &str) -> (bool, String) {
    let mut cmd = Command::new(tessera_bin());
    broker_env(&mut cmd, dir, database_url);
    match cmd.args(["audit", "verify"]).output() {
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text.trim().to_owned())
        }
        Err(e) => (false, e.to_string()),
    }
}

/// Starts `tessera serve` (the release binary) on core 0 with the shipped defaults, apart
/// from address, database and keys.
pub fn start_broker(
    pin: &Pinning,
    dir: &Path,
    database_url: &str,
    name: &str,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let addr = free_addr()?;
    let log = dir.join(format!("{name}.log"));
    let mut cmd = pin.command(0, &tessera_bin());
    broker_env(&mut cmd, dir, database_url);
    cmd.envs(extra_env.iter().copied());
    cmd.arg("serve")
        .env("TESSERA_LISTEN", addr.to_string())
        .env("TESSERA_ISSUER", format!("http://{addr}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join(format!("{name}.err.log")))?);
    let child = cmd.spawn().context("start tessera serve")?;
    Ok(Server { name: name.to_owned(), addr, child, log: dir.join(format!("{name}.err.log")) })
}

/// Starts the peer's `server.mjs` from its installed folder on core 0.
pub fn start_peer(
    pin: &Pinning,
    peer_dir: &Path,
    clients: &[(String, String)],
    log_dir: &Path,
) -> anyhow::Result<Server> {
    let addr = free_addr()?;
    let log = log_dir.join("peer.log");
    let list: Vec<Value> =
        clients.iter().map(|(id, secret)| serde_json::json!({"client_id": id, "client_secret": secret})).collect();
    let mut cmd = pin.command(0, "node");
    cmd.arg(peer_dir.join("server.mjs"))
        .current_dir(peer_dir)
        .env("PEER_PORT", addr.port().to_string())
        .env("PEER_CLIENTS", Value::from(list).to_string())
        .env("NODE_ENV", "production")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(log_dir.join("peer.err.log"))?);
    let child = cmd.spawn().context("start node")?;
    Ok(Server { name: "peer (oidc-provider)".into(), addr, child, log: log_dir.join("peer.err.log") })
}

/// The peer's folder: `TESSERA_BENCH_PEER_DIR` if it holds an installed peer, else a fresh
/// install by benches/peer/setup into a new temporary folder.
pub fn install_peer() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Ok(dir) = std::env::var("TESSERA_BENCH_PEER_DIR") {
        let dir = PathBuf::from(dir);
        if dir.join("node_modules/oidc-provider").is_dir() {
            std::fs::copy(manifest.join("benches/peer/server.mjs"), dir.join("server.mjs"))?;
            return Ok(dir);
        }
    }
    let out = Command::new(manifest.join("benches/peer/setup")).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!("benches/peer/setup failed: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
    let dir = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_owned();
    Ok(PathBuf::from(dir))
}

/// The installed version of the peer.
pub fn peer_version(peer_dir: &Path) -> String {
    std::fs::read_to_string(peer_dir.join("node_modules/oidc-provider/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `node --version`.
pub fn node_version() -> String {
    Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// The CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Median time of a 4 KiB write plus `fdatasync` in `dir`, milliseconds: what one durable
/// commit costs at least on this disk.
pub fn fsync_ms(dir: &Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let Ok(mut f) = std::fs::File::create(&path) else { return f64::NAN };
    let block = [0u8; 4096];
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        if f.write_all(&block).is_err() || f.sync_data().is_err() {
            return f64::NAN;
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Starts `program args…` on core 0 as a server at `addr`, its output to `dir/<name>.log`.
pub fn start_on_core0(
    pin: &Pinning,
    dir: &Path,
    name: &str,
    addr: SocketAddr,
    program: &str,
    args: &[&str],
) -> anyhow::Result<Server> {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = pin.command(0, program);
    cmd.args(args)
        .env_remove("TESSERA_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let child = cmd.spawn().with_context(|| format!("start {name}"))?;
    Ok(Server { name: name.to_owned(), addr, child, log })
}
