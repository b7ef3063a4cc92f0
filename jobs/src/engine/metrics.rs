//! The engine's Prometheus series, recorded through the `metrics` facade. A process that
//! installs no recorder pays almost nothing for them.

use super::complete::Action;

pub const JOBS_CLAIMED: &str = "poda_jobs_claimed_total";
pub const JOBS_COMPLETED: &str = "poda_jobs_completed_total";
pub const JOBS_FAILED: &str = "poda_jobs_failed_total";
pub const JOBS_RETRIED: &str = "poda_jobs_retried_total";
pub const JOBS_SNOOZED: &str = "poda_jobs_snoozed_total";
pub const JOBS_RESCUED: &str = "poda_jobs_rescued_total";
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
    let name = match action {
        Action::Complete => JOBS_COMPLETED,
        Action::Retry { .. } => JOBS_RETRIED,
        Action::Fail { .. } => JOBS_FAILED,
        Action::Snooze { .. } => JOBS_SNOOZED,
        Action::Release => return,
    };
    metrics::counter!(name, "queue" => queue.to_owned()).increment(1);
}

pub const QUEUE_DEPTH: &str = "poda_queue_depth";
pub const QUEUE_OLDEST_AGE: &str = "poda_queue_oldest_runnable_age_seconds";
pub const DEFAULT_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Runnable jobs and the age of the oldest, per queue.
pub async fn sample_queue_gauges(
    pool: &sqlx::PgPool,
) -> Result<Vec<(String, i64, f64)>, crate::error::EngineError> {
    Ok(sqlx::query_as(include_str!("queue_gauges.sql"))
        .fetch_all(pool)
        .await?)
}

/// Samples the queue gauges every `interval` until `stop` (one task per process).
pub async fn run_gauges(
    pool: sqlx::PgPool,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
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
