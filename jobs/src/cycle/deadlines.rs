//! The contribution-deadlines job kind (built-in schedule `contribution-deadlines`): pending
//! contributions past their due date become `Overdue`, and their cycle's `pending` and
//! `overdue` counters follow in the same transaction. A cycle's contributions share its due
//! date, so the job takes the cycles past their deadline that still have pending
//! contributions and walks each by primary key in chunks of [`DEFAULT_CHUNK_ROWS`], one
//! transaction each: a million overdue contributions never sit in one transaction.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::engine::{JobError, JobMeta, NewJob, Outcome, RetryPolicy};

/// The queue and kind of the job (one kind per queue).
pub const QUEUE: &str = "contribution_deadlines";
pub const KIND: &str = "contribution_deadlines";
/// The built-in schedule's name and default expression (every 15 minutes).
pub const SCHEDULE: &str = "contribution-deadlines";
pub const DEFAULT_EXPRESSION: &str = "0 */15 * * * *";
/// Contributions per transaction.
pub const DEFAULT_CHUNK_ROWS: i64 = 10_000;
/// A run commits chunk by chunk, so one cut off here goes on from where it stopped next time.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Database trouble is retried a few times; the next slot runs it anyway.
pub const RETRY_POLICY: RetryPolicy =
    RetryPolicy::new(5, Duration::from_secs(5), Duration::from_secs(120));

/// The job's payload: nothing (each run looks at every cycle).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlinesJob {}

impl DeadlinesJob {
    pub fn to_job(&self) -> NewJob {
        NewJob::new(QUEUE, KIND, serde_json::json!({})).with_retry(RETRY_POLICY)
    }
}

/// What one run changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadlinesReport {
    /// Cycles with at least one contribution made Overdue.
    pub cycles: u64,
    /// Contributions made Overdue.
    pub overdue: u64,
    /// Transactions committed.
    pub chunks: u64,
}

/// Marks every pending contribution due before `today` Overdue, `chunk_rows` per transaction.
pub async fn mark_overdue(
    pool: &Db,
    today: NaiveDate,
    chunk_rows: i64,
) -> Result<DeadlinesReport, sqlx::Error> {
    let cycles = sqlx::query_scalar!(
        "SELECT id FROM contribution_cycles \
         WHERE pending > 0 AND (deadline AT TIME ZONE 'UTC')::date < $1 \
         ORDER BY id",
        today,
    )
    .fetch_all(pool)
    .await?;
    let mut report = DeadlinesReport::default();
    for cycle_id in cycles {
        let mut cursor = 0i64;
        let mut changed_cycle = false;
        loop {
            let chunk = sqlx::query_file!(
                "src/cycle/deadlines_chunk.sql",
                cycle_id,
                cursor,
                today,
                chunk_rows.max(1),
            )
            .fetch_one(pool)
            .await?;
            let Some(last) = chunk.last_member else {
                break;
            };
            report.chunks += 1;
            report.overdue += chunk.changed as u64;
            changed_cycle |= chunk.changed > 0;
            cursor = last;
        }
        if changed_cycle {
            report.cycles += 1;
        }
    }
    Ok(report)
}

/// Runs one job: every contribution past its due date (UTC) is made Overdue.
pub async fn handle(pool: &Db, meta: &JobMeta, _job: DeadlinesJob) -> Result<Outcome, JobError> {
    let today = Utc::now().date_naive();
    let report = mark_overdue(pool, today, DEFAULT_CHUNK_ROWS)
        .await
        .map_err(JobError::retryable)?;
    tracing::info!(job.id = %meta.id, cycles = report.cycles, overdue = report.overdue,
        chunks = report.chunks, "contribution deadlines checked");
    Ok(Outcome::Done)
}
