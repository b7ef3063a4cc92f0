//! Operator actions on one job, and the queue numbers: shared by the CLI and the admin API.

use sqlx::PgPool;

use super::error::EngineError;
use super::job::{JobId, JobSnapshot, JobState};

const SNAPSHOT_COLUMNS: &str =
    "id, queue, kind, state, attempt AS attempts, max_attempts, run_at, \
    unique_key, last_error, errors, payload, created_at, attempted_at, finished_at, updated_at";

/// One job as operators see it.
pub async fn fetch_job(pool: &PgPool, id: JobId) -> Result<JobSnapshot, EngineError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {SNAPSHOT_COLUMNS} FROM jobs WHERE id = $1"));
    sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(EngineError::NotFound { id })
}

/// Runs one operator transition (`$1` = the job id) and returns whether it changed the job,
/// with the job as it is afterwards.
async fn transition(
    pool: &PgPool,
    id: JobId,
    sql: &'static str,
) -> Result<(bool, JobSnapshot), EngineError> {
    let changed = sqlx::query(sql)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok((changed > 0, fetch_job(pool, id).await?))
}

/// Makes a failed, cancelled or waiting job run now with a fresh set of attempts. Its error
/// history is kept.
pub async fn retry_job(pool: &PgPool, id: JobId) -> Result<JobSnapshot, EngineError> {
    let (changed, job) = transition(
        pool,
        id,
        "UPDATE jobs SET state = 'available', attempt = 0, run_at = now(), finished_at = NULL, \
         updated_at = now() \
         WHERE id = $1 AND state IN ('failed', 'cancelled', 'available')",
    )
    .await?;
    if !changed {
        let reason = match job.state {
            JobState::Running => "it is running now; wait for it to finish",
            _ => "it already completed",
        };
        return Err(EngineError::WrongState {
            id,
            state: job.state,
            reason,
        });
    }
    Ok(job)
}

/// Cancels a job that has not finished. A running job's outcome is then ignored when it
/// arrives (fencing), though what its handler already did stays done.
pub async fn cancel_job(pool: &PgPool, id: JobId) -> Result<JobSnapshot, EngineError> {
    let (changed, job) = transition(
        pool,
        id,
        "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, \
         finished_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('available', 'running')",
    )
    .await?;
    if !changed {
        return Err(EngineError::WrongState {
            id,
            state: job.state,
            reason: "it has already finished",
        });
    }
    Ok(job)
}

/// One row of the `job_queue_stats` view.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct QueueStats {
    pub queue: String,
    pub pending: i64,
    pub scheduled: i64,
    pub running: i64,
    pub retrying: i64,
    pub failed: i64,
    pub done_last_hour: i64,
    pub oldest_pending_age_s: i64,
}

pub async fn queue_stats(pool: &PgPool) -> Result<Vec<QueueStats>, EngineError> {
    Ok(sqlx::query_as(
        "SELECT queue, pending, scheduled, running, retrying, failed, done_last_hour, \
         oldest_pending_age_s FROM job_queue_stats ORDER BY queue",
    )
    .fetch_all(pool)
    .await?)
}
