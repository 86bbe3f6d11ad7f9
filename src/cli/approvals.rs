//! `tessera approvals …`: talks HTTP to a broker with an operator's credentials from
//! `TESSERA_CLIENT_ID` and `TESSERA_CLIENT_SECRET`.

use std::collections::HashMap;
use std::io::Write;

use clap::Subcommand;
use serde_json::{Value, json};

use super::Failure;

#[derive(Debug, Subcommand)]
pub(super) enum ApprovalsCmd {
    /// List approvals (whole ids), oldest first.
    List {
        /// pending, approved, denied, expired, redeemed or withdrawn.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// Show one approval: what will run (its parameters as presented), who asked and why.
    Show {
        /// Approval id.
        id: String,
        /// Print the approval object as the API returns it, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request.
    Approve {
        /// Approval id.
        id: String,
        /// A note for the record.
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        /// Approval id.
        id: String,
        /// A note for the record.
        #[arg(long)]
        note: Option<String>,
    },
}

struct Session {
    http: reqwest::Client,
    server: String,
    token: String,
}

async fn error_of(res: reqwest::Response) -> Failure {
    let status = res.status();
    match res.json::<Value>().await {
        Ok(v) if v["error"].is_string() => Failure(format!(
            "{} {}: {}",
            status.as_u16(),
            v["error"].as_str().unwrap_or_default(),
            v["error_description"].as_str().unwrap_or_default()
        )),
        _ => Failure(format!("the broker answered {status}")),
    }
}

impl Session {
    async fn sign_in(server: &str, env: &HashMap<String, String>) -> Result<Session, Failure> {
        let (Some(id), Some(secret)) = (env.get("TESSERA_CLIENT_ID"), env.get("TESSERA_CLIENT_SECRET")) else {
            return Err(Failure(
                "set TESSERA_CLIENT_ID and TESSERA_CLIENT_SECRET to an operator client's credentials".into(),
            ));
        };
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        let server = server.trim_end_matches('/').to_owned();
        let res = http
            .post(format!("{server}/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| Failure(format!("cannot reach {server}: {e}")))?;
        if !res.status().is_success() {
            return Err(error_of(res).await);
        }
        let body: Value = res.json().await?;
        let token = body["access_token"].as_str().ok_or_else(|| Failure("no access_token in the answer".into()))?;
        Ok(Session { http, server, token: token.to_owned() })
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        let res = self.http.get(format!("{}{path}", self.server)).bearer_auth(&self.token).send().await?;
        if !res.status().is_success() {
            return Err(error_of(res).await);
        }
        Ok(res.json().await?)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let res = self.http.post(format!("{}{path}", self.server)).bearer_auth(&self.token).json(body).send().await?;
        if !res.status().is_success() {
            return Err(error_of(res).await);
        }
        Ok(res.json().await?)
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Approvals counted so far and needed in all, over the quorum's requirements.
fn quorum_counts(a: &Value) -> (u64, u64) {
    let reqs = a["quorum"].as_array().into_iter().flatten();
    reqs.fold((0, 0), |(got, need), r| {
        (got + r["approvals"].as_u64().unwrap_or(0), need + r["count"].as_u64().unwrap_or(0))
    })
}

/// The quorum's requirements in words: "security 1 of 2, platform 0 of 1".
fn quorum_text(a: &Value) -> String {
    let reqs: Vec<String> = a["quorum"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let who = r["group"].as_str().unwrap_or("any operator");
            format!("{who} {} of {}", r["approvals"].as_u64().unwrap_or(0), r["count"].as_u64().unwrap_or(0))
        })
        .collect();
    reqs.join(", ")
}

fn quorum_short(a: &Value) -> String {
    let (got, need) = quorum_counts(a);
    format!("{got}/{need}")
}

pub(super) async fn run(server: &str, cmd: ApprovalsCmd) -> Result<(), Failure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let session = Session::sign_in(server, &env).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ApprovalsCmd::List { status } => {
            writeln!(
                out,
                "{:<26} {:<10} {:<22} {:<40} {:<34} {:<6} REASON",
                "APPROVAL_ID", "STATUS", "ACTION", "RESOURCE", "REQUESTER", "QUORUM"
            )?;
            let mut cursor: Option<String> = None;
            for _page in 0..100 {
                let mut path = format!("/v1/approvals?status={}", urlencode(&status));
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={}", urlencode(c)));
                }
                let page = session.get(&path).await?;
                for a in page["approvals"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "{:<26} {:<10} {:<22} {:<40} {:<34} {:<6} {}",
                        s(&a["approval_id"]),
                        s(&a["status"]),
                        s(&a["action"]),
                        s(&a["resource"]),
                        format!("{} ({})", s(&a["requester"]), s(&a["requester_kind"])),
                        quorum_short(a),
                        s(&a["reason"]).replace('\n', " "),
                    )?;
                }
                match page["next"].as_str() {
                    Some(n) => cursor = Some(n.to_owned()),
                    None => break,
                }
            }
        }
        ApprovalsCmd::Show { id, json } => {
            let a = session.get(&format!("/v1/approvals/{}", urlencode(&id))).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&a)?)?;
            } else {
                show(&mut out, &a)?;
            }
        }
        ApprovalsCmd::Approve { id, note } => {
            let a = session
                .post(
                    &format!("/v1/approvals/{}/decision", urlencode(&id)),
                    &json!({ "decision": "approve", "note": note }),
                )
                .await?;
            writeln!(
                out,
                "{}: {} (approvals: {}) — {} on {}",
                s(&a["approval_id"]),
                s(&a["status"]),
                quorum_text(&a),
                s(&a["action"]),
                s(&a["resource"])
            )?;
        }
        ApprovalsCmd::Deny { id, note } => {
            let a = session
                .post(
                    &format!("/v1/approvals/{}/decision", urlencode(&id)),
                    &json!({ "decision": "deny", "note": note }),
                )
                .await?;
            writeln!(
                out,
                "{}: {} — {} on {}",
                s(&a["approval_id"]),
                s(&a["status"]),
                s(&a["action"]),
                s(&a["resource"])
            )?;
        }
    }
    Ok(())
}

/// One approval for an operator to read before deciding: the parameters that will run, in
/// full (secret values as length and fingerprint), apart from the requester's own description.
fn show(out: &mut impl Write, a: &Value) -> std::io::Result<()> {
    let actors: Vec<&str> = a["actors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut by = String::new();
    for actor in &actors {
        by.push_str(&format!("{actor}, acting for "));
    }
    by.push_str(&format!("{} ({})", s(&a["requester"]), s(&a["requester_kind"])));
    writeln!(out, "approval       {}", s(&a["approval_id"]))?;
    writeln!(out, "status         {}", s(&a["status"]))?;
    writeln!(out, "action         {}", s(&a["action"]))?;
    writeln!(out, "resource       {}", s(&a["resource"]))?;
    writeln!(out, "requested by   {by}")?;
    writeln!(out, "reason         {}", s(&a["reason"]).replace('\n', "\n               "))?;
    writeln!(out, "approvals      {}", quorum_text(a))?;
    if let Some(owner) = a["requester_owner"].as_str() {
        writeln!(out, "owner          {owner} (never counts towards it)")?;
    }
    writeln!(out, "expires        {}", s(&a["expires_at"]))?;
    writeln!(out, "params_digest  {}", s(&a["params_digest"]))?;
    writeln!(out)?;
    writeln!(out, "What will run: exactly these parameters (the capability binds their digest; secret values")?;
    writeln!(out, "are shown as {{\"$secret\": {{length in bytes, fingerprint}}}}):")?;
    match &a["params"] {
        Value::Null => writeln!(out, "  (made before parameters were kept: only the digest binds it)")?,
        p => {
            for line in serde_json::to_string_pretty(p).unwrap_or_default().lines() {
                writeln!(out, "  {line}")?;
            }
        }
    }
    if a["summary"].as_object().is_some_and(|m| !m.is_empty()) {
        writeln!(out)?;
        writeln!(out, "The requester's description (UNVERIFIED: written by the requester, not checked against")?;
        writeln!(out, "what will run; where it and the parameters differ, the parameters run):")?;
        for line in serde_json::to_string_pretty(&a["summary"]).unwrap_or_default().lines() {
            writeln!(out, "  {line}")?;
        }
    }
    for d in a["decisions"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "decision       {} by {} at {} ({})",
            s(&d["decision"]),
            s(&d["operator"]),
            s(&d["at"]),
            s(&d["method"])
        )?;
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
