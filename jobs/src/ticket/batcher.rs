//! The ticket micro-batcher: ticket jobs that run at the same time are issued together.
//!
//! Handlers hand their ticket to a [`TicketBatchHandle`] (a bounded channel) and wait on a
//! oneshot for their own outcome. One task per process gathers requests into a batch and
//! flushes it when it holds [`TicketBatcherConfig::batch`] tickets or
//! [`TicketBatcherConfig::delay`] after its first one; each batch is one transaction
//! ([`issue_many`]). Up to [`TicketBatcherConfig::in_flight`] batches are written at once, so
//! gathering the next batch overlaps with committing the last. A full channel makes handlers
//! wait instead of growing memory.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::TicketError;
use super::issue::{issue_many, Issued};
use super::TicketJob;
use crate::engine::JobId;

/// Tickets per transaction at most.
pub const DEFAULT_TICKET_BATCH: usize = 100;
/// How long the first ticket of a batch waits for company.
pub const DEFAULT_TICKET_BATCH_DELAY: Duration = Duration::from_millis(2);
/// Batches being written at once.
pub const DEFAULT_TICKET_BATCHES_IN_FLIGHT: usize = 4;
/// Tickets waiting to be batched before handlers have to wait.
pub const DEFAULT_TICKET_BACKLOG: usize = 2_000;

#[derive(Debug, Clone, Copy)]
pub struct TicketBatcherConfig {
    pub batch: usize,
    pub delay: Duration,
    pub in_flight: usize,
    pub backlog: usize,
}

impl Default for TicketBatcherConfig {
    fn default() -> Self {
        TicketBatcherConfig {
            batch: DEFAULT_TICKET_BATCH,
            delay: DEFAULT_TICKET_BATCH_DELAY,
            in_flight: DEFAULT_TICKET_BATCHES_IN_FLIGHT,
            backlog: DEFAULT_TICKET_BACKLOG,
        }
    }
}

struct Request {
    job_id: JobId,
    ticket: TicketJob,
    reply: oneshot::Sender<Result<Issued, TicketError>>,
}

/// Where ticket handlers send their tickets. Cheap to clone.
#[derive(Clone)]
pub struct TicketBatchHandle {
    tx: mpsc::Sender<Request>,
}

impl TicketBatchHandle {
    /// Issues the ticket of job `job_id` with whatever other tickets arrive meanwhile, and
    /// returns this ticket's own outcome.
    pub async fn issue(&self, job_id: JobId, ticket: TicketJob) -> Result<Issued, TicketError> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Request {
                job_id,
                ticket,
                reply,
            })
            .await
            .map_err(|_| TicketError::Stopped)?;
        outcome.await.map_err(|_| TicketError::Stopped)?
    }
}

/// The task that gathers and writes batches. It ends when every handle is dropped or its stop
/// token is cancelled, after writing what it holds.
pub struct TicketBatcher {
    rx: mpsc::Receiver<Request>,
    pool: PgPool,
    config: TicketBatcherConfig,
}

impl TicketBatcher {
    pub fn new(pool: PgPool, config: TicketBatcherConfig) -> (Self, TicketBatchHandle) {
        let config = TicketBatcherConfig {
            batch: config.batch.max(1),
            in_flight: config.in_flight.max(1),
            backlog: config.backlog.max(1),
            ..config
        };
        let (tx, rx) = mpsc::channel(config.backlog);
        (TicketBatcher { rx, pool, config }, TicketBatchHandle { tx })
    }

    /// Starts the batcher task on `pool`; cancelling `stop` ends it once the tickets already
    /// sent are written (later ones are refused with [`TicketError::Stopped`]).
    pub fn start(
        pool: PgPool,
        config: TicketBatcherConfig,
        stop: CancellationToken,
    ) -> (TicketBatchHandle, JoinHandle<()>) {
        let (batcher, handle) = TicketBatcher::new(pool, config);
        (handle, tokio::spawn(batcher.run(stop)))
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let writers = Arc::new(Semaphore::new(self.config.in_flight));
        loop {
            // Wait for the first ticket of a batch, then gather until full or the delay ends.
            let first = tokio::select! {
                biased;
                request = self.rx.recv() => request,
                _ = stop.cancelled() => {
                    // Refuse new tickets; what is queued is still written.
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = Vec::with_capacity(self.config.batch);
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.config.delay;
            while batch.len() < self.config.batch {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(request)) => batch.push(request),
                    Ok(None) | Err(_) => break,
                }
            }
            // While every writer is busy, tickets keep queueing in the channel and join the
            // next batch once one frees up.
            let Ok(permit) = writers.clone().acquire_owned().await else {
                break;
            };
            while batch.len() < self.config.batch {
                match self.rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let pool = self.pool.clone();
            tokio::spawn(async move {
                write_batch(&pool, batch).await;
                drop(permit);
            });
        }
        // Wait for the batches still being written.
        let _ = writers.acquire_many(self.config.in_flight as u32).await;
    }
}

async fn write_batch(pool: &PgPool, batch: Vec<Request>) {
    let mut tickets = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let first_job = batch.first().map(|r| r.job_id);
    for request in batch {
        tickets.push(request.ticket);
        replies.push(request.reply);
    }
    let outcomes = issue_many(pool, &tickets).await;
    metrics::histogram!("poda_ticket_batch_size").record(tickets.len() as f64);
    tracing::trace!(first_job = ?first_job, tickets = tickets.len(), "ticket batch written");
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A handler that stopped waiting (shutdown past its grace) has nobody to tell; its
        // job runs again and finds its ticket.
        let _ = reply.send(outcome);
    }
}
