//! `clients`, `keys` and `audit`: act on the database and keys folder directly, so they work
//! with the broker stopped or running.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::Failure;
use crate::clients as client_rows;
use crate::clients::FederatedIdentity;
use crate::clients::{self, NewClient};
use crate::config::Config;
use crate::domain::{Action, CallerKind, ClientId, GroupName, Owner, Scope, TenantId, WorkspaceId};
use crate::keys as key_rows;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub(super) enum ClientsCmd {
    /// Register a client; prints its id and secret once, as JSON.
    Create {
        /// Tenant (org) id.
        #[arg(long)]
        tenant: TenantId,
        /// agent, workspace, operator, install or service.
        #[arg(long)]
        kind: CallerKind,
        /// A human name.
        #[arg(long)]
        name: String,
        /// The workspace a workspace (or agent) client is bound to.
        #[arg(long)]
        workspace: Option<WorkspaceId>,
        /// Exactly these scopes (repeatable); default: the kind's defaults.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<Scope>,
        /// A gated action this install client may bypass, audited (repeatable).
        #[arg(long = "allow-bypass", value_name = "ACTION")]
        allow_bypass: Vec<Action>,
        /// A client of the same tenant that may exchange this client's tokens and act for
        /// it (RFC 8693 delegation; repeatable).
        #[arg(long = "delegate", value_name = "CLIENT_ID")]
        delegates: Vec<ClientId>,
        /// Issue tokens to this client only with a DPoP proof, bound to the proof's key.
        #[arg(long = "require-dpop")]
        require_dpop: bool,
        /// A workload identity that authenticates this client instead of a secret: the
        /// issuer (one of `[[federation]]`) and the subject of its tokens (repeatable). The
        /// client then has no secret.
        #[arg(long = "federated", value_name = "ISSUER=SUBJECT", value_parser = parse_identity)]
        federated: Vec<FederatedIdentity>,
        /// A file holding a public JWK (Ed25519 or P-256): the client then has no secret and
        /// authenticates with assertions signed by the private half (`private_key_jwt`).
        #[arg(long = "jwk", value_name = "FILE", conflicts_with = "federated")]
        jwk: Option<std::path::PathBuf>,
        /// An operator group this operator belongs to, named by approval policies and per-group
        /// quorum (repeatable; operators only).
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<GroupName>,
        /// Who is answerable for this client: an e-mail address or an operator client id. The
        /// owner never counts towards the client's own requests.
        #[arg(long)]
        owner: Option<Owner>,
    },
    /// Replace an operator's groups with exactly these (none: it leaves every group).
    SetGroups {
        /// Client id.
        id: String,
        /// The groups.
        #[arg(value_name = "NAME")]
        groups: Vec<GroupName>,
    },
    /// List clients, with their owner, last use and state.
    List {
        /// Only agent and workspace clients unused for the policy's `stale_after_days` (30 if
        /// it sets none), whatever their state.
        #[arg(long)]
        stale: bool,
    },
    /// Show one client as JSON: its registration, who made it, its last use, and its secrets'
    /// ages (and, within a rotation's grace, the previous secret's expiry and uses).
    Show {
        /// Client id.
        id: String,
    },
    /// Disable a client: every secret of it stops working at once, its tokens are revoked.
    Disable {
        /// Client id.
        id: String,
    },
    /// Issue a new secret; the old one stops working at once, or after `--grace`.
    RotateSecret {
        /// Client id.
        id: String,
        /// Seconds the old secret keeps working beside the new one (at most 604800, 7 days);
        /// each use of it is counted (`clients show`, `tessera_client_previous_secret_uses_total`).
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        grace: i64,
    },
    /// Issue a one-time code with which an operator enrols its first passkey in the console
    /// (valid 30 minutes). Without it, an operator secret alone never enrols an authenticator.
    PasskeyEnrolment {
        /// Client id.
        id: String,
    },
    /// Remove every passkey of an operator (one lost its authenticator): it enrols again after
    /// signing in with its secret. The removed keys stay stored to verify past decisions.
    RemovePasskeys {
        /// Client id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum KeysCmd {
    /// List registered signing keys.
    List,
    /// Rotate this replica's key (the keys folder's): the new key is published at once and
    /// signs after the JWKS max-age plus leeway; the old one stays published until its last
    /// token has expired.
    Rotate,
}

/// `ISSUER=SUBJECT`, split at the first `=` (an issuer URL has none).
fn parse_identity(s: &str) -> Result<FederatedIdentity, String> {
    match s.split_once('=') {
        Some((issuer, subject)) if !issuer.is_empty() && !subject.is_empty() => {
            Ok(FederatedIdentity { issuer: issuer.to_owned(), subject: subject.to_owned() })
        }
        _ => Err(format!("expected ISSUER=SUBJECT, got {s:?}")),
    }
}

/// The public JWK of `--jwk`: a small file, read whole.
fn read_jwk_file(path: &std::path::Path) -> Result<String, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| Failure(format!("--jwk {}: {e}", path.display())))?;
    if meta.len() > 16 * 1024 {
        return Err(Failure(format!(
            "--jwk {}: larger than 16 KiB; a public JWK is a few hundred bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Failure(format!("--jwk {}: {e}", path.display())))
}

/// An agent or workspace client nobody answers for is listed as unowned (design §19).
fn owner_text(c: &crate::clients::ClientRecord) -> String {
    match (&c.owner, c.kind) {
        (Some(o), _) => o.to_string(),
        (None, CallerKind::Agent | CallerKind::Workspace) => "(unowned)".to_owned(),
        (None, _) => "-".to_owned(),
    }
}

/// What `clients list --stale` counts as stale: the policy's `stale_after_days`, or 30.
fn stale_days(config: &Config) -> u32 {
    config.policy.stale_after_days.unwrap_or(30)
}

pub(super) fn now() -> i64 {
    crate::server::Clock::default().now()
}

pub(super) fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(())
}

pub(super) async fn clients(config: &Config, cmd: ClientsCmd) -> Result<(), Failure> {
    let store = Store::open(&config.database_url).await?;
    let result = run_clients(config, &store, cmd).await;
    store.close().await;
    result
}

async fn run_clients(config: &Config, store: &Store, cmd: ClientsCmd) -> Result<(), Failure> {
    match cmd {
        ClientsCmd::Create {
            tenant,
            kind,
            name,
            workspace,
            scopes,
            allow_bypass,
            delegates,
            require_dpop,
            federated,
            jwk,
            groups,
            owner,
        } => {
            let new = NewClient {
                tenant,
                kind,
                name,
                workspace,
                scopes,
                allow_bypass,
                delegates,
                require_dpop,
                groups,
                owner,
            };
            for id in &federated {
                if !config.federation.iter().any(|f| f.issuer == id.issuer) {
                    return Err(Failure(format!(
                        "--federated: {:?} is not a trusted issuer; add it as a [[federation]] entry first",
                        id.issuer
                    )));
                }
            }
            let text = jwk.as_deref().map(read_jwk_file).transpose()?;
            let credential = match &text {
                Some(text) => clients::Credential::Key(text),
                None if federated.is_empty() => clients::Credential::Secret,
                None => clients::Credential::Federated(&federated),
            };
            let (_, answer) = clients::register_answering(store, &config.policy, new, credential, "cli", now()).await?;
            print_json(&answer)
        }
        ClientsCmd::SetGroups { id, groups } => {
            let c = clients::set_groups(store, &id, groups, "cli", now()).await?;
            print_json(&json!({ "client_id": c.client_id, "groups": c.groups }))
        }
        ClientsCmd::List { stale } => {
            let now = now();
            let idle_before = stale.then(|| now - i64::from(stale_days(config)) * 86_400);
            let list = client_rows::list_inventory(store, None, idle_before).await?;
            let mut identities: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
            for (client, id) in crate::clients::identities(store).await? {
                identities.entry(client).or_default().push(format!("federated:{}={}", id.issuer, id.subject));
            }
            for (client, kid) in crate::clients::keys(store).await? {
                identities.entry(client).or_default().push(format!("key:{kid}"));
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<26} {:<16} {:<10} {:<9} {:<20} {:<12} {:<40} {:<24} {:<20} {:<20} AUTHENTICATES_BY",
                "CLIENT_ID", "TENANT", "KIND", "STATUS", "NAME", "WORKSPACE", "SCOPE", "OWNER", "GROUPS", "LAST_USED"
            )?;
            for (c, inv) in list {
                writeln!(
                    out,
                    "{:<26} {:<16} {:<10} {:<9} {:<20} {:<12} {:<40} {:<24} {:<20} {:<20} {}",
                    c.client_id,
                    c.tenant,
                    c.kind,
                    if c.disabled { "disabled" } else { "active" },
                    c.name,
                    c.workspace.as_ref().map_or("-", |w| w.as_str()),
                    c.scopes.to_string(),
                    owner_text(&c),
                    if c.groups.is_empty() {
                        "-".to_owned()
                    } else {
                        c.groups.iter().map(GroupName::as_str).collect::<Vec<_>>().join(",")
                    },
                    inv.last_used_at.map_or_else(|| "never".to_owned(), crate::domain::rfc3339),
                    identities.get(c.client_id.as_str()).map_or("secret".to_owned(), |ids| ids.join(","))
                )?;
            }
            Ok(())
        }
        ClientsCmd::Disable { id } => {
            let c = clients::disable(store, &id, "cli", now()).await?;
            print_json(&json!({ "client_id": c.client_id, "disabled": true }))
        }
        ClientsCmd::Show { id } => {
            let Some((c, inv)) = client_rows::get_inventory(store, &id).await? else {
                return Err(Failure(format!("no client {id}")));
            };
            print_json(&clients::view(&c, &inv, now()))
        }
        ClientsCmd::RotateSecret { id, grace } => {
            let (c, secret, until) = clients::rotate_secret(store, &id, Some(grace), "cli", now()).await?;
            print_json(&clients::rotated_view(&c, &secret, until))
        }
        ClientsCmd::PasskeyEnrolment { id } => {
            let Some(c) =
                crate::clients::get(store, &id).await?.filter(|c| c.kind == crate::domain::CallerKind::Operator)
            else {
                return Err(Failure(format!("no operator client {id}")));
            };
            let (code, expires_at) = crate::passkeys::ceremonies::issue_enrolment_code(store, &c, "cli", now()).await?;
            print_json(&json!({ "client_id": id, "enrolment_code": code, "expires_at": expires_at }))
        }
        ClientsCmd::RemovePasskeys { id } => {
            let Some(c) = crate::clients::get(store, &id).await? else {
                return Err(Failure(format!("no client {id}")));
            };
            let removed = crate::passkeys::ceremonies::remove_all(store, &c, "cli", now()).await?;
            print_json(&json!({ "client_id": id, "passkeys_removed": removed }))
        }
    }
}

pub(super) async fn keys(config: &Config, cmd: KeysCmd) -> Result<(), Failure> {
    let store = Store::open(&config.database_url).await?;
    match cmd {
        KeysCmd::Rotate => {
            let r = crate::keys::rotate(&store, &config.keys_dir, now(), config.key_publish_lead_secs(), "cli").await?;
            print_json(&serde_json::to_value(&r)?)?;
        }
        KeysCmd::List => {
            let rows = key_rows::list(&store).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<44} {:<6} {:<8} {:<12} {:<12} {:<12} {:<12}",
                "KID", "ALG", "HERE", "CREATED", "ACTIVATES", "RETIRED", "UNPUBLISH"
            )?;
            for k in rows {
                let here = config.keys_dir.join(format!("{}.pem", k.kid)).exists();
                let t = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
                writeln!(
                    out,
                    "{:<44} {:<6} {:<8} {:<12} {:<12} {:<12} {:<12}",
                    k.kid,
                    k.alg,
                    if here { "yes" } else { "no" },
                    k.created_at,
                    k.activates_at,
                    t(k.retired_at),
                    t(k.unpublish_at)
                )?;
            }
        }
    }
    store.close().await;
    Ok(())
}
