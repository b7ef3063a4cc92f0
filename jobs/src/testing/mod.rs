//! Test support (feature `testing`): a fresh database per test, polling waits, plan checks
//! and ticket-domain fixtures.

mod db;
pub mod plans;
pub mod tickets;
mod wait;

pub use db::{admin_url, TestDb};
pub use wait::wait_until;
