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
    /// Show one approval.
    Show {
        /// Approval id.
        id: String,
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

fn approvals_so_far(a: &Value) -> usize {
    a["decisions"].as_array().map_or(0, |d| d.iter().filter(|d| d["decision"] == "approve").count())
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
                        format!("{}/{}", approvals_so_far(a), a["quorum"]),
                        s(&a["reason"]).replace('\n', " "),
                    )?;
                }
                match page["next"].as_str() {
                    Some(n) => cursor = Some(n.to_owned()),
                    None => break,
                }
            }
        }
        ApprovalsCmd::Show { id } => {
            let a = session.get(&format!("/v1/approvals/{}", urlencode(&id))).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&a)?)?;
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
                "{}: {} ({} of {} approvals) — {} on {}",
                s(&a["approval_id"]),
                s(&a["status"]),
                approvals_so_far(&a),
                a["quorum"],
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

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
