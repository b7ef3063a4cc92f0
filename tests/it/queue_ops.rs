use std::time::{Duration, Instant};

use poda_jobs::db::Db;
use poda_jobs::engine::enqueue_many_pooled;
use poda_jobs::probe;
use poda_jobs::testing::tickets::{seed_one_company, ticket_job};
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::ticket;

use crate::support::enqueue_recorded_probes;
use crate::support::process::{run_worker_command, spawn_worker};
use crate::support::{count, TIMEOUT};

/// (jobs of `queue` ever claimed, probe runs).
async fn claimed_and_run(pool: &Db, queue: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE queue = $1 \
                   AND (state <> 'available' OR attempt > 0 OR attempted_at IS NOT NULL)), \
                (SELECT count(*) FROM probe_runs)",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn pause_holds_a_running_workers_jobs_and_resume_releases_them() {
    let db = TestDb::new().await;
    // The first enqueue registers the queue.
    enqueue_recorded_probes(&db.pool, 20, 0).await;
    let (ok, stdout, stderr) = run_worker_command(&db.url, &["pause", probe::QUEUE]).await;
    assert!(ok, "{}", stderr);
    assert!(stdout.contains("paused"));
    // A job on a queue that is not paused: once it has run, the worker is up and claiming.
    seed_one_company(&db.pool).await;
    enqueue_many_pooled(
        &db.pool,
        &[ticket_job("pay-pause", "co-1", "rt-1", 10_000).to_job()],
    )
    .await
    .unwrap();

    let queues = format!("{},{}", probe::QUEUE, ticket::QUEUE);
    let _worker = spawn_worker(&db.url, &["--queues", &queues, "--poll-interval", "100ms"]);
    wait_until(
        "the worker to run the job of the queue that is not paused",
        TIMEOUT,
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'completed'",
            )
            .bind(ticket::QUEUE)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
        |n| *n == 1,
    )
    .await;
    // The worker claims, yet for ten of its poll intervals nothing of the paused queue is
    // claimed or run. (Absence is watched for a while; nothing waits on it.)
    let watch_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < watch_until {
        assert_eq!(
            claimed_and_run(&db.pool, probe::QUEUE).await,
            (0, 0),
            "jobs of a paused queue were claimed or run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let resumed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (ok, _, stderr) = run_worker_command(&db.url, &["resume", probe::QUEUE]).await;
    assert!(ok, "{}", stderr);
    wait_until(
        "every job to complete after resume",
        TIMEOUT,
        || async {
            count(
                &db.pool,
                "SELECT count(*) FROM jobs WHERE state = 'completed'",
            )
            .await
        },
        |n| *n == 21,
    )
    .await;
    // Each probe ran once, at its first attempt, after the resume.
    let (runs, distinct, first_attempts, before_resume): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT n), count(*) FILTER (WHERE attempt = 1), \
                count(*) FILTER (WHERE started_at < $1) \
         FROM probe_runs",
    )
    .bind(resumed_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((runs, distinct, first_attempts), (20, 20, 20));
    assert_eq!(before_resume, 0, "probes ran before the queue was resumed");
}

#[tokio::test]
async fn pause_of_an_unknown_queue_fails_with_a_clear_message() {
    let db = TestDb::new().await;
    let (ok, _, stderr) = run_worker_command(&db.url, &["pause", "no_such_queue"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("no_such_queue") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn prune_deletes_old_finished_jobs_and_keeps_the_rest() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 4, 0).await;
    sqlx::query(
        "UPDATE jobs SET state = 'completed', finished_at = now() - interval '3 days' \
         WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (ok, stdout, stderr) = run_worker_command(&db.url, &["prune", "--older-than", "2d"]).await;
    assert!(ok, "{}", stderr);
    assert!(stdout.contains("deleted 2"), "{}", stdout);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 2);

    let (ok, _, _) = run_worker_command(&db.url, &["prune", "--older-than", "7 weeks"]).await;
    assert!(!ok, "a bad duration is refused");
}

#[tokio::test]
async fn queue_concurrency_must_name_a_queue_the_worker_runs() {
    let db = TestDb::new().await;
    // A worker of the probe queue only is told that `tickets` is not among its queues.
    let (ok, _, stderr) = run_worker_command(
        &db.url,
        &[
            "--queues",
            probe::QUEUE,
            "--queue-concurrency",
            "tickets=64",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("--queue-concurrency") && stderr.contains("tickets"),
        "{stderr}"
    );
    let (ok, _, _) = run_worker_command(
        &db.url,
        &["--queues", probe::QUEUE, "--queue-concurrency", "tickets"],
    )
    .await;
    assert!(!ok);
}
