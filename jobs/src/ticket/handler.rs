//! The ticket handler: hands its job's ticket to the process's batcher and waits for its own
//! outcome. A new ticket and a payment that already had its ticket both finish the job; a
//! payment that cannot become a ticket fails it for good with the reason kept; trouble with
//! the database retries it durably.

use super::batcher::TicketBatchHandle;
use super::TicketJob;
use crate::engine::{JobError, Outcome};

/// Runs one ticket job.
pub async fn handle(batcher: &TicketBatchHandle, job: TicketJob) -> Result<Outcome, JobError> {
    batcher.issue(job).await?;
    Ok(Outcome::Done)
}
