use std::collections::HashSet;

use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::{enqueue_many_pooled, JobState};
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{job, state_of, LEASE, QUEUE};

#[tokio::test]
async fn claim_moves_jobs_to_running_with_attempt_owner_and_lease() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..10).map(job).collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    let owner = Uuid::new_v4();
    let claimed = claim_batch(&db.pool, QUEUE, 4, owner, LEASE, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for c in &claimed {
        assert_eq!(c.attempt, 1);
        let (state, owner_db, lease_left): (JobState, Uuid, f64) = sqlx::query_as(
            "SELECT state, lease_owner, extract(epoch FROM lease_expires_at - now())::float8 FROM jobs WHERE id = $1",
        )
        .bind(c.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(state, JobState::Running);
        assert_eq!(owner_db, owner);
        assert!(
            lease_left > 25.0 && lease_left <= 30.5,
            "lease {lease_left}"
        );
    }
    // Oldest first.
    let ns: Vec<i64> = claimed
        .iter()
        .map(|c| c.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn concurrent_claims_never_share_a_job() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..1_000).map(job).collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let owner = Uuid::new_v4();
            let mut mine = Vec::new();
            loop {
                let batch = claim_batch(&pool, QUEUE, 37, owner, LEASE, None)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|c| c.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for id in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(total, 1_000);
}

#[tokio::test]
async fn claim_skips_jobs_scheduled_in_the_future_and_other_queues() {
    let db = TestDb::new().await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    let ids = enqueue_many_pooled(
        &db.pool,
        &[
            job(1).with_run_at(later),
            poda_jobs::NewJob::new("other_queue", "test", serde_json::json!({})),
        ],
    )
    .await
    .unwrap();
    let owner = Uuid::new_v4();
    assert!(claim_batch(&db.pool, QUEUE, 10, owner, LEASE, None)
        .await
        .unwrap()
        .is_empty());
    // At its time it is claimable.
    let at = later + chrono::Duration::milliseconds(1);
    let claimed = claim_batch(&db.pool, QUEUE, 10, owner, LEASE, Some(at))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, ids[0].id);
    assert_eq!(
        state_of(&db.pool, ids[1].id).await,
        (JobState::Available, 0)
    );
}
