//! Admin: the `job_queue_stats` view as JSON.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use poda_jobs::engine::admin::{self, QueueStats};
use serde::Serialize;

use super::auth::AdminAuth;
use super::error::ApiError;
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/queues", get(list_queues))
}

#[derive(Serialize)]
struct Queues {
    queues: Vec<QueueStats>,
}

async fn list_queues(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Queues>, ApiError> {
    let queues = admin::queue_stats(&state.pool).await?;
    Ok(Json(Queues { queues }))
}
