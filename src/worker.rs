//! The worker runtime: one apalis worker per queue, all on one engine (one owner id, one
//! completer, one lease renewer, one rescuer and one listener per process).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, Monitor, WorkerBuilder};
use poda_jobs::engine::{
    BackendSettings, Engine, EngineConfig, JobError, JobMeta, Outcome, RescuerConfig,
};
use poda_jobs::probe::{self, ProbeJob};
use poda_jobs::transfer::breaker::{Breaker, BreakerConfig, DEFAULT_FAILURE_RATE};
use poda_jobs::transfer::monime::{ApiToken, MonimeClient, MonimeConfig, DEFAULT_CONNECT_TIMEOUT};
use poda_jobs::transfer::rate_limit::{GlobalRateLimit, RateLimitConfig, TRANSFER_BUCKET};
use poda_jobs::transfer::{self, TransferContext, TransferJob, TransferSettings};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::{MonimeArgs, RunArgs, TransferArgs};

/// Queues this build has handlers for.
pub const KNOWN_QUEUES: &[&str] = &[probe::QUEUE, transfer::QUEUE];

/// What the `commission_transfers` queue needs: Monime, and how to pace calls to it.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub monime: MonimeConfig,
    pub settings: TransferSettings,
    pub breaker: BreakerConfig,
    pub rate_limit: Option<RateLimitConfig>,
}

impl TransferOptions {
    /// `Ok(None)` when Monime is not configured at all; an error naming the missing settings
    /// when it is configured in part.
    pub fn from_args(monime: &MonimeArgs, args: &TransferArgs) -> anyhow::Result<Option<Self>> {
        let Some((config, platform_account_id)) = monime_config(monime)? else {
            return Ok(None);
        };
        if args.transfer_poll_initial.is_zero()
            || args.transfer_poll_max < args.transfer_poll_initial
        {
            bail!("--transfer-poll-initial must be positive and at most --transfer-poll-max");
        }
        if args.breaker_min_calls == 0 || args.breaker_reset.is_zero() {
            bail!("--breaker-min-calls and --breaker-reset must be positive");
        }
        let rate_limit = (args.transfer_rate_limit > 0).then(|| {
            let burst = if args.transfer_rate_burst == 0 {
                (args.transfer_rate_limit / 60).max(1)
            } else {
                args.transfer_rate_burst
            };
            RateLimitConfig::per_minute(args.transfer_rate_limit, burst)
        });
        Ok(Some(TransferOptions {
            monime: config,
            settings: TransferSettings {
                platform_account_id,
                poll_initial: args.transfer_poll_initial,
                poll_max: args.transfer_poll_max,
                poll_inline: args.transfer_poll_inline,
            },
            breaker: BreakerConfig {
                window: args.breaker_window,
                min_calls: args.breaker_min_calls,
                failure_rate: DEFAULT_FAILURE_RATE,
                reset: args.breaker_reset,
            },
            rate_limit,
        }))
    }
}

/// The Monime client settings and the platform account, or `None` when none is set.
pub fn monime_config(args: &MonimeArgs) -> anyhow::Result<Option<(MonimeConfig, String)>> {
    let settings = [
        ("MONIME_API_URL", args.monime_api_url.is_some()),
        ("MONIME_API_TOKEN", args.monime_api_token.is_some()),
        ("MONIME_SPACE_ID", args.monime_space_id.is_some()),
        (
            "MONIME_PLATFORM_ACCOUNT_ID",
            args.monime_platform_account_id.is_some(),
        ),
    ];
    let missing: Vec<&str> = settings
        .iter()
        .filter(|(_, set)| !set)
        .map(|(n, _)| *n)
        .collect();
    if missing.len() == settings.len() {
        return Ok(None);
    }
    if !missing.is_empty() {
        bail!(
            "Monime is configured in part: set {} too",
            missing.join(", ")
        );
    }
    let url = args.monime_api_url.clone().unwrap_or_default();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("MONIME_API_URL must be an http(s) URL, not {url:?}");
    }
    let token = args.monime_api_token.clone().unwrap_or_default();
    Ok(Some((
        MonimeConfig {
            base_url: url,
            token: ApiToken::new(token.expose()),
            space_id: args.monime_space_id.clone().unwrap_or_default(),
            version: args.monime_version.clone(),
            timeout: args.monime_timeout,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.min(args.monime_timeout),
        },
        args.monime_platform_account_id.clone().unwrap_or_default(),
    )))
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub batch_size: usize,
    pub engine: EngineConfig,
    pub shutdown_grace: Duration,
    /// Required when `queues` holds `commission_transfers`.
    pub transfers: Option<TransferOptions>,
}

impl WorkerOptions {
    pub fn from_args(args: &RunArgs, monime: &MonimeArgs) -> anyhow::Result<Self> {
        let transfers = TransferOptions::from_args(monime, &args.transfers)?;
        let queues: Vec<String> = if args.queues.is_empty() {
            KNOWN_QUEUES
                .iter()
                .filter(|q| **q != transfer::QUEUE || transfers.is_some())
                .map(|q| q.to_string())
                .collect()
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
        if queues.iter().any(|q| q == transfer::QUEUE) && transfers.is_none() {
            bail!(
                "the {} queue needs Monime: set MONIME_API_URL, MONIME_API_TOKEN, MONIME_SPACE_ID and MONIME_PLATFORM_ACCOUNT_ID",
                transfer::QUEUE
            );
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
        engine.poll_interval = args.poll_interval;
        engine.listen = !args.poll_only;
        Ok(WorkerOptions {
            queues,
            concurrency: args.concurrency,
            batch_size: args.batch_size,
            engine,
            shutdown_grace: args.shutdown_grace,
            transfers,
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
            transfer::QUEUE => {
                let Some(transfers) = &options.transfers else {
                    bail!("the {} queue needs Monime settings", transfer::QUEUE);
                };
                let context = Arc::new(transfer_context(&handler_pool, transfers)?);
                let engine = engine.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", transfer::QUEUE, engine.owner()))
                        .backend(engine.backend::<TransferJob>(settings.clone()))
                        .data(context.clone())
                        .enable_tracing()
                        .build(run_transfer)
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

/// The shared state of this process's transfer handlers: one Monime client (its connection
/// pool), one circuit breaker, and the global rate limit if one is set.
pub fn transfer_context(
    pool: &PgPool,
    options: &TransferOptions,
) -> anyhow::Result<TransferContext> {
    let client = MonimeClient::new(options.monime.clone()).context("building the Monime client")?;
    tracing::info!(monime = %options.monime.base_url, rate_limit_per_s = ?options.rate_limit.map(|r| r.per_second),
        "commission transfers enabled");
    // Status updates commit asynchronously (see TransferContext); they are short, so a few
    // connections serve every handler.
    let status_options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    let status_pool = PgPoolOptions::new()
        .max_connections((pool.options().get_max_connections() / 4).clamp(2, 8))
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(status_options);
    Ok(TransferContext {
        pool: pool.clone(),
        status_pool,
        client,
        breaker: Breaker::new(options.breaker),
        rate_limit: options
            .rate_limit
            .map(|config| GlobalRateLimit::new(pool.clone(), TRANSFER_BUCKET, config)),
        settings: options.settings.clone(),
    })
}

async fn run_transfer(
    job: TransferJob,
    meta: JobMeta,
    context: Data<Arc<TransferContext>>,
) -> Result<Outcome, JobError> {
    transfer::handle(&context, &meta, job).await
}

async fn run_probe(job: ProbeJob, meta: JobMeta, pool: Data<PgPool>) -> Result<Outcome, JobError> {
    probe::handle(&pool, &meta, job).await
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
