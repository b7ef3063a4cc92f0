//! The rescuer: makes jobs of dead workers runnable again. Every worker process runs it; the
//! bound on how long a killed worker's jobs wait is `lease + interval`.
//!
//! A lease runs out when its worker stops renewing it, but also when the *database* was away
//! (restarted, or the network to it cut) for longer than a lease: then every live worker's
//! leases have run out too, and the first rescuer back would take jobs whose handlers are
//! still running. So a rescuer only rescues after it has reached the database without a break
//! for a whole grace (the lease, by default), and the statement itself rescues nothing during
//! that grace after the server started. Live workers renew their leases within a heartbeat of
//! reconnecting, well inside the grace; dead ones cannot, and their jobs are rescued once the
//! grace has passed.

use crate::engine::loops::Every;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::db::Db;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::error::EngineError;
use crate::engine::notify::Signals;

pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(5);
const RESCUE_BATCH: i64 = 1_000;

pub const DEFAULT_RESCUE_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
pub struct RescuerConfig {
    pub interval: Duration,
    /// How long the database must have been reachable without a break (and up since its
    /// start) before expired leases are rescued. At least the lease: live workers need a
    /// heartbeat after an outage to renew theirs.
    pub grace: Duration,
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: DEFAULT_RESCUE_INTERVAL,
            grace: DEFAULT_RESCUE_GRACE,
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
    pool: Db,
    config: RescuerConfig,
}

impl Rescuer {
    pub fn new(config: RescuerConfig, pool: Db) -> Self {
        Rescuer { pool, config }
    }

    /// One pass, in batches until no expired lease is left. `now` moves the clock for tests.
    pub async fn run_once(&self, now: Option<DateTime<Utc>>) -> Result<RescueReport, EngineError> {
        let mut report = RescueReport::default();
        let grace_ms = self.config.grace.as_millis() as i64;
        loop {
            let rows = sqlx::query_file!(
                "src/engine/maintenance/rescue_expired.sql",
                now,
                RESCUE_BATCH,
                grace_ms,
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
        let mut every = Every::new(self.config.interval, &stop);
        // Since when the database has answered every pass promptly; None after a failure.
        let mut reachable_since: Option<Instant> = None;
        while every.tick().await {
            let rescue = reachable_since.is_some_and(|since| since.elapsed() >= self.config.grace);
            let pass = async {
                if rescue {
                    self.run_once(None).await.map(Some)
                } else {
                    self.probe().await.map(|()| None)
                }
            };
            let result = tokio::time::timeout(self.config.interval, pass)
                .await
                .unwrap_or(Err(EngineError::Timeout("a rescue pass")));
            // A pass bounded by the interval: one that waited longer for a connection may
            // have waited out an outage, and counts as one.
            match result {
                Ok(report) => {
                    if reachable_since.is_none() {
                        tracing::info!(
                            grace_s = self.config.grace.as_secs(),
                            "database reachable; rescuing expired leases after the grace"
                        );
                        reachable_since = Some(Instant::now());
                    }
                    if let Some(report) = report.filter(|r| r.total() > 0) {
                        tracing::warn!(requeued = ?report.requeued, failed = ?report.failed,
                            "rescued jobs whose lease expired");
                        for (queue, n) in &report.requeued {
                            crate::engine::metrics::record_rescued(queue, *n);
                            signals.wake(queue);
                        }
                    }
                }
                Err(error) => {
                    if reachable_since.is_some() {
                        tracing::warn!(error = %error, "rescue pass failed; rescuing again only after the database has been reachable for the grace");
                    }
                    reachable_since = None;
                }
            }
        }
    }

    /// Whether the database answers.
    async fn probe(&self) -> Result<(), EngineError> {
        sqlx::query!("SELECT 1 AS \"one!\"")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}
