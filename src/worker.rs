//! The worker runtime: one apalis worker per queue, all on one engine (one owner id, one
//! completer, one lease renewer, one rescuer and one listener per process).

use std::time::Duration;

use anyhow::{bail, Context};
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, Monitor, WorkerBuilder};
use poda_jobs::engine::{
    BackendSettings, Engine, EngineConfig, JobError, JobMeta, Outcome, RescuerConfig,
};
use poda_jobs::probe::{self, ProbeJob};
use poda_jobs::ticket::{self, TicketBatchHandle, TicketBatcher, TicketBatcherConfig, TicketJob};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;

/// Queues this build has handlers for.
pub const KNOWN_QUEUES: &[&str] = &[probe::QUEUE, ticket::QUEUE];

/// After the workers stop, how long the ticket batcher may take to write its last batches.
const TICKET_BATCHER_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queues: Vec<String>,
    pub concurrency: usize,
    /// Handler slots of the tickets queue.
    pub ticket_concurrency: usize,
    pub ticket_batcher: TicketBatcherConfig,
    pub batch_size: usize,
    pub engine: EngineConfig,
    pub shutdown_grace: Duration,
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
        if args.ticket_concurrency == 0 {
            bail!("--ticket-concurrency must be at least 1");
        }
        if args.ticket_batch_size == 0 || args.ticket_batches_in_flight == 0 {
            bail!("--ticket-batch-size and --ticket-batches-in-flight must be at least 1");
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
        engine.poll_interval = args.poll_interval;
        engine.listen = !args.poll_only;
        // Slots free up as soon as an outcome is queued, so the backlog bounds how many jobs
        // a process holds beyond its slots; a small one keeps completion and lease renewal
        // cheap when handlers outrun the completer (ticket batches do).
        engine.completer.backlog = args.completion_backlog.max(1);
        Ok(WorkerOptions {
            queues,
            concurrency: args.concurrency,
            ticket_concurrency: args.ticket_concurrency,
            ticket_batcher: TicketBatcherConfig {
                batch: args.ticket_batch_size,
                delay: args.ticket_batch_delay,
                in_flight: args.ticket_batches_in_flight,
                ..TicketBatcherConfig::default()
            },
            batch_size: args.batch_size,
            engine,
            shutdown_grace: args.shutdown_grace,
        })
    }

    /// Connections the handlers may use at once. Ticket handlers use none of their own: the
    /// ticket batcher writes with one connection per batch in flight.
    pub fn handler_connections(&self) -> u32 {
        let wanted: usize = self
            .queues
            .iter()
            .map(|queue| match queue.as_str() {
                ticket::QUEUE => self.ticket_batcher.in_flight + 1,
                _ => self.concurrency,
            })
            .sum();
        wanted.clamp(2, 64) as u32
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

    // One ticket batcher per process, shared by the tickets worker's handlers.
    let tickets = options.queues.iter().any(|q| q == ticket::QUEUE).then(|| {
        let stop = CancellationToken::new();
        let (handle, writing) =
            TicketBatcher::start(handler_pool.clone(), options.ticket_batcher, stop.clone());
        (handle, writing, stop)
    });

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
            ticket::QUEUE => {
                let engine = engine.clone();
                let batcher = match &tickets {
                    Some((handle, _, _)) => handle.clone(),
                    None => bail!("the ticket batcher was not started"),
                };
                let settings = BackendSettings {
                    concurrency: options.ticket_concurrency,
                    ..settings
                };
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", ticket::QUEUE, engine.owner()))
                        .backend(engine.backend::<TicketJob>(settings.clone()))
                        .data(batcher.clone())
                        .enable_tracing()
                        .build(run_ticket)
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
    if let Some((batcher, writing, stop)) = tickets {
        // The handlers are done; the batcher ends once its last batches are written.
        drop(batcher);
        stop.cancel();
        if tokio::time::timeout(TICKET_BATCHER_DRAIN, writing)
            .await
            .is_err()
        {
            tracing::warn!(
                "the ticket batcher did not finish in time; unwritten tickets run again"
            );
        }
    }
    handle.shutdown().await;
    tracing::info!("worker stopped");
    result
}

async fn run_probe(job: ProbeJob, meta: JobMeta, pool: Data<PgPool>) -> Result<Outcome, JobError> {
    probe::handle(&pool, &meta, job).await
}

async fn run_ticket(
    job: TicketJob,
    meta: JobMeta,
    batcher: Data<TicketBatchHandle>,
) -> Result<Outcome, JobError> {
    ticket::handler::handle(&batcher, &meta, job).await
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
