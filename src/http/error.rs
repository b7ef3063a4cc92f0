//! `ApiError`: every failure a client can see, as a status and a JSON body `{"error": reason}`.
//! A server error's body is opaque; the error itself rides in the response extensions to
//! [`log_server_errors`], which logs it once inside the request's span.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use poda_jobs::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unprocessable(String),
    #[error("too many requests; retry after {retry_after_s} s")]
    TooManyRequests { retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// A server error kept for the logging middleware.
#[derive(Clone)]
pub struct ServerError(pub Arc<anyhow::Error>);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let reason = match &self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut response = (status, Json(serde_json::json!({ "error": reason }))).into_response();
        match self {
            ApiError::TooManyRequests { retry_after_s } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Internal(error) => {
                response
                    .extensions_mut()
                    .insert(ServerError(Arc::new(error)));
            }
            _ => {}
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::NotFound { id } => ApiError::NotFound(format!("job {id} does not exist")),
            error @ EngineError::WrongState { .. } => ApiError::Conflict(error.to_string()),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Logs the server errors of responses, once, inside the request's trace span.
pub async fn log_server_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(ServerError(error)) = response.extensions().get::<ServerError>() {
        tracing::error!(error = format!("{error:#}"), "request failed");
    }
    response
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
