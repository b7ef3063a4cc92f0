//! The worker runtime: one apalis worker per queue, all on one engine (one owner id, one
//! completer, one lease renewer, one rescuer and one listener per process).

use std::time::Duration;

use anyhow::{bail, Context};
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, Monitor, WorkerBuilder};
use poda_jobs::cycle::{self, CycleConfig, CycleJob};
use poda_jobs::engine::{
    BackendSettings, Engine, EngineConfig, JobError, JobMeta, Outcome, RescuerConfig,
};
use poda_jobs::notification::{self, AgentSummaryJob, Notifier, NotifierConfig};
use poda_jobs::probe::{self, ProbeJob};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;

/// Queues this build has handlers for.
pub const KNOWN_QUEUES: &[&str] = &[probe::QUEUE, cycle::QUEUE, notification::QUEUE];

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub batch_size: usize,
    pub engine: EngineConfig,
    pub shutdown_grace: Duration,
    pub cycle: CycleConfig,
    pub notifier: NotifierConfig,
}

impl WorkerOptions {
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        let queues: Vec<String> = if args.queues.is_empty() {
            KNOWN_QUEUES.iter().map(|q| q.to_string()).collect()
        } else {
            args.queues
                .iter()
                .map(|q| q.trim().to_owned())
                .filter(|q| !q.is_empty())
                .collect()
        };
        for queue in &queues {
            if !KNOWN_QUEUES.contains(&queue.as_str()) {
                bail!(
                    "--queues: no handler for queue {queue:?} in this build (known: {})",
                    KNOWN_QUEUES.join(", ")
                );
            }
        }
        if args.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if args.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if args.lease < Duration::from_secs(1) {
            bail!("--lease must be at least 1s");
        }
        let mut engine = EngineConfig::default().with_lease(args.lease);
        engine.rescue = RescuerConfig {
            interval: args.rescue_interval,
        };
        if args.cycle_chunk_size == 0 {
            bail!("--cycle-chunk-size must be at least 1");
        }
        if let Some(url) = &args.notifications_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--notifications-url (NOTIFICATIONS_URL) must be an http:// or https:// URL");
            }
        }
        engine.poll_interval = args.poll_interval;
        engine.listen = !args.poll_only;
        Ok(WorkerOptions {
            queues,
            concurrency: args.concurrency,
            batch_size: args.batch_size,
            engine,
            shutdown_grace: args.shutdown_grace,
            cycle: CycleConfig {
                chunk_size: args.cycle_chunk_size as i64,
            },
            notifier: NotifierConfig {
                url: args
                    .notifications_url
                    .clone()
                    .filter(|u| !u.trim().is_empty()),
                timeout: args.notifications_timeout,
            },
        })
    }

    /// Connections the handlers may use at once.
    pub fn handler_connections(&self) -> u32 {
        (self.concurrency * self.queues.len()).clamp(2, 64) as u32
    }

    /// Connections for claims, completions, leases, rescue and the listener.
    pub fn engine_connections(&self) -> u32 {
        (4 + self.queues.len()) as u32
    }
}

/// Runs workers for `options.queues` until `shutdown`, then stops claiming, lets running jobs
/// finish within the grace period, releases jobs that never started and returns.
pub async fn run_workers(
    handler_pool: PgPool,
    engine_pool: PgPool,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = Engine::start(engine_pool, options.engine.clone());
    let engine = handle.engine().clone();
    tracing::info!(queues = ?options.queues, concurrency = options.concurrency, owner = %engine.owner(),
        "worker started");

    let notifier =
        Notifier::new(options.notifier.clone()).context("building the notification client")?;
    let grace = options.shutdown_grace;
    // The grace timer starts when shutdown starts (a lazy future), not when the monitor is built.
    let mut monitor =
        Monitor::new().with_terminator(async move { tokio::time::sleep(grace).await });
    for queue in &options.queues {
        let settings = BackendSettings {
            queue: queue.clone(),
            concurrency: options.concurrency,
            batch_size: options.batch_size,
        };
        monitor = match queue.as_str() {
            probe::QUEUE => {
                let engine = engine.clone();
                let pool = handler_pool.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", probe::QUEUE, engine.owner()))
                        .backend(engine.backend::<ProbeJob>(settings.clone()))
                        .data(pool.clone())
                        .enable_tracing()
                        .build(run_probe)
                })
            }
            cycle::QUEUE => {
                let engine = engine.clone();
                let pool = handler_pool.clone();
                let config = options.cycle;
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", cycle::QUEUE, engine.owner()))
                        .backend(engine.backend::<CycleJob>(settings.clone()))
                        .data(pool.clone())
                        .data(config)
                        .enable_tracing()
                        .build(run_cycle)
                })
            }
            notification::QUEUE => {
                let engine = engine.clone();
                let notifier = notifier.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", notification::QUEUE, engine.owner()))
                        .backend(engine.backend::<AgentSummaryJob>(settings.clone()))
                        .data(notifier.clone())
                        .enable_tracing()
                        .build(run_notification)
                })
            }
            other => bail!("no handler for queue {other:?}"),
        };
    }

    let signal = async move {
        shutdown.cancelled().await;
        Ok(())
    };
    let result = monitor
        .run_with_signal(signal)
        .await
        .context("running workers");
    handle.shutdown().await;
    tracing::info!("worker stopped");
    result
}

async fn run_probe(job: ProbeJob, meta: JobMeta, pool: Data<PgPool>) -> Result<Outcome, JobError> {
    probe::handle(&pool, &meta, job).await
}

async fn run_cycle(
    job: CycleJob,
    meta: JobMeta,
    pool: Data<PgPool>,
    config: Data<CycleConfig>,
) -> Result<Outcome, JobError> {
    cycle::handle(&pool, &config, &meta, job).await
}

async fn run_notification(
    job: AgentSummaryJob,
    meta: JobMeta,
    notifier: Data<Notifier>,
) -> Result<Outcome, JobError> {
    notification::handle(&notifier, &meta, job).await
}

/// Serves Prometheus metrics (the engine's counters and histograms) on `addr`.
pub fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("listening for metrics on {addr}"))?;
    tracing::info!(%addr, "serving metrics");
    Ok(())
}
