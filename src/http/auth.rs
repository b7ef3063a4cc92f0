//! `AdminAuth`: the admin endpoints' extractor. `Authorization: Bearer $ADMIN_TOKEN`,
//! compared in constant time; an empty configured token refuses everyone.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;

/// Proof that the request carried the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let expected = state.admin_token.expose().as_bytes();
        if expected.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
            return Err(ApiError::Unauthorized("invalid bearer token".into()));
        }
        Ok(AdminAuth)
    }
}
