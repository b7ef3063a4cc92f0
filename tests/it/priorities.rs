//! Priorities with a worker process: an urgent job overtakes a long backlog.

use std::time::{Duration, Instant};

use poda_jobs::engine::{enqueue_many_pooled, enqueue_one_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::RetryPolicy;

use crate::support::process::spawn_worker;

#[tokio::test]
async fn an_urgent_job_behind_100000_waiting_jobs_runs_within_a_second() {
    let db = TestDb::new().await;
    let retry = RetryPolicy::default();
    // 100,000 jobs of the default priority that each take 20 ms: the worker's 8 slots drain
    // them at about 400 a second, so the backlog stays for the whole test.
    let backlog: Vec<_> = (0..100_000)
        .map(|n| {
            ProbeJob {
                sleep_ms: 20,
                ..ProbeJob::new(n)
            }
            .to_job(retry)
        })
        .collect();
    for chunk in backlog.chunks(10_000) {
        enqueue_many_pooled(&db.pool, chunk).await.unwrap();
    }
    sqlx::query("ANALYZE jobs").execute(&db.pool).await.unwrap();
    let _worker = spawn_worker(&db.url, &["--queues", "poda_probe", "--concurrency", "8"]);
    wait_until(
        "the worker is through its first jobs",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE state = 'completed'")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |n| *n >= 50,
    )
    .await;

    let started = Instant::now();
    let urgent = enqueue_one_pooled(&db.pool, &ProbeJob::new(-1).to_job(retry).with_priority(0))
        .await
        .unwrap()
        .id;
    wait_until(
        "the urgent job completed",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, JobState>("SELECT state FROM jobs WHERE id = $1")
                .bind(urgent)
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |s| *s == JobState::Completed,
    )
    .await;
    let elapsed = started.elapsed();
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'available' AND priority = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        waiting > 90_000,
        "the backlog is still there ({waiting} waiting)"
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "the urgent job took {elapsed:?} from enqueue to completion"
    );
}
