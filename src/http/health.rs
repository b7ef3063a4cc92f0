//! Liveness and readiness.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use poda_jobs::engine::migrate::ensure_migrated;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
}

/// The process is up and serving.
async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and carries every migration this build knows.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    ensure_migrated(&state.pool)
        .await
        .map_err(|e| ApiError::Unavailable(format!("not ready: {e}")))?;
    Ok(Json(json!({ "status": "ready" })))
}
