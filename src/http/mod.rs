//! The enqueuer's HTTP surface: one router per area, merged here with the shared layers.

pub mod auth;
pub mod cycles;
pub mod error;
pub mod group_commit;
pub mod health;
pub mod jobs;
pub mod listen;
pub mod metrics;
pub mod payments;
pub mod queues;
pub mod state;
pub mod webhooks;

use axum::http::StatusCode;
use axum::middleware::from_fn;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::enqueuer::EnqueuerSettings;
use state::AppState;

/// The whole application: every route, its layers and its state.
pub fn router(state: AppState, settings: &EnqueuerSettings) -> Router {
    Router::new()
        .merge(webhooks::router(settings))
        .merge(cycles::router())
        .merge(jobs::router())
        .merge(payments::router())
        .merge(queues::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(crate::console::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(from_fn(metrics::track))
                .layer(from_fn(error::log_server_errors))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    settings.request_timeout,
                )),
        )
        .with_state(state)
}
