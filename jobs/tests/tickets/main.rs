//! The ticket job kind against a real Postgres: every test owns a fresh database and runs an
//! in-process tickets worker (engine + batch runners).

mod support;

mod audit;
mod batch;
mod code_limit;
mod duplicates;
mod plans;
mod poison;
mod references;
mod rounding;
mod validation;
