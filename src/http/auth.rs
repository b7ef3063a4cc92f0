//! The bearer-token extractors. `Authorization: Bearer <token>`, compared in constant time; an
//! empty configured token matches no one.
//!
//! - [`AdminAuth`]: `ADMIN_TOKEN`, for every admin endpoint.
//! - [`StatusAuth`]: `ADMIN_TOKEN` or `STATUS_TOKEN`, for the payment status endpoint only. The
//!   status token opens nothing else: no other handler takes this extractor.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;
use crate::config::Secret;

/// Proof that the request carried the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(parts)?;
        if !matches(presented, &state.admin_token) {
            return Err(invalid());
        }
        Ok(AdminAuth)
    }
}

/// Proof that the request carried the admin token or the status token, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAuth {
    Admin,
    Status,
}

impl FromRequestParts<AppState> for StatusAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(parts)?;
        // Both comparisons always run, so the time taken does not tell which token matched.
        let admin = matches(presented, &state.admin_token);
        let status = matches(presented, &state.status_token);
        match (admin, status) {
            (true, _) => Ok(StatusAuth::Admin),
            (false, true) => Ok(StatusAuth::Status),
            (false, false) => Err(invalid()),
        }
    }
}

/// The bearer token of the request.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))
}

/// Whether `presented` is the configured token, in constant time; an empty token matches none.
fn matches(presented: &str, expected: &Secret) -> bool {
    let expected = expected.expose().as_bytes();
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected))
}

fn invalid() -> ApiError {
    ApiError::Unauthorized("invalid bearer token".into())
}
