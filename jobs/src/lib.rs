//! Poda's queue engine and job kinds.
//!
//! [`engine`] is a durable Postgres queue under apalis: enqueue (alone or inside a caller's
//! transaction), batched claims with `FOR UPDATE SKIP LOCKED`, leases with fencing, batched
//! completion and durable retries. It knows no job kind. The job kinds live in their own
//! modules and use the engine only through its public API. [`audit`] is the audit trail that
//! both the engine's operator actions and the job kinds write to, inside their own
//! transactions; it depends on neither.

pub mod audit;
pub mod batch;
pub mod cycle;
pub mod db;
pub mod engine;
pub mod events;
pub mod http_client;
pub mod notification;
pub mod probe;
pub mod sqlstate;
#[cfg(feature = "testing")]
pub mod testing;
pub mod ticket;
pub mod transfer;

pub use engine::EngineError;
pub use engine::{
    Engine, EngineConfig, EngineHandle, JobError, JobId, JobMeta, JobState, NewJob, Outcome,
    PgBackend, RetryPolicy,
};
