//! Poda's integration tests: one binary, a real Postgres (a fresh database per test), real
//! servers on random ports and real processes.

mod support;

mod admin;
mod cancel_running;
mod console;
mod console_browser;
mod crash;
mod cycles;
mod enqueue_sql;
mod events;
mod health;
mod metrics;
mod ops;
mod outage;
mod payments;
mod pgbouncer;
mod priorities;
mod process;
mod queue_ops;
mod replicas;
mod schedules;
mod shutdown;
mod tickets;
mod transfers;
mod webhooks;
mod worker_health;
mod worker_process;
