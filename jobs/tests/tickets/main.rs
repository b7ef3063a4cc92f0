//! The ticket job kind against a real Postgres: every test owns a fresh database and runs an
//! in-process tickets worker (engine + apalis worker + ticket batcher).

mod support;

mod batch;
mod code_limit;
mod duplicates;
mod poison;
mod references;
mod rounding;
mod validation;
