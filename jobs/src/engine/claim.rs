//! Claiming: one statement takes a batch of runnable jobs for one owner.

use std::time::Duration;

use crate::db::Db;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::claim_window::{ClaimWindow, Starts};
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
    priority: i16,
    run_at: DateTime<Utc>,
}

impl ClaimedRow {
    fn into_job(self, owner: Uuid) -> ClaimedJob {
        ClaimedJob {
            id: JobId(self.id),
            queue: self.queue,
            kind: self.kind,
            payload: self.payload,
            attempt: self.attempt,
            token: self.claim_token,
            retry: RetryPolicy::from_row(
                self.max_attempts,
                self.backoff_base_ms,
                self.backoff_max_ms,
            ),
            priority: self.priority,
            owner,
        }
    }
}

/// Hands jobs out most urgent first, FIFO within a priority (RETURNING order is not defined).
fn in_claim_order(mut rows: Vec<ClaimedRow>, owner: Uuid) -> Vec<ClaimedJob> {
    rows.sort_unstable_by_key(|r| (r.priority, r.run_at, r.id));
    rows.into_iter().map(|r| r.into_job(owner)).collect()
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
    let rows = claim_rows(pool, queue, limit as i64, owner, lease, now, &[None; 4]).await?;
    Ok(in_claim_order(rows, owner))
}

/// [`claim_batch`] from where this process's claims of `queue` have reached (`window`), not
/// from the start of the queue, on the database's clock; moves the window's fronts to what it
/// claimed.
pub async fn claim_batch_from(
    pool: &Db,
    queue: &str,
    limit: usize,
    owner: Uuid,
    lease: Duration,
    window: &ClaimWindow,
) -> Result<Vec<ClaimedJob>, EngineError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let starts = window.starts();
    let rows = claim_rows(pool, queue, limit as i64, owner, lease, None, &starts).await?;
    window.record(rows.iter().map(|r| (r.priority, r.run_at)));
    Ok(in_claim_order(rows, owner))
}

/// The claim statement (`claim_batch.sql`, the function `poda_claim_batch`) on `executor`.
async fn claim_rows<'c>(
    executor: impl PgExecutor<'c>,
    queue: &str,
    limit: i64,
    owner: Uuid,
    lease: Duration,
    now: Option<DateTime<Utc>>,
    starts: &Starts,
) -> sqlx::Result<Vec<ClaimedRow>> {
    sqlx::query_file_as!(
        ClaimedRow,
        "src/engine/claim_batch.sql",
        queue,
        limit,
        owner,
        lease.as_millis() as i64,
        now,
        starts as &[Option<DateTime<Utc>>],
    )
    .fetch_all(executor)
    .await
}

/// Prepares the claim on `conn`, and has its session compile and plan the claim function, by
/// claiming nothing ([`super::warm`]).
pub(super) async fn claim_nothing(conn: &mut PgConnection) -> sqlx::Result<()> {
    claim_rows(conn, "", 0, Uuid::nil(), Duration::ZERO, None, &[None; 4]).await?;
    Ok(())
}

/// [`claim_batch`] for a queue whose jobs of one concurrency key run at most `per_key` at
/// once across every process: jobs whose key has `per_key` running jobs are skipped, and a
/// batch takes no more of one key than its free places. Jobs without a key are not limited.
///
/// Claims of the queue take turns on a transaction-scoped advisory lock, so two claims never
/// both count the same free place (docs/per-company-limit.md).
#[allow(clippy::too_many_arguments)]
pub async fn claim_batch_per_key(
    pool: &Db,
    queue: &str,
    limit: usize,
    per_key: u32,
    owner: Uuid,
    lease: Duration,
    now: Option<DateTime<Utc>>,
) -> Result<Vec<ClaimedJob>, EngineError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let per_key = i64::from(per_key.max(1));
    let lease_ms = lease.as_millis() as i64;
    let mut tx = pool.begin().await?;
    // A statement of its own: the claim's snapshot must be taken after the lock is granted.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('poda.claim_keyed:' || $1, 0))",
        queue
    )
    .execute(&mut *tx)
    .await?;
    let mut claimed: Vec<ClaimedRow> = Vec::new();
    for _ in 0..KEYED_CLAIM_ROUNDS {
        let wanted = (limit - claimed.len()) as i64;
        let candidates = wanted.saturating_mul(CANDIDATES_PER_PLACE);
        let rows = sqlx::query_file!(
            "src/engine/claim_keyed.sql",
            queue,
            wanted,
            owner,
            lease_ms,
            now,
            per_key,
            candidates,
        )
        .fetch_all(&mut *tx)
        .await?;
        // Candidates all read and still short: the surplus of some keys filled them.
        let again =
            rows.len() < wanted as usize && rows.first().map(|r| r.candidates) == Some(candidates);
        claimed.extend(rows.into_iter().map(|r| ClaimedRow {
            id: r.id,
            queue: r.queue,
            kind: r.kind,
            payload: r.payload,
            attempt: r.attempt,
            claim_token: r.claim_token,
            max_attempts: r.max_attempts,
            backoff_base_ms: r.backoff_base_ms,
            backoff_max_ms: r.backoff_max_ms,
            priority: r.priority,
            run_at: r.run_at,
        }));
        if !again || claimed.len() >= limit {
            break;
        }
    }
    pool.commit(tx).await?;
    Ok(in_claim_order(claimed, owner))
}

/// Statements a keyed claim may run in its transaction when one key's surplus filled the
/// candidates of the one before.
const KEYED_CLAIM_ROUNDS: usize = 4;

/// Candidates a keyed claim reads per job it may take: room for the surplus jobs of keys with
/// few free places before the batch fills.
const CANDIDATES_PER_PLACE: i64 = 4;
