//! The worker's HTTP endpoint (`--metrics-addr`): Prometheus metrics on `/metrics`, and
//! `/healthz` for orchestrators: 200 while every loop of the process runs, 503 naming the
//! dead ones (the process then shuts down and exits non-zero on its own).

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use poda_jobs::engine::Loops;
use serde_json::json;

#[derive(Clone)]
struct EndpointState {
    metrics: Option<PrometheusHandle>,
    loops: Loops,
}

/// Binds `addr` (port 0 picks a free one) and serves the endpoint on a task of its own;
/// returns the address it listens on.
pub async fn serve(addr: SocketAddr, loops: Loops) -> anyhow::Result<SocketAddr> {
    let state = EndpointState {
        metrics: crate::http::metrics::install_recorder(),
        loops,
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(error = %error, "the metrics endpoint stopped");
        }
    });
    Ok(addr)
}

async fn metrics(State(state): State<EndpointState>) -> Response {
    match &state.metrics {
        Some(handle) => crate::http::metrics::exposition(handle),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are recorded by another recorder in this process",
        )
            .into_response(),
    }
}

async fn health(State(state): State<EndpointState>) -> Response {
    let dead = state.loops.dead();
    let loops = state.loops.names();
    if dead.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"status": "ok", "loops": loops})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "dead": dead, "loops": loops})),
        )
            .into_response()
    }
}
