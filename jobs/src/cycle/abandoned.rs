//! Cycles whose fan-out can no longer run. An `Initializing` cycle whose job has ended
//! (failed, cancelled, or even completed) or is gone (pruned) is Failed, whatever its row
//! still says.
//!
//! The handler marks its cycle Failed itself when the fan-out fails for good, but that update
//! and the job's terminal outcome are two writes in two transactions: the outcome is the
//! engine's, written after the handler has returned. One can happen without the other. The
//! handler's update fails (the database went away and came back in time for the outcome), the
//! process dies before it and the rescuer fails the job whose last lease ran out, or an
//! operator cancels the job. Nothing would then ever settle the cycle, and it would hold its
//! claim (one live cycle per claim) forever.
//!
//! So the job row decides whether a fan-out can still run, and whoever needs the cycle's
//! status first repairs a cycle that is `Initializing` without a live job: creating a cycle
//! for its claim, its progress (the admin API and `worker cycle`). [`fail_if_abandoned`]
//! marks it Failed with its job's last error. Why that holds whatever dies when:
//!
//! - It needs no second write from the process that ran the job: a reader does it, from what
//!   is committed, whenever it looks; it is idempotent, and a repair that dies with its
//!   transaction is done again by the next reader.
//! - It decides and writes in one transaction that holds the job row (`FOR NO KEY UPDATE`),
//!   so an operator retry of the job cannot change it in between. A retry committed after it
//!   finds the cycle Failed, and the fan-out leaves a settled cycle alone.
//! - A live job (available or running) is never overruled: it settles the cycle itself, or
//!   ends, and then the next reader repairs the cycle.
//! - A run still going after its job ended (a stalled worker whose lease was taken) cannot
//!   undo it: every chunk and the activation lock the cycle row and only act on an
//!   `Initializing` cycle, and the repair only changes an `Initializing` one.

use sqlx::PgConnection;

use crate::audit::Actor;

use crate::engine::keyed::lock_job_by_key;
use crate::engine::JobState;

use super::{CycleId, CycleJob, QUEUE};

/// Marks cycle `id` Failed if it is `Initializing` and its fan-out job can no longer run;
/// returns the reason it wrote, if it did; its `cycle.failed` event names the actor `system`
/// (a repair, whoever reads). Run it inside a transaction: the job row stays locked until
/// that commits.
pub async fn fail_if_abandoned(
    conn: &mut PgConnection,
    id: CycleId,
) -> Result<Option<String>, sqlx::Error> {
    let key = CycleJob { cycle_id: id }.unique_key();
    let job = lock_job_by_key(&mut *conn, QUEUE, &key).await?;
    let reason = match job {
        None => "its fan-out job no longer exists".to_owned(),
        Some(job) => match job.state {
            JobState::Available | JobState::Running => return Ok(None),
            JobState::Failed => job
                .last_error
                .unwrap_or_else(|| "its fan-out job failed".to_owned()),
            JobState::Cancelled => match job.last_error {
                Some(error) => format!("its fan-out job was cancelled (last error: {error})"),
                None => "its fan-out job was cancelled".to_owned(),
            },
            JobState::Completed => "its fan-out job completed without settling it".to_owned(),
        },
    };
    if !super::handler::mark_failed(&mut *conn, id, &reason, &Actor::System).await? {
        return Ok(None);
    }
    tracing::warn!(cycle.id = %id, reason, "cycle left Initializing by its ended fan-out; marked Failed");
    Ok(Some(reason))
}
