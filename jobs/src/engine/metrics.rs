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
