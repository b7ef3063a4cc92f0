//! Engine behaviour against a real Postgres: one database per test (TestDb), time moved by
//! passing `now`, waits by polling.

mod factory;
mod gauges;
mod leader;
mod prune;
mod queue;
