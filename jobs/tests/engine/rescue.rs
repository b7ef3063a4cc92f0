use std::time::Duration;

use chrono::Utc;
use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::{enqueue_one_pooled, JobState};
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{fast_retry, job, rescuer, state_of, QUEUE};

#[tokio::test]
async fn rescue_takes_back_only_jobs_whose_lease_has_expired() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let lease = Duration::from_secs(10);
    claim_batch(&db.pool, QUEUE, 1, Uuid::new_v4(), lease, None)
        .await
        .unwrap();
    let rescuer = rescuer(&db.pool);

    // Just before the lease ends: won't be rescued.
    let before = Utc::now() + chrono::Duration::seconds(8);
    assert_eq!(rescuer.run_once(Some(before)).await.unwrap().total(), 0);
    assert_eq!(state_of(&db.pool, id).await, (JobState::Running, 1));

    // Just after: rescued, runnable at once, the attempt spent and the reason kept.
    let after = Utc::now() + chrono::Duration::seconds(11);
    let report = rescuer.run_once(Some(after)).await.unwrap();
    assert_eq!(report.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, id).await, (JobState::Available, 1));
    let error: String = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.contains("lease expired"), "{error}");
}

#[tokio::test]
async fn rescue_fails_a_job_whose_last_attempt_was_lost() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1).with_retry(fast_retry(1)))
        .await
        .unwrap()
        .id;
    claim_batch(
        &db.pool,
        QUEUE,
        1,
        Uuid::new_v4(),
        Duration::from_secs(1),
        None,
    )
    .await
    .unwrap();
    let report = rescuer(&db.pool)
        .run_once(Some(Utc::now() + chrono::Duration::seconds(5)))
        .await
        .unwrap();
    assert_eq!(report.failed.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, id).await, (JobState::Failed, 1));
}

#[tokio::test]
async fn a_windowed_pass_reads_only_recent_expiries_and_a_full_pass_reads_them_all() {
    let db = TestDb::new().await;
    let old = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let recent = enqueue_one_pooled(&db.pool, &job(2)).await.unwrap().id;
    claim_batch(
        &db.pool,
        QUEUE,
        2,
        Uuid::new_v4(),
        Duration::from_secs(10),
        None,
    )
    .await
    .unwrap();
    // One lease ran out an hour ago (written already expired), the other a second ago.
    sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() - CASE id WHEN $1 THEN interval '1 hour' \
                                                         ELSE interval '1 second' END \
         WHERE id IN ($1, $2)",
    )
    .bind(old)
    .bind(recent)
    .execute(&db.pool)
    .await
    .unwrap();
    let rescuer = rescuer(&db.pool);

    let window = rescuer
        .pass(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(window.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, recent).await, (JobState::Available, 1));
    assert_eq!(state_of(&db.pool, old).await, (JobState::Running, 1));

    let full = rescuer.pass(None, None).await.unwrap();
    assert_eq!(full.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, old).await, (JobState::Available, 1));
}
