//! `tessera policy check FILE` and `tessera policy explain APPROVAL_ID OPERATOR_ID`: for the
//! operator writing a rule, and for the one debugging it at 3 a.m.

use std::io::Write;

use clap::Subcommand;

use super::Failure;
use crate::config::Config;
use crate::policy::rules::{PolicyVerdict, RuleAction, Rules};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCmd {
    /// Validate a file of Cedar approval policies against the shipped schema, as `serve` does
    /// at start: exit 0 and list the policies, or exit 1 naming the first that does not
    /// validate.
    Check {
        /// The policy file.
        file: std::path::PathBuf,
    },
    /// Say, policy by policy, whether an operator may decide an approval, and why (acts on
    /// the database directly, with the configured `policy_file`).
    Explain {
        /// The approval id.
        approval_id: String,
        /// The operator's client id.
        operator_id: String,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `policy check`, which needs no configuration (it checks the file it is given).
pub(super) fn check(file: &std::path::Path) -> Result<(), Failure> {
    let rules = Rules::load(file).map_err(|e| Failure(e.0))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: {} policies, all valid: {}", file.display(), rules.ids().len(), rules.ids().join(", "))?;
    if !rules.mentions_permit_for(RuleAction::Decide) {
        writeln!(
            out,
            "warning: no policy permits Tessera::Action::\"decide\": with this file no operator can decide any request"
        )?;
    }
    Ok(())
}

fn verdicts(out: &mut impl Write, title: &str, list: &[PolicyVerdict]) -> std::io::Result<()> {
    writeln!(out, "{title}:")?;
    if list.is_empty() {
        writeln!(out, "  (no policy file: any enabled operator of the tenant decides)")?;
    }
    for v in list {
        let state = match (&v.error, v.applies) {
            (Some(e), _) => format!("could not be evaluated: {e}"),
            (None, true) => "applies".to_owned(),
            (None, false) => "does not apply".to_owned(),
        };
        writeln!(out, "  {:<6} {:<44} {state}", v.effect, v.id)?;
    }
    Ok(())
}

pub(super) async fn explain(config: &Config, approval_id: &str, operator_id: &str, json: bool) -> Result<(), Failure> {
    let store = crate::store::Store::open(&config.database_url).await?;
    let now = super::admin::now();
    let result = crate::approvals::explain(&store, &config.policy, approval_id, operator_id, now).await;
    store.close().await;
    let e = result.map_err(|e| match e {
        crate::approvals::ApprovalError::NotFound => Failure(format!("no approval {approval_id}")),
        e => Failure(e.to_string()),
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?;
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    writeln!(out, "approval        {}", e.approval_id)?;
    writeln!(out, "operator        {}", e.operator)?;
    writeln!(out, "may decide      {}", yes(e.may_decide))?;
    writeln!(out, "may break glass {}", yes(e.may_break_glass))?;
    if let Some(why) = &e.always {
        writeln!(out, "always          {why} (whatever a policy says)")?;
    }
    let counts = if e.counts_for.is_empty() {
        "nothing (in none of the required groups)".to_owned()
    } else {
        e.counts_for.join(", ")
    };
    writeln!(out, "counts for      {counts}")?;
    writeln!(out, "quorum so far   {}", e.quorum)?;
    writeln!(out)?;
    verdicts(&mut out, "decide", &e.decide)?;
    if config.policy.rules.is_some() {
        verdicts(&mut out, "break_glass", &e.break_glass)?;
    }
    Ok(())
}
