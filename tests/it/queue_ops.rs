use poda_jobs::probe;
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::worker::{
    count, enqueue_recorded_probes, worker_command, WorkerProcess, TIMEOUT,
};

#[tokio::test]
async fn pause_holds_a_running_workers_jobs_and_resume_releases_them() {
    let db = TestDb::new().await;
    // The first enqueue registers the queue.
    enqueue_recorded_probes(&db.pool, 20).await;
    let out = worker_command(&db.url, &["pause", probe::QUEUE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));

    let _worker = WorkerProcess::start(&db.url, &["--queues", probe::QUEUE]);
    // The worker is up and polling (it holds connections), yet nothing runs while paused.
    wait_until(
        "the worker to connect",
        TIMEOUT,
        || async {
            count(
                &db.pool,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
            )
            .await
        },
        |n| *n >= 3,
    )
    .await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM probe_runs").await, 0);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM jobs WHERE state = 'available'"
        )
        .await,
        20
    );

    let out = worker_command(&db.url, &["resume", probe::QUEUE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        |n| *n == 20,
    )
    .await;
    assert_eq!(
        count(&db.pool, "SELECT count(DISTINCT n) FROM probe_runs").await,
        20
    );
}

#[tokio::test]
async fn pause_of_an_unknown_queue_fails_with_a_clear_message() {
    let db = TestDb::new().await;
    let out = worker_command(&db.url, &["pause", "no_such_queue"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no_such_queue") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn prune_deletes_old_finished_jobs_and_keeps_the_rest() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 4).await;
    sqlx::query(
        "UPDATE jobs SET state = 'completed', finished_at = now() - interval '3 days' \
         WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = worker_command(&db.url, &["prune", "--older-than", "2d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleted 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM jobs").await, 2);

    let out = worker_command(&db.url, &["prune", "--older-than", "7 weeks"]);
    assert!(!out.status.success(), "a bad duration is refused");
}

#[tokio::test]
async fn queue_concurrency_must_name_a_queue_the_worker_runs() {
    let db = TestDb::new().await;
    // A worker of the probe queue only is told that `tickets` is not among its queues.
    let out = worker_command(
        &db.url,
        &[
            "--queues",
            probe::QUEUE,
            "--queue-concurrency",
            "tickets=64",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--queue-concurrency") && stderr.contains("tickets"),
        "{stderr}"
    );
    let out = worker_command(
        &db.url,
        &["--queues", probe::QUEUE, "--queue-concurrency", "tickets"],
    );
    assert!(!out.status.success());
}
