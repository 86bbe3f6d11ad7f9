//! An example agent runtime with a sender-constrained token (DPoP, design §13): the whole gated
//! flow against the reference core.
//!
//! The runtime holds a DPoP key the model never sees. Its access token is bound to that key,
//! so a copy of the token leaking through a prompt, a tool output or a log is useless: every
//! use needs a fresh proof signed by the key, for that one method and URL.
//!
//! 1. `POST /oauth/token` with a proof: a token bound to the key (`token_type: DPoP`).
//! 2. The gated call at core (`PUT /workspaces/{id}/secrets`) with `Authorization: DPoP` and a
//!    proof: `202 pending` and an approval id.
//! 3. Waits (bounded) while an operator decides, reading the approval at the broker, again
//!    with a proof.
//! 4. The same call with the capability and a new proof: the effect runs once.
//!
//! ```sh
//! AGENT_BROKER_URL=http://127.0.0.1:8700 AGENT_CORE_URL=http://127.0.0.1:8710 \
//!   AGENT_CLIENT_ID=... AGENT_CLIENT_SECRET=... cargo run --example agent
//! ```

use std::time::Duration;

use serde_json::{Value, json};
use tessera::verify::dpop::{DPOP_HEADER, DPOP_NONCE_HEADER, DpopKey};

/// Where the agent works and who it is.
#[derive(Clone)]
pub struct AgentConfig {
    /// The broker's URL (its issuer).
    pub broker: String,
    /// Core's public URL.
    pub core: String,
    /// The agent's client id.
    pub client_id: String,
    /// The agent's bootstrap secret.
    pub client_secret: String,
    /// The workspace whose secret it writes.
    pub workspace: String,
    /// How long it waits for a decision.
    pub wait: Duration,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig").field("broker", &self.broker).field("core", &self.core).finish_non_exhaustive()
    }
}

/// What the run did, for the caller to show or check.
#[derive(Debug)]
pub struct Outcome {
    /// The key's thumbprint, which the token's `cnf.jkt` names.
    pub jkt: String,
    /// The approval the gated call asked for.
    pub approval_id: String,
    /// Core's status on the call with the capability.
    pub final_status: u16,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A bound access token: one proof, and one retry if the broker asks for its nonce.
pub async fn bound_token(http: &reqwest::Client, cfg: &AgentConfig, key: &DpopKey) -> Result<String, Error> {
    let url = format!("{}/oauth/token", cfg.broker);
    let mut nonce: Option<String> = None;
    for _ in 0..2 {
        let proof = key.proof("POST", &url, None, nonce.as_deref(), now())?;
        let res = http
            .post(&url)
            .basic_auth(&cfg.client_id, Some(&cfg.client_secret))
            .header(DPOP_HEADER, proof)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?;
        let fresh = res.headers().get(DPOP_NONCE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let status = res.status();
        let body: Value = res.json().await?;
        if status.is_success() {
            if body["token_type"] != "DPoP" {
                return Err("the broker did not bind the token".into());
            }
            return body["access_token"].as_str().map(str::to_owned).ok_or_else(|| "no access_token".into());
        }
        if body["error"] == "use_dpop_nonce" && fresh.is_some() {
            nonce = fresh;
            continue;
        }
        return Err(format!("token request refused: {status} {}", body["error"]).into());
    }
    Err("the broker kept asking for a nonce".into())
}

/// One request with the bound token and a fresh proof for exactly this method and URL.
pub async fn send(
    http: &reqwest::Client,
    key: &DpopKey,
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
    capability: Option<&str>,
) -> Result<reqwest::Response, Error> {
    let proof = key.proof(method.as_str(), url, Some(token), None, now())?;
    let mut req = http
        .request(method, url)
        .header(reqwest::header::AUTHORIZATION, format!("DPoP {token}"))
        .header(DPOP_HEADER, proof);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(c) = capability {
        req = req.header("Tessera-Capability", c);
    }
    Ok(req.send().await?)
}

/// Runs the whole gated flow with a key of its own; the operator's decision comes from
/// elsewhere (the console, `tessera approvals approve`, or a test).
pub async fn run(cfg: &AgentConfig, key: &DpopKey) -> Result<Outcome, Error> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let token = bound_token(&http, cfg, key).await?;
    let url = format!("{}/workspaces/{}/secrets", cfg.core, cfg.workspace);
    let body = json!({"key": "OPENAI_KEY", "value": "sk-example-not-a-real-key"});

    let res = send(&http, key, &token, reqwest::Method::PUT, &url, Some(&body), None).await?;
    if res.status() != reqwest::StatusCode::ACCEPTED {
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        return Err(format!("expected 202 from core, got {status} {}", v["error"]).into());
    }
    let v: Value = res.json().await?;
    let approval_id = v["approval_id"].as_str().ok_or("no approval_id")?.to_owned();
    eprintln!("agent: approval {approval_id} is pending; waiting for an operator");

    let deadline = tokio::time::Instant::now() + cfg.wait;
    let approval_url = format!("{}/v1/approvals/{approval_id}", cfg.broker);
    let capability = loop {
        let res = send(&http, key, &token, reqwest::Method::GET, &approval_url, None, None).await?;
        let v: Value = res.json().await?;
        if let Some(c) = v["capability"].as_str() {
            break c.to_owned();
        }
        if v["status"] != "pending" {
            return Err(format!("the request ended {}", v["status"]).into());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("no decision in time".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let res = send(&http, key, &token, reqwest::Method::PUT, &url, Some(&body), Some(&capability)).await?;
    let final_status = res.status().as_u16();
    eprintln!("agent: core answered {final_status} with the capability");
    Ok(Outcome { jkt: key.jkt().to_owned(), approval_id, final_status })
}

#[allow(dead_code)] // the end-to-end tests include this file and call `run`
fn main() -> std::process::ExitCode {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let cfg = AgentConfig {
        broker: env("AGENT_BROKER_URL", "http://127.0.0.1:8700"),
        core: env("AGENT_CORE_URL", "http://127.0.0.1:8710"),
        client_id: env("AGENT_CLIENT_ID", ""),
        client_secret: env("AGENT_CLIENT_SECRET", ""),
        workspace: env("AGENT_WORKSPACE", "ws-1"),
        wait: Duration::from_secs(env("AGENT_WAIT_SECS", "300").parse().unwrap_or(300)),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let key = DpopKey::generate_ed25519()?;
        run(&cfg, &key).await
    });
    match result {
        Ok(o) => {
            println!("{}", json!({"jkt": o.jkt, "approval_id": o.approval_id, "status": o.final_status}));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
