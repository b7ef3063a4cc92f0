use std::time::Duration;

use poda_jobs::engine::{enqueue_many_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::RetryPolicy;

use crate::support::process::spawn_worker;
use crate::worker_process::count_state;

const FAST_RESCUE: &[&str] = &[
    "--concurrency",
    "8",
    "--lease",
    "2s",
    "--rescue-interval",
    "1s",
];

#[tokio::test]
async fn kill_9_of_a_worker_mid_batch_loses_no_job_and_reruns_none_after_completion() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..400)
        .map(|n| {
            ProbeJob {
                record: true,
                sleep_ms: 20,
                ..ProbeJob::new(n)
            }
            .to_job(RetryPolicy::default())
        })
        .collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    let victim = spawn_worker(&db.url, FAST_RESCUE);
    // Kill it while it holds jobs.
    wait_until(
        "the victim to hold jobs",
        Duration::from_secs(30),
        || count_state(&db.pool, JobState::Running),
        |n| *n >= 4,
    )
    .await;
    victim.sigkill();
    let held_by_victim = count_state(&db.pool, JobState::Running).await;
    assert!(held_by_victim > 0);
    let survivor = spawn_worker(&db.url, FAST_RESCUE);
    wait_until(
        "every job completed",
        Duration::from_secs(60),
        || count_state(&db.pool, JobState::Completed),
        |n| *n == 400,
    )
    .await;

    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT n) FROM probe_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(distinct, 400);
    // Jobs the victim was running were rescued and ran again at a later attempt...
    let rescued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempt = 2")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(rescued > 0, "some jobs were rescued");
    // ...but no job ran after it had completed, and none completed twice.
    let after_completion: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_runs r JOIN jobs j ON j.id = r.job_id WHERE r.started_at > j.finished_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(after_completion, 0);
    let twice_at_same_attempt: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id, attempt FROM probe_runs GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(twice_at_same_attempt, 0);
    drop(survivor);
}

#[tokio::test]
async fn durable_backoff_survives_a_worker_restart() {
    let db = TestDb::new().await;
    let policy = RetryPolicy::new(3, Duration::from_secs(4), Duration::from_secs(4));
    let job = ProbeJob {
        record: true,
        fail_times: 1,
        ..ProbeJob::new(7)
    }
    .to_job(policy);
    let id = enqueue_many_pooled(&db.pool, &[job]).await.unwrap()[0].id;
    let mut first = spawn_worker(&db.url, &[]);
    let scheduled: chrono::DateTime<chrono::Utc> = wait_until(
        "the first attempt to fail",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT run_at FROM jobs WHERE id = $1 AND state = 'available' AND attempt = 1",
            )
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
        |r| r.is_some(),
    )
    .await
    .unwrap();
    first.sigterm();
    assert!(first.wait_exit(Duration::from_secs(20)).await.success());
    // The schedule is in the database, untouched by the restart.
    let still: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT run_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(still, scheduled);
    let _second = spawn_worker(&db.url, &[]);
    wait_until(
        "the retry to complete",
        Duration::from_secs(30),
        || count_state(&db.pool, JobState::Completed),
        |n| *n == 1,
    )
    .await;
    let second_start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM probe_runs WHERE job_id = $1 AND attempt = 2")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(second_start >= scheduled, "the retry waited for its run_at");
}
