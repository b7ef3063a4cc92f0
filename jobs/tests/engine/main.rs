//! The queue engine against a real Postgres: every test owns a fresh database (TestDb), time
//! is moved by passing `now`, and waits poll.

mod support;

mod audit;
mod backend;
mod batch_worker;
mod claim;
mod claim_window;
mod cluster;
mod complete;
mod enqueue;
mod factory;
mod faults;
mod gauges;
mod leader;
mod lease;
mod listen;
mod locality;
mod migrate;
mod per_key;
mod plans;
mod priority;
mod prune;
mod queue;
mod rescue;
mod retry;
mod views;
