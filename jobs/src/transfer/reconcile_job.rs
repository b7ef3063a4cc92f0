//! The transfer-reconcile job kind (built-in schedule `reconcile-transfers`): runs the
//! reconciliation `worker reconcile` runs ([`super::reconcile`]) and keeps each run's report
//! in `reconcile_runs`; the gauge [`FINDINGS_GAUGE`] holds the last run's findings. It calls
//! Monime, so its queue is worked only by workers configured with Monime, as the transfers
//! queue is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::engine::{JobError, JobMeta, NewJob, Outcome, RetryPolicy};

use super::monime::MonimeClient;
use super::reconcile::{reconcile, ReconcileConfig, ReconcileReport};

/// The queue and kind of the job (one kind per queue).
pub const QUEUE: &str = "transfer_reconcile";
pub const KIND: &str = "transfer_reconcile";
/// The built-in schedule's name and default expression (hourly).
pub const SCHEDULE: &str = "reconcile-transfers";
pub const DEFAULT_EXPRESSION: &str = "0 0 * * * *";
/// The last run's findings (missing + stuck + disagreeing transfers).
pub const FINDINGS_GAUGE: &str = "poda_reconcile_findings";
/// Checks up to a few thousand transfers at Monime, 16 at a time.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// A run that could not read the database is retried a few times; the next slot runs anyway.
pub const RETRY_POLICY: RetryPolicy =
    RetryPolicy::new(3, Duration::from_secs(30), Duration::from_secs(300));

/// The job's payload: nothing (each run looks at every transfer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileJob {}

impl ReconcileJob {
    pub fn to_job(&self) -> NewJob {
        NewJob::new(QUEUE, KIND, serde_json::json!({})).with_retry(RETRY_POLICY)
    }
}

/// One row of `reconcile_runs`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReconcileRun {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub findings: i32,
    pub checked: i32,
}

/// Runs the reconciliation and records it; returns the run's id and its report.
pub async fn run_and_record(
    pool: &Db,
    client: &MonimeClient,
    config: ReconcileConfig,
) -> Result<(i64, ReconcileReport), sqlx::Error> {
    let started_at = Utc::now();
    let report = reconcile(pool, client, config).await?;
    let json = serde_json::to_value(&report).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let id = sqlx::query_scalar!(
        "INSERT INTO reconcile_runs (started_at, findings, checked, report) \
         VALUES ($1, $2, $3, $4) RETURNING id",
        started_at,
        report.findings() as i32,
        report.checked as i32,
        json,
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!(FINDINGS_GAUGE).set(report.findings() as f64);
    Ok((id, report))
}

/// The newest run, if any.
pub async fn last_run(pool: &Db) -> Result<Option<ReconcileRun>, sqlx::Error> {
    sqlx::query_as!(
        ReconcileRun,
        "SELECT id, started_at, finished_at, findings, checked FROM reconcile_runs \
         ORDER BY finished_at DESC LIMIT 1"
    )
    .fetch_optional(pool)
    .await
}

/// Runs one job.
pub async fn handle(
    pool: &Db,
    client: &MonimeClient,
    meta: &JobMeta,
    _job: ReconcileJob,
) -> Result<Outcome, JobError> {
    let (run, report) = run_and_record(pool, client, ReconcileConfig::default())
        .await
        .map_err(JobError::retryable)?;
    if report.needs_attention() {
        tracing::warn!(job.id = %meta.id, run, findings = report.findings(), missing = report.missing.len(),
            stuck = report.stuck.len(), disagreements = report.disagreements.len(),
            "commission transfers need attention (see reconcile_runs)");
    } else {
        tracing::info!(job.id = %meta.id, run, checked = report.checked, "commission transfers agree with Monime");
    }
    Ok(Outcome::Done)
}
