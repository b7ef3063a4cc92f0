//! Admin: contribution cycles. `POST /contribution-cycles` creates a cycle and enqueues its
//! fan-out in one transaction (202 after COMMIT); `GET /contribution-cycles/{id}/progress`
//! follows it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use poda_jobs::audit::Actor;
use poda_jobs::cycle::{
    create_cycle, fetch_progress, CreateCycleError, CycleId, CycleProgress, NewCycle,
};
use poda_jobs::ticket::{Currency, Money};
use serde::{Deserialize, Serialize};

use super::auth::AdminAuth;
use super::error::ApiError;
use super::state::AppState;

/// The request header that makes a create request safe to repeat.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/contribution-cycles", post(create))
        .route("/contribution-cycles/{id}/progress", get(progress))
}

/// The create request as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCycleRequest {
    tier_id: i64,
    deceased_member_id: i64,
    claim_reference: String,
    contribution: AmountRequest,
    duration_days: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountRequest {
    currency: String,
    /// Minor units; a fraction or a string is refused by the parser.
    value: i64,
}

impl CreateCycleRequest {
    fn into_new_cycle(self) -> Result<NewCycle, ApiError> {
        let currency = Currency::parse(&self.contribution.currency).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "contribution.currency {:?} is not supported (use SLE or USD)",
                self.contribution.currency
            ))
        })?;
        Ok(NewCycle {
            tier_id: self.tier_id,
            deceased_member_id: self.deceased_member_id,
            claim_reference: self.claim_reference,
            contribution: Money {
                currency,
                value_minor: self.contribution.value,
            },
            duration_days: self.duration_days,
        })
    }
}

#[derive(Debug, Serialize)]
struct Created {
    cycle_id: CycleId,
    code: String,
    status: String,
    progress_url: String,
}

async fn create(
    _: AdminAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Json<Created>), ApiError> {
    let request: CreateCycleRequest =
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::Unprocessable(format!("invalid contribution cycle: {e}"))
            }
            _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
        })?;
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::Unprocessable("Idempotency-Key must be visible ASCII".into())
        })?),
    };
    let new = request.into_new_cycle()?;
    let created = create_cycle(&state.pool, &new, key, &Actor::Api)
        .await
        .map_err(map_create_error)?;
    let mut reply_headers = HeaderMap::new();
    if !created.created {
        reply_headers.insert(
            "Idempotent-Replayed",
            "true".parse().expect("a header value"),
        );
    }
    Ok((
        StatusCode::ACCEPTED,
        reply_headers,
        Json(Created {
            cycle_id: created.id,
            code: created.code,
            status: created.status.to_string(),
            progress_url: format!("/contribution-cycles/{}/progress", created.id),
        }),
    ))
}

fn map_create_error(error: CreateCycleError) -> ApiError {
    match error {
        CreateCycleError::ClaimHasCycle { .. } => ApiError::Conflict(error.to_string()),
        CreateCycleError::Database(e) => {
            ApiError::Internal(anyhow::Error::new(e).context("creating a contribution cycle"))
        }
        CreateCycleError::Enqueue(e) => {
            ApiError::Internal(anyhow::Error::new(e).context("enqueueing a cycle's fan-out"))
        }
        other => ApiError::Unprocessable(other.to_string()),
    }
}

async fn progress(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CycleProgress>, ApiError> {
    let not_found = || ApiError::NotFound(format!("contribution cycle {id} does not exist"));
    let cycle_id: CycleId = id.parse().map_err(|_| not_found())?;
    let progress = fetch_progress(&state.pool, cycle_id)
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading cycle progress")))?
        .ok_or_else(not_found)?;
    Ok(Json(progress))
}
