use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use apalis::prelude::{Data, Monitor, WorkerBuilder};
use apalis_core::backend::Backend;
use apalis_core::worker::context::WorkerContext;
use poda_jobs::engine::{BackendSettings, Engine, EngineConfig, JobError, JobState, PgBackend};
use poda_jobs::probe::{ProbeJob, QUEUE as PROBE_QUEUE};
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::{count_in_state, enqueue_probes, fast_retry, ProbeWorker};

#[tokio::test]
async fn worker_runs_each_job_once_and_completes_it() {
    let db = TestDb::new().await;
    let probes: Vec<_> = (0..300)
        .map(|n| ProbeJob {
            record: true,
            ..ProbeJob::new(n)
        })
        .collect();
    enqueue_probes(&db.pool, &probes, fast_retry(3)).await;
    let worker = ProbeWorker::start(&db.pool, 8);
    wait_until(
        "all jobs completed",
        Duration::from_secs(30),
        || count_in_state(&db.pool, JobState::Completed),
        |n| *n == 300,
    )
    .await;
    worker.stop().await;
    let (runs, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT n) FROM probe_runs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((runs, distinct), (300, 300));
}

#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

async fn measured(_job: ProbeJob, gauge: Data<Gauge>) -> Result<(), JobError> {
    let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
    gauge.max.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    gauge.now.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn never_more_handlers_run_at_once_than_the_concurrency() {
    let db = TestDb::new().await;
    let probes: Vec<_> = (0..60).map(ProbeJob::new).collect();
    enqueue_probes(&db.pool, &probes, fast_retry(3)).await;
    let handle = Engine::start(db.pool.clone(), EngineConfig::default());
    let engine = handle.engine().clone();
    let gauge = Gauge::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let (signal, worker_gauge) = (stop.clone(), gauge.clone());
    let running = tokio::spawn(async move {
        let settings = BackendSettings {
            queue: PROBE_QUEUE.to_owned(),
            concurrency: 4,
            batch_size: 100,
            prefetch: 0,
            run_timeout: poda_jobs::engine::DEFAULT_RUN_TIMEOUT,
            per_key_limit: 0,
        };
        Monitor::new()
            .register(move |_| {
                WorkerBuilder::new("gauge")
                    .backend(PgBackend::<ProbeJob>::new(&engine, settings.clone()))
                    .data(worker_gauge.clone())
                    .build(measured)
            })
            .run_with_signal(async move {
                signal.cancelled().await;
                Ok(())
            })
            .await
            .unwrap();
    });
    wait_until(
        "all jobs completed",
        Duration::from_secs(30),
        || count_in_state(&db.pool, JobState::Completed),
        |n| *n == 60,
    )
    .await;
    stop.cancel();
    running.await.unwrap();
    handle.shutdown().await;
    assert_eq!(
        gauge.max.load(Ordering::SeqCst),
        4,
        "slots are filled, and never overfilled"
    );
}

#[tokio::test]
async fn closing_a_backend_releases_claimed_jobs_that_never_started_without_spending_attempts() {
    let db = TestDb::new().await;
    let probes: Vec<_> = (0..10).map(ProbeJob::new).collect();
    enqueue_probes(&db.pool, &probes, fast_retry(3)).await;
    let handle = Engine::start(db.pool.clone(), EngineConfig::default());
    let mut backend = PgBackend::<ProbeJob>::new(
        handle.engine(),
        BackendSettings {
            queue: PROBE_QUEUE.to_owned(),
            concurrency: 4,
            batch_size: 100,
            prefetch: 0,
            run_timeout: poda_jobs::engine::DEFAULT_RUN_TIMEOUT,
            per_key_limit: 0,
        },
    );
    let worker = WorkerContext::new("release-test");
    // Take one job, as a worker would, leaving the rest of the claim (3) unstarted.
    let first = std::future::poll_fn(|cx| match backend.poll_next(cx, &worker) {
        Poll::Ready(Some(Ok(task))) => Poll::Ready(task),
        Poll::Ready(other) => panic!("unexpected {:?}", other.map(|r| r.map(|_| ()))),
        Poll::Pending => Poll::Pending,
    })
    .await;
    assert_eq!(count_in_state(&db.pool, JobState::Running).await, 4);
    std::future::poll_fn(|cx| backend.poll_close(cx, &worker))
        .await
        .unwrap();
    // The three that never started are back, with their attempt given back.
    let released: Vec<(i32,)> =
        sqlx::query_as("SELECT attempt FROM jobs WHERE state = 'available' AND run_at <= now()")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(released.len(), 6 + 3);
    assert!(released.iter().all(|(a,)| *a == 0));
    // The started one is still running under its lease.
    let (state, attempt): (JobState, i32) =
        sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1")
            .bind(first.task_id().unwrap().as_int().unwrap() as i64)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((state, attempt), (JobState::Running, 1));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_payload_that_does_not_decode_fails_its_job_and_not_the_worker() {
    let db = TestDb::new().await;
    let bad = poda_jobs::NewJob::new(
        PROBE_QUEUE,
        "probe",
        serde_json::json!({"n": "not a number"}),
    );
    let bad_id = poda_jobs::engine::enqueue_one_pooled(&db.pool, &bad)
        .await
        .unwrap()
        .id;
    enqueue_probes(&db.pool, &[ProbeJob::new(1)], fast_retry(3)).await;
    let worker = ProbeWorker::start(&db.pool, 2);
    wait_until(
        "the good job completes",
        Duration::from_secs(20),
        || count_in_state(&db.pool, JobState::Completed),
        |n| *n == 1,
    )
    .await;
    crate::support::wait_for_state(&db.pool, bad_id, JobState::Failed).await;
    worker.stop().await;
    let error: String = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(bad_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.contains("does not decode"), "{error}");
}

#[tokio::test]
async fn apalis_task_sink_pushes_durable_jobs_and_honours_idempotency_keys() {
    use apalis_core::backend::TaskSink;
    use apalis_core::task::builder::TaskBuilder;

    let db = TestDb::new().await;
    let handle = Engine::start(db.pool.clone(), EngineConfig::default());
    let mut backend = PgBackend::<ProbeJob>::new(
        handle.engine(),
        BackendSettings {
            queue: PROBE_QUEUE.to_owned(),
            concurrency: 1,
            batch_size: 1,
            prefetch: 0,
            run_timeout: poda_jobs::engine::DEFAULT_RUN_TIMEOUT,
            per_key_limit: 0,
        },
    );
    backend.push(ProbeJob::new(1)).await.unwrap();
    backend
        .push_bulk(vec![ProbeJob::new(2), ProbeJob::new(3)])
        .await
        .unwrap();
    for _ in 0..2 {
        let task = TaskBuilder::new(ProbeJob::new(4))
            .idempotency_key("only-once")
            .build();
        backend.push_task(task).await.unwrap();
    }
    let ns: Vec<i64> =
        sqlx::query_scalar("SELECT (payload->>'n')::bigint FROM jobs WHERE queue = $1 ORDER BY id")
            .bind(PROBE_QUEUE)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ns, vec![1, 2, 3, 4]);
    handle.shutdown().await;
}
