//! `tessera gate --config FILE`: the gate as a reverse proxy (design §17).

use std::collections::HashMap;
use std::path::Path;

use super::Failure;
use crate::proxy::{GateConfig, GateProxy};
use crate::verify::revocations::FeedCredentials;

/// Checks the file, binds, and serves until ctrl-c or SIGTERM.
pub(super) async fn run(path: Option<&Path>, env: &HashMap<String, String>) -> Result<(), Failure> {
    let Some(path) = path else {
        return Err(Failure("tessera gate needs --config FILE".to_owned()));
    };
    let config = GateConfig::load(path)?;
    let feed = match (env.get("TESSERA_GATE_CLIENT_ID"), env.get("TESSERA_GATE_CLIENT_SECRET")) {
        (Some(id), Some(secret)) => Some(FeedCredentials::new(id.clone(), secret.clone())),
        _ => {
            tracing::warn!(
                "TESSERA_GATE_CLIENT_ID and TESSERA_GATE_CLIENT_SECRET are not set; revoked tokens stay valid here \
                 until they expire"
            );
            None
        }
    };
    let upstream = match &config.upstream_socket {
        Some(path) => format!("{} on {}", config.upstream, path.display()),
        None => config.upstream.to_string(),
    };
    let proxy = GateProxy::from_config(config, feed).await.map_err(|e| Failure(format!("cannot listen: {e}")))?;
    let addr = proxy.local_addr()?;
    tracing::info!(%addr, %upstream, "tessera gate listening");
    proxy.run_until(shutdown()).await.map_err(|e| Failure(format!("gate: {e}")))
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
