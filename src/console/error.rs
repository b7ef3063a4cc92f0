//! `ConsoleError`: what a console page shows when it cannot do what was asked, as an HTML page
//! with the right status. Server errors keep their cause for the request log and show none.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use poda_jobs::transfer::admin::TransferAdminError;
use poda_jobs::EngineError;

use crate::http::error::{ApiError, ServerError};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The action does not apply to the thing as it is now (a running job retried, say).
    #[error("{0}")]
    Conflict(String),
    #[error(
        "this form has expired or did not come from the console; reload the page and try again"
    )]
    Forbidden,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Forbidden => StatusCode::FORBIDDEN,
            ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = super::layout::bare(
            status.canonical_reason().unwrap_or("Error"),
            html! {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.notice.danger { (self.to_string()) }
                p { a href="/admin" { "Back to the overview" } }
            },
        );
        let mut response = (status, body).into_response();
        if let ConsoleError::Internal(error) = self {
            response
                .extensions_mut()
                .insert(ServerError(Arc::new(error)));
        }
        response
    }
}

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::NotFound(m) => ConsoleError::NotFound(m),
            ApiError::Internal(e) => ConsoleError::Internal(e),
            other => ConsoleError::Conflict(other.to_string()),
        }
    }
}

impl From<EngineError> for ConsoleError {
    fn from(error: EngineError) -> Self {
        if let EngineError::UnknownQueue { queue } = &error {
            return ConsoleError::NotFound(format!("there is no queue {queue:?}"));
        }
        ApiError::from(error).into()
    }
}

impl From<sqlx::Error> for ConsoleError {
    fn from(error: sqlx::Error) -> Self {
        ConsoleError::Internal(anyhow::Error::new(error).context("console query"))
    }
}

impl From<TransferAdminError> for ConsoleError {
    fn from(error: TransferAdminError) -> Self {
        match error {
            TransferAdminError::NotFound { .. } => ConsoleError::NotFound(error.to_string()),
            TransferAdminError::NotFailed { .. } | TransferAdminError::AtWork { .. } => {
                ConsoleError::Conflict(error.to_string())
            }
            other => ConsoleError::Internal(other.into()),
        }
    }
}
