//! The ticket job kind: one completed Monime payment becomes exactly one ticket.
//!
//! The enqueuer writes a [`TicketJob`] in queue [`QUEUE`] with kind [`KIND`] and the payment id
//! as its unique key, so however often Monime delivers the payment there is one job.
//!
//! The `tickets` queue is a batch queue: each transaction of the
//! [`crate::engine::batch_worker`] claims up to a batch of ticket jobs and
//! [`handler::TicketHandler`] issues their tickets in that same transaction
//! ([`issue::issue_many`]): one multi-row `INSERT … ON CONFLICT (payment_id) DO NOTHING`, the
//! payment codes' usage, and one commission-transfer job per new ticket, committed together
//! with the ticket jobs' outcomes. [`error::TicketError`] says what went wrong in the domain's
//! words and decides retryable or permanent.

pub mod error;
pub mod handler;
pub mod issue;

use serde::{Deserialize, Serialize};

use crate::engine::{BatchSettings, NewJob};

pub use error::TicketError;
pub use handler::TicketHandler;
pub use issue::{issue_many, Issued};

/// The queue ticket jobs are enqueued in.
pub const QUEUE: &str = "tickets";
/// The job kind of a ticket job.
pub const KIND: &str = "ticket";
/// Ticket jobs one transaction claims and issues at most. Each transaction costs a fixed
/// ~3 ms of the machine's time on top of its tickets (planning its statements, round trips,
/// the commit): `bench tickets` ran 13,500 tickets/s with 100 per transaction, 16,100 with
/// 150, 17,500 with 200 and no better with 250 (more batches then queue on the same payment
/// codes).
pub const DEFAULT_BATCH_SIZE: usize = 200;
/// Ticket transactions a process runs at once: while one waits for its commit, the others
/// claim and write (3 and 4 measured the same; 1 leaves the server idle during commits).
pub const DEFAULT_BATCHES_IN_FLIGHT: usize = 3;
/// Under a steady stream of payments, a ticket runner claims at most this often, so a
/// transaction issues the tickets that arrived meanwhile instead of one or two: the
/// transaction's fixed cost is most of the server's work per ticket at a few per batch. A
/// trickle is not delayed: a claim after a longer idle wait starts at once.
pub const DEFAULT_CLAIM_INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);
/// How long one batch may take (a batch of 200 takes milliseconds; this bounds a batch stuck
/// on a lock or a lost connection).
pub const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The tickets queue's batches at their defaults.
pub fn batch_settings() -> BatchSettings {
    BatchSettings {
        queue: QUEUE.to_owned(),
        batch_size: DEFAULT_BATCH_SIZE,
        runners: DEFAULT_BATCHES_IN_FLIGHT,
        run_timeout: RUN_TIMEOUT,
        claim_interval: DEFAULT_CLAIM_INTERVAL,
    }
}

/// A ticket's commission in minor units: `amount × bps / 10 000`, rounded half up, in integer
/// arithmetic: `(amount_minor × commission_bps + 5 000) div 10 000`.
///
/// This is the one rounding rule for commissions. For the positive amounts tickets have,
/// half up means a commission of exactly half a minor unit or more rounds up (1 minor unit at
/// 5 000 bps → 1; at 4 999 bps → 0). The product is computed in 128 bits, so no amount
/// overflows; with `0 ≤ bps ≤ 10 000` the commission is between 0 and the amount.
pub fn commission_minor(amount_minor: i64, commission_bps: i32) -> i64 {
    let bps = i128::from(commission_bps.clamp(0, 10_000));
    let amount = i128::from(amount_minor.max(0));
    ((amount * bps + 5_000) / 10_000) as i64
}

/// Currencies Poda accepts from Monime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Currency {
    /// Sierra Leonean leone (2 decimals).
    #[serde(rename = "SLE")]
    Sle,
    /// US dollar (2 decimals).
    #[serde(rename = "USD")]
    Usd,
}

impl Currency {
    pub fn as_str(self) -> &'static str {
        match self {
            Currency::Sle => "SLE",
            Currency::Usd => "USD",
        }
    }

    /// `SLE` or `USD`; anything else is unsupported.
    pub fn parse(code: &str) -> Option<Currency> {
        match code {
            "SLE" => Some(Currency::Sle),
            "USD" => Some(Currency::Usd),
            _ => None,
        }
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in integer minor units (cents for USD, cents of a leone for SLE).
/// Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub currency: Currency,
    pub value_minor: i64,
}

/// The payload of a ticket job: what the handler needs to create the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketJob {
    /// Monime's payment id (`data.id`): unique per ticket, and the job's unique key.
    pub payment_id: String,
    /// The webhook event that announced the payment.
    pub event_id: String,
    pub amount: Money,
    pub company_id: String,
    pub route_id: String,
    /// E.164, e.g. `+23276123456`.
    pub passenger_phone: String,
    pub payment_code: Option<String>,
    pub financial_transaction_reference: Option<String>,
}

impl TicketJob {
    /// The job's unique key in [`QUEUE`]: the payment id.
    pub fn unique_key(&self) -> &str {
        &self.payment_id
    }

    /// The job that issues this ticket, keyed by payment id (as the enqueuer writes it).
    pub fn to_job(&self) -> NewJob {
        NewJob::new(
            QUEUE,
            KIND,
            serde_json::to_value(self).expect("a ticket job serialises"),
        )
        .with_unique_key(self.unique_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commission_rounds_half_up_in_minor_units() {
        // (amount, bps) -> commission
        let cases = [
            (1, 0, 0),
            (1, 1, 0),
            (1, 4_999, 0),
            (1, 5_000, 1), // exactly half a minor unit rounds up
            (1, 10_000, 1),
            (3, 5_000, 2), // 1.5 -> 2
            (5, 5_000, 3), // 2.5 -> 3 (half up, not half even)
            (50_000, 250, 1_250),
            (19_999, 250, 500), // 499.975 -> 500
            (20_002, 250, 500), // 500.05 -> 500
            (20_020, 250, 501), // 500.5 -> 501
            (20_019, 250, 500), // 500.475 -> 500
            (123_456, 10_000, 123_456),
            (123_456, 0, 0),
            (i64::MAX, 10_000, i64::MAX),
        ];
        for (amount, bps, expected) in cases {
            assert_eq!(
                commission_minor(amount, bps),
                expected,
                "commission of {amount} at {bps} bps"
            );
        }
    }

    #[test]
    fn ticket_job_round_trips_through_json() {
        let job = TicketJob {
            payment_id: "pay-1".into(),
            event_id: "evt-1".into(),
            amount: Money {
                currency: Currency::Sle,
                value_minor: 50_000,
            },
            company_id: "co-1".into(),
            route_id: "rt-1".into(),
            passenger_phone: "+23276123456".into(),
            payment_code: None,
            financial_transaction_reference: Some("txn-1".into()),
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["amount"]["currency"], "SLE");
        assert_eq!(json["amount"]["value_minor"], 50_000);
        let back: TicketJob = serde_json::from_value(json).unwrap();
        assert_eq!(back, job);
    }
}
