//! Priorities: claims take the most urgent runnable jobs first, FIFO within a priority.

use chrono::Utc;
use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::{enqueue_many_pooled, enqueue_one_pooled, EngineError, Priority};
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{job, LEASE, QUEUE};

fn n_of(job: &poda_jobs::engine::ClaimedJob) -> i64 {
    job.payload["n"].as_i64().unwrap()
}

#[tokio::test]
async fn a_priority_out_of_range_is_refused_with_the_range_named() {
    let db = TestDb::new().await;
    for bad in [-1, 4, i16::MAX] {
        let error = enqueue_one_pooled(&db.pool, &job(1).with_priority(bad))
            .await
            .unwrap_err();
        match &error {
            EngineError::InvalidJob(message) => {
                assert!(message.contains(&format!("priority {bad}")), "{message}");
                assert!(message.contains("0 (most urgent) to 3"), "{message}");
            }
            other => panic!("expected an invalid job, got {other:?}"),
        }
    }
    // One bad job refuses the whole batch: nothing is written.
    let error = enqueue_many_pooled(&db.pool, &[job(1), job(2).with_priority(9)]).await;
    assert!(matches!(error, Err(EngineError::InvalidJob(_))));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    // The table refuses what an enqueue from SQL might try.
    let refused = sqlx::query(
        "INSERT INTO jobs (queue, kind, payload, max_attempts, backoff_base_ms, backoff_max_ms, priority) \
         VALUES ('q', 'k', '{}', 1, 0, 0, 4)",
    )
    .execute(&db.pool)
    .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn jobs_are_claimed_most_urgent_first_and_fifo_within_a_priority() {
    let db = TestDb::new().await;
    // Enqueued in an order that is neither by priority nor by id within a priority.
    let plan = [
        (0, 3),
        (1, 1),
        (2, 0),
        (3, 2),
        (4, 1),
        (5, 0),
        (6, 3),
        (7, 1),
        (8, 2),
    ];
    for &(n, p) in &plan {
        enqueue_one_pooled(&db.pool, &job(n).with_priority(p))
            .await
            .unwrap();
    }
    let owner = Uuid::new_v4();
    let mut order = Vec::new();
    loop {
        let batch = claim_batch(&db.pool, QUEUE, 2, owner, LEASE, None)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        order.extend(batch.iter().map(|j| (j.priority, n_of(j))));
    }
    assert_eq!(
        order,
        vec![
            (0, 2),
            (0, 5),
            (1, 1),
            (1, 4),
            (1, 7),
            (2, 3),
            (2, 8),
            (3, 0),
            (3, 6)
        ]
    );
}

#[tokio::test]
async fn within_a_priority_an_earlier_run_at_goes_first() {
    let db = TestDb::new().await;
    let now = Utc::now();
    enqueue_one_pooled(
        &db.pool,
        &job(1).with_run_at(now - chrono::Duration::seconds(1)),
    )
    .await
    .unwrap();
    enqueue_one_pooled(
        &db.pool,
        &job(2).with_run_at(now - chrono::Duration::seconds(10)),
    )
    .await
    .unwrap();
    let claimed = claim_batch(&db.pool, QUEUE, 2, Uuid::new_v4(), LEASE, None)
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(n_of).collect::<Vec<_>>(), vec![2, 1]);
}

/// Whatever is waiting, a claim never returns a job while a more urgent one is runnable and
/// unclaimed: future-scheduled urgent jobs do not count, and do not hide the next priority.
#[tokio::test]
async fn a_claim_never_returns_a_less_urgent_job_while_a_more_urgent_one_is_runnable() {
    let db = TestDb::new().await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let mut jobs = Vec::new();
    // Urgent jobs scheduled later (retrying): not runnable, so not to be waited for.
    for n in 0..500 {
        jobs.push(job(n).with_priority(0).with_run_at(later));
    }
    for n in 1_000..1_300 {
        jobs.push(job(n).with_priority(((n % 3) + 1) as i16));
    }
    for n in 2_000..2_050 {
        jobs.push(job(n).with_priority(0));
    }
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let owner = Uuid::new_v4();
    let mut claimed_total = 0;
    for limit in [7usize, 30, 1, 64, 13, 100, 200].into_iter().cycle() {
        let batch = claim_batch(&db.pool, QUEUE, limit, owner, LEASE, None)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        claimed_total += batch.len();
        let least_urgent = batch.iter().map(|j| j.priority).max().unwrap();
        // No runnable, unclaimed job more urgent than the least urgent one claimed is left.
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state = 'available' AND run_at <= now() AND priority < $1",
        )
        .bind(least_urgent)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            left, 0,
            "a batch reached priority {least_urgent} with more urgent jobs runnable"
        );
    }
    assert_eq!(
        claimed_total, 350,
        "every runnable job is claimed, no future one"
    );
    assert_eq!(Priority::DEFAULT, 1);
}

#[tokio::test]
async fn the_default_priority_is_one_and_the_snapshot_shows_it() {
    let db = TestDb::new().await;
    let plain = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap();
    let urgent = enqueue_one_pooled(&db.pool, &job(2).with_priority(0))
        .await
        .unwrap();
    let plain = poda_jobs::engine::admin::fetch_job(&db.pool, plain.id)
        .await
        .unwrap();
    let urgent = poda_jobs::engine::admin::fetch_job(&db.pool, urgent.id)
        .await
        .unwrap();
    assert_eq!(plain.priority, 1);
    assert_eq!(urgent.priority, 0);
    let json = serde_json::to_value(&urgent).unwrap();
    assert_eq!(json["priority"], 0);
}
