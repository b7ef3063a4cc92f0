//! The maintainer: runs the services that must run on one replica at a time (the pruner)
//! while it holds the maintenance duty's lease row in `job_leaders`.
//!
//! Every worker process runs a maintainer. Each tries to take the row: free, expired, or its
//! own. The one that holds it renews it every third of its lease and works while its last
//! renewal is less than a lease old; when it stops renewing (killed, hung, cut off from the
//! database) the row expires and another replica takes it on its next try, so a dead leader's
//! duties resume within the lease plus the retry interval. A row rather than a session
//! advisory lock: it needs no session of its own, so it works through a pooler in
//! transaction mode, and `SELECT * FROM job_leaders` shows who leads.
//!
//! Two leaders can overlap only by the clock skew between a leader that has lost touch and the
//! database: the duties are safe to run twice (pruning deletes what is old either way).

use crate::engine::loops::Every;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::Db;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::prune::{Pruner, PrunerConfig};
use crate::engine::error::EngineError;

/// The duty's name in `job_leaders`.
pub const MAINTENANCE_DUTY: &str = "maintenance";
/// How long a leader's claim lasts without renewal.
pub const DEFAULT_LEADERSHIP_LEASE: Duration = Duration::from_secs(15);
/// How often a replica that does not lead tries to take over.
pub const DEFAULT_LEADERSHIP_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct MaintainerConfig {
    pub prune: PrunerConfig,
    /// How long leadership lasts without renewal; renewed every third of it.
    pub leadership_lease: Duration,
    pub leadership_retry: Duration,
}

impl Default for MaintainerConfig {
    fn default() -> Self {
        MaintainerConfig {
            prune: PrunerConfig::default(),
            leadership_lease: DEFAULT_LEADERSHIP_LEASE,
            leadership_retry: DEFAULT_LEADERSHIP_RETRY,
        }
    }
}

/// Proof of leadership: the duty's row names this holder until it expires.
pub struct Leadership {
    pool: Db,
    holder: Uuid,
    lease: Duration,
    /// When the last renewal (or the taking) was sent: the leadership is sure until a lease
    /// after that, by this process's clock.
    renewed: Instant,
}

impl Leadership {
    /// Whether the leadership is sure now: renewed less than a lease ago.
    pub fn is_held(&self) -> bool {
        self.renewed.elapsed() < self.lease
    }

    /// Extends the lease; false once the row names another holder or the leadership has
    /// lapsed. A failed round trip keeps it until the lease runs out.
    pub async fn renew(&mut self) -> bool {
        let sent = Instant::now();
        let renewed = sqlx::query!(
            "UPDATE job_leaders SET expires_at = now() + $3::bigint * interval '1 millisecond' \
             WHERE duty = $1 AND holder = $2",
            MAINTENANCE_DUTY,
            self.holder,
            self.lease.as_millis() as i64,
        )
        .execute(&self.pool)
        .await;
        match renewed {
            Ok(done) if done.rows_affected() == 1 => {
                self.renewed = sent;
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::warn!(error = %error, "could not renew the maintenance leadership");
                self.is_held()
            }
        }
    }

    /// Gives the leadership up, so another replica takes it on its next try.
    pub async fn release(self) {
        let _ = sqlx::query!(
            "DELETE FROM job_leaders WHERE duty = $1 AND holder = $2",
            MAINTENANCE_DUTY,
            self.holder,
        )
        .execute(&self.pool)
        .await;
    }
}

pub struct Maintainer {
    pool: Db,
    config: MaintainerConfig,
    /// This process's engine owner id.
    holder: Uuid,
    leading: Arc<AtomicBool>,
}

impl Maintainer {
    /// A maintainer for the process whose engine owner id is `holder`.
    pub fn new(config: MaintainerConfig, pool: Db, holder: Uuid) -> Self {
        Maintainer {
            pool,
            config,
            holder,
            leading: Arc::default(),
        }
    }

    /// Whether this maintainer leads now (shared flag, for tests and status).
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    /// Tries once to take the duty's row: free, expired, or already this holder's.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, EngineError> {
        let sent = Instant::now();
        let taken = sqlx::query_scalar!(
            "INSERT INTO job_leaders AS l (duty, holder, holder_name, expires_at) \
             VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond') \
             ON CONFLICT (duty) DO UPDATE \
             SET holder = excluded.holder, holder_name = excluded.holder_name, \
                 expires_at = excluded.expires_at, \
                 since = CASE WHEN l.holder = excluded.holder THEN l.since ELSE now() END \
             WHERE l.expires_at < now() OR l.holder = excluded.holder \
             RETURNING holder",
            MAINTENANCE_DUTY,
            self.holder,
            process_name(),
            self.config.leadership_lease.as_millis() as i64,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.map(|_| Leadership {
            pool: self.pool.clone(),
            holder: self.holder,
            lease: self.config.leadership_lease,
            renewed: sent,
        }))
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

    /// Renews the leadership and runs the duties until `stop` or until the leadership is
    /// lost. Renewal runs beside the duties, so a long pruning pass cannot let it lapse.
    async fn lead(&self, mut leadership: Leadership, pruner: &Pruner, stop: &CancellationToken) {
        let lost = CancellationToken::new();
        let renewing = async {
            let mut every = Every::new(self.config.leadership_lease / 3, stop);
            // The first tick is at once: the leadership was just taken.
            every.tick().await;
            while every.tick().await {
                if !leadership.renew().await {
                    tracing::warn!("lost the maintenance leadership; stepping down");
                    lost.cancel();
                    return;
                }
            }
        };
        let working = async {
            let mut ticker = tokio::time::interval(pruner.config().interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = lost.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                pruner.run_logged().await;
            }
        };
        tokio::join!(renewing, working);
        if stop.is_cancelled() {
            leadership.release().await;
        }
    }
}

/// `host:pid` of this process, for `job_leaders.holder_name`.
fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}
