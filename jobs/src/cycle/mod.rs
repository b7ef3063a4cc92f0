//! The contribution-cycle job kind: when a member of a tier dies, one cycle creates one
//! pending contribution for every other active member of that tier.
//!
//! ```text
//! create_cycle ──one tx──▶ contribution_cycles (Initializing, member_bound) + job(contribution_cycles)
//! handle: start_fan_out (count total once) ──▶ fan_out_chunk × n ──▶ activate_cycle
//!         each chunk = one tx: INSERT … SELECT of the next keyset chunk of members
//!                      + agent totals + processed/cursor/chunks of the cycle
//!         activate_cycle = one tx: status Active + one notification job per agent
//! ```
//!
//! A crash at any point resumes from the last committed chunk: the cursor is read from the
//! cycle row, and the (cycle, member) primary key makes a redone chunk harmless anyway. A
//! cycle whose job ended without settling it is marked Failed by whoever next reads it
//! ([`abandoned`]), so it never holds its claim.

pub mod abandoned;
pub mod create;
pub mod deadlines;
pub mod error;
pub mod handler;
pub mod progress;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{NewJob, RetryPolicy};

pub use create::{create_cycle, CreatedCycle, NewCycle};
pub use error::{CreateCycleError, CycleError};
pub use handler::handle;
pub use progress::{fetch_progress, CycleProgress};

/// The queue fan-out jobs are enqueued in.
pub const QUEUE: &str = "contribution_cycles";
/// The job kind of a fan-out job.
pub const KIND: &str = "contribution_cycle_fan_out";

/// Members per chunk (one INSERT … SELECT and one commit each).
pub const DEFAULT_CHUNK_SIZE: i64 = 20_000;
/// How long one fan-out run may take. A run commits its progress chunk by chunk, so one cut
/// off here resumes where it stopped (a million members take seconds).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Contribution periods a cycle may have, in days.
pub const MIN_DURATION_DAYS: i32 = 1;
pub const MAX_DURATION_DAYS: i32 = 90;
/// Longest claim reference and idempotency key.
pub const MAX_REFERENCE_LEN: usize = 64;

/// Database trouble is retried: 2 s, 4 s, … up to 5 min, 10 attempts; when they run out the
/// cycle is marked Failed with the last error.
pub const RETRY_POLICY: RetryPolicy =
    RetryPolicy::new(10, Duration::from_secs(2), Duration::from_secs(300));

pub fn retry_policy() -> RetryPolicy {
    RETRY_POLICY
}

/// A cycle's id: the `contribution_cycles.id` column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct CycleId(pub i64);

impl fmt::Display for CycleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for CycleId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(CycleId)
    }
}

/// The `contribution_cycle_status` enum of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "contribution_cycle_status")]
pub enum CycleStatus {
    /// Created; contributions are being fanned out.
    Initializing,
    /// Every contribution exists; members are asked to pay.
    Active,
    /// The fan-out failed for good (the reason is in `error`).
    Failed,
    /// The cycle is closed.
    Completed,
}

impl CycleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CycleStatus::Initializing => "Initializing",
            CycleStatus::Active => "Active",
            CycleStatus::Failed => "Failed",
            CycleStatus::Completed => "Completed",
        }
    }

    /// Whether the fan-out is over (successfully or not).
    pub fn is_settled(self) -> bool {
        !matches!(self, CycleStatus::Initializing)
    }
}

impl fmt::Display for CycleStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the fan-out runs in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleConfig {
    /// Members per chunk.
    pub chunk_size: i64,
}

impl Default for CycleConfig {
    fn default() -> Self {
        CycleConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// The payload of a fan-out job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleJob {
    pub cycle_id: CycleId,
}

impl CycleJob {
    /// The job's unique key in [`QUEUE`]: one fan-out job per cycle.
    pub fn unique_key(&self) -> String {
        format!("cycle:{}", self.cycle_id)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(
            QUEUE,
            KIND,
            serde_json::json!({ "cycle_id": self.cycle_id }),
        )
        .with_unique_key(self.unique_key())
        .with_retry(RETRY_POLICY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_job_round_trips_and_has_one_key_per_cycle() {
        let job = CycleJob {
            cycle_id: CycleId(42),
        };
        let new = job.to_job();
        assert_eq!(new.queue, QUEUE);
        assert_eq!(new.unique_key.as_deref(), Some("cycle:42"));
        let back: CycleJob = serde_json::from_value(new.payload).unwrap();
        assert_eq!(back, job);
    }
}
