//! The worker runtime: one apalis worker per queue, all on one engine (one owner id, one
//! completer, one lease renewer, one rescuer and one listener per process). The `tickets`
//! queue is a batch queue instead: its runners claim, issue and finish a batch of ticket jobs
//! per transaction (`engine::batch_worker`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, Monitor, WorkerBuilder};
use std::collections::BTreeMap;
use std::path::PathBuf;

use poda_jobs::cycle::deadlines::{self, DeadlinesJob};
use poda_jobs::cycle::{self, CycleConfig, CycleJob};
use poda_jobs::db::Db;
use poda_jobs::engine::metrics::DEFAULT_GAUGE_INTERVAL;
use poda_jobs::engine::{
    batch_worker, BackendSettings, BatchSettings, Engine, EngineConfig, JobError, JobMeta, Listen,
    MaintainerConfig, Outcome, PgBackend, PrunerConfig,
};
use poda_jobs::events::{self, Deliverer, DelivererConfig, DeliveryJob, RelayConfig, Signer};
use poda_jobs::notification::{self, AgentSummaryJob, Notifier, NotifierConfig};
use poda_jobs::probe::{self, ProbeJob};
use poda_jobs::ticket::{self, TicketHandler};
use poda_jobs::transfer::breaker::{Breaker, BreakerConfig, DEFAULT_FAILURE_RATE};
use poda_jobs::transfer::monime::{ApiToken, MonimeClient, MonimeConfig, DEFAULT_CONNECT_TIMEOUT};
use poda_jobs::transfer::rate_limit::{GlobalRateLimit, RateLimitConfig, TRANSFER_BUCKET};
use poda_jobs::transfer::reconcile_job::{self, ReconcileJob};
use poda_jobs::transfer::{self, TransferContext, TransferJob, TransferSettings, TransferStore};
use tokio_util::sync::CancellationToken;

use crate::cli::{MonimeArgs, RunArgs, TransferArgs};
use crate::config::{DatabaseSettings, Secret};
use crate::http::webhooks::signature;
use crate::shutdown::Shutdown;
use crate::tally::ProbeTally;

/// Queues this build has handlers for.
pub const KNOWN_QUEUES: &[&str] = &[
    probe::QUEUE,
    ticket::QUEUE,
    transfer::QUEUE,
    cycle::QUEUE,
    notification::QUEUE,
    deadlines::QUEUE,
    reconcile_job::QUEUE,
    events::QUEUE,
];

/// Queues of periodic jobs that need one handler slot, not --concurrency of them.
const ONE_AT_A_TIME: &[&str] = &[deadlines::QUEUE, reconcile_job::QUEUE];
/// Queues whose handlers call Monime: worked by default only where Monime is configured.
const MONIME_QUEUES: &[&str] = &[transfer::QUEUE, reconcile_job::QUEUE];

/// After the workers stop, how long the transfer store may take to write its last batches.
const BATCHER_DRAIN: Duration = Duration::from_secs(10);
/// Restarts of one apalis worker before the process gives up and stops.
const MAX_WORKER_RESTARTS: usize = 3;
/// After a second signal, how long releasing unstarted jobs and writing outcomes may take.
const IMMEDIATE_STOP_TIME: Duration = Duration::from_secs(3);
/// However late the workers stopped, the time the engine gets to write what is left.
const MIN_FINAL_WRITE_TIME: Duration = Duration::from_secs(2);

/// What the `commission_transfers` queue needs: Monime, and how to pace calls to it.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub monime: MonimeConfig,
    pub settings: TransferSettings,
    pub breaker: BreakerConfig,
    pub rate_limit: Option<RateLimitConfig>,
    /// Transfers of one company running at once across every replica (0: no limit).
    pub max_in_flight_per_company: u32,
}

impl TransferOptions {
    /// Monime at `monime`, commissions to `platform_account_id`, and every other setting at
    /// the worker's defaults (the demo).
    pub fn new(monime: MonimeConfig, platform_account_id: String) -> Self {
        TransferOptions {
            monime,
            settings: TransferSettings {
                platform_account_id,
                poll_initial: transfer::handler::DEFAULT_POLL_INITIAL,
                poll_max: transfer::handler::DEFAULT_POLL_MAX,
                poll_inline: transfer::handler::DEFAULT_POLL_INLINE,
            },
            breaker: BreakerConfig::default(),
            rate_limit: None,
            max_in_flight_per_company: 0,
        }
    }

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
            max_in_flight_per_company: args.transfer_max_in_flight_per_company,
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
    /// Handler slots per queue (every queue of `queues` has an entry).
    pub concurrency: BTreeMap<String, usize>,
    /// The tickets queue's batches: jobs per transaction, transactions at once.
    pub ticket_batches: BatchSettings,
    /// Required when `queues` holds `commission_transfers`.
    pub transfers: Option<TransferOptions>,
    pub batch_size: usize,
    /// Jobs a claim may take beyond the free slots (0: claims are sized to the free slots).
    pub prefetch: usize,
    pub engine: EngineConfig,
    pub shutdown_grace: Duration,
    pub handler_connections: Option<u32>,
    pub engine_connections: Option<u32>,
    /// Write each probe run to this file at shutdown (benchmarks).
    pub probe_tally: Option<PathBuf>,
    /// Print `ready` on stdout once every connection is open and notifications arrive.
    pub announce_ready: bool,
    pub cycle: CycleConfig,
    pub notifier: NotifierConfig,
    pub events: EventsOptions,
    /// Serve `/metrics` and `/healthz` here.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl WorkerOptions {
    /// Options for `queues` with `concurrency` handler slots each and every other setting at
    /// its default (the demo, tests).
    pub fn for_queues(queues: &[&str], concurrency: usize) -> Self {
        WorkerOptions {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            concurrency: queues
                .iter()
                .map(|q| {
                    let slots = if *q == ticket::QUEUE {
                        ticket::batch_settings().jobs_at_once()
                    } else {
                        concurrency
                    };
                    (q.to_string(), slots)
                })
                .collect(),
            batch_size: 100,
            prefetch: 0,
            engine: EngineConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            handler_connections: None,
            engine_connections: None,
            probe_tally: None,
            announce_ready: false,
            cycle: CycleConfig::default(),
            notifier: NotifierConfig::default(),
            events: EventsOptions::default(),
            ticket_batches: ticket::batch_settings(),
            transfers: None,
            metrics_addr: None,
        }
    }

    pub fn from_args(args: &RunArgs, monime: &MonimeArgs) -> anyhow::Result<Self> {
        let transfers = TransferOptions::from_args(monime, &args.transfers)?;
        let queues: Vec<String> = if args.queues.is_empty() {
            // Without Monime settings the default skips commission transfers; naming the
            // queue explicitly without them is an error below.
            KNOWN_QUEUES
                .iter()
                .filter(|q| !MONIME_QUEUES.contains(q) || transfers.is_some())
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
        if let Some(queue) = queues.iter().find(|q| MONIME_QUEUES.contains(&q.as_str())) {
            if transfers.is_none() {
                bail!(
                    "the {queue} queue needs Monime: set MONIME_API_URL, MONIME_API_TOKEN, MONIME_SPACE_ID and MONIME_PLATFORM_ACCOUNT_ID"
                );
            }
        }
        if args.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if args.ticket_batch_size == 0 || args.ticket_batches_in_flight == 0 {
            bail!("--ticket-batch-size and --ticket-batches-in-flight must be at least 1");
        }
        let ticket_batches = BatchSettings {
            batch_size: args.ticket_batch_size,
            runners: args.ticket_batches_in_flight,
            claim_interval: args.ticket_claim_interval,
            ..ticket::batch_settings()
        };
        // The tickets queue holds at most its batches in flight.
        let mut concurrency: BTreeMap<String, usize> = queues
            .iter()
            .map(|q| {
                let slots = if q == ticket::QUEUE {
                    ticket_batches.jobs_at_once()
                } else if ONE_AT_A_TIME.contains(&q.as_str()) {
                    1
                } else {
                    args.concurrency
                };
                (q.clone(), slots)
            })
            .collect();
        for (queue, n) in &args.queue_concurrency {
            match concurrency.get_mut(queue) {
                Some(_) if queue == ticket::QUEUE => bail!(
                    "--queue-concurrency: the {} queue runs in batches; size it with --ticket-batch-size and --ticket-batches-in-flight",
                    ticket::QUEUE
                ),
                Some(slots) => *slots = *n,
                None => bail!(
                    "--queue-concurrency: {queue:?} is not among the queues this worker runs ({})",
                    queues.join(", ")
                ),
            }
        }
        if args.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if args.lease < Duration::from_secs(1) {
            bail!("--lease must be at least 1s");
        }
        let mut engine = EngineConfig::default().with_lease(args.lease);
        engine.rescue.interval = args.rescue_interval;
        if args.cycle_chunk_size == 0 {
            bail!("--cycle-chunk-size must be at least 1");
        }
        let events = EventsOptions::from_args(args)?;
        if let Some(url) = &args.notifications_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--notifications-url (NOTIFICATIONS_URL) must be an http:// or https:// URL");
            }
        }
        engine.poll_interval = args.poll_interval;
        engine.listen = match (&args.database_listen_url, args.poll_only) {
            (_, true) => Listen::Off,
            (Some(url), false) => Listen::Via(listen_pool(url)?),
            (None, false) => Listen::OnEnginePool,
        };
        engine = engine.with_maintenance((!args.no_maintenance).then(|| MaintainerConfig {
            prune: PrunerConfig {
                interval: args.prune_interval,
                retention: args.retention,
                ..PrunerConfig::default()
            },
            ..MaintainerConfig::default()
        }));
        engine.gauges = args.metrics_addr.map(|_| DEFAULT_GAUGE_INTERVAL);
        // A built-in schedule is enqueued only by the workers that run its job: a worker
        // started for other queues leaves no job behind that it cannot run.
        engine.schedules = crate::schedules::schedules(&args.schedules, transfers.is_some())?
            .into_iter()
            .filter(|s| {
                !crate::schedules::is_built_in(s.name()) || queues.iter().any(|q| q == s.queue())
            })
            .collect();
        if args.handler_connections == Some(0) || args.engine_connections == Some(0) {
            bail!("--handler-connections and --engine-connections must be at least 1");
        }
        // Slots free up as soon as an outcome is queued, so the backlog bounds how many jobs
        // a process holds beyond its slots.
        engine.completer.backlog = args.completion_backlog.max(1);
        Ok(WorkerOptions {
            queues,
            concurrency,
            ticket_batches,
            batch_size: args.batch_size,
            prefetch: args.prefetch,
            engine,
            shutdown_grace: args.shutdown_grace,
            handler_connections: args.handler_connections,
            engine_connections: args.engine_connections,
            probe_tally: args.probe_tally.clone(),
            announce_ready: args.announce_ready,
            metrics_addr: args.metrics_addr,
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
            events,
            transfers,
        })
    }

    /// Connections the handlers may use at once. The tickets queue holds one per batch in
    /// flight (its transaction); transfer handlers share the transfer store's.
    pub fn handler_connections(&self) -> u32 {
        self.handler_connections.unwrap_or_else(|| {
            let wanted: usize = self
                .concurrency
                .iter()
                .map(|(queue, slots)| match queue.as_str() {
                    ticket::QUEUE => self.ticket_batches.runners + 1,
                    // Rows are read and written in batches by the store; a handler holds a
                    // connection of its own only for the rare single-row writes (failures,
                    // rate-limit slots).
                    transfer::QUEUE => (transfer::store::ROW_BATCHES_IN_FLIGHT + 8).min(*slots + 1),
                    _ => *slots,
                })
                .sum();
            wanted.clamp(2, 64) as u32
        })
    }

    /// Connections for claims, completions, leases, rescue and the listener.
    pub fn engine_connections(&self) -> u32 {
        self.engine_connections
            .unwrap_or((4 + self.queues.len()) as u32)
    }
}

/// What the events queue needs: the receivers, the signing key and how to send.
#[derive(Debug, Clone, Default)]
pub struct EventsOptions {
    /// `EVENTS_WEBHOOK_URLS` are `relay.urls`.
    pub relay: RelayConfig,
    pub deliverer: DelivererConfig,
    /// `EVENTS_WEBHOOK_SECRET`; required when there are URLs.
    pub secret: Secret,
}

impl EventsOptions {
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        let urls: Vec<String> = args
            .events_webhook_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        for url in &urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--events-webhook-urls (EVENTS_WEBHOOK_URLS): {url:?} is not an http:// or https:// URL");
            }
        }
        if !urls.is_empty() && args.events_webhook_secret.expose().is_empty() {
            bail!("EVENTS_WEBHOOK_URLS needs EVENTS_WEBHOOK_SECRET: events are always signed");
        }
        Ok(EventsOptions {
            relay: RelayConfig {
                urls,
                retry: poda_jobs::RetryPolicy {
                    base: args.events_retry_base,
                    ..events::RETRY_POLICY
                },
                retention: args.retention,
                ..RelayConfig::default()
            },
            deliverer: DelivererConfig {
                timeout: args.events_webhook_timeout,
                ..DelivererConfig::default()
            },
            secret: args.events_webhook_secret.clone(),
        })
    }

    /// Signs with the scheme of Monime's webhooks, keyed with the secret.
    pub fn signer(&self) -> Signer {
        let secret = self.secret.clone();
        Arc::new(move |t, body| signature::sign(secret.expose(), t, body))
    }
}

/// Runs workers for `options.queues` until `shutdown`, then stops claiming, lets running jobs
/// finish within the grace period, releases jobs that never started and returns. A second
/// signal (`shutdown.immediate`) cuts the grace short: what never started is released, what
/// runs is dropped (its lease lapses and another worker runs it), and the result is an error.
/// So is the death of one of the process's loops, which shuts the worker down: a process
/// that no longer renews its leases or writes its outcomes must not go on claiming.
pub async fn run_workers(
    handler_pool: Db,
    engine_pool: Db,
    options: WorkerOptions,
    shutdown: impl Into<Shutdown>,
) -> anyhow::Result<()> {
    let Shutdown {
        graceful: signalled,
        immediate,
    } = shutdown.into();
    let handle = Engine::start(engine_pool, options.engine.clone());
    let engine = handle.engine().clone();
    tracing::info!(queues = ?options.queues, concurrency = ?options.concurrency, owner = %engine.owner(),
        "worker started");
    let endpoint = match options.metrics_addr {
        Some(addr) => Some(
            crate::worker_endpoint::serve(addr, engine.loops().clone())
                .await
                .context("starting the metrics and health endpoint")?,
        ),
        None => None,
    };
    // Stop at the signal, or when a loop died. Claims stop at once either way; the time
    // running jobs get (the grace) starts then.
    let shutdown = CancellationToken::new();
    let shutdown_started = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    tokio::spawn({
        let (shutdown, engine) = (shutdown.clone(), engine.clone());
        let started = shutdown_started.clone();
        async move {
            tokio::select! {
                _ = signalled.cancelled() => {}
                _ = engine.loops().broken() => {
                    tracing::error!(loops = ?engine.loops().dead(), "a loop of this worker died; shutting down");
                }
            }
            let _ = started.set(tokio::time::Instant::now());
            engine.stop_claiming();
            shutdown.cancel();
        }
    });
    if options.announce_ready {
        let engine = engine.clone();
        let handlers = handler_pool.clone();
        let (handler_n, engine_n) = (options.handler_connections(), options.engine_connections());
        tokio::spawn(async move {
            // The listener holds one engine connection of its own.
            let warmed = tokio::try_join!(
                warm_pool(&handlers, handler_n),
                warm_pool(engine.pool(), engine_n.saturating_sub(1).max(1)),
            );
            if let Err(error) = warmed {
                tracing::warn!(error = %format!("{error:#}"), "warming the pools failed");
            }
            engine.wait_listening().await;
            if let Some(addr) = endpoint {
                println!("metrics {addr}");
            }
            println!("ready");
        });
    }
    let tally = if options.probe_tally.is_some() {
        ProbeTally::enabled()
    } else {
        ProbeTally::default()
    };

    let notifier =
        Notifier::new(options.notifier.clone()).context("building the notification client")?;

    let deliverer = Deliverer::new(&options.events.deliverer, options.events.signer())
        .context("building the events client")?;
    if options.queues.iter().any(|q| q == events::QUEUE) {
        let (pool, config) = (handler_pool.clone(), options.events.relay.clone());
        engine.loops().spawn(
            "outbox_relay",
            &shutdown,
            events::relay::run(pool, config, shutdown.clone()),
        );
    }

    // The tickets queue runs outside the monitor, as a batch queue. Its runners stop claiming
    // at the shutdown signal itself, not once the monitor has drained the other queues.
    let ticket_stop = shutdown.child_token();
    let tickets = options.queues.iter().any(|q| q == ticket::QUEUE).then(|| {
        batch_worker::start(
            &engine,
            handler_pool.clone(),
            options.ticket_batches.clone(),
            TicketHandler,
            ticket_stop.clone(),
        )
    });

    // The transfer store's batchers, stopped once the handlers are done.
    let stores = CancellationToken::new();
    let mut store_tasks = Vec::new();

    let grace = options.shutdown_grace;
    // The grace timer starts when shutdown starts (a lazy future), not when the monitor is built.
    // A worker whose future failed or panicked (a handler's panic is the handler's failure,
    // caught by the engine; this is the backend or apalis itself) is restarted a few times;
    // past that, the process stops rather than go on without that queue.
    let loops = engine.loops().clone();
    let mut monitor = Monitor::new()
        .with_terminator(async move { tokio::time::sleep(grace).await })
        .should_restart(move |worker, error| {
            if worker.restarts() < MAX_WORKER_RESTARTS {
                tracing::warn!(worker = %worker.name(), error = %error, "restarting a failed worker");
                true
            } else {
                loops.mark_dead(format!("apalis:{}", worker.name()));
                false
            }
        });
    let mut apalis_workers = 0;
    for queue in &options.queues {
        if queue == ticket::QUEUE {
            continue;
        }
        apalis_workers += 1;
        let settings = BackendSettings {
            queue: queue.clone(),
            concurrency: options.concurrency[queue],
            batch_size: options.batch_size,
            prefetch: options.prefetch,
            run_timeout: run_timeout(queue, &options),
            per_key_limit: per_key_limit(queue, &options),
        };
        monitor = match queue.as_str() {
            probe::QUEUE => {
                let engine = engine.clone();
                let pool = handler_pool.clone();
                let tally = tally.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", probe::QUEUE, engine.owner()))
                        .backend(PgBackend::<ProbeJob>::new(&engine, settings.clone()))
                        .data(pool.clone())
                        .data(tally.clone())
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
                        .backend(PgBackend::<CycleJob>::new(&engine, settings.clone()))
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
                        .backend(PgBackend::<AgentSummaryJob>::new(&engine, settings.clone()))
                        .data(notifier.clone())
                        .enable_tracing()
                        .build(run_notification)
                })
            }
            events::QUEUE => {
                let engine = engine.clone();
                let pool = handler_pool.clone();
                let deliverer = deliverer.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", events::QUEUE, engine.owner()))
                        .backend(PgBackend::<DeliveryJob>::new(&engine, settings.clone()))
                        .data(pool.clone())
                        .data(deliverer.clone())
                        .enable_tracing()
                        .build(run_delivery)
                })
            }
            transfer::QUEUE => {
                let Some(transfers) = &options.transfers else {
                    bail!("the {} queue needs Monime settings", transfer::QUEUE);
                };
                let (context, tasks) = transfer_context(&handler_pool, transfers, stores.clone())?;
                store_tasks.extend(tasks);
                let context = Arc::new(context);
                let engine = engine.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", transfer::QUEUE, engine.owner()))
                        .backend(PgBackend::<TransferJob>::new(&engine, settings.clone()))
                        .data(context.clone())
                        .enable_tracing()
                        .build(run_transfer)
                })
            }
            deadlines::QUEUE => {
                let engine = engine.clone();
                let pool = handler_pool.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", deadlines::QUEUE, engine.owner()))
                        .backend(PgBackend::<DeadlinesJob>::new(&engine, settings.clone()))
                        .data(pool.clone())
                        .enable_tracing()
                        .build(run_deadlines)
                })
            }
            reconcile_job::QUEUE => {
                let Some(transfers) = &options.transfers else {
                    bail!("the {} queue needs Monime settings", reconcile_job::QUEUE);
                };
                let client = MonimeClient::new(transfers.monime.clone())
                    .context("building the Monime client")?;
                let engine = engine.clone();
                let pool = handler_pool.clone();
                monitor.register(move |i| {
                    WorkerBuilder::new(format!("{}-{}-{i}", reconcile_job::QUEUE, engine.owner()))
                        .backend(PgBackend::<ReconcileJob>::new(&engine, settings.clone()))
                        .data(pool.clone())
                        .data(client.clone())
                        .enable_tracing()
                        .build(run_reconcile)
                })
            }
            other => bail!("no handler for queue {other:?}"),
        };
    }

    let drained = async {
        let result = if apalis_workers > 0 {
            let signal = {
                let shutdown = shutdown.clone();
                async move {
                    shutdown.cancelled().await;
                    Ok(())
                }
            };
            monitor
                .run_with_signal(signal)
                .await
                .context("running workers")
        } else {
            shutdown.cancelled().await;
            Ok(())
        };
        // Also when the monitor ended without a shutdown signal.
        ticket_stop.cancel();
        if let Some(runners) = &tickets {
            // Runners finish the batch they hold within what is left of the grace; one cut
            // off rolls back and its jobs are free for other workers at once.
            if tokio::time::timeout_at(grace_ends(&shutdown_started, grace), runners.join())
                .await
                .is_err()
            {
                runners.abort();
                tracing::warn!("ticket batches still running at the end of the grace period were rolled back; their jobs run again");
            }
        }
        result
    };
    let mut result = tokio::select! {
        result = drained => result,
        _ = immediate.cancelled() => {
            tracing::warn!("second signal: stopping now; running jobs are dropped and run again elsewhere");
            engine.stop_claiming();
            if let Some(runners) = &tickets {
                runners.abort();
            }
            Err(anyhow::anyhow!("stopped by a second signal before running jobs finished"))
        }
    };
    stores.cancel();
    // The store gets its drain time, but not past the stop a second signal asked for.
    let store_drain = if immediate.is_cancelled() {
        IMMEDIATE_STOP_TIME
    } else {
        BATCHER_DRAIN
    };
    if tokio::time::timeout(store_drain, futures::future::join_all(store_tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            "the transfer store did not finish in time; unrecorded answers are asked again"
        );
    }
    // What is left to write gets the rest of the grace (a moment, after a second signal).
    let now = tokio::time::Instant::now();
    let deadline = if immediate.is_cancelled() {
        now + IMMEDIATE_STOP_TIME
    } else {
        grace_ends(&shutdown_started, grace).max(now + MIN_FINAL_WRITE_TIME)
    };
    handle.shutdown_by(deadline).await;
    if let Some(path) = &options.probe_tally {
        tally.write_to(path)?;
    }
    let dead = engine.loops().dead();
    if !dead.is_empty() {
        result = Err(anyhow::anyhow!(
            "stopped because a loop died: {}",
            dead.join(", ")
        ));
    }
    tracing::info!("worker stopped");
    result
}

/// When the shutdown's grace ends: `grace` after the shutdown started (from now, if it has
/// not started: the monitor ended on its own).
fn grace_ends(
    started: &std::sync::OnceLock<tokio::time::Instant>,
    grace: Duration,
) -> tokio::time::Instant {
    started
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        + grace
}

/// A pool that opens no connection of its own: the listener takes its connect options for
/// the one session it keeps (`DATABASE_LISTEN_URL`).
fn listen_pool(url: &Secret) -> anyhow::Result<sqlx::PgPool> {
    let settings = DatabaseSettings::new(url.clone(), 1);
    let options = settings
        .connect_options()
        .context("DATABASE_LISTEN_URL (--database-listen-url)")?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options))
}

/// The shared state of this process's transfer handlers: one Monime client (its connection
/// pool), one circuit breaker, and the global rate limit if one is set.
pub fn transfer_context(
    pool: &Db,
    options: &TransferOptions,
    stop: CancellationToken,
) -> anyhow::Result<(TransferContext, Vec<tokio::task::JoinHandle<()>>)> {
    let client = MonimeClient::new(options.monime.clone()).context("building the Monime client")?;
    tracing::info!(monime = %options.monime.base_url, rate_limit_per_s = ?options.rate_limit.map(|r| r.per_second),
        "commission transfers enabled");
    // Status updates commit asynchronously (see TransferContext); the store batches the
    // common ones, so a few connections serve every handler.
    let status_pool = pool.sibling(
        transfer::store::ROW_BATCHES_IN_FLIGHT as u32 + 2,
        &[("synchronous_commit", "off")],
    );
    let (store, tasks) = TransferStore::start(
        pool.clone(),
        status_pool.clone(),
        options.settings.platform_account_id.clone(),
        stop,
    );
    let context = TransferContext {
        pool: pool.clone(),
        status_pool,
        store,
        client,
        breaker: Breaker::new(options.breaker),
        rate_limit: options
            .rate_limit
            .map(|config| GlobalRateLimit::new(pool.clone(), TRANSFER_BUCKET, config)),
        settings: options.settings.clone(),
    };
    Ok((context, tasks))
}

async fn run_transfer(
    job: TransferJob,
    meta: JobMeta,
    context: Data<Arc<TransferContext>>,
) -> Result<Outcome, JobError> {
    transfer::handle(&context, &meta, job).await
}

async fn run_probe(
    job: ProbeJob,
    meta: JobMeta,
    pool: Data<Db>,
    tally: Data<ProbeTally>,
) -> Result<Outcome, JobError> {
    tally.record(job.n, meta.attempt, job.enqueued_at_us);
    probe::handle(&pool, &meta, job).await
}

/// Opens `n` connections of `pool` at once, so a benchmark's clock does not pay for them.
pub async fn warm_pool(pool: &Db, n: u32) -> anyhow::Result<()> {
    let conns = futures::future::try_join_all((0..n).map(|_| pool.pool().acquire()))
        .await
        .context("opening connections")?;
    drop(conns);
    Ok(())
}

async fn run_cycle(
    job: CycleJob,
    meta: JobMeta,
    pool: Data<Db>,
    config: Data<CycleConfig>,
) -> Result<Outcome, JobError> {
    cycle::handle(&pool, &config, &meta, job).await
}

async fn run_deadlines(
    job: DeadlinesJob,
    meta: JobMeta,
    pool: Data<Db>,
) -> Result<Outcome, JobError> {
    deadlines::handle(&pool, &meta, job).await
}

async fn run_reconcile(
    job: ReconcileJob,
    meta: JobMeta,
    pool: Data<Db>,
    client: Data<MonimeClient>,
) -> Result<Outcome, JobError> {
    reconcile_job::handle(&pool, &client, &meta, job).await
}

async fn run_notification(
    job: AgentSummaryJob,
    meta: JobMeta,
    notifier: Data<Notifier>,
) -> Result<Outcome, JobError> {
    notification::handle(&notifier, &meta, job).await
}

async fn run_delivery(
    job: DeliveryJob,
    meta: JobMeta,
    pool: Data<Db>,
    deliverer: Data<Deliverer>,
) -> Result<Outcome, JobError> {
    events::handle(&pool, &deliverer, &meta, job).await
}

/// How many jobs of one concurrency key of `queue` may run at once (0: no limit): for the
/// transfers, one company's.
fn per_key_limit(queue: &str, options: &WorkerOptions) -> u32 {
    match queue {
        transfer::QUEUE => options
            .transfers
            .as_ref()
            .map_or(0, |t| t.max_in_flight_per_company),
        _ => 0,
    }
}

/// How long one run of `queue`'s job kind may take, as the kind derives it from its settings.
fn run_timeout(queue: &str, options: &WorkerOptions) -> Duration {
    match queue {
        cycle::QUEUE => cycle::RUN_TIMEOUT,
        transfer::QUEUE => match &options.transfers {
            Some(t) => transfer::run_timeout(&t.monime, &t.settings),
            None => transfer::RUN_TIMEOUT,
        },
        notification::QUEUE => notification::run_timeout(options.notifier.timeout),
        deadlines::QUEUE => deadlines::RUN_TIMEOUT,
        reconcile_job::QUEUE => reconcile_job::RUN_TIMEOUT,
        // A delivery job holds up to `events_per_job` events, or one outbox row of more: a
        // ticket batch's events are one row.
        events::QUEUE => events::run_timeout(
            options.events.deliverer.timeout,
            options
                .events
                .relay
                .events_per_job
                .max(options.ticket_batches.batch_size),
            options.events.deliverer.concurrency,
        ),
        _ => poda_jobs::engine::DEFAULT_RUN_TIMEOUT,
    }
}
