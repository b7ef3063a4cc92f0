//! Poda's integration tests: one binary, a real Postgres (a fresh database per test), real
//! servers on random ports and real processes.

mod support;

mod admin;
mod crash;
mod health;
mod ops;
mod process;
mod shutdown;
mod transfers;
mod webhooks;
mod worker_process;
