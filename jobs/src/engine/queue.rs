//! Queue-level operator actions: pause and resume.
//!
//! A paused queue keeps accepting jobs but claims none (`claim_batch.sql` checks
//! `job_queues.paused_at`). Idle workers look again at least every poll interval, so a pause
//! or resume takes effect within about a second; resume also sends the queue's NOTIFY so
//! listening workers claim at once.

use crate::audit::{self, action, subject, Actor, Event};
use crate::db::Db;
use chrono::{DateTime, Utc};

use super::error::EngineError;
use super::notify::NOTIFY_CHANNEL;

/// A queue's row in `job_queues`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct QueueStatus {
    pub name: String,
    pub paused_at: Option<DateTime<Utc>>,
}

/// Stops claims from `queue`. Pausing a paused queue keeps its first `paused_at`. The pause
/// and its `queue.paused` event by `actor` commit together.
pub async fn pause_queue(
    pool: &Db,
    queue: &str,
    actor: &Actor,
) -> Result<QueueStatus, EngineError> {
    let mut tx = pool.begin().await?;
    let status = sqlx::query_as!(
        QueueStatus,
        "UPDATE job_queues SET paused_at = coalesce(paused_at, now()) \
         WHERE name = $1 RETURNING name, paused_at",
        queue,
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| EngineError::UnknownQueue {
        queue: queue.to_owned(),
    })?;
    let data = serde_json::json!({ "paused_at": status.paused_at });
    let event = Event::new(action::QUEUE_PAUSED, subject::QUEUE, queue, data);
    audit::record(&mut tx, actor, &event).await?;
    pool.commit(tx).await?;
    Ok(status)
}

/// Lets workers claim from `queue` again and wakes the listening ones. The resume and its
/// `queue.resumed` event by `actor` commit together.
pub async fn resume_queue(
    pool: &Db,
    queue: &str,
    actor: &Actor,
) -> Result<QueueStatus, EngineError> {
    let mut tx = pool.begin().await?;
    let status = sqlx::query_as!(
        QueueStatus,
        "UPDATE job_queues SET paused_at = NULL WHERE name = $1 RETURNING name, paused_at",
        queue,
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| EngineError::UnknownQueue {
        queue: queue.to_owned(),
    })?;
    let event = Event::new(
        action::QUEUE_RESUMED,
        subject::QUEUE,
        queue,
        serde_json::json!({}),
    );
    audit::record(&mut tx, actor, &event).await?;
    sqlx::query!("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, queue)
        .execute(&mut *tx)
        .await?;
    pool.commit(tx).await?;
    Ok(status)
}

/// Every known queue, paused or not, by name.
pub async fn list_queues(pool: &Db) -> Result<Vec<QueueStatus>, EngineError> {
    Ok(sqlx::query_as!(
        QueueStatus,
        "SELECT name, paused_at FROM job_queues ORDER BY name"
    )
    .fetch_all(pool)
    .await?)
}
