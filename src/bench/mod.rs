//! Benchmark scenarios, one module each. `bin/bench.rs` runs them.

pub mod fanout;
pub mod ingest;
