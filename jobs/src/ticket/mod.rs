//! The ticket job kind: one completed Monime payment becomes exactly one ticket.
//!
//! The enqueuer writes a [`TicketJob`] in queue [`QUEUE`] with kind [`KIND`] and the payment id
//! as its unique key, so however often Monime delivers the payment there is one job. The
//! handler (which turns the job into a ticket row) lives beside this payload type.

use serde::{Deserialize, Serialize};

/// The queue ticket jobs are enqueued in.
pub const QUEUE: &str = "tickets";
/// The job kind of a ticket job.
pub const KIND: &str = "ticket";

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
