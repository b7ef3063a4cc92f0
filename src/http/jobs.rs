//! Admin: one job's status, and the operator actions on it (audited as `api:admin`).

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use poda_jobs::audit::Actor;
use poda_jobs::engine::{admin, JobId, JobSnapshot};

use super::auth::AdminAuth;
use super::error::ApiError;
use super::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/{id}", get(show_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("job {id} does not exist")))
}

async fn show_job(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobSnapshot>, ApiError> {
    Ok(Json(admin::fetch_job(&state.pool, parse_id(&id)?).await?))
}

async fn retry_job(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobSnapshot>, ApiError> {
    let job = admin::retry_job(&state.pool, parse_id(&id)?, &Actor::Api).await?;
    tracing::info!(job.id = %job.id, job.queue = %job.queue, "job retried by an operator");
    Ok(Json(job))
}

async fn cancel_job(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobSnapshot>, ApiError> {
    let job = admin::cancel_job(&state.pool, parse_id(&id)?, &Actor::Api).await?;
    tracing::info!(job.id = %job.id, job.queue = %job.queue, "job cancelled by an operator");
    Ok(Json(job))
}
