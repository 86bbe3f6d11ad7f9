//! `GET /v1/audit/checkpoint` and the signing of checkpoints (design §16).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, ApiResult, AppState};
use crate::audit::checkpoint::{self, CheckpointError, StoredCheckpoint};
use crate::domain::CallerKind;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/audit/checkpoint", get(latest))
}

/// The latest checkpoint, to `operator` and `service` callers (every party of a delegated
/// token included).
async fn latest(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    // The actors' kinds in the token are their registrations' (the extractor checked each).
    if !caller.claims.every_party_is(&[CallerKind::Operator, CallerKind::Service]) {
        return Err(ApiError::forbidden("only operator and service clients may read audit checkpoints"));
    }
    let Some(cp) = checkpoint::latest(state.store()).await? else {
        return Err(ApiError::not_found("no checkpoint has been signed yet"));
    };
    let mut res = Json(json!({ "checkpoint": cp.token })).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Signs a checkpoint of the chain's head with this replica's key, unless the head has one.
pub async fn sign_checkpoint(state: &AppState) -> Result<Option<StoredCheckpoint>, CheckpointError> {
    let signer = state.keys().signer();
    let sign = |c: &checkpoint::CheckpointClaims| signer.sign_typed(checkpoint::TYP, c).map_err(|e| e.to_string());
    checkpoint::sign_head(state.store(), &state.config().issuer, state.now(), &sign).await
}

/// Signs checkpoints every `audit_checkpoint_secs` while records are added.
pub(super) async fn checkpoints(state: AppState) {
    let period = std::time::Duration::from_secs(state.config().audit_checkpoint_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sign_checkpoint(&state).await {
            request_log!(WARN, error = %e, "signing an audit checkpoint failed");
        }
    }
}
