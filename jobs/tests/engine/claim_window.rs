//! Claims that start at the process's claim window, and the sweep that moves jobs made
//! runnable behind it in front of it (docs/claim-window.md).

use chrono::{DateTime, Utc};
use poda_jobs::engine::claim::claim_batch_from;
use poda_jobs::engine::claim_window::{sweep_stragglers, ClaimWindow, LOOKBACK};
use poda_jobs::engine::{enqueue_many, enqueue_many_pooled, JobId, JobState, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{enqueue_probes, job, wait_for_state, ProbeWorker, LEASE, QUEUE};

async fn enqueue_at(db: &TestDb, n: i64, run_at: DateTime<Utc>) -> JobId {
    enqueue_many_pooled(&db.pool, &[job(n).with_run_at(run_at)])
        .await
        .unwrap()[0]
        .id
}

async fn claim_ns(db: &TestDb, window: &ClaimWindow) -> Vec<i64> {
    claim_batch_from(&db.pool, QUEUE, 10, Uuid::new_v4(), LEASE, window)
        .await
        .unwrap()
        .iter()
        .map(|j| j.payload["n"].as_i64().unwrap())
        .collect()
}

/// A job's run_at, on the pool or inside a transaction that has not committed it yet.
async fn run_at_of<'c>(conn: impl sqlx::PgExecutor<'c>, id: JobId) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT run_at FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn claims_read_from_a_lookback_behind_the_latest_job_claimed() {
    let db = TestDb::new().await;
    let window = ClaimWindow::default();
    let first = enqueue_at(&db, 1, Utc::now()).await;
    assert_eq!(
        claim_ns(&db, &window).await,
        vec![1],
        "an empty window reads from the start"
    );
    let front = run_at_of(&db.pool, first).await;

    let lookback = chrono::Duration::from_std(LOOKBACK).unwrap();
    // A job whose transaction began before the claimed one and committed after it.
    enqueue_at(&db, 2, front - lookback / 2).await;
    // A job made runnable further behind (released, rescued, scheduled in the past).
    let straggler = enqueue_at(&db, 3, front - lookback * 2).await;
    enqueue_at(&db, 4, Utc::now()).await;

    assert_eq!(
        claim_ns(&db, &window).await,
        vec![2, 4],
        "the claim reads the lookback and what is in front of it, not what is behind"
    );
    assert_eq!(claim_ns(&db, &window).await, Vec::<i64>::new());

    assert_eq!(
        sweep_stragglers(&db.pool, QUEUE, &window, None)
            .await
            .unwrap(),
        1
    );
    assert!(
        run_at_of(&db.pool, straggler).await > front,
        "the straggler is moved in front"
    );
    assert_eq!(claim_ns(&db, &window).await, vec![3]);
    assert_eq!(
        sweep_stragglers(&db.pool, QUEUE, &window, None)
            .await
            .unwrap(),
        0,
        "nothing is left behind"
    );
}

#[tokio::test]
async fn a_sweep_with_a_horizon_moves_only_the_stragglers_within_it() {
    let db = TestDb::new().await;
    let window = ClaimWindow::default();
    let first = enqueue_at(&db, 1, Utc::now()).await;
    claim_ns(&db, &window).await;
    let start = run_at_of(&db.pool, first).await - chrono::Duration::from_std(LOOKBACK).unwrap();
    let recent = enqueue_at(&db, 2, start - chrono::Duration::seconds(5)).await;
    let old = enqueue_at(&db, 3, start - chrono::Duration::hours(1)).await;
    let old_run_at = run_at_of(&db.pool, old).await;

    let horizon = Some(std::time::Duration::from_secs(10));
    assert_eq!(
        sweep_stragglers(&db.pool, QUEUE, &window, horizon)
            .await
            .unwrap(),
        1
    );
    assert!(
        run_at_of(&db.pool, recent).await > start,
        "the recent straggler is moved in front"
    );
    assert_eq!(
        run_at_of(&db.pool, old).await,
        old_run_at,
        "the old one is left to a full sweep"
    );
    assert_eq!(
        sweep_stragglers(&db.pool, QUEUE, &window, None)
            .await
            .unwrap(),
        1
    );
    assert!(run_at_of(&db.pool, old).await > start);
}

#[tokio::test]
async fn the_sweep_leaves_running_future_and_other_queues_jobs_alone() {
    let db = TestDb::new().await;
    let window = ClaimWindow::default();
    enqueue_at(&db, 1, Utc::now()).await;
    claim_ns(&db, &window).await;
    let hour = chrono::Duration::hours(1);
    let other = enqueue_many_pooled(
        &db.pool,
        &[
            poda_jobs::engine::NewJob::new("another_queue", "test", serde_json::json!({}))
                .with_run_at(Utc::now() - hour),
        ],
    )
    .await
    .unwrap()[0]
        .id;
    let later = enqueue_at(&db, 2, Utc::now() + hour).await;
    let behind = enqueue_at(&db, 3, Utc::now() - hour).await;
    sqlx::query("UPDATE jobs SET priority = 0 WHERE id = $1")
        .bind(behind)
        .execute(&db.pool)
        .await
        .unwrap();

    // Priority 0 has no front yet: its claims read it from the start, so nothing is behind.
    assert_eq!(
        sweep_stragglers(&db.pool, QUEUE, &window, None)
            .await
            .unwrap(),
        0
    );
    let before = [
        run_at_of(&db.pool, other).await,
        run_at_of(&db.pool, later).await,
    ];
    assert_eq!(claim_ns(&db, &window).await, vec![3]);
    assert_eq!(
        [
            run_at_of(&db.pool, other).await,
            run_at_of(&db.pool, later).await
        ],
        before
    );
}

/// A worker whose claims have moved on still runs a job made runnable far behind them.
#[tokio::test]
async fn a_worker_runs_a_job_made_runnable_behind_its_claims() {
    let db = TestDb::new().await;
    let worker = ProbeWorker::start(&db.pool, 4);
    let first = enqueue_probes(&db.pool, &[ProbeJob::new(1)], RetryPolicy::default()).await;
    wait_for_state(&db.pool, first[0], JobState::Completed).await;

    let behind = enqueue_many_pooled(
        &db.pool,
        &[ProbeJob::new(2)
            .to_job(RetryPolicy::default())
            .with_run_at(Utc::now() - chrono::Duration::hours(1))],
    )
    .await
    .unwrap()[0]
        .id;
    wait_for_state(&db.pool, behind, JobState::Completed).await;
    worker.stop().await;
}

/// A job enqueued by a transaction that stays open longer than the lookback, while the worker
/// claims jobs enqueued after it began, is behind every claim when it commits: the sweep moves
/// it in front and it runs.
#[tokio::test]
async fn a_job_whose_transaction_outlasts_the_lookback_is_swept_in_front_and_runs() {
    let db = TestDb::new().await;
    let worker = ProbeWorker::start(&db.pool, 4);
    // The queue exists before the transaction opens: a queue's first enqueue registers it,
    // and a second enqueue of the same new queue waits for that one to commit.
    let first = enqueue_probes(&db.pool, &[ProbeJob::new(0)], RetryPolicy::default()).await;
    wait_for_state(&db.pool, first[0], JobState::Completed).await;
    let mut open = db.pool.begin().await.unwrap();
    let slow = enqueue_many(
        &mut open,
        &[ProbeJob::new(1).to_job(RetryPolicy::default())],
    )
    .await
    .unwrap()[0]
        .id;
    let enqueued_at = run_at_of(&mut *open, slow).await;
    // The transaction's age is the condition here, not a synchronisation: a job enqueued
    // after it is older than the lookback moves the worker's window past the open one.
    tokio::time::sleep(LOOKBACK * 2).await;
    let later = enqueue_probes(&db.pool, &[ProbeJob::new(2)], RetryPolicy::default()).await;
    wait_for_state(&db.pool, later[0], JobState::Completed).await;
    db.pool.commit(open).await.unwrap();

    wait_for_state(&db.pool, slow, JobState::Completed).await;
    assert!(
        run_at_of(&db.pool, slow).await > enqueued_at,
        "the job ran because the sweep moved it, not because a claim reached back for it"
    );
    worker.stop().await;
}
