//! The `tessera` command line. Exit codes: 0 success, 1 failure with a one-line reason on
//! stderr, 2 usage error.

mod admin;
mod approvals;
mod audit;
mod gate;
mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::server::Application;

/// Tessera: scoped access tokens for agents, human-approved capabilities for gated verbs.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about)]
pub struct Cli {
    /// Configuration file (TOML); also TESSERA_CONFIG.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve,
    /// Register and manage clients (acts on the database directly).
    #[command(subcommand)]
    Clients(admin::ClientsCmd),
    /// List and rotate signing keys (acts on the database and keys folder directly).
    #[command(subcommand)]
    Keys(admin::KeysCmd),
    /// Verify, export or archive the audit log (acts on the database directly).
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Apply the database schema.
    Migrate,
    /// Check a file of approval policies, or explain what they say about one operator and
    /// one approval.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Run the gate as a reverse proxy in front of an upstream (--config FILE names the
    /// proxy's own TOML file; TESSERA_GATE_CLIENT_ID and TESSERA_GATE_CLIENT_SECRET name its
    /// service client, for the revocation feed).
    Gate,
    /// List, show, approve and deny approvals over HTTP, as an operator
    /// (TESSERA_CLIENT_ID, TESSERA_CLIENT_SECRET).
    Approvals {
        /// The broker's URL (default: the configured issuer).
        #[arg(long, value_name = "URL", global = true)]
        server: Option<String>,
        #[command(subcommand)]
        command: approvals::ApprovalsCmd,
    },
}

/// A failure to report: one line on stderr, exit 1.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// Parses the process arguments and runs; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            let line = msg.lines().collect::<Vec<_>>().join("; ");
            eprintln!("tessera: {line}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    if let Command::Gate = cli.command {
        // The proxy's file is its own (design §17), not the broker's configuration.
        init_logging(LogFormat::Text, &env, "info");
        return gate::run(cli.config.as_deref(), &env).await;
    }
    if let Command::Policy(policy::PolicyCmd::Check { file }) = &cli.command {
        return policy::check(file);
    }
    let config = Config::load(cli.config.as_deref(), &env)?;
    match cli.command {
        Command::Serve => {
            init_logging(config.log_format, &env, "info");
            let app = Application::build(config).await?;
            tracing::info!(addr = %app.local_addr()?, "tessera listening");
            app.run_until_stopped().await?;
            Ok(())
        }
        Command::Clients(cmd) => {
            init_logging(config.log_format, &env, "warn");
            admin::clients(&config, cmd).await
        }
        Command::Keys(cmd) => {
            init_logging(config.log_format, &env, "warn");
            admin::keys(&config, cmd).await
        }
        Command::Audit(cmd) => {
            init_logging(config.log_format, &env, "warn");
            audit::run(&config, cmd).await
        }
        Command::Approvals { server, command } => {
            init_logging(config.log_format, &env, "warn");
            approvals::run(server.as_deref().unwrap_or(&config.issuer), command).await
        }
        Command::Gate => Ok(()),
        Command::Policy(policy::PolicyCmd::Check { file }) => policy::check(&file),
        Command::Policy(policy::PolicyCmd::Explain { approval_id, operator_id, json }) => {
            init_logging(config.log_format, &env, "warn");
            policy::explain(&config, &approval_id, &operator_id, json).await
        }
        Command::Migrate => {
            init_logging(config.log_format, &env, "warn");
            let store = crate::store::Store::open(&config.database_url).await?;
            store.close().await;
            println!("schema up to date");
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat, env: &HashMap<String, String>, default: &str) {
    let filter = env.get("TESSERA_LOG").cloned().unwrap_or_else(|| default.to_owned());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
