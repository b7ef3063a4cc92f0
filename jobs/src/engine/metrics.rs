//! The engine's Prometheus series, recorded through the `metrics` facade. A process that
//! installs no recorder pays almost nothing for them.

use super::error::EngineError;
use super::loops::Every;
use super::outcome::Action;

pub const JOBS_CLAIMED: &str = "poda_jobs_claimed_total";
pub const JOBS_COMPLETED: &str = "poda_jobs_completed_total";
pub const JOBS_FAILED: &str = "poda_jobs_failed_total";
pub const JOBS_RETRIED: &str = "poda_jobs_retried_total";
pub const JOBS_SNOOZED: &str = "poda_jobs_snoozed_total";
pub const JOBS_RESCUED: &str = "poda_jobs_rescued_total";
/// How long a handler ran: one observation per job, or per batch for a batch queue.
pub const HANDLER_SECONDS: &str = "poda_job_handler_seconds";

pub fn record_claimed(queue: &str, n: usize) {
    metrics::counter!(JOBS_CLAIMED, "queue" => queue.to_owned()).increment(n as u64);
}

pub fn record_rescued(queue: &str, n: u64) {
    metrics::counter!(JOBS_RESCUED, "queue" => queue.to_owned()).increment(n);
}

pub fn record_handler(queue: &str, seconds: f64) {
    metrics::histogram!(HANDLER_SECONDS, "queue" => queue.to_owned()).record(seconds);
}

pub fn record_outcome(queue: &str, action: &Action) {
    record_outcomes(queue, std::slice::from_ref(action));
}

/// The outcomes of a batch: one increment per counter, not per job.
pub fn record_outcomes(queue: &str, actions: &[Action]) {
    let mut counts = [0u64; 4];
    for action in actions {
        match action {
            Action::Complete => counts[0] += 1,
            Action::Retry { .. } => counts[1] += 1,
            Action::Fail { .. } => counts[2] += 1,
            Action::Snooze { .. } => counts[3] += 1,
            Action::Release | Action::Cancelled => {}
        }
    }
    let names = [JOBS_COMPLETED, JOBS_RETRIED, JOBS_FAILED, JOBS_SNOOZED];
    for (name, n) in names.into_iter().zip(counts) {
        if n > 0 {
            metrics::counter!(name, "queue" => queue.to_owned()).increment(n);
        }
    }
}

pub const QUEUE_DEPTH: &str = "poda_queue_depth";
pub const QUEUE_OLDEST_AGE: &str = "poda_queue_oldest_runnable_age_seconds";
pub const DEFAULT_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Runnable jobs and the age of the oldest, per queue.
pub async fn sample_queue_gauges(
    pool: &crate::db::Db,
) -> Result<Vec<(String, i64, f64)>, EngineError> {
    Ok(sqlx::query_file!("src/engine/queue_gauges.sql")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| (row.queue, row.depth, row.oldest_age_s))
        .collect())
}

/// Samples the queue gauges every `interval` until `stop` (one task per process).
pub async fn run_gauges(
    pool: crate::db::Db,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = Every::new(interval, &stop);
    while every.tick().await {
        match sample_queue_gauges(&pool).await {
            Ok(rows) => {
                for (queue, depth, age) in rows {
                    metrics::gauge!(QUEUE_DEPTH, "queue" => queue.clone()).set(depth as f64);
                    metrics::gauge!(QUEUE_OLDEST_AGE, "queue" => queue).set(age);
                }
            }
            Err(error) => tracing::debug!(error = %error, "sampling queue gauges failed"),
        }
    }
}
