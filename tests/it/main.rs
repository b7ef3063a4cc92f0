//! Poda's integration tests: real Postgres (a fresh database per test) and real processes.

mod support;

mod crash;
mod ops;
mod shutdown;
mod worker_process;
