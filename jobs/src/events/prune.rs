//! Retention: events relayed longer ago than the retention are deleted, with what their
//! deliveries left in `outbox_deliveries`, so the outbox does not grow without end. Each relay
//! runs a pass every [`PRUNE_INTERVAL`]; two relays pruning at once skip each other's rows.
//!
//! The retention must outlast the delivery jobs' retries (about a day, [`super::RETRY_POLICY`])
//! for every event to get all of them: a delivery run skips an event that is already gone.
//! Workers use `WORKER_RETENTION` (7 days by default), the retention of finished jobs.

use std::time::Duration;

use crate::db::Db;

/// Time between two pruning passes of one relay.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Events read per statement.
pub const PRUNE_BATCH: i64 = 1_000;

/// Deletes every event relayed before now − `retention` (in batches of `batch`); returns how
/// many.
pub async fn prune_once(db: &Db, retention: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    let retention_ms = retention.as_millis().min(i64::MAX as u128) as i64;
    let mut total = 0;
    loop {
        let deleted =
            sqlx::query_file_scalar!("src/events/prune_events.sql", retention_ms, batch.max(1))
                .fetch_one(db)
                .await? as u64;
        total += deleted;
        if deleted == 0 {
            return Ok(total);
        }
    }
}
