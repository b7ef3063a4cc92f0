//! The rescuer: makes jobs of dead workers runnable again. Every worker process runs it; the
//! bound on how long a killed worker's jobs wait is `lease + interval`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::engine::error::EngineError;
use crate::engine::notify::Signals;

pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(5);
const RESCUE_BATCH: i64 = 1_000;

#[derive(Debug, Clone, Copy)]
pub struct RescuerConfig {
    pub interval: Duration,
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: DEFAULT_RESCUE_INTERVAL,
        }
    }
}

/// What one pass did, per queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RescueReport {
    pub requeued: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
}

impl RescueReport {
    pub fn total(&self) -> u64 {
        self.requeued.values().sum::<u64>() + self.failed.values().sum::<u64>()
    }
}

pub struct Rescuer {
    pool: PgPool,
    config: RescuerConfig,
}

impl Rescuer {
    pub fn new(config: RescuerConfig, pool: PgPool) -> Self {
        Rescuer { pool, config }
    }

    /// One pass, in batches until no expired lease is left. `now` moves the clock for tests.
    pub async fn run_once(&self, now: Option<DateTime<Utc>>) -> Result<RescueReport, EngineError> {
        let mut report = RescueReport::default();
        loop {
            let rows = sqlx::query_file!(
                "src/engine/maintenance/rescue_expired.sql",
                now,
                RESCUE_BATCH,
            )
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let bucket = if row.state == "failed" {
                    &mut report.failed
                } else {
                    &mut report.requeued
                };
                *bucket.entry(row.queue.clone()).or_default() += 1;
            }
            if (rows.len() as i64) < RESCUE_BATCH {
                return Ok(report);
            }
        }
    }

    pub async fn run(self, signals: Signals, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.run_once(None).await {
                Ok(report) if report.total() > 0 => {
                    tracing::warn!(requeued = ?report.requeued, failed = ?report.failed,
                        "rescued jobs whose lease expired");
                    for (queue, n) in &report.requeued {
                        crate::engine::metrics::record_rescued(queue, *n);
                        signals.wake(queue);
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "rescue pass failed"),
            }
        }
    }
}
