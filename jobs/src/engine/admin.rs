//! Operator actions on one job, and the queue numbers: shared by the CLI and the admin API.

use crate::audit::{self, action, subject, Actor, Event};
use crate::db::Db;
use sqlx::PgConnection;

use super::error::EngineError;
use super::job::{JobId, JobSnapshot, JobState};
use super::notify::CANCEL_CHANNEL;

/// One job as operators see it.
pub async fn fetch_job(pool: &Db, id: JobId) -> Result<JobSnapshot, EngineError> {
    sqlx::query_as!(
        JobSnapshot,
        "SELECT id AS \"id: JobId\", queue, kind, state AS \"state: JobState\", \
         priority, concurrency_key, attempt AS attempts, max_attempts, run_at, unique_key, last_error, errors, payload, \
         created_at, attempted_at, finished_at, updated_at FROM jobs WHERE id = $1",
        id.0,
    )
    .fetch_optional(pool)
    .await?
    .ok_or(EngineError::NotFound { id })
}

/// Makes a failed, cancelled or waiting job run now with a fresh set of attempts. Its error
/// history is kept. The change and its `job.retried` event by `actor` commit together.
pub async fn retry_job(pool: &Db, id: JobId, actor: &Actor) -> Result<JobSnapshot, EngineError> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query_as!(
        Changed,
        "WITH before AS (SELECT id, state FROM jobs WHERE id = $1 FOR UPDATE) \
         UPDATE jobs j SET state = 'available', attempt = 0, run_at = now(), \
         finished_at = NULL, updated_at = now() \
         FROM before b \
         WHERE j.id = b.id AND b.state IN ('failed', 'cancelled', 'available') \
         RETURNING j.queue, j.kind, b.state::text AS \"was!\"",
        id.0,
    )
    .fetch_optional(&mut *tx)
    .await?;
    record_change(&mut tx, actor, action::JOB_RETRIED, id, changed.as_ref()).await?;
    pool.commit(tx).await?;
    acted_on(pool, id, changed.is_some(), |state| match state {
        JobState::Running => "it is running now; wait for it to finish",
        _ => "it already completed",
    })
    .await
}

/// Cancels a job that has not finished. A running job's handler is told at once: the change
/// notifies [`CANCEL_CHANNEL`] with the run's job id and claim token, which the process that
/// runs it hears (or finds within a poll interval when it does not LISTEN) and fires the
/// run's cancellation token; the handler stops at its next await point. Its outcome is then
/// ignored when it arrives (fencing), though what its handler already did stays done. The
/// change, its notification and its `job.cancelled` event by `actor` commit together.
pub async fn cancel_job(pool: &Db, id: JobId, actor: &Actor) -> Result<JobSnapshot, EngineError> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query!(
        "WITH before AS (SELECT id, state, claim_token FROM jobs WHERE id = $1 FOR UPDATE), \
         changed AS ( \
           UPDATE jobs j SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, \
           finished_at = now(), updated_at = now() \
           FROM before b \
           WHERE j.id = b.id AND b.state IN ('available', 'running') \
           RETURNING j.id, j.queue, j.kind, b.state AS was, b.claim_token) \
         SELECT queue, kind, was::text AS \"was!\", \
           (SELECT count(pg_notify($2, c.id || ':' || c.claim_token)) FROM changed c \
            WHERE c.was = 'running') AS \"notified!\" \
         FROM changed",
        id.0,
        CANCEL_CHANNEL,
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| Changed {
        queue: row.queue,
        kind: row.kind,
        was: row.was,
    });
    record_change(&mut tx, actor, action::JOB_CANCELLED, id, changed.as_ref()).await?;
    pool.commit(tx).await?;
    acted_on(pool, id, changed.is_some(), |_| "it has already finished").await
}

/// A job an operator action changed: where it is, and the state it left.
struct Changed {
    queue: String,
    kind: String,
    was: String,
}

/// Records an operator action on job `id` in its transaction, if it changed the job.
async fn record_change(
    conn: &mut PgConnection,
    actor: &Actor,
    what: &'static str,
    id: JobId,
    changed: Option<&Changed>,
) -> sqlx::Result<()> {
    let Some(job) = changed else { return Ok(()) };
    let data = serde_json::json!({ "queue": job.queue, "kind": job.kind, "was": job.was });
    audit::record(conn, actor, &Event::new(what, subject::JOB, id, data)).await
}

/// The job after an operator action: as it is now when the action `changed` it, else why the
/// action does not apply to its state (`reason`), or that it does not exist.
async fn acted_on(
    pool: &Db,
    id: JobId,
    changed: bool,
    reason: impl FnOnce(JobState) -> &'static str,
) -> Result<JobSnapshot, EngineError> {
    let job = fetch_job(pool, id).await?;
    if changed {
        return Ok(job);
    }
    Err(EngineError::WrongState {
        id,
        state: job.state,
        reason: reason(job.state),
    })
}

/// One row of the `job_queue_stats` view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
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

pub async fn queue_stats(pool: &Db) -> Result<Vec<QueueStats>, EngineError> {
    // A view's columns all infer as nullable; none of these can be NULL.
    Ok(sqlx::query_as!(
        QueueStats,
        "SELECT queue AS \"queue!\", pending AS \"pending!\", scheduled AS \"scheduled!\", \
         running AS \"running!\", retrying AS \"retrying!\", failed AS \"failed!\", \
         done_last_hour AS \"done_last_hour!\", \
         oldest_pending_age_s AS \"oldest_pending_age_s!\" FROM job_queue_stats ORDER BY queue"
    )
    .fetch_all(pool)
    .await?)
}
