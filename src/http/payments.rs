//! `GET /payments/{payment_id}`: one payment's events, ticket job, ticket and commission
//! transfer ([`crate::payment_status`]). Readable with the admin token or the status token.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::auth::StatusAuth;
use super::error::ApiError;
use super::state::AppState;
use crate::payment_status::{self, PaymentStatus};

pub fn router() -> Router<AppState> {
    Router::new().route("/payments/{payment_id}", get(show_payment))
}

async fn show_payment(
    _: StatusAuth,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
) -> Result<Json<PaymentStatus>, ApiError> {
    payment_status::fetch(&state.pool, &payment_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("payment {payment_id} was never received")))
}
