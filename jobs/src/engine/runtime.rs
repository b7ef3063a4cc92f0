//! The engine of one process: its shared state ([`Engine`]) and the background tasks that
//! keep its jobs (completer, lease renewal, rescuer, maintainer, gauges, listener).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::complete::{Completer, CompleterConfig, Completion, CompletionHandle};
use super::lease;
use super::maintenance::{Maintainer, MaintainerConfig, Rescuer, RescuerConfig};
use super::metrics;
use super::notify::{self, Signals};
use super::outcome::Action;
use super::registry::Registry;

pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How the engine of one process behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a claim holds a job without renewal. A killed worker's jobs run again within
    /// `lease + rescue.interval` (20 s by default).
    pub lease: Duration,
    /// Renewal period; a third of the lease leaves two chances before it lapses.
    pub heartbeat: Duration,
    pub rescue: RescuerConfig,
    /// Claim again after this long without a notification.
    pub poll_interval: Duration,
    /// LISTEN for enqueue notifications; off for poolers that break LISTEN (poll only).
    pub listen: bool,
    pub completer: CompleterConfig,
    /// The single-leader maintenance (pruning finished jobs); `None` runs no maintainer.
    pub maintenance: Option<MaintainerConfig>,
    /// Sample the queue-depth gauges this often; `None` (the default) samples nothing, for
    /// processes that export no metrics.
    pub gauges: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lease: DEFAULT_LEASE,
            heartbeat: DEFAULT_LEASE / 3,
            rescue: RescuerConfig::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            listen: true,
            completer: CompleterConfig::default(),
            maintenance: Some(MaintainerConfig::default()),
            gauges: None,
        }
    }
}

impl EngineConfig {
    /// Sets the lease and derives the heartbeat from it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = lease / 3;
        self
    }
}

/// A running engine: cheap to clone, shared by every worker of the process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    owner: Uuid,
    config: EngineConfig,
    completer: CompletionHandle,
    registry: Registry,
    signals: Signals,
}

/// Owns the engine's background tasks; [`EngineHandle::shutdown`] stops them.
pub struct EngineHandle {
    engine: Engine,
    stop: CancellationToken,
    services: Vec<JoinHandle<()>>,
    completer: JoinHandle<()>,
}

impl Engine {
    /// Starts the engine's tasks (completer, lease renewal, rescuer and, if enabled, the
    /// maintainer, the gauges and the listener) with a fresh owner id for this process.
    pub fn start(pool: PgPool, config: EngineConfig) -> EngineHandle {
        let owner = Uuid::new_v4();
        let registry = Registry::default();
        let signals = Signals::default();
        let stop = CancellationToken::new();
        let (completer, completion_handle) = Completer::new(
            pool.clone(),
            owner,
            registry.clone(),
            signals.clone(),
            config.poll_interval,
            config.completer,
        );
        let engine = Engine {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                owner,
                config: config.clone(),
                completer: completion_handle,
                registry: registry.clone(),
                signals: signals.clone(),
            }),
        };
        let mut services = vec![
            tokio::spawn(lease::run_heartbeat(
                pool.clone(),
                owner,
                registry,
                config.lease,
                config.heartbeat,
                stop.clone(),
            )),
            tokio::spawn(
                Rescuer::new(config.rescue, pool.clone()).run(signals.clone(), stop.clone()),
            ),
        ];
        if let Some(maintenance) = config.maintenance {
            services.push(tokio::spawn(
                Maintainer::new(maintenance, pool.clone()).run(stop.clone()),
            ));
        }
        if let Some(interval) = config.gauges {
            services.push(tokio::spawn(metrics::run_gauges(
                pool.clone(),
                interval,
                stop.clone(),
            )));
        }
        if config.listen {
            services.push(tokio::spawn(notify::run_listener(
                pool,
                signals,
                stop.clone(),
            )));
        }
        tracing::info!(owner = %owner, "engine started");
        EngineHandle {
            engine,
            stop,
            services,
            completer: tokio::spawn(completer.run()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// This process's owner id: unique per start, never reused.
    pub fn owner(&self) -> Uuid {
        self.inner.owner
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn completer(&self) -> &CompletionHandle {
        &self.inner.completer
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// Returns once enqueue notifications reach this process (at once when it does not
    /// listen): from then on an enqueue or a resume wakes its idle workers.
    pub async fn wait_listening(&self) {
        if self.inner.config.listen {
            self.inner.signals.wait_listening().await;
        }
    }

    /// Jobs this process holds now (claimed or running).
    pub fn held_jobs(&self) -> usize {
        self.inner.registry.len()
    }
}

impl EngineHandle {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops the engine after the workers have stopped: releases held jobs that never started
    /// (in case a worker was cut off before its backend could), writes every outcome still
    /// queued, then ends the background tasks. Jobs still running at this point keep their
    /// lease until it lapses and are rescued by another worker.
    pub async fn shutdown(self) {
        let completer = self.engine.completer();
        let unstarted = self.engine.registry().unstarted();
        for (id, attempt) in unstarted {
            let _ = completer
                .send(Completion {
                    id,
                    attempt,
                    action: Action::Release,
                })
                .await;
        }
        let _ = completer.flush().await;
        self.stop.cancel();
        for service in self.services {
            let _ = service.await;
        }
        self.completer.abort();
        tracing::info!(owner = %self.engine.owner(), "engine stopped");
    }
}
