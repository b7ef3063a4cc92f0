//! The queue engine: durable jobs in Postgres under apalis workers. It knows no job kind.
//!
//! ```text
//! enqueue_many ──INSERT … unnest, NOTIFY per queue──▶ jobs
//! PgBackend ──claim_batch (SKIP LOCKED, lease, attempt+1)──▶ apalis worker ──▶ handler
//! AckLayer ──outcome──▶ Completer ──complete_many (fenced by owner+attempt), batched──▶ jobs
//! heartbeat: extend_leases of held jobs      rescuer: expired leases ──▶ available / failed
//!
//! batch queues (batch_worker): BEGIN; claim_locked (row locks, after the claim cursor)
//!   ──▶ BatchHandler on the same connection ──▶ finish_locked (each job's outcome); COMMIT
//! ```
//!
//! Modules depend in one direction only, each on those listed before it:
//!
//! 1. values: `retry` (policy, handler results), `job` (rows and ids), `error`, `outcome`
//!    (what became of a run), `slots`, `registry`, `claim_cursor`, `notify`, `metrics`,
//!    `loops` (the process's watched tasks);
//! 2. statements: `enqueue`, `claim`, `complete` (the batched completer), `lease`, `queue`,
//!    `admin`, `migrate`, `maintenance`, `schedule` (periodic jobs), `warm` (a new
//!    connection's first claim and completion, on no job);
//! 3. `runtime`: the [`Engine`] of a process and its background tasks;
//! 4. the two ways to run a queue on it: `backend` (+ `ack`, its middleware) for apalis
//!    workers, and `batch_worker` for batch queues.
//!
//! This file only declares the modules and re-exports the public API.

pub mod ack;
pub mod admin;
pub mod backend;
pub mod batch_worker;
pub mod claim;
pub mod claim_cursor;
pub mod claim_window;
pub mod complete;
pub mod enqueue;
pub mod error;
pub mod full_pass;
pub mod job;
pub mod keyed;
pub mod lease;
pub mod loops;
pub mod maintenance;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod outcome;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod schedule;
pub mod slots;
pub mod wakeups;
pub mod warm;

pub use backend::{BackendSettings, PgBackend, DEFAULT_RUN_TIMEOUT};
pub use batch_worker::{BatchHandler, BatchSettings};
pub use complete::{CompleterConfig, Completion, CompletionHandle};
pub use enqueue::{
    enqueue_many, enqueue_many_pooled, enqueue_one, enqueue_one_pooled, insert_new_jobs,
};
pub use error::EngineError;
pub use job::{ClaimedJob, Enqueued, JobId, JobMeta, JobSnapshot, JobState, NewJob, Priority};
pub use loops::Loops;
pub use maintenance::{
    Maintainer, MaintainerConfig, PruneReport, Pruner, PrunerConfig, Rescuer, RescuerConfig,
};
pub use outcome::Action;
pub use queue::{pause_queue, resume_queue, QueueStatus};
pub use registry::RunCancel;
pub use retry::{JobError, Outcome, RetryPolicy};
pub use runtime::{
    Engine, EngineConfig, EngineHandle, Listen, DEFAULT_LEASE, DEFAULT_POLL_INTERVAL,
};
pub use schedule::{Schedule, ScheduleError};
