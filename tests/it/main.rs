//! Process tests: the real `worker` binary against a database per test.

mod metrics;
mod ops;
mod support;
