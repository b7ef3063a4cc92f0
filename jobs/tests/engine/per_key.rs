//! Claims with a per-key limit: at most `per_key` jobs of one concurrency key run at once,
//! across concurrent claimers; other keys are not held back by a busy one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poda_jobs::db::Db;
use poda_jobs::engine::claim::claim_batch_per_key;
use poda_jobs::engine::enqueue_many_pooled;
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{job, LEASE, QUEUE};

async fn running_per_key(pool: &Db) -> HashMap<String, i64> {
    sqlx::query_as(
        "SELECT coalesce(concurrency_key, '-'), count(*) FROM jobs WHERE state = 'running' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn a_busy_keys_backlog_does_not_hold_other_keys_back() {
    let db = TestDb::new().await;
    let mut jobs: Vec<_> = (0..500)
        .map(|n| job(n).with_concurrency_key("busy"))
        .collect();
    jobs.extend((500..510).map(|n| job(n).with_concurrency_key("a")));
    jobs.extend((510..520).map(|n| job(n).with_concurrency_key("b")));
    jobs.extend((520..523).map(job));
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let claimed = claim_batch_per_key(&db.pool, QUEUE, 20, 2, Uuid::new_v4(), LEASE, None)
        .await
        .unwrap();
    let running = running_per_key(&db.pool).await;
    assert_eq!(running.get("busy"), Some(&2), "{running:?}");
    assert_eq!(running.get("a"), Some(&2), "{running:?}");
    assert_eq!(running.get("b"), Some(&2), "{running:?}");
    assert_eq!(
        running.get("-"),
        Some(&3),
        "jobs without a key are not limited"
    );
    assert_eq!(claimed.len(), 9);

    // Full keys take nothing more; the next claim finds nothing it may take.
    let more = claim_batch_per_key(&db.pool, QUEUE, 20, 2, Uuid::new_v4(), LEASE, None)
        .await
        .unwrap();
    assert!(more.is_empty(), "{} jobs over the limit", more.len());

    // A finished job frees its key's place, and only that one.
    let a_job = claimed
        .iter()
        .find(|j| (500..510).contains(&j.payload["n"].as_i64().unwrap()))
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'completed', lease_owner = NULL, lease_expires_at = NULL, \
         finished_at = now() WHERE id = $1",
    )
    .bind(a_job.id)
    .execute(&db.pool)
    .await
    .unwrap();
    let next = claim_batch_per_key(&db.pool, QUEUE, 20, 2, Uuid::new_v4(), LEASE, None)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert!((500..510).contains(&next[0].payload["n"].as_i64().unwrap()));
}

/// Claimers racing on several connections, finishing jobs as they go: a sampler never sees
/// more than the limit of one key running, and every job runs.
#[tokio::test]
async fn racing_claimers_never_exceed_the_limit_of_a_key() {
    let db = TestDb::new().await;
    const PER_KEY: i64 = 3;
    let jobs: Vec<_> = (0..600)
        .map(|n| job(n).with_concurrency_key(format!("k{}", n % 4)))
        .collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let pool = db.pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut worst = 0;
            while !done.load(Ordering::Relaxed) {
                for (_, n) in running_per_key(&pool).await {
                    worst = worst.max(n);
                }
            }
            worst
        })
    };
    let mut claimers = Vec::new();
    for c in 0..6usize {
        let pool = db.pool.clone();
        claimers.push(tokio::spawn(async move {
            let owner = Uuid::new_v4();
            let mut ran = 0;
            let mut idle = 0;
            while idle < 20 {
                let batch = claim_batch_per_key(&pool, QUEUE, 1 + c % 4, PER_KEY as u32, owner, LEASE, None)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                ran += batch.len();
                let ids: Vec<i64> = batch.iter().map(|j| j.id.0).collect();
                tokio::time::sleep(Duration::from_millis(2)).await;
                sqlx::query(
                    "UPDATE jobs SET state = 'completed', lease_owner = NULL, lease_expires_at = NULL, \
                     finished_at = now() WHERE id = ANY($1)",
                )
                .bind(&ids)
                .execute(&pool)
                .await
                .unwrap();
            }
            ran
        }));
    }
    let mut ran = 0;
    for c in claimers {
        ran += c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let worst = sampler.await.unwrap();
    assert_eq!(ran, 600, "every job ran once");
    assert!(worst <= PER_KEY, "{worst} jobs of one key ran at once");
    assert!(
        worst >= 2,
        "the claimers ran jobs of a key side by side ({worst})"
    );
}
