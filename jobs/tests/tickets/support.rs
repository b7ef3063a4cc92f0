use std::time::Duration;

use apalis::prelude::{Data, Monitor, WorkerBuilder};
use poda_jobs::engine::{
    enqueue_many_pooled, BackendSettings, Engine, EngineConfig, EngineHandle, JobError, NewJob,
    Outcome,
};
use poda_jobs::testing::tickets::ticket_job_states;
use poda_jobs::testing::wait_until;
use poda_jobs::ticket::{self, TicketBatchHandle, TicketBatcher, TicketBatcherConfig, TicketJob};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// An in-process tickets worker: its own engine (owner), apalis worker and batcher.
pub struct TicketWorker {
    stop: CancellationToken,
    running: tokio::task::JoinHandle<EngineHandle>,
}

/// A batcher that flushes only when `batch` tickets are in (or after a long delay), so a
/// test knows how its jobs are grouped.
pub fn batches_of(batch: usize) -> TicketBatcherConfig {
    TicketBatcherConfig {
        batch,
        delay: Duration::from_secs(3),
        ..ticket::batcher::DEFAULT_TICKET_BATCHER
    }
}

impl TicketWorker {
    pub fn start(pool: &PgPool, concurrency: usize, batcher: TicketBatcherConfig) -> TicketWorker {
        let handle = Engine::start(pool.clone(), EngineConfig::default());
        let engine = handle.engine().clone();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let pool = pool.clone();
        let running = tokio::spawn(async move {
            let batcher_stop = CancellationToken::new();
            let (batch_handle, writing) =
                TicketBatcher::start(pool.clone(), batcher, batcher_stop.clone());
            let settings = BackendSettings {
                queue: ticket::QUEUE.to_owned(),
                concurrency,
                batch_size: concurrency.min(100),
                prefetch: 0,
            };
            let worker_handle = batch_handle.clone();
            let monitor = Monitor::new().register(move |_| {
                WorkerBuilder::new(format!("tickets-test-{}", engine.owner()))
                    .backend(engine.backend::<TicketJob>(settings.clone()))
                    .data(worker_handle.clone())
                    .build(run_ticket)
            });
            monitor
                .run_with_signal(async move {
                    signal.cancelled().await;
                    Ok(())
                })
                .await
                .unwrap();
            drop(batch_handle);
            batcher_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), writing).await;
            handle
        });
        TicketWorker { stop, running }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let handle = self.running.await.unwrap();
        handle.shutdown().await;
    }
}

async fn run_ticket(job: TicketJob, batcher: Data<TicketBatchHandle>) -> Result<Outcome, JobError> {
    ticket::handler::handle(&batcher, job).await
}

/// Enqueues each ticket as its job (unique per payment).
pub async fn enqueue_tickets(pool: &PgPool, tickets: &[TicketJob]) {
    let jobs: Vec<NewJob> = tickets.iter().map(TicketJob::to_job).collect();
    enqueue_many_pooled(pool, &jobs).await.unwrap();
}

/// Waits until `n` ticket jobs have finished (completed or failed); returns
/// (completed, failed).
pub async fn wait_finished(pool: &PgPool, n: i64) -> (i64, i64) {
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
pub async fn last_error_of(pool: &PgPool, payment_id: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT last_error FROM jobs WHERE queue = 'tickets' AND payload->>'payment_id' = $1",
    )
    .bind(payment_id)
    .fetch_one(pool)
    .await
    .unwrap()
}
