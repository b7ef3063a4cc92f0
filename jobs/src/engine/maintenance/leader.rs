//! The maintainer: runs the services that must run on one replica at a time (the pruner)
//! while it holds a Postgres session advisory lock.
//!
//! Every worker process runs a maintainer. Each tries `pg_try_advisory_lock` on a dedicated
//! connection (outside the pool); the one that gets it leads for as long as that session
//! lives. If the leader's process dies or its connection breaks, Postgres frees the lock and
//! another replica takes over on its next try. The leader checks its connection before each
//! pass, so it never works on after losing the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::prune::{Pruner, PrunerConfig};
use crate::engine::error::EngineError;

/// The advisory lock key of the maintenance leader (any constant unique to Poda). Advisory
/// locks are per database, so databases on one server do not compete.
pub const MAINTENANCE_LOCK_KEY: i64 = 7_426_100_002;
/// How often a replica that does not lead tries to take over.
pub const DEFAULT_LEADERSHIP_RETRY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
pub struct MaintainerConfig {
    pub prune: PrunerConfig,
    pub leadership_retry: Duration,
    pub lock_key: i64,
}

impl Default for MaintainerConfig {
    fn default() -> Self {
        MaintainerConfig {
            prune: PrunerConfig::default(),
            leadership_retry: DEFAULT_LEADERSHIP_RETRY,
            lock_key: MAINTENANCE_LOCK_KEY,
        }
    }
}

/// Proof of leadership: the session that holds the advisory lock.
pub struct Leadership {
    conn: PgConnection,
    key: i64,
}

impl Leadership {
    /// True while the session (and so the lock) is alive.
    pub async fn is_alive(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }

    /// Gives the lock up and closes the session.
    pub async fn release(mut self) {
        let _ = sqlx::query_scalar!("SELECT pg_advisory_unlock($1)", self.key)
            .fetch_one(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

pub struct Maintainer {
    pool: PgPool,
    config: MaintainerConfig,
    leading: Arc<AtomicBool>,
}

impl Maintainer {
    pub fn new(config: MaintainerConfig, pool: PgPool) -> Self {
        Maintainer {
            pool,
            config,
            leading: Arc::default(),
        }
    }

    /// Whether this maintainer leads now (shared flag, for tests and status).
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    /// Tries once to become the leader, on a new connection that is not part of the pool.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, EngineError> {
        let options = self.pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        let won = sqlx::query_scalar!(
            "SELECT pg_try_advisory_lock($1) AS \"locked!\"",
            self.config.lock_key
        )
        .fetch_one(&mut conn)
        .await?;
        if won {
            Ok(Some(Leadership {
                conn,
                key: self.config.lock_key,
            }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Tries to lead until `stop`; while leading, runs the pruner every interval.
    pub async fn run(self, stop: CancellationToken) {
        let pruner = Pruner::new(self.config.prune, self.pool.clone());
        loop {
            match self.try_lead().await {
                Ok(Some(leadership)) => {
                    self.leading.store(true, Ordering::SeqCst);
                    tracing::info!("leading maintenance (pruning finished jobs)");
                    self.lead(leadership, &pruner, &stop).await;
                    self.leading.store(false, Ordering::SeqCst);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "could not try for maintenance leadership")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.leadership_retry) => {}
            }
        }
    }

    async fn lead(&self, mut leadership: Leadership, pruner: &Pruner, stop: &CancellationToken) {
        let mut ticker = tokio::time::interval(pruner.config().interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    leadership.release().await;
                    return;
                }
                _ = ticker.tick() => {}
            }
            if !leadership.is_alive().await {
                tracing::warn!("lost the maintenance lock's connection; stepping down");
                return;
            }
            pruner.run_logged().await;
        }
    }
}
