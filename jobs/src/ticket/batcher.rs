//! The ticket micro-batcher: ticket jobs that run at the same time are issued together, one
//! transaction per batch ([`issue_many`]), on the process's [`crate::batch`] batcher.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::TicketError;
use super::issue::{issue_many, Issued};
use super::TicketJob;
use crate::batch::{self, BatchHandle, BatcherConfig};

/// Tickets per transaction at most.
pub const DEFAULT_TICKET_BATCH: usize = 100;
/// How long the first ticket of a batch waits for company.
pub const DEFAULT_TICKET_BATCH_DELAY: Duration = Duration::from_millis(2);
/// Batches being written at once.
pub const DEFAULT_TICKET_BATCHES_IN_FLIGHT: usize = 4;

/// The ticket batcher's sizes.
pub type TicketBatcherConfig = BatcherConfig;

pub const DEFAULT_TICKET_BATCHER: TicketBatcherConfig = BatcherConfig {
    batch: DEFAULT_TICKET_BATCH,
    delay: DEFAULT_TICKET_BATCH_DELAY,
    in_flight: DEFAULT_TICKET_BATCHES_IN_FLIGHT,
    // Tickets waiting to be batched before handlers have to wait.
    backlog: 2_000,
};

/// Where ticket handlers send their tickets. Cheap to clone.
#[derive(Clone)]
pub struct TicketBatchHandle {
    inner: BatchHandle<TicketJob, Result<Issued, TicketError>>,
}

impl TicketBatchHandle {
    /// Issues `ticket` with whatever other tickets arrive meanwhile, and returns this ticket's
    /// own outcome.
    pub async fn issue(&self, ticket: TicketJob) -> Result<Issued, TicketError> {
        self.inner
            .submit(ticket)
            .await
            .map_err(|_| TicketError::Stopped)?
    }
}

pub struct TicketBatcher;

impl TicketBatcher {
    /// Starts the batcher task on `pool`; cancelling `stop` ends it once the tickets already
    /// sent are written (later ones are refused with [`TicketError::Stopped`]).
    pub fn start(
        pool: PgPool,
        config: TicketBatcherConfig,
        stop: CancellationToken,
    ) -> (TicketBatchHandle, JoinHandle<()>) {
        let (inner, task) = batch::start("tickets", config, stop, move |tickets| {
            let pool = pool.clone();
            async move { issue_many(&pool, &tickets).await }
        });
        (TicketBatchHandle { inner }, task)
    }
}
