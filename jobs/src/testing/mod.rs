//! Test support (feature `testing`): a fresh database per test, polling waits, and
//! ticket-domain fixtures.

mod db;
pub mod tickets;
mod wait;

pub use db::{admin_url, TestDb};
pub use wait::wait_until;
