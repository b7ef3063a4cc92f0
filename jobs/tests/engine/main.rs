//! The queue engine against a real Postgres: every test owns a fresh database.

mod support;

mod backend;
mod claim;
mod complete;
mod enqueue;
mod rescue;
mod retry;
