//! Claiming: one statement takes a batch of runnable jobs for one owner.

use std::time::Duration;

use crate::db::Db;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::EngineError;
use super::job::{ClaimedJob, JobId};
use super::retry::RetryPolicy;

struct ClaimedRow {
    id: i64,
    queue: String,
    kind: String,
    payload: serde_json::Value,
    attempt: i32,
    claim_token: i32,
    max_attempts: i32,
    backoff_base_ms: i32,
    backoff_max_ms: i32,
}

/// Claims up to `limit` jobs of `queue` for `owner`, each under a lease of `lease`.
/// `now` moves the clock for tests; `None` is the database's clock.
pub async fn claim_batch(
    pool: &Db,
    queue: &str,
    limit: usize,
    owner: Uuid,
    lease: Duration,
    now: Option<DateTime<Utc>>,
) -> Result<Vec<ClaimedJob>, EngineError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = limit as i64;
    let lease_ms = lease.as_millis() as i64;
    let rows = sqlx::query_file_as!(
        ClaimedRow,
        "src/engine/claim_batch.sql",
        queue,
        limit,
        owner,
        lease_ms,
        now,
    )
    .fetch_all(pool)
    .await?;
    let mut jobs: Vec<ClaimedJob> = rows
        .into_iter()
        .map(|r| ClaimedJob {
            id: JobId(r.id),
            queue: r.queue,
            kind: r.kind,
            payload: r.payload,
            attempt: r.attempt,
            token: r.claim_token,
            retry: RetryPolicy::from_row(r.max_attempts, r.backoff_base_ms, r.backoff_max_ms),
            owner,
        })
        .collect();
    // RETURNING order is not defined; hand jobs out oldest first.
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}
