//! Poda: the enqueuer, the worker runtime and the operator commands, on top of the
//! `poda-jobs` engine and job kinds.

pub mod cli;
pub mod config;
pub mod console;
pub mod cpu_policy;
pub mod cycle_watch;
pub mod enqueuer;
pub mod http;
pub mod ops;
pub mod payment_status;
pub mod sandbox;
pub mod schedules;
pub mod shutdown;
pub mod tally;
pub mod telemetry;
pub mod worker;
pub mod worker_endpoint;
