//! The engine of one process: its shared state ([`Engine`]) and the background tasks that
//! keep its jobs (completer, lease renewal, rescuer, maintainer, gauges, scheduler, listener).

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::complete::{Completer, CompleterConfig, Completion, CompletionHandle};
use super::job::JobId;
use super::lease;
use super::loops::Loops;
use super::maintenance::{Maintainer, MaintainerConfig, Rescuer, RescuerConfig};
use super::metrics;
use super::notify::{self, Signals};
use super::outcome::Action;
use super::registry::Registry;
use super::schedule::{self, Schedule};
use super::wakeups::Wakeups;

pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a shutdown without a deadline of its own may take to write what is left.
pub const DEFAULT_SHUTDOWN_TIME: Duration = Duration::from_secs(30);

/// How the engine of one process behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a claim holds a job without renewal. A killed worker's jobs run again within
    /// `lease + rescue.interval` (20 s by default).
    pub lease: Duration,
    /// Renewal period. Each heartbeat renews the leases that would run out within 2.5
    /// periods (`lease::RENEW_AHEAD`): with a third of the lease, every run older than half a
    /// period, so short runs never renew and long ones are renewed with 1.5 periods to spare.
    pub heartbeat: Duration,
    pub rescue: RescuerConfig,
    /// Claim again after this long without a notification.
    pub poll_interval: Duration,
    /// Where enqueue notifications come from (workers also poll).
    pub listen: Listen,
    pub completer: CompleterConfig,
    /// The single-leader maintenance (pruning finished jobs); `None` runs no maintainer.
    pub maintenance: Option<MaintainerConfig>,
    /// Sample the queue-depth gauges this often; `None` (the default) samples nothing, for
    /// processes that export no metrics.
    pub gauges: Option<Duration>,
    /// Periodic jobs this process enqueues (every replica runs the scheduler; each slot is
    /// enqueued once). Empty: no scheduler loop.
    pub schedules: Vec<Schedule>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lease: DEFAULT_LEASE,
            heartbeat: DEFAULT_LEASE / 3,
            rescue: RescuerConfig::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            listen: Listen::default(),
            completer: CompleterConfig::default(),
            maintenance: Some(MaintainerConfig::default()),
            gauges: None,
            schedules: Vec::new(),
        }
    }
}

impl EngineConfig {
    /// Sets the lease and derives from it the heartbeat and the rescuers' grace after an
    /// outage (one lease: the time live workers have to renew theirs).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.heartbeat = lease / 3;
        self.rescue.grace = lease;
        self
    }

    /// Sets the maintenance leadership's lease to the job lease, with a retry of a third of
    /// it: a dead leader's duties resume within `4/3 × lease` (20 s by default), as its jobs
    /// do.
    pub fn with_maintenance(mut self, maintenance: Option<MaintainerConfig>) -> Self {
        self.maintenance = maintenance.map(|m| MaintainerConfig {
            leadership_lease: self.lease,
            leadership_retry: self.lease / 3,
            ..m
        });
        self
    }
}

/// Where an engine LISTENs for enqueue notifications. The listener keeps a session of its
/// own, opened with a pool's connect options.
#[derive(Debug, Clone, Default)]
pub enum Listen {
    /// On a session like the engine pool's. Behind a transaction pooler, which keeps no
    /// session, the engine polls instead.
    #[default]
    OnEnginePool,
    /// On a session like this pool's (a direct connection; nothing is opened until then).
    Via(sqlx::PgPool),
    /// Nowhere: workers poll.
    Off,
}

impl Listen {
    /// The pool whose connect options the listener uses on `engine_pool`'s engine, if any.
    fn session_like(&self, engine_pool: &Db) -> Option<sqlx::PgPool> {
        match self {
            Listen::OnEnginePool if engine_pool.behind_transaction_pooler() => {
                tracing::info!(
                    "the engine pool is behind a transaction pooler and no direct listen \
                     session was given: polling for new jobs instead of LISTENing"
                );
                None
            }
            Listen::OnEnginePool => Some(engine_pool.pool().clone()),
            Listen::Via(pool) => Some(pool.clone()),
            Listen::Off => None,
        }
    }
}

/// A running engine: cheap to clone, shared by every worker of the process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Db,
    owner: Uuid,
    config: EngineConfig,
    completer: CompletionHandle,
    registry: Registry,
    signals: Signals,
    loops: Loops,
    /// Claims under way (each a task of its own); closed when the process stops claiming.
    claims: TaskTracker,
    /// Queues to wake after a batch queue's transaction committed jobs into them.
    wakeups: Wakeups,
    stopping: CancellationToken,
}

/// Owns the engine's background tasks; [`EngineHandle::shutdown`] stops them.
pub struct EngineHandle {
    engine: Engine,
    stop: CancellationToken,
    give_up: CancellationToken,
}

impl Engine {
    /// Starts the engine's tasks (completer, lease renewal, rescuer and, if enabled, the
    /// maintainer, the gauges and the listener) with a fresh owner id for this process.
    pub fn start(pool: Db, mut config: EngineConfig) -> EngineHandle {
        let owner = Uuid::new_v4();
        let listen_session = config.listen.session_like(&pool);
        if listen_session.is_none() {
            config.listen = Listen::Off;
        }
        let registry = Registry::default();
        let signals = Signals::default();
        let loops = Loops::default();
        let stop = CancellationToken::new();
        let give_up = CancellationToken::new();
        let (completer, completion_handle) = Completer::new(
            pool.clone(),
            registry.clone(),
            signals.clone(),
            config.poll_interval,
            config.completer,
            give_up.clone(),
        );
        let engine = Engine {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                owner,
                config: config.clone(),
                completer: completion_handle,
                registry: registry.clone(),
                signals: signals.clone(),
                loops: loops.clone(),
                claims: TaskTracker::new(),
                wakeups: Wakeups::default(),
                stopping: CancellationToken::new(),
            }),
        };
        // The completer ends only when told to give up, at the end of a shutdown; so do the
        // wake-ups, which batches finishing during the shutdown still need.
        loops.spawn("engine:completer", &give_up, completer.run());
        loops.spawn(
            "engine:wakeups",
            &give_up,
            engine
                .inner
                .wakeups
                .clone()
                .run(pool.clone(), give_up.clone()),
        );
        loops.spawn(
            "engine:heartbeat",
            &stop,
            lease::run_heartbeat(
                pool.clone(),
                registry.clone(),
                config.lease,
                config.heartbeat,
                stop.clone(),
            ),
        );
        loops.spawn(
            "engine:rescuer",
            &stop,
            Rescuer::new(config.rescue, pool.clone()).run(signals.clone(), stop.clone()),
        );
        if let Some(maintenance) = config.maintenance {
            loops.spawn(
                "engine:maintainer",
                &stop,
                Maintainer::new(maintenance, pool.clone(), owner).run(stop.clone()),
            );
        }
        if let Some(interval) = config.gauges {
            loops.spawn(
                "engine:gauges",
                &stop,
                metrics::run_gauges(pool.clone(), interval, stop.clone()),
            );
        }
        if !config.schedules.is_empty() {
            loops.spawn(
                "engine:scheduler",
                &stop,
                schedule::run_scheduler(pool.clone(), config.schedules.clone(), stop.clone()),
            );
        }
        match listen_session {
            Some(session) => {
                let cancelled = registry.clone();
                let on_cancel = move |id: i64, token: i32| {
                    if cancelled.cancel(JobId(id), Some(token)) {
                        tracing::info!(
                            job.id = id,
                            claim_token = token,
                            "job cancelled while running here; telling its handler"
                        );
                    }
                };
                loops.spawn(
                    "engine:listener",
                    &stop,
                    notify::run_listener(session, signals, on_cancel, stop.clone()),
                );
            }
            // No NOTIFY reaches this process: find cancellations by polling the held runs, twice
            // per poll interval (within a second at the default interval).
            None => loops.spawn(
                "engine:cancel-watch",
                &stop,
                lease::run_cancel_watch(
                    pool.clone(),
                    registry.clone(),
                    config.poll_interval / 2,
                    stop.clone(),
                ),
            ),
        }
        tracing::info!(owner = %owner, "engine started");
        EngineHandle {
            engine,
            stop,
            give_up,
        }
    }

    pub fn pool(&self) -> &Db {
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

    /// Queues to wake once the transaction that enqueued into them has committed.
    pub fn wakeups(&self) -> &Wakeups {
        &self.inner.wakeups
    }

    pub(crate) fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// The process's watched loops: the engine's own, and any the worker adds.
    pub fn loops(&self) -> &Loops {
        &self.inner.loops
    }

    /// Runs a claim as a task of its own, so that it finishes (and registers its jobs) even
    /// when whoever started it stops polling it.
    pub(crate) fn track_claim<T: Send + 'static>(
        &self,
        claim: impl std::future::Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.inner.claims.spawn(claim)
    }

    /// Stops claiming, at once: backends hand out nothing more and start no claim. Claims
    /// under way finish and their jobs are released by the shutdown.
    pub fn stop_claiming(&self) {
        self.inner.stopping.cancel();
        self.inner.claims.close();
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }

    /// Cancelled when the process stops claiming.
    pub(crate) fn stopping_token(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// Returns once enqueue notifications reach this process (at once when it does not
    /// listen): from then on an enqueue or a resume wakes its idle workers.
    pub async fn wait_listening(&self) {
        if !matches!(self.inner.config.listen, Listen::Off) {
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

    /// [`EngineHandle::shutdown_by`] with [`DEFAULT_SHUTDOWN_TIME`] to write what is left.
    pub async fn shutdown(self) {
        self.shutdown_by(tokio::time::Instant::now() + DEFAULT_SHUTDOWN_TIME)
            .await
    }

    /// Stops the engine after the workers have stopped, by `deadline`: waits for claims under
    /// way, releases held jobs that never started (in case a worker was cut off before its
    /// backend could), writes every outcome still queued, then ends the background tasks.
    /// Outcomes the database has not taken by the deadline are logged with their job ids;
    /// jobs still running keep their lease until it lapses and are rescued by another worker.
    pub async fn shutdown_by(self, deadline: tokio::time::Instant) {
        let engine = &self.engine;
        engine.stop_claiming();
        if tokio::time::timeout_at(deadline, engine.inner.claims.wait())
            .await
            .is_err()
        {
            tracing::warn!("claims were still under way at the end of the shutdown");
        }
        let released = async {
            let completer = engine.completer();
            for (id, token) in engine.registry().unstarted() {
                completer
                    .send(Completion {
                        id,
                        token,
                        action: Action::Release,
                    })
                    .await?;
            }
            completer.flush().await
        };
        if tokio::time::timeout_at(deadline, released).await.is_err() {
            tracing::warn!("the shutdown's time ran out before every outcome was written");
        }
        // The completer names what it still holds, then ends; the other loops stop.
        self.give_up.cancel();
        self.stop.cancel();
        engine.loops().join("engine:").await;
        tracing::info!(owner = %engine.owner(), "engine stopped");
    }
}
