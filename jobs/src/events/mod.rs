//! Events out: a transactional outbox (docs/outbox-events.md).
//!
//! `ticket.issued`, `transfer.completed`, `transfer.failed` and `cycle.activated` are written
//! to `outbox_events` by the statement or transaction that makes the change they announce, so
//! an event exists exactly when its change committed. An outbox row holds the events of one
//! statement (`data` is an array, one element per event): the hot paths (a ticket batch, a
//! batch of the transfer store's answers) write one row for the whole batch from the rows they
//! changed, in one more CTE of their existing statement; the rest call [`publish`] inside
//! their transaction, one event per row.
//!
//! Delivery is two steps, neither on the writers' path:
//!
//! - the [`relay`] (a loop in each worker that runs the [`QUEUE`]) takes committed rows not
//!   yet relayed, in batches, and turns each batch into [`DeliveryJob`]s for each configured
//!   URL, in one transaction;
//! - a [`DeliveryJob`] POSTs each of its events to its URL ([`deliver`]), signed like Monime's
//!   webhooks; the engine retries it durably until every event is accepted or refused.
//!
//! Each event's body is built from its row alone, so every delivery of it carries the same
//! bytes and the same `id` (`evt_<row id>_<position in the row>`), which the receiver dedupes
//! on.

pub mod deliver;
pub mod prune;
pub mod relay;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::engine::{NewJob, RetryPolicy};

pub use deliver::{handle, Deliverer, DelivererConfig, Signer};
pub use prune::prune_once;
pub use relay::{relay_once, RelayConfig};

/// The event types, as stored in `outbox_events.type` and sent as `type`.
pub mod event_type {
    pub const TICKET_ISSUED: &str = "ticket.issued";
    pub const TRANSFER_COMPLETED: &str = "transfer.completed";
    pub const TRANSFER_FAILED: &str = "transfer.failed";
    pub const CYCLE_ACTIVATED: &str = "cycle.activated";
}

/// The queue delivery jobs are enqueued in.
pub const QUEUE: &str = "events";
/// The job kind of one batch of events for one URL.
pub const KIND: &str = "deliver_events";
/// The header that carries the signature: `t=<unix seconds>,v1=<base64 HMAC-SHA256>` over
/// `<t>_<body>`, the scheme of Monime's webhooks.
pub const SIGNATURE_HEADER: &str = "Poda-Signature";
/// How long one POST may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// POSTs one delivery job has in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// 2 s, 4 s, 8 s, … up to 30 min between runs: 58 runs span about 24 h, then the job fails
/// for review with the events it could not deliver.
pub const RETRY_POLICY: RetryPolicy =
    RetryPolicy::new(58, Duration::from_secs(2), Duration::from_secs(1800));

/// How long one delivery run may take: every POST of a full batch in waves of the
/// concurrency, each bounded by `timeout`, and a minute beside them.
pub fn run_timeout(timeout: Duration, events_per_job: usize, concurrency: usize) -> Duration {
    let waves = events_per_job.div_ceil(concurrency.max(1)).max(1) as u32;
    timeout * waves + Duration::from_secs(60)
}

/// One batch of events for one receiver: the payload of a delivery job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub url: String,
    /// `outbox_events.id`s, ascending: every event of each of these rows.
    pub rows: Vec<i64>,
}

impl DeliveryJob {
    pub fn to_job(&self) -> NewJob {
        NewJob::new(
            QUEUE,
            KIND,
            serde_json::to_value(self).expect("a delivery job serialises"),
        )
        .with_retry(RETRY_POLICY)
    }
}

/// The id a receiver sees for event `seq` (0-based) of outbox row `row`.
pub fn public_id(row: i64, seq: i32) -> String {
    format!("evt_{row}_{seq}")
}

/// The body POSTed for event `seq` of outbox row `row`: `{"id","type","created_at","data"}`.
pub fn body(
    row: i64,
    seq: i32,
    kind: &str,
    created_at: DateTime<Utc>,
    data: &serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": public_id(row, seq),
        "type": kind,
        "created_at": created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "data": data,
    }))
    .expect("an event serialises")
}

/// Writes one event on `conn`, which is inside the transaction of the change the event
/// announces: it commits, or rolls back, with it. Returns the row id (the event is event 0 of
/// that row).
pub async fn publish(
    conn: &mut PgConnection,
    kind: &'static str,
    data: &serde_json::Value,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        "INSERT INTO outbox_events (type, size, data) VALUES ($1, 1, jsonb_build_array($2::jsonb)) \
         RETURNING id",
        kind,
        data,
    )
    .fetch_one(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_envelope_and_stable() {
        let at = DateTime::parse_from_rfc3339("2026-12-05T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let data = serde_json::json!({"amount": {"currency": "SLE", "value": 2500}});
        let one = body(7, 2, event_type::TICKET_ISSUED, at, &data);
        assert_eq!(one, body(7, 2, event_type::TICKET_ISSUED, at, &data));
        let parsed: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(parsed["id"], "evt_7_2");
        assert_eq!(parsed["type"], "ticket.issued");
        assert_eq!(parsed["created_at"], "2026-12-05T10:00:00.500000Z");
        assert_eq!(parsed["data"]["amount"]["value"], 2500);
    }

    #[test]
    fn retries_span_about_a_day() {
        let total: Duration = (1..RETRY_POLICY.max_attempts)
            .map(|attempt| RETRY_POLICY.nominal_delay(attempt))
            .sum();
        let hours = total.as_secs_f64() / 3600.0;
        assert!((23.0..=25.5).contains(&hours), "{hours} h");
    }
}
