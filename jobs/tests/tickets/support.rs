use std::time::Duration;

use poda_jobs::db::Db;
use poda_jobs::engine::{
    batch_worker, enqueue_many_pooled, BatchSettings, Engine, EngineConfig, EngineHandle, NewJob,
};
use poda_jobs::testing::tickets::ticket_job_states;
use poda_jobs::testing::wait_until;
use poda_jobs::ticket::{self, TicketHandler, TicketJob};
use tokio_util::sync::CancellationToken;

/// An in-process tickets worker: its own engine (owner) and batch runners.
pub struct TicketWorker {
    stop: CancellationToken,
    running: batch_worker::BatchRunners,
    engine: EngineHandle,
}

/// `runners` transactions at once, each claiming up to `batch` ticket jobs.
pub fn batches(batch: usize, runners: usize) -> BatchSettings {
    BatchSettings {
        batch_size: batch,
        runners,
        ..ticket::batch_settings()
    }
}

/// One transaction at a time claiming up to `batch` jobs, so a test that enqueued its jobs
/// before the worker started knows how they are grouped.
pub fn batches_of(batch: usize) -> BatchSettings {
    batches(batch, 1)
}

impl TicketWorker {
    pub fn start(pool: &Db, settings: BatchSettings) -> TicketWorker {
        let engine = Engine::start(pool.clone(), EngineConfig::default());
        let stop = CancellationToken::new();
        let running = batch_worker::start(
            engine.engine(),
            pool.clone(),
            settings,
            TicketHandler,
            stop.clone(),
        );
        TicketWorker {
            stop,
            running,
            engine,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.running.join().await;
        self.engine.shutdown().await;
    }
}

/// Enqueues each ticket as its job (unique per payment).
pub async fn enqueue_tickets(pool: &Db, tickets: &[TicketJob]) {
    let jobs: Vec<NewJob> = tickets.iter().map(TicketJob::to_job).collect();
    enqueue_many_pooled(pool, &jobs).await.unwrap();
}

/// Waits until `n` ticket jobs have finished (completed or failed); returns
/// (completed, failed).
pub async fn wait_finished(pool: &Db, n: i64) -> (i64, i64) {
    let (completed, failed, _) = wait_until(
        &format!("{n} ticket jobs to finish"),
        Duration::from_secs(60),
        || ticket_job_states(pool),
        |(completed, failed, _)| completed + failed == n,
    )
    .await;
    (completed, failed)
}

/// The last error of the ticket job of `payment_id`.
pub async fn last_error_of(pool: &Db, payment_id: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT last_error FROM jobs WHERE queue = 'tickets' AND payload->>'payment_id' = $1",
    )
    .bind(payment_id)
    .fetch_one(pool)
    .await
    .unwrap()
}
