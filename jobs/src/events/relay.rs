//! The relay: committed events become delivery jobs, one per batch of events and URL.
//!
//! ```text
//! BEGIN
//!   claim_unrelayed   up to `batch` unrelayed events, oldest first, FOR UPDATE SKIP LOCKED
//!   enqueue_many      one delivery job per URL and chunk of `events_per_job` events
//!   mark_relayed      relayed_at = now() on the claimed events
//! COMMIT
//! ```
//!
//! Every worker that runs the events queue runs a relay; `SKIP LOCKED` keeps two relays off
//! the same events, and the jobs commit together with the mark, so an event is relayed once.
//! An event is visible only once its writer committed, and unrelayed events stay in the work
//! list until a pass takes them: a writer that commits late is not skipped (no cursor, no
//! gap to get wrong). With no URL configured the events are marked relayed and no job is
//! made: the URLs a relay knows when it takes an event are the receivers of that event.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::engine::{enqueue_many, EngineError, RetryPolicy};

use super::{DeliveryJob, RETRY_POLICY};

/// What a relay does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `EVENTS_WEBHOOK_URLS`: every event goes to each.
    pub urls: Vec<String>,
    /// Events taken by one pass (one transaction).
    pub batch: i64,
    /// Events per delivery job.
    pub events_per_job: usize,
    /// How long a pass that found less than a full batch waits before the next.
    pub interval: Duration,
    /// The delivery jobs' retry schedule.
    pub retry: RetryPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            urls: Vec::new(),
            batch: 2_000,
            events_per_job: 200,
            interval: Duration::from_millis(200),
            retry: RETRY_POLICY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relaying outbox events failed")]
    Database(#[from] sqlx::Error),
    #[error("enqueueing event delivery jobs failed")]
    Enqueue(#[from] EngineError),
}

/// One pass: relays up to `config.batch` events; returns how many.
pub async fn relay_once(db: &Db, config: &RelayConfig) -> Result<usize, RelayError> {
    let mut tx = db.begin().await?;
    // Relies on outbox_events_unrelayed_idx (partial: relayed_at IS NULL).
    let ids: Vec<i64> = sqlx::query_scalar!(
        "SELECT id FROM outbox_events WHERE relayed_at IS NULL ORDER BY id LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
        config.batch,
    )
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        db.commit(tx).await?;
        return Ok(0);
    }
    let jobs: Vec<_> = config
        .urls
        .iter()
        .flat_map(|url| {
            ids.chunks(config.events_per_job.max(1)).map(|chunk| {
                DeliveryJob {
                    url: url.clone(),
                    events: chunk.to_vec(),
                }
                .to_job()
                .with_retry(config.retry)
            })
        })
        .collect();
    enqueue_many(&mut tx, &jobs).await?;
    sqlx::query!(
        "UPDATE outbox_events SET relayed_at = now() WHERE id = ANY($1)",
        &ids,
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    tracing::debug!(
        events = ids.len(),
        jobs = jobs.len(),
        "outbox events relayed"
    );
    Ok(ids.len())
}

/// Relays until `stop`: at once again after a full batch, else after `config.interval`. A
/// failed pass is logged and tried again after the interval.
pub async fn run(db: Db, config: RelayConfig, stop: CancellationToken) {
    loop {
        let wait = match relay_once(&db, &config).await {
            Ok(n) if n as i64 >= config.batch => Duration::ZERO,
            Ok(_) => config.interval,
            Err(error) => {
                tracing::warn!(error = %crate::engine::outcome::error_chain(&error),
                    "relaying outbox events failed; trying again");
                config.interval
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
