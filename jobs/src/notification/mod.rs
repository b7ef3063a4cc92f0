//! The notification job kind: when a cycle becomes Active, each agent with members in it gets
//! a JSON summary POSTed to `NOTIFICATIONS_URL`, with durable retries.
//!
//! One job per (cycle, agent), enqueued in the transaction that activates the cycle, with
//! [`AgentSummaryJob::unique_key`] so a re-run activation cannot notify twice. The key is also
//! sent as the `Idempotency-Key` header so the receiver can drop a repeated delivery.

pub mod error;
pub mod handler;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cycle::CycleId;
use crate::engine::{NewJob, RetryPolicy};
use crate::ticket::Money;

pub use error::NotificationError;
pub use handler::{handle, Notifier, NotifierConfig};

/// The queue notification jobs are enqueued in.
pub const QUEUE: &str = "notifications";
/// The job kind of an agent's cycle summary.
pub const KIND: &str = "cycle_agent_summary";
/// How long one delivery may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time one delivery run may take (the HTTP call is bounded by [`DEFAULT_TIMEOUT`]
/// or its setting).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one delivery run may take with the receiver's `timeout`: the call and half a
/// minute beside it; never less than [`RUN_TIMEOUT`].
pub fn run_timeout(timeout: Duration) -> Duration {
    RUN_TIMEOUT.max(timeout + Duration::from_secs(30))
}

/// 2 s, 4 s, 8 s, … up to 10 min between deliveries, 12 attempts, then a terminal failure.
pub const RETRY_POLICY: RetryPolicy =
    RetryPolicy::new(12, Duration::from_secs(2), Duration::from_secs(600));

pub fn retry_policy() -> RetryPolicy {
    RETRY_POLICY
}

/// What an agent is told when a cycle becomes Active: the body that is POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSummaryJob {
    pub cycle_id: CycleId,
    pub cycle_code: String,
    pub claim_reference: String,
    pub tier_id: i64,
    pub agent_id: String,
    /// The agent's members with a contribution in this cycle.
    pub members: i64,
    /// What each member contributes.
    pub contribution: Money,
    /// What the agent collects in all: members × contribution.
    pub total: Money,
    pub deadline: DateTime<Utc>,
}

impl AgentSummaryJob {
    /// One notification per cycle and agent.
    pub fn unique_key(&self) -> String {
        format!("cycle:{}:agent:{}", self.cycle_id, self.agent_id)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(
            QUEUE,
            KIND,
            serde_json::to_value(self).expect("an agent summary serialises"),
        )
        .with_unique_key(self.unique_key())
        .with_retry(RETRY_POLICY)
    }
}
