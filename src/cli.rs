//! Command lines of the binaries (clap derive). Every flag that is a setting also reads its
//! environment variable, and the binaries load `.env` first.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use poda_jobs::db::Pooler;
use poda_jobs::JobId;

use crate::config::{parse_duration, DatabaseSettings, Secret, DEFAULT_DATABASE_URL};
use crate::telemetry::LogFormat;

/// Settings every binary shares.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Postgres URL (may carry a password; never logged).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_default_value = false, hide_env_values = true)]
    pub database_url: Secret,
    /// `transaction` when DATABASE_URL names PgBouncer (or another pooler) in transaction
    /// pooling mode: nothing then outlives a transaction. `none`: a direct connection.
    #[arg(long, env = "DATABASE_POOLER", default_value = "none")]
    pub database_pooler: Pooler,
    /// Log format: pretty for people, json for log pipelines. RUST_LOG picks the levels.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Run Poda workers, and operate the queues"
)]
pub struct WorkerCli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub monime: MonimeArgs,
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
}

/// How to reach Monime (commission transfers and `reconcile`).
#[derive(Debug, Clone, Args)]
pub struct MonimeArgs {
    /// Monime API base URL (the sandbox's URL in tests and benchmarks).
    #[arg(long, env = "MONIME_API_URL", hide_env_values = true)]
    pub monime_api_url: Option<String>,
    /// Monime API token (never logged).
    #[arg(long, env = "MONIME_API_TOKEN", hide_env_values = true)]
    pub monime_api_token: Option<Secret>,
    /// Monime space id (`Monime-Space-Id`).
    #[arg(long, env = "MONIME_SPACE_ID")]
    pub monime_space_id: Option<String>,
    /// The platform's financial account: commissions move into it.
    #[arg(long, env = "MONIME_PLATFORM_ACCOUNT_ID")]
    pub monime_platform_account_id: Option<String>,
    /// `Monime-Version` header.
    #[arg(long, env = "MONIME_VERSION", default_value = poda_jobs::transfer::monime::DEFAULT_VERSION)]
    pub monime_version: String,
    /// Total timeout of one Monime call.
    #[arg(long, env = "MONIME_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub monime_timeout: Duration,
}

/// How a worker process runs (used when no subcommand is given).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Queues to work, comma-separated. Default: every queue this build has a handler for.
    #[arg(long, env = "WORKER_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Handler slots per queue: at most this many jobs of a queue run at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Handler slots for single queues, overriding --concurrency: `tickets=64,commission_transfers=32`.
    #[arg(long, env = "WORKER_QUEUE_CONCURRENCY", value_delimiter = ',', value_parser = parse_queue_concurrency)]
    pub queue_concurrency: Vec<(String, usize)>,
    /// The tickets queue: at most this many ticket jobs claimed and issued per transaction.
    #[arg(long, env = "WORKER_TICKET_BATCH_SIZE", default_value_t = poda_jobs::ticket::DEFAULT_BATCH_SIZE)]
    pub ticket_batch_size: usize,
    /// The tickets queue: ticket transactions at once per process.
    #[arg(long, env = "WORKER_TICKET_BATCHES_IN_FLIGHT", default_value_t = poda_jobs::ticket::DEFAULT_BATCHES_IN_FLIGHT)]
    pub ticket_batches_in_flight: usize,
    /// The tickets queue: while payments keep coming, each transaction's claim starts at least
    /// this long after its runner's previous one, so batches gather what arrived meanwhile
    /// (0: claim as soon as a job is enqueued).
    #[arg(long, env = "WORKER_TICKET_CLAIM_INTERVAL", default_value = "25ms", value_parser = parse_duration)]
    pub ticket_claim_interval: std::time::Duration,
    /// Job outcomes waiting to be written before handlers wait. Slots free up when an outcome
    /// is queued, so this bounds the jobs a process holds beyond its slots.
    #[arg(long, env = "WORKER_COMPLETION_BACKLOG", default_value_t = poda_jobs::engine::complete::DEFAULT_COMPLETION_BACKLOG)]
    pub completion_backlog: usize,
    /// At most this many jobs per claim statement.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
    /// Jobs a claim may take beyond the free slots, waiting in this worker under lease. 0 sizes
    /// claims to the free slots exactly (a replica never holds jobs its peers could run); more
    /// means fewer claims when jobs are very short.
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 0)]
    pub prefetch: usize,
    /// Apply pending migrations at start instead of refusing an unmigrated database.
    #[arg(long, env = "WORKER_MIGRATE")]
    pub migrate: bool,
    /// How long a claim holds a job without renewal (a killed worker's jobs run again after
    /// at most lease + rescue interval).
    #[arg(long, env = "WORKER_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: Duration,
    /// How often this worker looks for expired leases.
    #[arg(long, env = "WORKER_RESCUE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub rescue_interval: Duration,
    /// Claim again after this long without a notification.
    #[arg(long, env = "WORKER_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Do not LISTEN for enqueue notifications; poll only.
    #[arg(long, env = "WORKER_POLL_ONLY")]
    pub poll_only: bool,
    /// A direct Postgres URL for LISTEN when DATABASE_URL names a transaction pooler, which
    /// cannot keep a session (may carry a password; never logged). Without it, such a worker
    /// polls only.
    #[arg(long, env = "DATABASE_LISTEN_URL", hide_env_values = true)]
    pub database_listen_url: Option<Secret>,
    /// On SIGTERM, how long running jobs may take to finish before the process exits anyway.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Kernel scheduling of the worker's threads: `batch` (SCHED_BATCH) keeps its CPU share
    /// but lets the enqueuer and PostgreSQL on the same cores run first when it wakes up;
    /// `normal` is the kernel's default.
    #[arg(long, env = "WORKER_CPU_POLICY", value_enum, default_value = "batch")]
    pub cpu_policy: crate::cpu_policy::CpuPolicy,
    /// Serve Prometheus metrics on this address.
    #[arg(long, env = "WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Finished jobs older than this are pruned by the replica that leads maintenance.
    #[arg(long, env = "WORKER_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How often the leading replica prunes.
    #[arg(long, env = "WORKER_PRUNE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub prune_interval: Duration,
    /// Do not take part in maintenance leadership (no automatic pruning from this process).
    #[arg(long, env = "WORKER_NO_MAINTENANCE")]
    pub no_maintenance: bool,
    /// Connections for handlers (default: each queue's slots, but one per ticket batch in
    /// flight and the transfer store's needs for their queues; 2 to 64 in all).
    #[arg(long, env = "WORKER_HANDLER_CONNECTIONS")]
    pub handler_connections: Option<u32>,
    /// Connections for the engine: claims, completions, leases, rescue, listener (default 4 + queues).
    #[arg(long, env = "WORKER_ENGINE_CONNECTIONS")]
    pub engine_connections: Option<u32>,
    /// Benchmarks: record each probe run in memory and write it to FILE at shutdown.
    #[arg(long, hide = true)]
    pub probe_tally: Option<std::path::PathBuf>,
    /// Benchmarks and tests: open every connection, then print `metrics ADDR` (with
    /// --metrics-addr, the address it got) and `ready` on stdout.
    #[arg(long, hide = true)]
    pub announce_ready: bool,
    /// Contribution-cycle fan-out: members per chunk (one INSERT … SELECT and one commit each).
    #[arg(long, env = "WORKER_CYCLE_CHUNK_SIZE", default_value_t = poda_jobs::cycle::DEFAULT_CHUNK_SIZE as u32)]
    pub cycle_chunk_size: u32,
    /// Where agents' cycle summaries are POSTed (JSON). Unset: they are logged, not sent.
    #[arg(long, env = "NOTIFICATIONS_URL", hide_env_values = true)]
    pub notifications_url: Option<String>,
    /// How long one notification delivery may take.
    #[arg(long, env = "NOTIFICATIONS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub notifications_timeout: Duration,
    /// Where events (`ticket.issued`, `transfer.completed`, `transfer.failed`,
    /// `cycle.activated`) are POSTed, comma-separated; each gets every event. Empty: events are
    /// recorded in the outbox and not sent.
    #[arg(
        long,
        env = "EVENTS_WEBHOOK_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub events_webhook_urls: Vec<String>,
    /// The key events are signed with (`Poda-Signature`); required with EVENTS_WEBHOOK_URLS.
    #[arg(
        long,
        env = "EVENTS_WEBHOOK_SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub events_webhook_secret: Secret,
    /// How long one event POST may take.
    #[arg(long, env = "EVENTS_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub events_webhook_timeout: Duration,
    /// Tests: the first wait between runs of an event delivery job (it doubles up to 30 min).
    #[arg(long, hide = true, default_value = "2s", value_parser = parse_duration)]
    pub events_retry_base: Duration,
    #[command(flatten)]
    pub transfers: TransferArgs,
    #[command(flatten)]
    pub schedules: ScheduleArgs,
}

/// Periodic jobs (docs/periodic-jobs.md): the built-in schedules and the operator's own.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Extra periodic jobs: `name=<cron>|<queue>|<kind>[|<JSON payload>]`, separated by `;`.
    /// Cron has 6 fields, seconds first, e.g. `nightly=0 0 3 * * *|probe|probe`.
    #[arg(long = "schedules", env = "WORKER_SCHEDULES", default_value = "")]
    pub schedules: String,
    /// The IANA time zone every schedule's expression is read in.
    #[arg(long, env = "SCHEDULE_TIMEZONE", default_value = "UTC")]
    pub schedule_timezone: String,
    /// When `reconcile-transfers` runs (6-field cron, seconds first; `off` disables it).
    #[arg(long, env = "SCHEDULE_RECONCILE_TRANSFERS", default_value = poda_jobs::transfer::reconcile_job::DEFAULT_EXPRESSION)]
    pub schedule_reconcile_transfers: String,
    /// When `contribution-deadlines` runs (6-field cron, seconds first; `off` disables it).
    #[arg(long, env = "SCHEDULE_CONTRIBUTION_DEADLINES", default_value = poda_jobs::cycle::deadlines::DEFAULT_EXPRESSION)]
    pub schedule_contribution_deadlines: String,
}

/// How commission transfers are paced (the `commission_transfers` queue).
#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Transfers created at Monime per minute across ALL worker replicas (call slots reserved from
    /// Postgres); 0 turns the limit off.
    #[arg(long, env = "TRANSFER_RATE_LIMIT", default_value_t = 0)]
    pub transfer_rate_limit: u32,
    /// Commission transfers of one transport company running at once across ALL worker
    /// replicas (every replica must use the same value); 0 turns the limit off.
    #[arg(long, env = "TRANSFER_MAX_IN_FLIGHT_PER_COMPANY", default_value_t = 0)]
    pub transfer_max_in_flight_per_company: u32,
    /// Burst above the rate (0: one second's worth, at least 1).
    #[arg(long, env = "TRANSFER_RATE_BURST", default_value_t = 0)]
    pub transfer_rate_burst: u32,
    /// First status poll after Monime accepted a transfer; later polls wait twice as long.
    #[arg(long, env = "TRANSFER_POLL_INITIAL", default_value = "500ms", value_parser = parse_duration)]
    pub transfer_poll_initial: Duration,
    /// After Monime accepted a transfer as pending, wait this long in the handler and read its
    /// status once before snoozing (0: snooze at once).
    #[arg(long, env = "TRANSFER_POLL_INLINE", default_value = "250ms", value_parser = parse_duration)]
    pub transfer_poll_inline: Duration,
    /// Longest wait between status polls.
    #[arg(long, env = "TRANSFER_POLL_MAX", default_value = "30s", value_parser = parse_duration)]
    pub transfer_poll_max: Duration,
    /// Circuit breaker: the sliding window of Monime call outcomes.
    #[arg(long, env = "TRANSFER_BREAKER_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub breaker_window: Duration,
    /// Circuit breaker: calls in the window before it may open.
    #[arg(long, env = "TRANSFER_BREAKER_MIN_CALLS", default_value_t = poda_jobs::transfer::breaker::DEFAULT_MIN_CALLS)]
    pub breaker_min_calls: usize,
    /// Circuit breaker: how long it stays open before a half-open probe.
    #[arg(long, env = "TRANSFER_BREAKER_RESET", default_value = "5s", value_parser = parse_duration)]
    pub breaker_reset: Duration,
}

#[derive(Debug, Clone, Subcommand)]
pub enum WorkerCommand {
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the job_queue_stats view as a table, and the last transfer reconciliation.
    Stats,
    /// List the periodic jobs: name, expression, time zone, last and next slot.
    Schedules,
    /// Run a failed, cancelled or waiting job again now, with fresh attempts.
    Retry { id: JobId },
    /// Cancel a job that has not finished; a running job's handler is told to stop.
    Cancel { id: JobId },
    /// Enqueue one job and print its id (the existing job's id when the unique key is taken).
    Enqueue {
        queue: String,
        kind: String,
        /// The payload, a JSON value.
        #[arg(value_parser = parse_json)]
        payload: serde_json::Value,
        /// When to run it (RFC 3339, e.g. 2026-12-24T08:00:00Z); default now.
        #[arg(long, value_parser = parse_rfc3339)]
        run_at: Option<chrono::DateTime<chrono::Utc>>,
        /// 0 (most urgent) .. 3.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i16).range(0..=3))]
        priority: i16,
        /// Enqueueing a key already taken in the queue writes nothing and prints that job's id.
        #[arg(long)]
        unique_key: Option<String>,
        /// Attempts before the job fails for good.
        #[arg(long, default_value_t = poda_jobs::engine::retry::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(i32).range(1..))]
        max_attempts: i32,
    },
    /// Delete finished jobs (completed, cancelled, failed) older than the threshold.
    Prune {
        /// Age threshold, e.g. 7d, 12h, 30m.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        older_than: Duration,
    },
    /// Stop workers from claiming jobs of a queue (enqueueing goes on).
    Pause { queue: String },
    /// Let workers claim jobs of a paused queue again.
    Resume { queue: String },
    /// Follow a contribution cycle's fan-out until it is Active or Failed.
    Cycle {
        id: poda_jobs::cycle::CycleId,
        /// How often to look.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Retry a failed commission transfer: under a new idempotency key if Monime failed it,
    /// else under the same key; its job runs again with fresh attempts.
    RetryTransfer { ticket_id: i64 },
    /// Check commission transfers against Monime; exit code 1 when something needs attention.
    Reconcile {
        /// Tickets without a completed transfer, and transfers unfinished, for longer than this.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        stuck_after: Duration,
        /// Also check transfers completed within this long.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        recent: Duration,
    },
}

/// Parses `queue=N` with N ≥ 1.
pub fn parse_queue_concurrency(text: &str) -> Result<(String, usize), String> {
    let (queue, n) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not queue=N (e.g. tickets=64)"))?;
    let queue = queue.trim();
    if queue.is_empty() {
        return Err(format!("{text:?}: the queue name is empty"));
    }
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {n:?} is not a whole number"))?;
    if n == 0 {
        return Err(format!("{text:?}: concurrency must be at least 1"));
    }
    Ok((queue.to_owned(), n))
}

impl CommonArgs {
    pub fn database(&self, max_connections: u32) -> DatabaseSettings {
        DatabaseSettings::new(self.database_url.clone(), max_connections)
            .with_pooler(self.database_pooler)
    }
}

pub const DEFAULT_ENQUEUER_ADDR: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "enqueuer",
    version,
    about = "Poda's HTTP enqueuer: Monime webhooks in, durable jobs out"
)]
pub struct EnqueuerCli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub run: EnqueuerArgs,
}

/// How the enqueuer runs.
#[derive(Debug, Clone, Args)]
pub struct EnqueuerArgs {
    /// Address to listen on.
    #[arg(long, env = "ENQUEUER_ADDR", default_value = DEFAULT_ENQUEUER_ADDR)]
    pub addr: SocketAddr,
    /// Bearer token for the admin endpoints (never logged). Empty: admin endpoints refuse all.
    #[arg(
        long,
        env = "ADMIN_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub admin_token: Secret,
    /// Bearer token that reads payment status (`GET /payments/{id}`) and nothing else (never
    /// logged). Empty: only the admin token reads it.
    #[arg(
        long,
        env = "STATUS_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub status_token: Secret,
    /// Monime webhook signing secrets, comma-separated (several during a rotation).
    #[arg(
        long,
        env = "MONIME_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub monime_webhook_secrets: Vec<Secret>,
    /// Largest accepted webhook body, in bytes (larger: 413).
    #[arg(long, env = "ENQUEUER_BODY_LIMIT", default_value_t = crate::enqueuer::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Webhook requests per second allowed per client IP (0 disables the limit).
    #[arg(long, env = "ENQUEUER_RATE_LIMIT", default_value_t = crate::enqueuer::DEFAULT_RATE_LIMIT_PER_SECOND)]
    pub rate_limit: u32,
    /// Burst above the per-second rate a client may send at once.
    #[arg(long, env = "ENQUEUER_RATE_BURST", default_value_t = crate::enqueuer::DEFAULT_RATE_LIMIT_BURST)]
    pub rate_burst: u32,
    /// Group commit: at most this many webhooks per transaction.
    #[arg(long, env = "ENQUEUER_BATCH_SIZE", default_value_t = crate::http::group_commit::DEFAULT_MAX_BATCH)]
    pub batch_size: usize,
    /// Group commit: how long the first webhook of a batch waits for company.
    #[arg(long, env = "ENQUEUER_BATCH_DELAY", default_value = "2ms", value_parser = parse_duration)]
    pub batch_delay: Duration,
    /// Group commit: batches being written at once, each on a connection of the group
    /// commit's own pool.
    #[arg(long, env = "ENQUEUER_BATCHES_IN_FLIGHT", default_value_t = crate::http::group_commit::DEFAULT_MAX_IN_FLIGHT)]
    pub batches_in_flight: usize,
    /// Database connections of the enqueuer's pool (the group commit has a pool of its own).
    #[arg(long, env = "ENQUEUER_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// Requests taking longer than this are answered 408.
    #[arg(long, env = "ENQUEUER_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Apply pending migrations at start instead of refusing an unmigrated database.
    #[arg(long, env = "ENQUEUER_MIGRATE")]
    pub migrate: bool,
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

fn parse_rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time (e.g. 2026-12-24T08:00:00Z): {e}"))
}
