//! Test support (feature `testing`): a fresh database per test, a private PostgreSQL cluster
//! (for tests that stop the server, and for tests and the demo on a machine whose server does
//! not let them in), a PgBouncer in transaction mode, polling waits, plan checks, who sent a
//! wake-up, and ticket-domain fixtures.

#[cfg(unix)]
mod cluster;
mod db;
#[cfg(unix)]
mod pgbouncer;
pub mod plans;
pub mod tickets;
mod wait;
pub mod wakeups;

#[cfg(unix)]
pub use cluster::{free_port, PrivateCluster};
pub use db::{
    admin_url, can_log_in, choose_server, ChosenServer, TestDb, LOCAL_SERVER,
    SHARED_CLUSTER_SETTINGS,
};
#[cfg(unix)]
pub use pgbouncer::PgBouncer;
pub use wait::wait_until;
