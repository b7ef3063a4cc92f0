//! The engine's value types: ids, states, jobs to enqueue and jobs claimed.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::registry::RunCancel;
use super::retry::RetryPolicy;

/// A job's id: the `jobs.id` column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

/// The `job_state` enum of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Available,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to enqueue. Build it with [`NewJob::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Enqueueing a key that already exists in the queue returns the existing job's id and
    /// writes nothing. Keys stay taken until the job is pruned.
    pub unique_key: Option<String>,
    /// When to run; `None` means now (the database's clock).
    pub run_at: Option<DateTime<Utc>>,
    pub retry: RetryPolicy,
    /// 0 is the most urgent … 3 the least ([`Priority`]); claims take the most urgent runnable
    /// jobs first, FIFO within a priority. Enqueueing checks the range.
    pub priority: i16,
    /// Jobs sharing a key count against the per-key limit of their queue's claims, if the
    /// queue's workers set one (`BackendSettings::key_limit`). `None`: no limit applies.
    pub concurrency_key: Option<String>,
}

/// Job priorities: 0 is the most urgent, 3 the least.
pub struct Priority;

impl Priority {
    pub const MOST_URGENT: i16 = 0;
    pub const DEFAULT: i16 = 1;
    pub const LEAST_URGENT: i16 = 3;

    /// `Ok(p)` if `p` is a priority, an error naming the range otherwise.
    pub fn check(p: i16) -> Result<i16, String> {
        if (Self::MOST_URGENT..=Self::LEAST_URGENT).contains(&p) {
            Ok(p)
        } else {
            Err(format!(
                "priority {p} is out of range: {} (most urgent) to {} (least urgent)",
                Self::MOST_URGENT,
                Self::LEAST_URGENT
            ))
        }
    }
}

impl NewJob {
    pub fn new(
        queue: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        NewJob {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            unique_key: None,
            run_at: None,
            retry: RetryPolicy::default(),
            priority: Priority::DEFAULT,
            concurrency_key: None,
        }
    }

    /// Serialises `payload` with serde.
    pub fn from_payload<T: Serialize>(
        queue: impl Into<String>,
        kind: impl Into<String>,
        payload: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(queue, kind, serde_json::to_value(payload)?))
    }

    pub fn with_unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    pub fn with_run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the priority (0 most urgent … 3). A value out of range is refused when the job
    /// is enqueued ([`super::EngineError::InvalidJob`]).
    pub fn with_priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }
}

/// What enqueueing one job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: JobId,
    /// False when the unique key already existed and the existing job's id is returned.
    pub created: bool,
}

/// A job as a claim hands it out: running under `owner` at `attempt`, as the claim `token`.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempt: i32,
    /// The claim's fencing token: every later write of this run is fenced by it.
    pub token: i32,
    pub retry: RetryPolicy,
    /// 0 most urgent … 3.
    pub priority: i16,
    pub owner: Uuid,
}

/// What a handler learns about the job it runs. Handlers take it as an argument
/// (it implements apalis' `FromRequest`).
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// 1 on the first run.
    pub attempt: i32,
    /// This run's claim token (see [`ClaimedJob::token`]).
    pub claim_token: i32,
    pub retry: RetryPolicy,
    /// Fires when this run stops being its job's claim: an operator cancelled the job (told by
    /// NOTIFY, or found by the poll of held jobs), or its lease was taken over. A handler that
    /// awaits it (`tokio::select!`) stops at once and may write its last word; one that does
    /// not is dropped at its next await point after a short grace (see `ack`). Whatever such a
    /// run returns is fenced off by its claim token.
    pub cancel: RunCancel,
}

impl JobMeta {
    /// Whether this run was told to stop (see [`JobMeta::cancel`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl<Args: Sync> apalis_core::task::from_request::FromRequest<apalis_core::task::Task<Args>>
    for JobMeta
{
    type Error = apalis_core::task::data::MissingDataError;
    async fn from_request(task: &apalis_core::task::Task<Args>) -> Result<Self, Self::Error> {
        task.data().get_checked::<JobMeta>().cloned()
    }
}

/// A job row as operators see it (`GET /jobs/{id}`, `worker` ops).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobSnapshot {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub state: JobState,
    /// 0 most urgent … 3.
    pub priority: i16,
    pub concurrency_key: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub last_error: Option<String>,
    pub errors: serde_json::Value,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}
