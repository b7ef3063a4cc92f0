//! Benchmark scenarios, one module each. `bin/bench.rs` runs them.

pub mod ingest;
pub mod transfers;
