//! SIGTERM and its edges: jobs claimed but never started, a second signal, a grace that runs
//! out, and a process paused past its lease.

use std::time::{Duration, Instant};

use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::RetryPolicy;

use crate::support::count_state;
use crate::support::enqueue_recorded_probes;
use crate::support::process::{spawn_worker, spawn_worker_logging, worker_command};

async fn runs(pool: &Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM probe_runs")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// (available jobs, of which with an attempt spent).
async fn available_and_spent(pool: &Db) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempt > 0) FROM jobs WHERE state = 'available'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until `started` jobs have started and `held` jobs are claimed by the worker (running
/// in the database: started, or waiting in the worker under lease).
async fn wait_started_and_held(pool: &Db, started: i64, held: i64) {
    wait_until(
        &format!("{started} jobs to start and {held} to be held"),
        Duration::from_secs(20),
        || async { (runs(pool).await, count_state(pool, JobState::Running).await) },
        |(r, h)| *r == started && *h == held,
    )
    .await;
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_releases_the_rest_and_exits_0() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 20, 1_500).await;
    // Four slots and a prefetch of eight: at the signal the worker holds eight claimed jobs
    // that never started.
    let mut worker = spawn_worker(
        &db.url,
        &[
            "--concurrency",
            "4",
            "--prefetch",
            "8",
            "--shutdown-grace",
            "20s",
        ],
    );
    wait_started_and_held(&db.pool, 4, 12).await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");

    // The four that were running finished; nothing else started; nothing is left held, and
    // the eight held jobs went back without spending an attempt.
    assert_eq!(count_state(&db.pool, JobState::Completed).await, 4);
    assert_eq!(count_state(&db.pool, JobState::Running).await, 0);
    assert_eq!(
        available_and_spent(&db.pool).await,
        (16, 0),
        "jobs that never started did not spend an attempt"
    );
    assert_eq!(runs(&db.pool).await, 4);
}

#[tokio::test]
async fn a_second_signal_releases_what_never_started_and_exits_non_zero_at_once() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 6, 60_000).await;
    let (mut worker, mut logs) = spawn_worker_logging(worker_command(
        &db.url,
        &[
            "--concurrency",
            "2",
            "--prefetch",
            "2",
            "--shutdown-grace",
            "60s",
        ],
    ));
    wait_started_and_held(&db.pool, 2, 4).await;
    worker.sigterm();
    // The first signal alone would wait up to a minute for the running jobs. Two signals sent
    // before the first is handled may arrive as one, so the second waits for the first's log.
    logs.wait_for("shutdown signal received", Duration::from_secs(10))
        .await;
    let signalled = Instant::now();
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    assert!(
        !status.success(),
        "a second signal exits non-zero: {status:?}"
    );
    assert!(signalled.elapsed() < Duration::from_secs(10));
    // The two held jobs went back unspent (beside the two never claimed); the two dropped
    // runs keep their lease until it lapses, then any worker runs them again.
    assert_eq!(available_and_spent(&db.pool).await, (4, 0));
    assert_eq!(count_state(&db.pool, JobState::Running).await, 2);
}

#[tokio::test]
async fn when_the_grace_runs_out_unstarted_jobs_are_released_and_the_worker_exits_0() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 3, 60_000).await;
    let mut worker = spawn_worker(
        &db.url,
        &[
            "--concurrency",
            "1",
            "--prefetch",
            "2",
            "--shutdown-grace",
            "2s",
        ],
    );
    wait_started_and_held(&db.pool, 1, 3).await;
    let signalled = Instant::now();
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit 0 once the grace ran out: {status:?}"
    );
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert_eq!(
        available_and_spent(&db.pool).await,
        (2, 0),
        "the held jobs were released, not dropped"
    );
    assert_eq!(count_state(&db.pool, JobState::Running).await, 1);
}

/// A claim whose statement has committed but whose jobs are not yet handed over when SIGTERM
/// arrives: the shutdown waits for it and gives its jobs back without spending an attempt.
// Needs the fail points compiled in: `cargo test --all-features`.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn sigterm_during_a_claim_releases_its_jobs_unspent() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 4, 0).await;
    // The first claim that returns jobs waits 5 s before handing them over.
    let mut command = worker_command(
        &db.url,
        &[
            "--queues",
            poda_jobs::probe::QUEUE,
            "--concurrency",
            "4",
            "--shutdown-grace",
            "20s",
        ],
    );
    command.env("FAILPOINTS", "engine-claim-returned=1*return(5000)");
    let mut worker = crate::support::process::spawn_worker_with(command);
    // Committed as running, not yet started: the claim is in its window.
    wait_started_and_held(&db.pool, 0, 4).await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    assert_eq!(count_state(&db.pool, JobState::Running).await, 0);
    assert_eq!(
        available_and_spent(&db.pool).await,
        (4, 0),
        "the claimed jobs went back without spending an attempt"
    );
    assert_eq!(runs(&db.pool).await, 0, "no job started after the signal");
}

/// A worker paused (SIGSTOP) past its lease loses its job to another worker; resumed, its
/// run ends with a failure whose outcome must change nothing.
#[tokio::test]
async fn a_worker_paused_past_its_lease_cannot_change_the_job_when_it_resumes() {
    let db = TestDb::new().await;
    let job = ProbeJob {
        record: true,
        sleep_ms: 3_000,
        // The first attempt fails (retryably), a later one succeeds.
        fail_times: 1,
        ..ProbeJob::new(1)
    }
    .to_job(RetryPolicy::new(
        5,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let id = enqueue_many_pooled(&db.pool, &[job]).await.unwrap()[0].id;
    let fast = ["--lease", "2s", "--rescue-interval", "200ms"];
    let mut paused = spawn_worker(&db.url, &fast);
    wait_started_and_held(&db.pool, 1, 1).await;
    paused.pause();
    let mut other = spawn_worker(&db.url, &fast);
    wait_until(
        "the other worker to finish the job",
        Duration::from_secs(30),
        || async {
            sqlx::query_as::<_, (JobState, i32)>("SELECT state, attempt FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |s| *s == (JobState::Completed, 2),
    )
    .await;
    paused.resume();
    // A graceful stop waits for its run to end and writes its outcome (a retry) before it
    // exits: the fence must ignore it.
    paused.sigterm();
    assert!(paused.wait_exit(Duration::from_secs(30)).await.success());
    let (state, attempt, errors): (JobState, i32, i64) = sqlx::query_as(
        "SELECT state, attempt, jsonb_array_length(errors)::bigint FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (state, attempt, errors),
        (JobState::Completed, 2, 1),
        "only the rescue's note is kept; the paused run's late failure changed nothing"
    );
    other.sigterm();
    assert!(other.wait_exit(Duration::from_secs(30)).await.success());
}
