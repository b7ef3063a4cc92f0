//! The sandbox's internal-transfer API, with Monime's idempotency rules: the same key with the
//! same body answers the original transfer; the same key with another body is a 409. A
//! transfer is *executed* by the first accepted create of its key.
//!
//! Accounts steer outcomes, as test cards do: a source account starting with
//! `fa-insufficient` fails with `fund_insufficient`, `fa-declined` fails with
//! `transfer_declined`, `fa-invalid` is rejected with 400, `fa-throttle` always gets 429.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::faults::FaultKind;
use super::SandboxState;

pub const INSUFFICIENT_PREFIX: &str = "fa-insufficient";
pub const DECLINED_PREFIX: &str = "fa-declined";
pub const INVALID_PREFIX: &str = "fa-invalid";
pub const THROTTLE_PREFIX: &str = "fa-throttle";

/// One transfer the sandbox executed.
#[derive(Debug, Clone)]
pub struct StoredTransfer {
    pub id: String,
    pub key: String,
    pub body: Bytes,
    pub amount: Value,
    pub source: String,
    pub created: Instant,
    /// Set by tests to plant a disagreement.
    pub forced_status: Option<&'static str>,
}

#[derive(Debug, Default)]
pub struct Store {
    pub by_key: HashMap<String, StoredTransfer>,
    pub key_of_id: HashMap<String, String>,
    /// Creates seen per key (faults are drawn per create number).
    pub creates_per_key: HashMap<String, u32>,
    /// When each transfer was executed, in order.
    pub executed_at: Vec<Instant>,
}

impl Store {
    pub fn with_capacity(transfers: usize) -> Store {
        Store {
            by_key: HashMap::with_capacity(transfers),
            key_of_id: HashMap::with_capacity(transfers),
            creates_per_key: HashMap::with_capacity(transfers),
            executed_at: Vec::with_capacity(transfers),
        }
    }
}

pub fn router() -> Router<Arc<SandboxState>> {
    Router::new()
        .route("/v1/internal-transfers", post(create))
        .route("/v1/internal-transfers/{id}", get(read))
        .route("/_sandbox/executions", get(executions))
}

async fn create(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.counters.creates.fetch_add(1, Ordering::Relaxed);
    let settings = state.settings();
    if let Err(refusal) = check_headers(&state, &headers) {
        return refusal.into_response();
    }
    let Some(key) = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 64)
        .map(str::to_owned)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key is required (at most 64 characters)",
        );
    };
    // Creates seen for this key so far: faults are drawn per create number.
    let n = {
        let mut store = state.store.lock().unwrap_or_else(|p| p.into_inner());
        let seen = store.creates_per_key.entry(key.clone()).or_insert(0);
        *seen += 1;
        *seen - 1
    };
    if settings.outage {
        tokio::time::sleep(settings.latency).await;
        return error(StatusCode::SERVICE_UNAVAILABLE, "sandbox outage");
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let source = parsed["sourceFinancialAccount"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let value_ok = parsed["amount"]["value"].as_i64().is_some_and(|v| v > 0);
    if source.is_empty()
        || !value_ok
        || parsed["destinationFinancialAccount"]["id"]
            .as_str()
            .is_none()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "amount.value, sourceFinancialAccount.id and destinationFinancialAccount.id are required",
        );
    }
    if source.starts_with(INVALID_PREFIX) {
        tokio::time::sleep(settings.latency).await;
        return error(StatusCode::BAD_REQUEST, "the source account is not valid");
    }
    if source.starts_with(THROTTLE_PREFIX) {
        tokio::time::sleep(settings.latency).await;
        return too_many_requests(settings.faults.retry_after_s);
    }

    let latency = settings.latency
        + settings
            .account_latency
            .get(&source)
            .copied()
            .unwrap_or_default();
    // Draw a fault for this create, then apply the idempotency rules.
    let (fault, outcome) = {
        let mut store = state.store.lock().unwrap_or_else(|p| p.into_inner());
        let fault = settings.faults.pick(&key, n);
        let outcome = match fault {
            Some(kind) if !kind.executes_first() => None,
            _ => Some(execute(&state, &mut store, &key, &body, &parsed, source)),
        };
        (fault, outcome)
    };
    tokio::time::sleep(latency).await;
    match (fault, outcome) {
        (Some(FaultKind::TooManyRequests), _) => {
            state.counters.faults.fetch_add(1, Ordering::Relaxed);
            too_many_requests(settings.faults.retry_after_s)
        }
        (Some(FaultKind::ServerError), _) => {
            state.counters.faults.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::INTERNAL_SERVER_ERROR, "injected fault")
        }
        (_, Some(Err(refusal))) => refusal.into_response(),
        (Some(FaultKind::AfterUnavailable), _) => {
            state.counters.faults.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::SERVICE_UNAVAILABLE, "injected fault")
        }
        (Some(FaultKind::AfterSlow), Some(Ok(transfer))) => {
            state.counters.faults.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(settings.faults.slow_for).await;
            ok(&state, &transfer)
        }
        (Some(FaultKind::AfterReset), _) => {
            state.counters.faults.fetch_add(1, Ordering::Relaxed);
            dropped_connection()
        }
        (_, Some(Ok(transfer))) => ok(&state, &transfer),
        (_, None) => error(StatusCode::INTERNAL_SERVER_ERROR, "unreachable"),
    }
}

/// Applies the idempotency rules: a new key executes; a known key with the same body answers
/// the stored transfer; with another body, 409.
fn execute(
    state: &SandboxState,
    store: &mut Store,
    key: &str,
    body: &Bytes,
    parsed: &Value,
    source: String,
) -> Result<StoredTransfer, Refusal> {
    if let Some(existing) = store.by_key.get(key) {
        if existing.body == *body {
            return Ok(existing.clone());
        }
        return Err(Refusal(
            StatusCode::CONFLICT,
            "this Idempotency-Key was used with a different request body",
        ));
    }
    let transfer = StoredTransfer {
        id: format!("trf-{}", uuid::Uuid::new_v4().simple()),
        key: key.to_owned(),
        body: body.clone(),
        amount: parsed["amount"].clone(),
        source,
        created: Instant::now(),
        forced_status: None,
    };
    store.key_of_id.insert(transfer.id.clone(), key.to_owned());
    store.by_key.insert(key.to_owned(), transfer.clone());
    store.executed_at.push(transfer.created);
    state.counters.executions.fetch_add(1, Ordering::Relaxed);
    Ok(transfer)
}

async fn read(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    state.counters.reads.fetch_add(1, Ordering::Relaxed);
    let settings = state.settings();
    if let Err(refusal) = check_headers(&state, &headers) {
        return refusal.into_response();
    }
    tokio::time::sleep(settings.latency).await;
    if settings.outage {
        return error(StatusCode::SERVICE_UNAVAILABLE, "sandbox outage");
    }
    let transfer = {
        let store = state.store.lock().unwrap_or_else(|p| p.into_inner());
        store
            .key_of_id
            .get(&id)
            .and_then(|key| store.by_key.get(key))
            .cloned()
    };
    match transfer {
        Some(transfer) => ok(&state, &transfer),
        None => error(StatusCode::NOT_FOUND, "no such internal transfer"),
    }
}

async fn executions(State(state): State<Arc<SandboxState>>) -> Json<Value> {
    let store = state.store.lock().unwrap_or_else(|p| p.into_inner());
    let by_key: serde_json::Map<String, Value> =
        store.by_key.keys().map(|k| (k.clone(), json!(1))).collect();
    Json(json!({
        "total": state.counters.executions.load(Ordering::Relaxed),
        "keys": store.by_key.len(),
        "by_key": by_key,
    }))
}

fn check_headers(state: &SandboxState, headers: &HeaderMap) -> Result<(), Refusal> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = state.token.as_deref();
    if bearer.is_empty() || expected.is_some_and(|t| t != bearer) {
        return Err(Refusal(StatusCode::UNAUTHORIZED, "invalid API token"));
    }
    if headers.get("Monime-Space-Id").is_none() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "Monime-Space-Id is required",
        ));
    }
    Ok(())
}

/// The transfer's status now: pending, processing for the second half of the completion
/// delay, then its final status.
fn status_of(state: &SandboxState, transfer: &StoredTransfer) -> (&'static str, Option<Value>) {
    if let Some(forced) = transfer.forced_status {
        return (forced, None);
    }
    let delay = state.settings().completion_delay;
    let age = transfer.created.elapsed();
    if age < delay / 2 {
        return ("pending", None);
    }
    if age < delay {
        return ("processing", None);
    }
    if transfer.source.starts_with(INSUFFICIENT_PREFIX) {
        return (
            "failed",
            Some(
                json!({"code": "fund_insufficient", "message": "the source account has insufficient funds"}),
            ),
        );
    }
    if transfer.source.starts_with(DECLINED_PREFIX) {
        return (
            "failed",
            Some(
                json!({"code": "transfer_declined", "message": "the provider declined the transfer"}),
            ),
        );
    }
    ("completed", None)
}

fn ok(state: &SandboxState, transfer: &StoredTransfer) -> Response {
    let (status, failure) = status_of(state, transfer);
    let mut result = json!({
        "id": transfer.id,
        "status": status,
        "amount": transfer.amount,
    });
    if let Some(failure) = failure {
        result["failureDetail"] = failure;
    }
    Json(json!({"success": true, "messages": [], "result": result})).into_response()
}

/// A request the sandbox refuses, as Monime would.
pub struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"success": false, "messages": [message], "error": {"code": status.as_u16(), "message": message}})),
    )
        .into_response()
}

fn too_many_requests(retry_after_s: u64) -> Response {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
    response.headers_mut().insert(
        "retry-after",
        HeaderValue::from_str(&retry_after_s.to_string()).expect("a number is a header value"),
    );
    response
}

/// A response whose body fails at once: the server drops the connection mid-response.
fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the sandbox drops the connection",
        ))
    });
    Response::new(Body::from_stream(stream))
}
