//! Test support (feature `testing`): a fresh database per test, and polling waits.

mod db;
mod wait;

pub use db::{admin_url, TestDb};
pub use wait::wait_until;
