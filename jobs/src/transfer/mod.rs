//! The commission-transfer job kind: for each ticket, the platform's commission moves from the
//! transport company's Monime account to the platform account, exactly once.
//!
//! Ticket creation enqueues one [`TransferJob`] per new ticket, in the same transaction as the
//! ticket, with [`TransferJob::unique_key`] so a ticket never has two transfer jobs.
//!
//! [`handler`] runs the transfer at Monime ([`monime`]) with a stable idempotency key and the
//! request body stored in `commission_transfers` before the first call ([`store`] reads and
//! writes the rows of many runs at once); [`breaker`] holds calls
//! back while Monime is failing and [`rate_limit`] caps creations across every replica;
//! [`reconcile`] and [`admin`] serve operators.

pub mod admin;
pub mod breaker;
pub mod error;
pub mod handler;
pub mod monime;
pub mod rate_limit;
pub mod reconcile;
pub mod reconcile_job;
pub mod store;

pub use error::TransferError;
pub use handler::{handle, TransferContext, TransferSettings};
pub use store::TransferStore;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{NewJob, RetryPolicy};

pub const QUEUE: &str = "commission_transfers";
pub const KIND: &str = "commission_transfer";
/// The least time one transfer run may take: a create and the inline polls of Monime (each
/// call bounded by the client's timeout); a transfer still processing snoozes long before this.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one transfer run may take with these settings: a create and one status read (each
/// up to the client's timeout, plus the connect timeout), the inline wait between them, and a
/// minute for the row writes; never less than [`RUN_TIMEOUT`]. A run cut off by its timeout
/// would skip recording its transient failure, so the bound follows the calls it makes.
pub fn run_timeout(
    monime: &monime::MonimeConfig,
    settings: &handler::TransferSettings,
) -> Duration {
    let calls = 2 * (monime.timeout + monime.connect_timeout);
    RUN_TIMEOUT.max(calls + settings.poll_inline + Duration::from_secs(60))
}

/// Durable retries for Monime calls: 2 s, 4 s, 8 s, 16 s, 32 s (± jitter), at most 5 retries,
/// then a terminal failure for manual review.
pub const RETRY_POLICY: RetryPolicy =
    RetryPolicy::new(6, Duration::from_secs(2), Duration::from_secs(32));

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferJob {
    /// The ticket whose commission moves (`tickets.id`).
    pub ticket_id: i64,
}

impl TransferJob {
    pub fn unique_key(&self) -> String {
        format!("ticket:{}", self.ticket_id)
    }

    /// The job that moves this ticket's commission out of `company_id`'s account. The company
    /// is the job's concurrency key: with `TRANSFER_MAX_IN_FLIGHT_PER_COMPANY` set, at most that
    /// many transfers of one company run at once (docs/per-company-limit.md).
    pub fn to_job(&self, company_id: &str) -> NewJob {
        NewJob::new(
            QUEUE,
            KIND,
            serde_json::json!({ "ticket_id": self.ticket_id }),
        )
        .with_unique_key(self.unique_key())
        .with_retry(RETRY_POLICY)
        .with_concurrency_key(company_id)
    }
}
