//! The ticket handler: the `tickets` queue is a batch queue
//! ([`crate::engine::batch_worker`]), so the jobs one transaction claimed are issued together
//! in that same transaction ([`issue_many`]). A new ticket and a payment that already had its
//! ticket both finish the job; a payment that cannot become a ticket fails it for good with
//! the reason kept; trouble with the database retries it durably.

use sqlx::PgConnection;

use super::issue::issue_many;
use super::TicketJob;
use crate::engine::{BatchHandler, JobError, Outcome};

/// Issues the tickets of a claimed batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct TicketHandler;

impl BatchHandler for TicketHandler {
    type Args = TicketJob;

    async fn run(
        &self,
        conn: &mut PgConnection,
        jobs: &[TicketJob],
    ) -> Vec<Result<Outcome, JobError>> {
        issue_many(conn, jobs)
            .await
            .into_iter()
            .map(|issued| issued.map(|_| Outcome::Done).map_err(JobError::from))
            .collect()
    }

    /// A new ticket's transfer job.
    fn wakes(&self) -> &[&str] {
        &[crate::transfer::QUEUE]
    }
}
