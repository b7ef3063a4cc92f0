//! The demo's receiver of Poda's events: a real HTTP server that checks each request's
//! `Poda-Signature` and counts the distinct events it was sent, by type.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use poda::http::webhooks::signature::sign;
use poda_jobs::events::SIGNATURE_HEADER;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    /// Distinct event ids per type.
    by_type: BTreeMap<String, HashSet<String>>,
    /// Requests whose signature did not match.
    forged: u64,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    secret: Arc<str>,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    /// Serves on a free loopback port until `stop`.
    pub async fn spawn(secret: &str, stop: CancellationToken) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}/events", listener.local_addr()?);
        let receiver = Receiver {
            url,
            secret: secret.into(),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(receiver)
    }

    /// Distinct events received, by type; and requests refused for a bad signature.
    pub fn counts(&self) -> (BTreeMap<String, usize>, u64) {
        let seen = self.seen.lock().expect("the receiver's counts");
        let by_type = seen
            .by_type
            .iter()
            .map(|(t, ids)| (t.clone(), ids.len()))
            .collect();
        (by_type, seen.forged)
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let timestamp = header
        .split(',')
        .find_map(|part| part.strip_prefix("t="))
        .and_then(|t| t.parse::<i64>().ok());
    let genuine = timestamp.is_some_and(|t| sign(&receiver.secret, t, &body) == header);
    let mut seen = receiver.seen.lock().expect("the receiver's counts");
    if !genuine {
        seen.forged += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return StatusCode::BAD_REQUEST;
    };
    seen.by_type
        .entry(kind.to_owned())
        .or_default()
        .insert(id.to_owned());
    StatusCode::NO_CONTENT
}
