//! Operator actions on commission transfers.

use crate::audit::{self, action, subject, Actor, Event};
use crate::db::Db;

use super::monime::IdempotencyKey;
use super::{TransferJob, QUEUE};
use crate::engine::keyed::{lock_job_by_key, rerun_finished_job_by_key};
use crate::engine::{enqueue_one, JobId, JobState};

#[derive(Debug, thiserror::Error)]
pub enum TransferAdminError {
    #[error("ticket {ticket_id} has no commission transfer")]
    NotFound { ticket_id: i64 },
    #[error("the transfer of ticket {ticket_id} is {status}: nothing to retry")]
    NotFailed { ticket_id: i64, status: String },
    /// The job has not ended: a run may still write its outcome, or it will run the transfer.
    #[error(
        "the transfer of ticket {ticket_id} is {status} and its job is {job_state}: the job has \
         not ended, so nothing was changed; retry once it has ended"
    )]
    AtWork {
        ticket_id: i64,
        status: String,
        job_state: String,
    },
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("enqueueing the transfer job failed")]
    Enqueue(#[from] crate::engine::EngineError),
}

/// What an operator retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetriedTransfer {
    pub ticket_id: i64,
    pub job_id: JobId,
    pub generation: i32,
    pub idempotency_key: String,
    /// True when Monime had failed the transfer: the retry makes a new transfer under a new
    /// key. False when Monime's outcome is unknown or it never accepted the request: the same
    /// key is reused, so Monime answers with the original transfer if it has one.
    pub new_key: bool,
}

/// Puts a failed transfer back to work, in one transaction: the row becomes pending again
/// (under a new generation and key only if Monime marked the transfer failed) and its job runs
/// again now with fresh attempts.
///
/// A row left unfinished (pending or processing) by a job that ended anyway — its last
/// attempt met a database error, or it was cancelled or pruned — is retried the same way,
/// under the same key. An unfinished row whose job is still waiting or running is refused.
///
/// A failed row whose job is running is refused too, and nothing changes. A run marks the row
/// failed before its outcome reaches the job, so the job is still running in between; a retry
/// then would make the row pending while the run's outcome, landing after it, ends the job
/// failed: a pending transfer that no job would ever run. Reviving the running job here instead
/// would take it from a run that is still calling Monime, and two runs of one transfer at once
/// is what the row's state machine is there to avoid. A running job always ends (its outcome,
/// or the rescuer when its lease runs out), so the refusal only asks to wait.
///
/// Every retry that goes through leaves a job that will run the transfer. The job row is
/// locked while it is looked at, so its state cannot change before the commit, and an earlier
/// run's outcome cannot undo it afterwards (an outcome only changes a job still running under
/// the claim it was run under): a failed, cancelled or completed job is made available with
/// fresh attempts; an available one (a rescued run with attempts left) is left to run, its
/// attempt untouched so the next claim gets a new one; a pruned one is enqueued again.
///
/// The change and its `transfer.retried` event by `actor` (with the generation and key the
/// transfer runs under now) commit together.
pub async fn retry_failed_transfer(
    pool: &Db,
    ticket_id: i64,
    actor: &Actor,
) -> Result<RetriedTransfer, TransferAdminError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        "SELECT ct.status::text AS \"status!\", ct.generation, ct.monime_status, t.company_id \
         FROM commission_transfers ct JOIN tickets t ON t.id = ct.ticket_id \
         WHERE ct.ticket_id = $1 FOR UPDATE OF ct",
        ticket_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(TransferAdminError::NotFound { ticket_id })?;
    let (status, generation, monime_status) =
        (row.status, row.generation, row.monime_status.clone());
    if status == "completed" {
        return Err(TransferAdminError::NotFailed { ticket_id, status });
    }
    let job = TransferJob { ticket_id };
    let job_key = job.unique_key();
    let job_state = lock_job_by_key(&mut tx, QUEUE, &job_key)
        .await?
        .map(|job| job.state);
    let at_work = match job_state {
        Some(JobState::Running) => true,
        // An unfinished row's waiting job will run it; a failed row's will, once pending.
        Some(JobState::Available) => status != "failed",
        _ => false,
    };
    if let (true, Some(job_state)) = (at_work, job_state) {
        return Err(TransferAdminError::AtWork {
            ticket_id,
            status,
            job_state: job_state.to_string(),
        });
    }
    let new_key = monime_status.as_deref() == Some("failed");
    let generation = if new_key { generation + 1 } else { generation };
    let key = IdempotencyKey::for_ticket(ticket_id, generation);
    sqlx::query!(
        "UPDATE commission_transfers SET status = 'pending', generation = $2, idempotency_key = $3, \
         monime_transfer_id = CASE WHEN $4 THEN NULL ELSE monime_transfer_id END, \
         monime_status = CASE WHEN $4 THEN NULL ELSE monime_status END, \
         failure_code = NULL, polls = 0, updated_at = now(), status_changed_at = now() \
         WHERE ticket_id = $1",
        ticket_id,
        generation,
        key.as_str(),
        new_key,
    )
    .execute(&mut *tx)
    .await?;
    let revived = rerun_finished_job_by_key(&mut tx, QUEUE, &job_key).await?;
    let job_id = match revived {
        Some(id) => id,
        // Pruned, or still waiting: enqueue returns the existing job or makes a new one.
        None => enqueue_one(&mut tx, &job.to_job(&row.company_id)).await?.id,
    };
    let data = serde_json::json!({
        "generation": generation,
        "idempotency_key": key.as_str(),
        "new_key": new_key,
        "was": status,
        "job_id": job_id,
    });
    let event = Event::new(action::TRANSFER_RETRIED, subject::TRANSFER, ticket_id, data);
    audit::record(&mut tx, actor, &event).await?;
    pool.commit(tx).await?;
    tracing::info!(ticket_id, generation, new_key, job.id = %job_id, "transfer retried by an operator");
    Ok(RetriedTransfer {
        ticket_id,
        job_id,
        generation,
        idempotency_key: key.as_str().to_owned(),
        new_key,
    })
}
