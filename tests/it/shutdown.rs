use std::time::Duration;

use poda_jobs::engine::{enqueue_many_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::RetryPolicy;

use crate::support::process::spawn_worker;
use crate::worker_process::count_state;

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_releases_the_rest_and_exits_0() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..20)
        .map(|n| {
            ProbeJob {
                record: true,
                sleep_ms: 1_500,
                ..ProbeJob::new(n)
            }
            .to_job(RetryPolicy::default())
        })
        .collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    let mut worker = spawn_worker(&db.url, &["--concurrency", "4", "--shutdown-grace", "20s"]);
    wait_until(
        "4 jobs to start",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM probe_runs")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |n| *n == 4,
    )
    .await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");

    // The four that were running finished; nothing else started; nothing is left held.
    assert_eq!(count_state(&db.pool, JobState::Completed).await, 4);
    assert_eq!(count_state(&db.pool, JobState::Running).await, 0);
    let (available, spent): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempt > 0) FROM jobs WHERE state = 'available'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (available, spent),
        (16, 0),
        "jobs that never started did not spend an attempt"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 4);
}
