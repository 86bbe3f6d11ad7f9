//! The reference core: a small stand-in for the platform, built on the verifier library's
//! gate. It is what the end-to-end tests drive and what a core team copies from.
//!
//! Every route first verifies the caller's access token offline through the broker's JWKS;
//! gated routes run only on a capability for exactly this request, redeemed once at the broker
//! with the caller's own token. Core's own `service` client (`CORE_CLIENT_ID`,
//! `CORE_CLIENT_SECRET`) reads the broker's revocation feed, so revoked tokens stop working
//! here within 15 seconds (`CORE_REVOCATION_POLL_SECS`); without it, core warns at start and
//! learns of no revocations.
//!
//! A caller whose token is bound to a key (DPoP, design §13) presents it as `Authorization:
//! DPoP` with a proof for core's URL (`CORE_PUBLIC_URL`, default `http://` + `CORE_LISTEN`).
//! Core then acts at the broker as its own service client, naming the caller's token as
//! `requester_token`; without `CORE_CLIENT_ID` and `CORE_CLIENT_SECRET` such a caller's gated
//! request is `403 forbidden`.
//!
//! ```sh
//! CORE_LISTEN=127.0.0.1:8710 CORE_BROKER_URL=http://127.0.0.1:8700 \
//!   CORE_CLIENT_ID=... CORE_CLIENT_SECRET=... cargo run --example core
//! ```

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tessera::verify::Verifier;
use tessera::verify::gate::{Gate, GateRequest, Identity};
use tessera::verify::revocations::FeedCredentials;

/// One side effect core executed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Effect {
    /// The gated action.
    pub action: String,
    /// Its resource.
    pub resource: String,
}

/// Core's in-memory state: the effects executed so far.
#[derive(Debug, Clone, Default)]
pub struct Effects(Arc<Mutex<Vec<Effect>>>);

impl Effects {
    fn record(&self, action: &str, resource: String) {
        let mut v = match self.0.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        v.push(Effect { action: action.to_owned(), resource });
    }

    /// A copy of the effects so far.
    pub fn list(&self) -> Vec<Effect> {
        match self.0.lock() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

fn workspace_secret(r: &GateRequest<'_>) -> Option<String> {
    Some(format!("workspaces/{}/secrets/{}", r.path("id")?, r.body_str("key")?))
}

fn org_secret(r: &GateRequest<'_>) -> Option<String> {
    Some(format!("orgs/{}/secrets/{}", r.caller.tenant, r.body_str("key")?))
}

fn org_tokens(r: &GateRequest<'_>) -> Option<String> {
    r.body_str("name")?;
    Some(format!("orgs/{}/tokens", r.caller.tenant))
}

fn workspace(r: &GateRequest<'_>) -> Option<String> {
    Some(format!("workspaces/{}", r.path("id")?))
}

fn workspace_tokens(r: &GateRequest<'_>) -> Option<String> {
    Some(format!("workspaces/{}/tokens", r.path("id")?))
}

/// The secret fields of the two secret routes (design §9): the operator sees the value only as
/// its length and fingerprint, and it never reaches the broker.
const SECRET_FIELDS: &[&str] = &["value"];

/// Core's routes (design §9), each behind the gate.
pub fn router(gate: &Gate, effects: Effects) -> Router {
    // What the protected-resource metadata lists (RFC 9728); the gate serves it.
    gate.set_scopes_supported(&["workspaces:read", "approvals:create"]);
    Router::new()
        .merge(gate.metadata_routes())
        .route("/workspaces/{id}", get(read_workspace).route_layer(gate.authenticated().scope("workspaces:read")))
        .route(
            "/workspaces/{id}",
            axum::routing::delete(|State(e): State<Effects>, Path(id): Path<String>| async move {
                e.record("workspace_delete", format!("workspaces/{id}"));
                Json(json!({ "deleted": id }))
            })
            .route_layer(gate.gated("workspace_delete", workspace)),
        )
        .route(
            "/org/tokens",
            post(|State(e): State<Effects>, Extension(who): Extension<Identity>| async move {
                e.record("org_token_mint", format!("orgs/{}/tokens", who.0.tenant));
                (StatusCode::CREATED, Json(json!({ "created": true })))
            })
            .route_layer(gate.gated("org_token_mint", org_tokens)),
        )
        .route(
            "/workspaces/{id}/secrets",
            put(|State(e): State<Effects>, Path(id): Path<String>, Json(body): Json<Value>| async move {
                let key = body["key"].as_str().unwrap_or_default();
                e.record("secret_write", format!("workspaces/{id}/secrets/{key}"));
                Json(json!({ "written": key }))
            })
            .route_layer(gate.gated("secret_write", workspace_secret).secret_fields(SECRET_FIELDS)),
        )
        .route(
            "/settings/secrets",
            put(|State(e): State<Effects>, Extension(who): Extension<Identity>, Json(body): Json<Value>| async move {
                let key = body["key"].as_str().unwrap_or_default();
                e.record("secret_write", format!("orgs/{}/secrets/{key}", who.0.tenant));
                Json(json!({ "written": key }))
            })
            .route_layer(gate.gated("secret_write", org_secret).secret_fields(SECRET_FIELDS)),
        )
        .route(
            "/workspaces/{id}/deprovision",
            post(|State(e): State<Effects>, Path(id): Path<String>| async move {
                e.record("workspace_deprovision", format!("workspaces/{id}"));
                Json(json!({ "deprovisioned": id }))
            })
            .route_layer(gate.gated("workspace_deprovision", workspace)),
        )
        .route(
            "/admin/workspaces/{id}/tokens",
            post(|State(e): State<Effects>, Path(id): Path<String>| async move {
                e.record("workspace_token_mint", format!("workspaces/{id}/tokens"));
                (StatusCode::CREATED, Json(json!({ "created": true })))
            })
            .route_layer(gate.gated("workspace_token_mint", workspace_tokens)),
        )
        .route("/debug/effects", get(|State(e): State<Effects>| async move { Json(e.list()) }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found", "error_description": "no such endpoint" })))
        })
        .with_state(effects)
}

/// The gate has checked the token and its `workspaces:read` scope (403 `forbidden` with
/// `insufficient_scope` in `WWW-Authenticate` without it).
async fn read_workspace(Path(id): Path<String>, Extension(_who): Extension<Identity>) -> Response {
    Json(json!({ "id": id })).into_response()
}

/// Core's gate as `main` builds it from its environment (`var` reads a variable): the verifier
/// for `CORE_ISSUER` and `CORE_AUDIENCE`, and, with `CORE_CLIENT_ID` and `CORE_CLIENT_SECRET`,
/// the revocation feed read every `CORE_REVOCATION_POLL_SECS` (15). Without them `warn` is told,
/// once, that revoked tokens stay valid here until they expire. Needs a Tokio runtime.
pub fn gate_from_env(var: &dyn Fn(&str) -> Option<String>, warn: &mut dyn FnMut(&str)) -> Gate {
    let env = |k: &str, d: &str| var(k).unwrap_or_else(|| d.to_owned());
    let listen = env("CORE_LISTEN", "127.0.0.1:8710");
    let broker = env("CORE_BROKER_URL", "http://127.0.0.1:8700");
    let issuer = env("CORE_ISSUER", &broker);
    let mut verifier = Verifier::for_issuer(&issuer, &env("CORE_AUDIENCE", "core"));
    // The revocation feed is served to service clients only: core reads it as its own
    // service client, when one is configured.
    let polls = if let (Some(id), Some(secret)) = (var("CORE_CLIENT_ID"), var("CORE_CLIENT_SECRET")) {
        verifier = verifier.with_feed_credentials(FeedCredentials::new(id, secret));
        true
    } else {
        warn(
            "core: CORE_CLIENT_ID and CORE_CLIENT_SECRET are not set; revoked tokens stay valid here until they expire",
        );
        false
    };
    let verifier = Arc::new(verifier);
    if polls {
        let secs = env("CORE_REVOCATION_POLL_SECS", "15").parse::<u64>().unwrap_or(15).max(1);
        tessera::verify::revocations::spawn_poller(verifier.clone(), std::time::Duration::from_secs(secs));
    }
    let gate = Gate::new(verifier, &broker);
    gate.set_public_url(&env("CORE_PUBLIC_URL", &format!("http://{listen}")));
    gate
}

/// Runs core until ctrl-c.
#[allow(dead_code)] // the end-to-end tests include this file and drive `router` instead
fn main() -> std::process::ExitCode {
    let var = |k: &str| std::env::var(k).ok();
    let listen = var("CORE_LISTEN").unwrap_or_else(|| "127.0.0.1:8710".to_owned());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("core: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error>> = rt.block_on(async {
        let gate = gate_from_env(&var, &mut |w| eprintln!("{w}"));
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        eprintln!("core listening on {listen}, trusting {}", gate.verifier().policy().issuer);
        axum::serve(listener, router(&gate, Effects::default()))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("core: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
