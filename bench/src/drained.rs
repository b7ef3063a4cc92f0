//! How a benchmark learns that its queue is drained, without loading the server it measures.
//!
//! A benchmark polls every few milliseconds, so each poll must cost the same at the end of a
//! run as at its start. The claim index keeps an entry for every job claimed since the last
//! vacuum (the shared server here runs without autovacuum), and a poll that reads it from its
//! start crosses them all: 100,000 of them made a poll cost ~3 ms, and the bare `EXISTS` the
//! planner turns into a sequential scan after `ANALYZE` cost ~10 ms, most of a core at a
//! 5 ms pace. So the poll reads the claim index from where the last one found the first
//! runnable job, in the index's order (the order of claims), and only when nothing is left
//! past that point does it read the running index and then the claim index from its start,
//! which catches a job made runnable behind the point (a rescue).

use chrono::{DateTime, Utc};
use poda_jobs::db::Db;

/// A job's place in the claim order: (priority, run_at, id).
type ClaimPlace = (i16, DateTime<Utc>, i64);

/// Polls one queue for jobs that are runnable or running.
pub struct DrainWatch {
    queue: String,
    /// The first runnable job the last poll saw; no runnable job comes before it unless one
    /// was made runnable again since.
    from: Option<ClaimPlace>,
}

impl DrainWatch {
    pub fn new(queue: &str) -> DrainWatch {
        DrainWatch {
            queue: queue.to_owned(),
            from: None,
        }
    }

    /// Whether the queue still has a job that is runnable or running.
    pub async fn unfinished(&mut self, pool: &Db) -> sqlx::Result<bool> {
        if let Some(from) = self.from {
            if let Some(first) = first_runnable(pool, &self.queue, Some(from)).await? {
                self.from = Some(first);
                return Ok(true);
            }
        }
        if has_running(pool, &self.queue).await? {
            return Ok(true);
        }
        self.from = first_runnable(pool, &self.queue, None).await?;
        Ok(self.from.is_some())
    }
}

/// The first runnable job of `queue` in claim order, at or after `from`. A plain index scan
/// (it reads `kind`), so that the entries of claimed jobs it crosses are marked dead; two
/// statements, so that `from` is always a bound of the scan, never a filter.
async fn first_runnable(
    pool: &Db,
    queue: &str,
    from: Option<ClaimPlace>,
) -> sqlx::Result<Option<ClaimPlace>> {
    let query = match from {
        None => sqlx::query_as(
            "SELECT priority, run_at, id FROM jobs \
             WHERE queue = $1 AND state = 'available' AND kind IS NOT NULL \
             ORDER BY priority, run_at, id LIMIT 1",
        )
        .bind(queue),
        Some((priority, run_at, id)) => sqlx::query_as(
            "SELECT priority, run_at, id FROM jobs \
             WHERE queue = $1 AND state = 'available' AND kind IS NOT NULL \
               AND (priority, run_at, id) >= ($2, $3, $4) \
             ORDER BY priority, run_at, id LIMIT 1",
        )
        .bind(queue)
        .bind(priority)
        .bind(run_at)
        .bind(id),
    };
    query.fetch_optional(pool).await
}

async fn has_running(pool: &Db, queue: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT (SELECT kind FROM jobs WHERE state = 'running' AND queue = $1 \
                 ORDER BY lease_expires_at LIMIT 1) IS NOT NULL",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
}
