//! Test support (feature `testing`): a fresh database per test, a private PostgreSQL cluster
//! for tests that stop the server, polling waits, plan checks and ticket-domain fixtures.

#[cfg(unix)]
mod cluster;
mod db;
pub mod plans;
pub mod tickets;
mod wait;

#[cfg(unix)]
pub use cluster::PrivateCluster;
pub use db::{admin_url, TestDb};
pub use wait::wait_until;
