use std::time::Duration;

use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, JobId, JobState, NewJob, RetryPolicy};
use poda_jobs::probe::ProbeJob;

pub const QUEUE: &str = "engine_test";
pub const KIND: &str = "test";
pub const LEASE: Duration = Duration::from_secs(30);

pub fn job(n: i64) -> NewJob {
    NewJob::new(QUEUE, KIND, serde_json::json!({ "n": n }))
}

/// A rescuer for tests that move the clock past leases. Its grace after a server start is
/// zero: with the default (a lease), these tests would depend on how long the server has
/// been up. The grace itself is tested against a private cluster (`faults`, `outage`).
pub fn rescuer(pool: &Db) -> poda_jobs::engine::maintenance::Rescuer {
    poda_jobs::engine::maintenance::Rescuer::new(
        poda_jobs::engine::RescuerConfig {
            grace: Duration::ZERO,
            ..Default::default()
        },
        pool.clone(),
    )
}

pub fn fast_retry(max_attempts: i32) -> RetryPolicy {
    RetryPolicy::new(
        max_attempts,
        Duration::from_millis(10),
        Duration::from_millis(10),
    )
}

pub async fn enqueue_probes(pool: &Db, probes: &[ProbeJob], retry: RetryPolicy) -> Vec<JobId> {
    let jobs: Vec<NewJob> = probes.iter().map(|p| p.to_job(retry)).collect();
    enqueue_many_pooled(pool, &jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

pub async fn state_of(pool: &Db, id: JobId) -> (JobState, i32) {
    sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn count_in_state(pool: &Db, state: JobState) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

use apalis::prelude::{Data, Monitor, WorkerBuilder};
use poda_jobs::engine::{
    BackendSettings, Engine, EngineConfig, EngineHandle, JobError, JobMeta, Outcome, PgBackend,
};
use tokio_util::sync::CancellationToken;

/// An in-process probe worker: the engine, one apalis worker on the probe queue, and the
/// token that stops it.
pub struct ProbeWorker {
    pub stop: CancellationToken,
    running: tokio::task::JoinHandle<EngineHandle>,
}

impl ProbeWorker {
    pub fn start(pool: &Db, concurrency: usize) -> ProbeWorker {
        Self::start_with(pool, concurrency, EngineConfig::default())
    }

    pub fn start_with(pool: &Db, concurrency: usize, config: EngineConfig) -> ProbeWorker {
        Self::start_bounded(
            pool,
            concurrency,
            config,
            poda_jobs::engine::DEFAULT_RUN_TIMEOUT,
        )
    }

    /// A worker whose runs are stopped after `run_timeout`.
    pub fn start_bounded(
        pool: &Db,
        concurrency: usize,
        config: EngineConfig,
        run_timeout: Duration,
    ) -> ProbeWorker {
        let handle = Engine::start(pool.clone(), config);
        let engine = handle.engine().clone();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let pool = pool.clone();
        let running = tokio::spawn(async move {
            let settings = BackendSettings {
                queue: poda_jobs::probe::QUEUE.to_owned(),
                concurrency,
                batch_size: 100,
                prefetch: 0,
                run_timeout,
                per_key_limit: 0,
            };
            let monitor = Monitor::new().register(move |_| {
                WorkerBuilder::new("probe-test")
                    .backend(PgBackend::<ProbeJob>::new(&engine, settings.clone()))
                    .data(pool.clone())
                    .build(run_probe)
            });
            monitor
                .run_with_signal(async move {
                    signal.cancelled().await;
                    Ok(())
                })
                .await
                .unwrap();
            handle
        });
        ProbeWorker { stop, running }
    }

    /// Stops claiming, lets running jobs finish, and stops the engine.
    pub async fn stop(self) {
        self.stop.cancel();
        let handle = self.running.await.unwrap();
        handle.shutdown().await;
    }
}

async fn run_probe(job: ProbeJob, meta: JobMeta, pool: Data<Db>) -> Result<Outcome, JobError> {
    poda_jobs::probe::handle(&pool, &meta, job).await
}

pub async fn wait_for_state(pool: &Db, id: JobId, state: JobState) {
    poda_jobs::testing::wait_until(
        &format!("job {id} to be {state}"),
        Duration::from_secs(20),
        || state_of(pool, id),
        |(s, _)| *s == state,
    )
    .await;
}

/// Waits until job `id` is in `state` at `attempt`.
pub async fn wait_for_attempt(pool: &Db, id: JobId, state: JobState, attempt: i32) {
    poda_jobs::testing::wait_until(
        &format!("job {id} to be {state} at attempt {attempt}"),
        Duration::from_secs(20),
        || state_of(pool, id),
        |s| *s == (state, attempt),
    )
    .await;
}
