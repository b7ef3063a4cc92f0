//! Jobs found by their unique key, for the job kinds that own the key: a kind keys a job by
//! its business row (a cycle's fan-out, a ticket's transfer) and asks the engine about that
//! job without knowing the jobs table.

use sqlx::{PgConnection, PgExecutor};

use super::job::{JobId, JobState};

/// A job of a queue with a unique key, as its owner needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedJob {
    pub id: JobId,
    pub state: JobState,
    pub last_error: Option<String>,
}

impl KeyedJob {
    /// Whether the job can still run: waiting, or running now.
    pub fn is_live(&self) -> bool {
        matches!(self.state, JobState::Available | JobState::Running)
    }
}

/// The job of `queue` keyed `unique_key`, locked until the caller's transaction ends: its
/// state cannot change meanwhile (`FOR NO KEY UPDATE`, which leaves rows that reference it
/// free to be written); `None` if there is none (never enqueued, or pruned).
pub async fn lock_job_by_key(
    conn: &mut PgConnection,
    queue: &str,
    unique_key: &str,
) -> Result<Option<KeyedJob>, sqlx::Error> {
    sqlx::query_as!(
        KeyedJob,
        "SELECT id AS \"id: JobId\", state AS \"state: JobState\", last_error FROM jobs \
         WHERE queue = $1 AND unique_key = $2 FOR NO KEY UPDATE",
        queue,
        unique_key,
    )
    .fetch_optional(conn)
    .await
}

/// Whether the job of `queue` keyed `unique_key` can still run (waiting or running), without
/// locking it.
pub async fn job_is_live(
    executor: impl PgExecutor<'_>,
    queue: &str,
    unique_key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = $1 AND unique_key = $2 \
                          AND state IN ('available', 'running')) AS \"live!\"",
        queue,
        unique_key,
    )
    .fetch_one(executor)
    .await
}

/// Runs the finished job (failed, cancelled or completed) of `queue` keyed `unique_key` again
/// now, with fresh attempts; its claim token stays, so its next claim takes a new one.
/// Returns its id, or `None` when no finished job has the key (none at all, or one that is
/// still waiting or running).
pub async fn rerun_finished_job_by_key(
    conn: &mut PgConnection,
    queue: &str,
    unique_key: &str,
) -> Result<Option<JobId>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE jobs SET state = 'available', attempt = 0, run_at = now(), finished_at = NULL, \
         updated_at = now() \
         WHERE queue = $1 AND unique_key = $2 AND state IN ('failed', 'cancelled', 'completed') \
         RETURNING id AS \"id: JobId\"",
        queue,
        unique_key,
    )
    .fetch_optional(conn)
    .await
}
