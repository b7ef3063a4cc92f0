//! The probe job kind: a diagnostic job whose behaviour its payload chooses (succeed, fail
//! some attempts, fail for good, panic, sleep, snooze), used by the demo, the benchmarks and
//! the process tests. With `record`, every run leaves a row in `probe_runs`, and a run that is
//! cancelled while it sleeps notes when it learnt of it (`cancel_observed_at`).

use std::time::Duration;

use crate::db::Db;
use serde::{Deserialize, Serialize};

use crate::engine::{JobError, JobMeta, NewJob, Outcome, RetryPolicy};

pub const QUEUE: &str = "poda_probe";
pub const KIND: &str = "probe";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeJob {
    pub n: i64,
    /// Record each run in `probe_runs`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
    /// Fail this many attempts (retryably) before succeeding.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fail_times: i32,
    /// Ask for this retry delay when failing, as a provider's Retry-After would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Fail for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    /// Panic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panic: bool,
    /// Work this long before answering.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub sleep_ms: u64,
    /// Snooze once for this long before succeeding (the attempt is not spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snooze_ms: Option<u64>,
    /// Wall-clock enqueue time (µs since the Unix epoch), for latency benchmarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at_us: Option<i64>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl ProbeJob {
    pub fn new(n: i64) -> Self {
        ProbeJob {
            n,
            ..Default::default()
        }
    }

    pub fn to_job(&self, retry: RetryPolicy) -> NewJob {
        NewJob::new(
            QUEUE,
            KIND,
            serde_json::to_value(self).expect("a probe job serialises"),
        )
        .with_retry(retry)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe {n} fails attempt {attempt} on purpose")]
    Planned { n: i64, attempt: i32 },
    #[error("probe {n} fails for good on purpose")]
    PlannedPermanent { n: i64 },
    #[error("recording the run failed")]
    Record(#[source] sqlx::Error),
}

/// A probe whose job was cancelled while it slept: it stops, and a recorded one notes when it
/// learnt of it.
async fn cancelled(pool: &Db, meta: &JobMeta, job: &ProbeJob) -> Result<Outcome, JobError> {
    tracing::info!(job.id = %meta.id, n = job.n, "probe cancelled while running; stopping");
    if job.record {
        sqlx::query!(
            "UPDATE probe_runs SET cancel_observed_at = clock_timestamp() \
             WHERE job_id = $1 AND attempt = $2",
            meta.id.0,
            meta.attempt,
        )
        .execute(pool)
        .await
        .map_err(|e| JobError::retryable(ProbeError::Record(e)))?;
    }
    Ok(Outcome::Done)
}

/// Runs one probe. A sleeping probe stops when its job is cancelled.
pub async fn handle(pool: &Db, meta: &JobMeta, job: ProbeJob) -> Result<Outcome, JobError> {
    if job.record {
        sqlx::query!(
            "INSERT INTO probe_runs (job_id, n, attempt) VALUES ($1, $2, $3)",
            meta.id.0,
            job.n,
            meta.attempt,
        )
        .execute(pool)
        .await
        .map_err(|e| JobError::retryable(ProbeError::Record(e)))?;
    }
    if job.sleep_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(job.sleep_ms)) => {}
            _ = meta.cancel.cancelled() => return cancelled(pool, meta, &job).await,
        }
    }
    if job.panic {
        panic!("probe {} panics on purpose", job.n);
    }
    if job.permanent {
        return Err(JobError::permanent(ProbeError::PlannedPermanent {
            n: job.n,
        }));
    }
    if meta.attempt <= job.fail_times {
        let error = ProbeError::Planned {
            n: job.n,
            attempt: meta.attempt,
        };
        return Err(match job.retry_after_ms {
            Some(ms) => JobError::retry_after(error, Duration::from_millis(ms)),
            None => JobError::retryable(error),
        });
    }
    if let Some(ms) = job.snooze_ms {
        // Snooze once: the first run that gets here snoozes, later ones finish.
        let snoozed = sqlx::query_scalar!(
            "SELECT run_at > created_at + interval '1 millisecond' AS \"snoozed!\" \
             FROM jobs WHERE id = $1",
            meta.id.0,
        )
        .fetch_one(pool)
        .await
        .map_err(|e| JobError::retryable(ProbeError::Record(e)))?;
        if !snoozed {
            return Ok(Outcome::Snooze(Duration::from_millis(ms)));
        }
    }
    Ok(Outcome::Done)
}
