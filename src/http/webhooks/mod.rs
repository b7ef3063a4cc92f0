//! `POST /webhooks/monime`: verify the signature, parse, record the event and enqueue its
//! ticket job through group commit, and answer after COMMIT.
//!
//! | outcome | status | body |
//! |---|---|---|
//! | first `payment.completed` | 202 | `{"job_id"}` |
//! | redelivered event | 200 | `{"job_id", "duplicate": true}` or `{"ignored": true}` |
//! | other event names | 200 | `{"ignored": true}` |
//! | bad signature / stale, malformed JSON, bad fields, too large | 401, 400, 422, 413 | `{"error"}` |

pub mod payload;
pub mod rate_limit;
pub mod signature;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::group_commit::{Delivery, GroupCommitError};
use super::state::AppState;
use crate::enqueuer::EnqueuerSettings;
use payload::{PayloadError, WebhookEvent};
use signature::SIGNATURE_HEADER;

pub const MONIME_PATH: &str = "/webhooks/monime";

pub fn router(settings: &EnqueuerSettings) -> Router<AppState> {
    let route = Router::new()
        .route(MONIME_PATH, post(receive_monime))
        .layer(DefaultBodyLimit::max(settings.body_limit));
    match rate_limit::RateLimit::new(settings.rate_limit) {
        Some(limit) => route.layer(axum::middleware::from_fn_with_state(
            limit,
            rate_limit::enforce,
        )),
        None => route,
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(event.id, event.name))]
async fn receive_monime(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.body_limit,
            }
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    state
        .secrets
        .verify(header, &body, chrono::Utc::now().timestamp())
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;

    let event = WebhookEvent::parse(&body).map_err(|e| match e {
        PayloadError::Syntax(_) => ApiError::BadRequest(e.to_string()),
        PayloadError::Invalid(_) => ApiError::Unprocessable(e.to_string()),
    })?;
    let span = tracing::Span::current();
    span.record("event.id", event.id.as_str());
    span.record("event.name", event.name.as_str());
    let payload = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?
        .to_owned();
    let is_payment = event.ticket.is_some();
    let recorded = state
        .group_commit
        .submit(Delivery {
            event_id: event.id,
            event_name: event.name,
            payment_id: event.ticket.as_ref().map(|t| t.payment_id.clone()),
            payload,
            ticket: event.ticket,
        })
        .await
        .map_err(|error| match error {
            GroupCommitError::Refused(error) => ApiError::BadRequest(format!(
                "the body holds a value that cannot be stored: {error}"
            )),
            _ => ApiError::Unavailable("the event could not be recorded; retry".into()),
        })?;

    Ok(
        match (is_payment, recorded.job_id, recorded.first_delivery) {
            (true, Some(job_id), true) => {
                (StatusCode::ACCEPTED, Json(json!({ "job_id": job_id }))).into_response()
            }
            (_, Some(job_id), false) => (
                StatusCode::OK,
                Json(json!({ "job_id": job_id, "duplicate": true })),
            )
                .into_response(),
            (true, None, _) => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "a payment event was recorded without a job"
                )))
            }
            (_, _, _) => (StatusCode::OK, Json(json!({ "ignored": true }))).into_response(),
        },
    )
}
