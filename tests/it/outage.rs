//! The database goes away under a running worker: an outage longer than the lease, and a
//! server crash. Each test runs its own PostgreSQL cluster (`PrivateCluster`), never the
//! shared server.

use std::time::Duration;

use poda::config::{DatabaseSettings, Secret};
use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::wait_until;
use poda_jobs::testing::{PrivateCluster, TestDb};
use poda_jobs::RetryPolicy;

use crate::support::app::{spawn_enqueuer_connecting, test_settings};
use crate::support::count_state;
use crate::support::monime::payment_completed;
use crate::support::process::{run_worker_command, spawn_worker_serving_metrics, worker_command};

/// A migrated database on `cluster`, and a pool on it whose commits (the test's enqueues)
/// are durable, as the enqueuer's are.
async fn migrated(cluster: &PrivateCluster) -> (String, Db) {
    let url = cluster.create_database("poda").await;
    let (ok, _, err) = run_worker_command(&url, &["migrate"]).await;
    assert!(ok, "{err}");
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([("synchronous_commit", "on")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    (url, pool.into())
}

async fn runs(pool: &Db) -> Vec<(i64, i32)> {
    sqlx::query_as("SELECT n, attempt FROM probe_runs ORDER BY n")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// Jobs run 40 s; the server is down for 30 s of that, longer than the 20 s lease, and comes
/// back while they still run. The rescuer looks every second, the lease renewer every 7 s:
/// without the rescuers' grace after an outage the jobs would be taken (and, on their only
/// attempt, failed). The worker keeps its jobs: each runs once, on this process, none fails,
/// and every loop comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_lease_loses_no_running_job() {
    let mut cluster = PrivateCluster::start().await;
    let (url, pool) = migrated(&cluster).await;
    // One attempt each: a rescue would fail the job for good.
    let jobs: Vec<_> = (0..4)
        .map(|n| {
            ProbeJob {
                record: true,
                sleep_ms: 40_000,
                ..ProbeJob::new(n)
            }
            .to_job(RetryPolicy::new(
                1,
                Duration::from_secs(1),
                Duration::from_secs(1),
            ))
        })
        .collect();
    enqueue_many_pooled(&pool, &jobs).await.unwrap();
    let (mut worker, addr) = spawn_worker_serving_metrics(|| {
        worker_command(
            &url,
            &[
                "--concurrency",
                "4",
                "--lease",
                "20s",
                "--rescue-interval",
                "1s",
            ],
        )
    })
    .await;
    wait_until(
        "the four jobs to start",
        Duration::from_secs(20),
        || runs(&pool),
        |r| r.len() == 4,
    )
    .await;

    cluster.stop().await;
    // The outage itself: longer than the lease.
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.start_again().await;

    wait_until(
        "the four jobs to complete",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE state = 'completed'")
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
        },
        |n| *n == 4,
    )
    .await;
    assert_eq!(
        runs(&pool).await,
        vec![(0, 1), (1, 1), (2, 1), (3, 1)],
        "each job ran once, at its first attempt"
    );
    let (failed, errors): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'failed'), \
                coalesce(sum(jsonb_array_length(errors)), 0)::bigint FROM jobs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (failed, errors),
        (0, 0),
        "nothing failed, nothing was rescued"
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the same worker process finished them and still runs"
    );

    // Every loop came back: healthy, and a new job is claimed and run.
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "{:?}", health.text().await);
    enqueue_many_pooled(
        &pool,
        &[ProbeJob {
            record: true,
            ..ProbeJob::new(4)
        }
        .to_job(RetryPolicy::default())],
    )
    .await
    .unwrap();
    wait_until(
        "a job enqueued after the outage to run",
        Duration::from_secs(20),
        || count_state(&pool, JobState::Completed),
        |n| *n == 5,
    )
    .await;
    worker.sigterm();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
}

/// A retry's schedule that the database took survives a server crash right after it, even
/// though the engine's own writes commit asynchronously (the WAL writer here waits 10 s, so
/// an asynchronous commit is still in memory when the server dies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_schedule_the_database_took_survives_a_server_crash() {
    let mut cluster = PrivateCluster::start_with("wal_writer_delay = 10s").await;
    let (url, pool) = migrated(&cluster).await;
    let job = ProbeJob {
        fail_times: 1,
        ..ProbeJob::new(1)
    }
    .to_job(RetryPolicy::new(
        5,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let id = enqueue_many_pooled(&pool, &[job]).await.unwrap()[0].id;
    let (mut worker, _) =
        spawn_worker_serving_metrics(|| worker_command(&url, &["--concurrency", "1"])).await;
    // The hour's backoff carries ±20 % jitter: at least 48 minutes.
    let scheduled = || async {
        sqlx::query_as::<_, (JobState, i32, bool, bool)>(
            "SELECT state, attempt, last_error IS NOT NULL, run_at > now() + interval '45 minutes' \
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .ok()
    };
    wait_until(
        "the failed attempt's retry to be scheduled",
        Duration::from_secs(20),
        scheduled,
        |s| *s == Some((JobState::Available, 1, true, true)),
    )
    .await;
    cluster.crash().await;
    cluster.start_again().await;
    let after = wait_until(
        "the database to answer after the crash",
        Duration::from_secs(30),
        scheduled,
        |s| s.is_some(),
    )
    .await;
    assert_eq!(
        after,
        Some((JobState::Available, 1, true, true)),
        "the retry, its error and its schedule survived the crash"
    );
    worker.sigterm();
    let _ = worker.wait_exit(Duration::from_secs(30)).await;
}

/// A webhook answered 2xx has been committed durably (§5.1): twenty webhooks answered at
/// once, then the server crashes, and every event and its ticket job is there when it comes
/// back. The cluster's WAL writer waits 10 s, so a commit that did not wait for its flush
/// (an asynchronous commit on the group commit's connections) would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_answered_before_a_server_crash_are_all_there_after_it() {
    let mut cluster = PrivateCluster::start_with("wal_writer_delay = 10s").await;
    let (url, pool) = migrated(&cluster).await;
    // The enqueuer serves the cluster's database; the fresh shared one only carries the app.
    let db = TestDb::new().await;
    let mut settings = test_settings(&db);
    settings.database = DatabaseSettings::new(Secret::new(url), 4);
    let app = spawn_enqueuer_connecting(db, settings).await;

    let replies = futures::future::join_all((0..20).map(|i| {
        let event = payment_completed(&format!("evt-crash-{i}"), &format!("pay-crash-{i}"));
        let app = &app;
        async move { app.post_event(&event).await }
    }))
    .await;
    let job_ids: Vec<i64> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 202, "{reply:?}");
            reply.job_id()
        })
        .collect();

    cluster.crash().await;
    cluster.start_again().await;
    let counts = wait_until(
        "the database to answer after the crash",
        Duration::from_secs(30),
        || async {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT (SELECT count(*) FROM webhook_events WHERE job_id = ANY($1)), \
                        (SELECT count(*) FROM jobs WHERE id = ANY($1))",
            )
            .bind(&job_ids)
            .fetch_one(&pool)
            .await
            .ok()
        },
        |c| c.is_some(),
    )
    .await;
    assert_eq!(
        counts,
        Some((20, 20)),
        "every answered webhook survived the crash"
    );
}
