//! One payment's journey, read in one statement: the webhook events that announced it, its
//! ticket job, its ticket and the ticket's commission transfer.
//!
//! The read model behind `GET /payments/{payment_id}` and the console's payment page
//! (`docs/payment-status.md`):
//!
//! ```ignore
//! match payment_status::fetch(&db, "pay-123").await? {
//!     Some(status) => println!("ticket: {:?}", status.ticket),
//!     None => println!("never received"),
//! }
//! ```

use chrono::{DateTime, Utc};
use poda_jobs::db::Db;
use poda_jobs::ticket::{self, Currency};
use poda_jobs::{JobId, JobState};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

/// A payment as the platform has seen it so far. Each part is `None` until it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentStatus {
    pub payment_id: String,
    /// When the first event carrying this payment arrived.
    pub received_at: DateTime<Utc>,
    /// The recorded webhook events carrying this payment id, oldest first.
    pub events: Vec<PaymentEvent>,
    /// The ticket job keyed by the payment id (`None` once pruned).
    pub job: Option<PaymentJob>,
    pub ticket: Option<PaymentTicket>,
    /// The ticket's commission transfer to the platform.
    pub transfer: Option<PaymentTransfer>,
}

/// One webhook event, as recorded in `webhook_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub id: String,
    pub name: String,
    pub received_at: DateTime<Utc>,
}

/// The ticket job of the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentJob {
    pub id: JobId,
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// The ticket issued for the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentTicket {
    pub id: i64,
    pub company_id: String,
    pub route_id: String,
    /// What the passenger paid.
    pub amount: Amount,
    /// The platform's commission, in minor units of the ticket's currency.
    pub commission_minor: i64,
    pub issued_at: DateTime<Utc>,
}

/// The ticket's commission transfer at Monime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentTransfer {
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: String,
    pub idempotency_key: String,
    pub monime_transfer_id: Option<String>,
    pub amount: Amount,
    pub failure_code: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Money as integer minor units with its currency (`{"currency": "SLE", "value": 50000}` is
/// 500.00 SLE). Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub currency: Currency,
    pub value: i64,
}

/// The payment `payment_id`, or `None` if no event carrying it was ever received.
///
/// One statement, each part found through an index: the events by
/// `webhook_events_payment_idx`, the job by `jobs_unique_key_idx` (queue `tickets`, the payment
/// id as unique key), the ticket by its unique `payment_id`, the transfer by its unique
/// `ticket_id`. Its cost does not grow with the size of the tables.
pub async fn fetch(db: &Db, payment_id: &str) -> Result<Option<PaymentStatus>, sqlx::Error> {
    let row = sqlx::query_file!("src/payment_status.sql", payment_id, ticket::QUEUE)
        .fetch_optional(db)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };

    let job = match (row.job_id, row.job_state, row.job_attempts) {
        (Some(id), Some(state), Some(attempts)) => Some(PaymentJob {
            id,
            state,
            attempts,
            last_error: row.job_last_error,
        }),
        _ => None,
    };
    let ticket = match (
        row.ticket_id,
        row.ticket_company_id,
        row.ticket_route_id,
        row.ticket_currency,
        row.ticket_amount_minor,
        row.ticket_commission_minor,
        row.ticket_issued_at,
    ) {
        (
            Some(id),
            Some(company_id),
            Some(route_id),
            Some(currency),
            Some(value),
            Some(commission_minor),
            Some(issued_at),
        ) => Some(PaymentTicket {
            id,
            company_id,
            route_id,
            amount: amount(&currency, value)?,
            commission_minor,
            issued_at,
        }),
        _ => None,
    };
    let transfer = match (
        row.transfer_status,
        row.transfer_key,
        row.transfer_currency,
        row.transfer_amount_minor,
        row.transfer_updated_at,
    ) {
        (Some(status), Some(idempotency_key), Some(currency), Some(value), Some(updated_at)) => {
            Some(PaymentTransfer {
                status,
                idempotency_key,
                monime_transfer_id: row.transfer_monime_id,
                amount: amount(&currency, value)?,
                failure_code: row.transfer_failure_code,
                updated_at,
            })
        }
        _ => None,
    };
    Ok(Some(PaymentStatus {
        payment_id: payment_id.to_owned(),
        received_at: row.received_at,
        events: row.events.0,
        job,
        ticket,
        transfer,
    }))
}

/// The tables' CHECK constraints allow only the currencies [`Currency`] knows.
fn amount(currency: &str, value: i64) -> Result<Amount, sqlx::Error> {
    let currency = Currency::parse(currency)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown currency {currency:?}").into()))?;
    Ok(Amount { currency, value })
}
