//! Batch queues: a batch is claimed, run and finished in one transaction.

use std::time::Duration;

use poda_jobs::db::Db;
use poda_jobs::engine::{
    batch_worker, enqueue_many_pooled, insert_new_jobs, BatchHandler, BatchSettings, Engine,
    EngineConfig, JobError, NewJob, Outcome, RetryPolicy,
};
use poda_jobs::testing::{wait_until, wakeups, TestDb};
use serde::Deserialize;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::support::{job, KIND, QUEUE};

#[derive(Deserialize)]
struct Item {
    n: i64,
}

/// Writes each job's `n` into `seen`; n ending in 7 fails
/// (retryable), n ending in 9 fails for good, and a negative n breaks the transaction.
struct Recorder;

impl BatchHandler for Recorder {
    type Args = Item;

    async fn run(&self, conn: &mut PgConnection, jobs: &[Item]) -> Vec<Result<Outcome, JobError>> {
        let mut results = Vec::new();
        for item in jobs {
            results.push(match item.n {
                n if n < 0 => {
                    // Not under a savepoint: the transaction is aborted.
                    let _ = sqlx::query("SELECT 1 / 0").execute(&mut *conn).await;
                    Ok(Outcome::Done)
                }
                n if n % 10 == 7 => Err(JobError::retryable("ends in seven")),
                n if n % 10 == 9 => Err(JobError::permanent("ends in nine")),
                n => sqlx::query("INSERT INTO seen (n) VALUES ($1)")
                    .bind(n)
                    .execute(&mut *conn)
                    .await
                    .map(|_| Outcome::Done)
                    .map_err(JobError::retryable),
            });
        }
        results
    }
}

/// The queue [`Forwarder`] enqueues into.
const DOWNSTREAM: &str = "engine_test_downstream";

/// Enqueues one job into [`DOWNSTREAM`] per job, without a NOTIFY, and names that queue to
/// be woken after the batch commits.
struct Forwarder;

impl BatchHandler for Forwarder {
    type Args = Item;

    async fn run(&self, conn: &mut PgConnection, jobs: &[Item]) -> Vec<Result<Outcome, JobError>> {
        let forwarded: Vec<NewJob> = jobs
            .iter()
            .map(|item| NewJob::new(DOWNSTREAM, KIND, serde_json::json!({ "n": item.n })))
            .collect();
        let written = insert_new_jobs(conn, &forwarded)
            .await
            .map_err(|error| error.to_string());
        jobs.iter()
            .map(|_| match &written {
                Ok(_) => Ok(Outcome::Done),
                Err(error) => Err(JobError::retryable(error.clone())),
            })
            .collect()
    }

    fn wakes(&self) -> &[&str] {
        &[DOWNSTREAM]
    }
}

async fn start(
    pool: &Db,
    batch_size: usize,
    runners: usize,
) -> (
    CancellationToken,
    batch_worker::BatchRunners,
    poda_jobs::engine::EngineHandle,
) {
    start_with(pool, batch_size, runners, Duration::ZERO).await
}

/// `start`, with runners that space their part-full claims `claim_interval` apart.
async fn start_with(
    pool: &Db,
    batch_size: usize,
    runners: usize,
    claim_interval: Duration,
) -> (
    CancellationToken,
    batch_worker::BatchRunners,
    poda_jobs::engine::EngineHandle,
) {
    sqlx::query("CREATE TABLE IF NOT EXISTS seen (n bigint PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();
    start_handler(pool, batch_size, runners, claim_interval, Recorder)
}

fn start_handler<H: BatchHandler>(
    pool: &Db,
    batch_size: usize,
    runners: usize,
    claim_interval: Duration,
    handler: H,
) -> (
    CancellationToken,
    batch_worker::BatchRunners,
    poda_jobs::engine::EngineHandle,
) {
    let engine = Engine::start(pool.clone(), EngineConfig::default());
    let stop = CancellationToken::new();
    let running = batch_worker::start(
        engine.engine(),
        pool.clone(),
        BatchSettings {
            queue: QUEUE.to_owned(),
            batch_size,
            runners,
            run_timeout: std::time::Duration::from_secs(60),
            claim_interval,
        },
        handler,
        stop.clone(),
    );
    (stop, running, engine)
}

fn slow_retry() -> RetryPolicy {
    RetryPolicy::new(5, Duration::from_secs(60), Duration::from_secs(60))
}

/// (state, attempt, last_error) of each job by its payload's n, in n order.
async fn jobs_by_n(pool: &Db) -> Vec<(i64, String, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT coalesce((payload->>'n')::bigint, -999), state::text, attempt, last_error \
         FROM jobs WHERE queue = $1 ORDER BY 1",
    )
    .bind(QUEUE)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_all_attempted(pool: &Db, n: i64) {
    wait_until(
        &format!("{n} jobs to have run once"),
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE queue = $1 AND attempt = 1",
            )
            .bind(QUEUE)
            .fetch_one(pool)
            .await
            .unwrap()
        },
        |done| *done == n,
    )
    .await;
}

#[tokio::test]
async fn a_batch_commits_its_work_together_with_each_jobs_own_outcome() {
    let db = TestDb::new().await;
    let mut jobs: Vec<NewJob> = (0..20).map(|n| job(n).with_retry(slow_retry())).collect();
    jobs.push(NewJob::new(
        QUEUE,
        KIND,
        serde_json::json!({ "not_n": true }),
    ));
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let (stop, running, engine) = start(&db.pool, 100, 1).await;
    wait_all_attempted(&db.pool, 21).await;
    stop.cancel();
    running.join().await;
    engine.shutdown().await;

    let rows = jobs_by_n(&db.pool).await;
    let undecodable = &rows[0];
    assert_eq!((undecodable.1.as_str(), undecodable.2), ("failed", 1));
    assert!(undecodable
        .3
        .as_deref()
        .unwrap()
        .contains("does not decode"));
    for (n, state, attempt, error) in &rows[1..] {
        let expected = match n % 10 {
            7 => "available",
            9 => "failed",
            _ => "completed",
        };
        assert_eq!((state.as_str(), *attempt), (expected, 1), "job {n}");
        match n % 10 {
            7 => assert!(error.as_deref().unwrap().contains("ends in seven")),
            9 => assert!(error.as_deref().unwrap().contains("ends in nine")),
            _ => assert_eq!(error, &None),
        }
    }
    // The retries wait out their backoff.
    let retry_later: bool = sqlx::query_scalar(
        "SELECT bool_and(run_at > now() + interval '30 seconds') FROM jobs \
         WHERE queue = $1 AND state = 'available'",
    )
    .bind(QUEUE)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(retry_later);
    // The work and the outcomes were written by one transaction.
    let seen: Vec<i64> = sqlx::query_scalar("SELECT n FROM seen ORDER BY n")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16, 18]
    );
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT x) FROM ( \
             SELECT xmin::text AS x FROM seen \
             UNION ALL SELECT xmin::text FROM jobs WHERE queue = $1) w",
    )
    .bind(QUEUE)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(transactions, 1);
}

#[tokio::test]
async fn under_a_stream_of_jobs_a_runner_gathers_them_into_one_batch_per_claim_interval() {
    let db = TestDb::new().await;
    let (stop, running, engine) = start_with(&db.pool, 100, 1, Duration::from_secs(2)).await;
    let seen = |n: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM seen")
                .fetch_one(&pool)
                .await
                .unwrap()
                >= n
        }
    };
    // After an idle wait the first job is claimed at once, by a runner that had nothing.
    enqueue_many_pooled(&db.pool, &[job(1)]).await.unwrap();
    wait_until(
        "job 1 to run",
        Duration::from_secs(10),
        || seen(1),
        |done| *done,
    )
    .await;
    // Three jobs, each its own statement and wake-up, within the interval since that claim.
    for n in 2..=4 {
        enqueue_many_pooled(&db.pool, &[job(n)]).await.unwrap();
    }
    wait_until(
        "jobs 2-4 to run",
        Duration::from_secs(10),
        || seen(4),
        |done| *done,
    )
    .await;
    stop.cancel();
    running.join().await;
    engine.shutdown().await;

    let batches: Vec<(Vec<i64>,)> = sqlx::query_as(
        "SELECT array_agg(n ORDER BY n) FROM seen GROUP BY xmin::text ORDER BY min(n)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let batches: Vec<Vec<i64>> = batches.into_iter().map(|(b,)| b).collect();
    assert_eq!(batches, vec![vec![1], vec![2, 3, 4]]);
}

#[tokio::test]
async fn a_batch_whose_transaction_fails_writes_nothing_and_every_job_spends_an_attempt() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = [1, 2, -1, 3]
        .into_iter()
        .map(|n| job(n).with_retry(slow_retry()))
        .collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let (stop, running, engine) = start(&db.pool, 100, 1).await;
    wait_all_attempted(&db.pool, 4).await;
    stop.cancel();
    running.join().await;
    engine.shutdown().await;

    for (n, state, attempt, error) in jobs_by_n(&db.pool).await {
        assert_eq!((state.as_str(), attempt), ("available", 1), "job {n}");
        let error = error.unwrap();
        assert!(
            error.contains("the batch's transaction failed"),
            "job {n}: {error}"
        );
    }
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM seen")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(seen, 0, "nothing of the failed batch was written");
}

#[tokio::test]
async fn jobs_that_become_runnable_behind_the_claim_cursor_still_run() {
    let db = TestDb::new().await;
    let backlog: Vec<NewJob> = (0..3_000).map(job).collect();
    enqueue_many_pooled(&db.pool, &backlog).await.unwrap();
    let (stop, running, engine) = start(&db.pool, 20, 2).await;
    // Once the runners are well into the backlog, jobs due an hour ago arrive: they sort
    // before everything claimed so far.
    wait_until(
        "the runners to be into the backlog",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM seen")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |seen| *seen >= 500,
    )
    .await;
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let late: Vec<NewJob> = (10_000..10_020)
        .map(|n| job(n).with_run_at(an_hour_ago))
        .collect();
    enqueue_many_pooled(&db.pool, &late).await.unwrap();

    wait_until(
        "every job to have run",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE queue = $1 AND attempt >= 1",
            )
            .bind(QUEUE)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
        |ran| *ran == 3_020,
    )
    .await;
    stop.cancel();
    running.join().await;
    engine.shutdown().await;
    // The late jobs ran (Recorder writes those not ending in 7 or 9).
    let late_seen: i64 = sqlx::query_scalar("SELECT count(*) FROM seen WHERE n >= 10000")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(late_seen, 16);
}

#[tokio::test]
async fn a_payload_that_does_not_decode_fails_for_good_even_when_its_batch_fails() {
    let db = TestDb::new().await;
    let jobs = vec![
        job(1).with_retry(slow_retry()),
        job(-1).with_retry(slow_retry()),
        NewJob::new(QUEUE, KIND, serde_json::json!({ "not_n": true })).with_retry(slow_retry()),
    ];
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let (stop, running, engine) = start(&db.pool, 100, 1).await;
    wait_all_attempted(&db.pool, 3).await;
    stop.cancel();
    running.join().await;
    engine.shutdown().await;

    let rows = jobs_by_n(&db.pool).await;
    let states: Vec<(i64, &str)> = rows.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(
        states,
        vec![(-999, "failed"), (-1, "available"), (1, "available")]
    );
    assert!(rows[0].3.as_deref().unwrap().contains("does not decode"));
}

/// A batch's jobs commit durably without a NOTIFY (which would hold the server's notify lock
/// through the WAL flush); the queues its handler names are woken after the commit, by the
/// engine's wake-up session.
#[tokio::test]
async fn the_queues_a_batch_enqueued_into_are_woken_after_its_commit_by_another_session() {
    let db = TestDb::new().await;
    let mut listener = wakeups::listen(&db.pool).await;
    enqueue_many_pooled(&db.pool, &[job(1), job(2)])
        .await
        .unwrap();

    let (stop, running, engine) = start_handler(&db.pool, 100, 1, Duration::ZERO, Forwarder);
    let sender = wakeups::next_wakeup_of(&mut listener, &db.pool, DOWNSTREAM).await;
    // The jobs it announces are there to be claimed.
    let forwarded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1")
        .bind(DOWNSTREAM)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    stop.cancel();
    running.join().await;
    engine.shutdown().await;

    assert!(
        sender.starts_with("-- wake:"),
        "the wake-up came from the session that ran: {sender}"
    );
    assert_eq!(forwarded, 2);
}
