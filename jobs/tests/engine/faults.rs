//! Runs that outlast their timeout or their lease.

use std::time::Duration;

use poda_jobs::engine::{EngineConfig, JobState, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::TestDb;

use crate::support::{enqueue_probes, fast_retry, wait_for_state, ProbeWorker};

#[tokio::test]
async fn a_run_past_its_timeout_fails_as_a_retryable_attempt_and_frees_its_slot() {
    let db = TestDb::new().await;
    // One slot: the quick job can only run once the stuck one's run is stopped.
    let ids = enqueue_probes(
        &db.pool,
        &[
            ProbeJob {
                sleep_ms: 60_000,
                ..ProbeJob::new(1)
            },
            ProbeJob::new(2),
        ],
        fast_retry(2),
    )
    .await;
    let worker = ProbeWorker::start_bounded(
        &db.pool,
        1,
        EngineConfig::default(),
        Duration::from_millis(300),
    );
    wait_for_state(&db.pool, ids[1], JobState::Completed).await;
    wait_for_state(&db.pool, ids[0], JobState::Failed).await;
    worker.stop().await;

    let (attempt, errors): (i32, Vec<String>) = sqlx::query_as(
        "SELECT attempt, ARRAY(SELECT e->>'error' FROM jsonb_array_elements(errors) e) \
         FROM jobs WHERE id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempt, 2, "each timed-out run spent its attempt");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("longer than its timeout")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_job_longer_than_its_lease_keeps_it_and_runs_once() {
    let db = TestDb::new().await;
    let ids = enqueue_probes(
        &db.pool,
        &[ProbeJob {
            record: true,
            sleep_ms: 4_000,
            ..ProbeJob::new(1)
        }],
        RetryPolicy::default(),
    )
    .await;
    // A 1 s lease, renewed every third of it; the rescuer looks every 200 ms.
    let mut config = EngineConfig::default().with_lease(Duration::from_secs(1));
    config.rescue.interval = Duration::from_millis(200);
    let worker = ProbeWorker::start_with(&db.pool, 1, config);
    wait_for_state(&db.pool, ids[0], JobState::Completed).await;
    worker.stop().await;
    let (attempt, errors): (i32, i64) = sqlx::query_as(
        "SELECT attempt, jsonb_array_length(errors)::bigint FROM jobs WHERE id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (attempt, errors, runs),
        (1, 0, 1),
        "never rescued, run once"
    );
}
