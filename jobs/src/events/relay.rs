//! The relay: committed events become delivery jobs, one per batch of events and URL.
//!
//! ```text
//! BEGIN
//!   claim_unrelayed   up to `batch` unrelayed outbox rows, oldest first, FOR UPDATE SKIP LOCKED
//!   enqueue_many      one delivery job per URL and group of rows holding up to
//!                     `events_per_job` events
//!   mark_relayed      relayed_at = now() on the claimed rows
//! COMMIT
//! ```
//!
//! Every worker that runs the events queue runs a relay; `SKIP LOCKED` keeps two relays off
//! the same events, and the jobs commit together with the mark, so an event is relayed once.
//! An event is visible only once its writer committed, and unrelayed events stay in the work
//! list until a pass takes them: a writer that commits late is not skipped (no cursor, no
//! gap to get wrong). With no URL configured the events are marked relayed and no job is
//! made: the URLs a relay knows when it takes an event are the receivers of that event.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::engine::maintenance::DEFAULT_RETENTION;
use crate::engine::{enqueue_many, EngineError, RetryPolicy};

use super::prune::{prune_once, PRUNE_BATCH, PRUNE_INTERVAL};
use super::{DeliveryJob, RETRY_POLICY};

/// What a relay does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `EVENTS_WEBHOOK_URLS`: every event goes to each.
    pub urls: Vec<String>,
    /// Outbox rows taken by one pass (one transaction); a row holds the events of one
    /// statement, up to a ticket batch.
    pub batch: i64,
    /// Events per delivery job, at most; a row holding more is a job of its own.
    pub events_per_job: usize,
    /// How long a pass that found less than a full batch waits before the next.
    pub interval: Duration,
    /// The delivery jobs' retry schedule.
    pub retry: RetryPolicy,
    /// Events relayed longer ago are deleted (see [`super::prune`]).
    pub retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            urls: Vec::new(),
            batch: 2_000,
            events_per_job: 200,
            interval: Duration::from_millis(200),
            retry: RETRY_POLICY,
            retention: DEFAULT_RETENTION,
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

/// One pass: relays up to `config.batch` outbox rows; returns how many.
pub async fn relay_once(db: &Db, config: &RelayConfig) -> Result<usize, RelayError> {
    let mut tx = db.begin().await?;
    // Relies on outbox_events_unrelayed_idx (partial: relayed_at IS NULL).
    let rows = sqlx::query!(
        "SELECT id, size FROM outbox_events WHERE relayed_at IS NULL ORDER BY id LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
        config.batch,
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        db.commit(tx).await?;
        return Ok(0);
    }
    let sized: Vec<(i64, usize)> = rows.iter().map(|r| (r.id, r.size as usize)).collect();
    let chunks = chunk_rows(&sized, config.events_per_job);
    let jobs: Vec<_> = config
        .urls
        .iter()
        .flat_map(|url| {
            chunks.iter().map(|rows| {
                DeliveryJob {
                    url: url.clone(),
                    rows: rows.clone(),
                }
                .to_job()
                .with_retry(config.retry)
            })
        })
        .collect();
    enqueue_many(&mut tx, &jobs).await?;
    let ids: Vec<i64> = sized.iter().map(|&(id, _)| id).collect();
    sqlx::query!(
        "UPDATE outbox_events SET relayed_at = now() WHERE id = ANY($1)",
        &ids,
    )
    .execute(&mut *tx)
    .await?;
    db.commit(tx).await?;
    tracing::debug!(
        rows = ids.len(),
        events = sized.iter().map(|&(_, size)| size).sum::<usize>(),
        jobs = jobs.len(),
        "outbox events relayed"
    );
    Ok(ids.len())
}

/// Groups outbox rows (id, events held), in order, into delivery jobs of at most
/// `events_per_job` events; a row larger than that is a job of its own. A row is never split:
/// its events are delivered by one job.
fn chunk_rows(rows: &[(i64, usize)], events_per_job: usize) -> Vec<Vec<i64>> {
    let mut chunks: Vec<Vec<i64>> = Vec::new();
    let mut events = 0;
    for &(id, size) in rows {
        match chunks.last_mut() {
            Some(chunk) if events + size <= events_per_job.max(1) => {
                chunk.push(id);
                events += size;
            }
            _ => {
                chunks.push(vec![id]);
                events = size;
            }
        }
    }
    chunks
}

/// Relays until `stop`: at once again after a full batch, else after `config.interval`. A
/// failed pass is logged and tried again after the interval. Every [`PRUNE_INTERVAL`] it also
/// deletes the events past the retention.
pub async fn run(db: Db, config: RelayConfig, stop: CancellationToken) {
    let mut pruned_at: Option<Instant> = None;
    loop {
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
            prune_logged(&db, config.retention).await;
            pruned_at = Some(Instant::now());
        }
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

async fn prune_logged(db: &Db, retention: Duration) {
    match prune_once(db, retention, PRUNE_BATCH).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(
            deleted,
            ?retention,
            "pruned outbox events past the retention"
        ),
        Err(error) => {
            tracing::warn!(error = %error, "pruning outbox events failed; trying again later")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_rows;

    #[test]
    fn rows_fill_jobs_up_to_the_events_per_job_and_are_never_split() {
        let rows = [(1, 150), (2, 50), (3, 1), (4, 300), (5, 1), (6, 1)];
        assert_eq!(
            chunk_rows(&rows, 200),
            vec![vec![1, 2], vec![3], vec![4], vec![5, 6]]
        );
        assert_eq!(chunk_rows(&[], 200), Vec::<Vec<i64>>::new());
        assert_eq!(chunk_rows(&[(1, 1), (2, 1)], 0), vec![vec![1], vec![2]]);
    }
}
