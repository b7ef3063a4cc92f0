//! The pruner: deletes finished jobs (completed, cancelled and failed) once they are older
//! than the retention, in keyset batches. Only one replica runs it at a time (see
//! [`super::Maintainer`]); `worker prune` runs one pass by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::audit::{action, subject, Actor};
use crate::db::Db;
use chrono::{DateTime, Utc};

use crate::engine::error::EngineError;

pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_PRUNE_BATCH: usize = 1_000;

#[derive(Debug, Clone, Copy)]
pub struct PrunerConfig {
    /// Time between passes.
    pub interval: Duration,
    /// Finished jobs older than this are deleted.
    pub retention: Duration,
    /// Rows per DELETE statement.
    pub batch: usize,
}

impl Default for PrunerConfig {
    fn default() -> Self {
        PrunerConfig {
            interval: DEFAULT_PRUNE_INTERVAL,
            retention: DEFAULT_RETENTION,
            batch: DEFAULT_PRUNE_BATCH,
        }
    }
}

/// What one pass deleted, per queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub deleted: BTreeMap<String, u64>,
}

impl PruneReport {
    pub fn total(&self) -> u64 {
        self.deleted.values().sum()
    }
}

pub struct Pruner {
    pool: Db,
    config: PrunerConfig,
}

impl Pruner {
    pub fn new(config: PrunerConfig, pool: Db) -> Self {
        Pruner { pool, config }
    }

    pub fn config(&self) -> &PrunerConfig {
        &self.config
    }

    /// One pass over every finished job older than the retention, a batch per statement.
    /// `now` moves the clock for tests; `None` is the database's clock.
    pub async fn run_once(&self, now: Option<DateTime<Utc>>) -> Result<PruneReport, EngineError> {
        self.pass(now, None).await
    }

    /// One pass asked for by an operator: each batch also records a `jobs.pruned` event by
    /// `actor` for each queue it deleted from, in the batch's statement. (The leader's own
    /// passes are routine and not audited.)
    pub async fn run_once_by(&self, actor: &Actor) -> Result<PruneReport, EngineError> {
        self.pass(None, Some(actor)).await
    }

    async fn pass(
        &self,
        now: Option<DateTime<Utc>>,
        actor: Option<&Actor>,
    ) -> Result<PruneReport, EngineError> {
        let actor = actor.map(Actor::name);
        let mut report = PruneReport::default();
        let retention_ms = self.config.retention.as_millis().min(i64::MAX as u128) as i64;
        let batch = self.config.batch.max(1);
        let limit = batch as i64;
        let mut cursor: Option<(DateTime<Utc>, i64)> = None;
        loop {
            let rows = sqlx::query_file!(
                "src/engine/maintenance/prune_finished.sql",
                now,
                retention_ms,
                limit,
                cursor.map(|(at, _)| at),
                cursor.map(|(_, id)| id).unwrap_or(0),
                actor.as_deref(),
                action::JOBS_PRUNED,
                subject::QUEUE,
            )
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                *report.deleted.entry(row.queue.clone()).or_default() += 1;
            }
            if rows.len() < batch {
                return Ok(report);
            }
            cursor = rows.iter().map(|row| (row.finished_at, row.id)).max();
        }
    }

    /// One pass, logged; errors are logged and the next pass tries again.
    pub async fn run_logged(&self) {
        match self.run_once(None).await {
            Ok(report) if report.total() > 0 => {
                tracing::info!(deleted = ?report.deleted, "pruned finished jobs")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "prune pass failed"),
        }
    }
}
