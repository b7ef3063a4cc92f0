//! `transfers`: N commission transfers against the in-process Monime sandbox (20 ms latency,
//! 10 % transient faults, asynchronous completion), worked by an in-process worker with the
//! real retry policy (2 s backoff base) and no rate limit. The N transfer jobs are enqueued
//! first (then ANALYZE); the clock runs from the worker's start until the database shows no
//! transfer job left to run (each job finishes only with its transfer completed or failed);
//! `ok` checks that all N transfers completed, exactly once at the sandbox (one execution per
//! ticket, every row's key executed, nothing failed).
//!
//! Each run creates its own database (`bench_poda_transfers_<uuid>`) and drops it afterwards.

use std::time::{Duration, Instant};

use crate::drained::DrainWatch;
use crate::scratch::with_scratch_database;
use anyhow::Context;
use poda::config::{async_commit_options, handler_options};
use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many, EngineConfig, RetryPolicy};
use poda_jobs::transfer::breaker::BreakerConfig;
use poda_jobs::transfer::monime::{ApiToken, MonimeConfig, DEFAULT_VERSION};
use poda_jobs::transfer::{self, TransferJob, TransferSettings};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use poda::sandbox::{FaultConfig, FaultKind, Sandbox, SandboxConfig};
use poda::worker::{run_workers, TransferOptions, WorkerOptions};

const BENCH_TOKEN: &str = "bench-sandbox-token";
const PLATFORM_ACCOUNT: &str = "fa-platform-bench";
/// Companies the tickets are spread over.
const COMPANIES: usize = 10;

#[derive(Debug, Clone)]
pub struct TransfersOptions {
    /// The Postgres server (the database part is ignored).
    pub server_url: String,
    /// Transfers per run.
    pub n: usize,
    pub runs: usize,
    /// The sandbox's latency per call.
    pub latency: Duration,
    /// Share of transfers whose first create meets a transient fault.
    pub transient_rate: f64,
    /// How long Monime takes to complete an accepted transfer.
    pub completion_delay: Duration,
    /// Handler slots of the worker.
    pub concurrency: usize,
    /// The jobs' retry policy (the real one by default: 2 s, 4 s, … at most 6 attempts).
    pub retry: RetryPolicy,
    /// The Monime client's timeout (a slow answer past it is retried).
    pub client_timeout: Duration,
    pub poll_initial: Duration,
}

impl Default for TransfersOptions {
    fn default() -> Self {
        TransfersOptions {
            server_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            n: 10_000,
            runs: 1,
            latency: Duration::from_millis(20),
            transient_rate: 0.10,
            completion_delay: Duration::from_millis(40),
            concurrency: 256,
            retry: transfer::RETRY_POLICY,
            client_timeout: Duration::from_millis(500),
            poll_initial: Duration::from_millis(30),
        }
    }
}

/// Runs the scenario; prints and returns one `RESULT` object per run.
pub async fn run_transfers(opts: TransfersOptions) -> anyhow::Result<Vec<Value>> {
    let mut results = Vec::new();
    for run in 1..=opts.runs {
        let result = with_scratch_database(&opts.server_url, "transfers", |db, _| {
            run_once(&opts, run, db)
        })
        .await;
        let result = result?;
        println!("RESULT {result}");
        results.push(result);
    }
    Ok(results)
}

async fn run_once(
    opts: &TransfersOptions,
    run: usize,
    db: PgConnectOptions,
) -> anyhow::Result<Value> {
    let handler_pool = PgPoolOptions::new()
        .max_connections(32)
        .connect_with(handler_options(db.clone()))
        .await
        .map(Db::from)
        .context("connecting to the bench database")?;
    let engine_pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(async_commit_options(db.clone()))
        .await
        .map(Db::from)
        .context("connecting to the bench database")?;
    poda_jobs::engine::migrate::run_migrations(&handler_pool)
        .await
        .context("migrating the bench database")?;
    let tickets = seed_tickets(&handler_pool, opts.n).await?;
    // The N transfer jobs, as ticket creation leaves them; then fresh statistics, so the
    // engine's plans are those of a table with N jobs (BENCHMARKS: ANALYZE after loading).
    let companies: std::collections::HashMap<i64, String> =
        sqlx::query_as("SELECT id, company_id FROM tickets WHERE id = ANY($1)")
            .bind(&tickets)
            .fetch_all(&handler_pool)
            .await?
            .into_iter()
            .collect();
    let jobs: Vec<_> = tickets
        .iter()
        .map(|&ticket_id| {
            TransferJob { ticket_id }
                .to_job(&companies[&ticket_id])
                .with_retry(opts.retry)
        })
        .collect();
    let mut conn = handler_pool.pool().acquire().await?;
    for chunk in jobs.chunks(1_000) {
        enqueue_many(&mut conn, chunk).await?;
    }
    drop(conn);
    sqlx::query("ANALYZE").execute(&handler_pool).await?;

    let sandbox = Sandbox::spawn(SandboxConfig {
        latency: opts.latency,
        completion_delay: opts.completion_delay,
        faults: FaultConfig {
            transient_rate: opts.transient_rate,
            max_per_key: 1,
            kinds: FaultKind::ALL.to_vec(),
            retry_after_s: 1,
            slow_for: opts.client_timeout * 2,
            ..FaultConfig::default()
        },
        token: Some(BENCH_TOKEN.into()),
        capacity: opts.n,
    })
    .await?;
    let engine = EngineConfig {
        poll_interval: Duration::from_millis(50),
        ..EngineConfig::default()
    };
    let options = WorkerOptions {
        engine,
        shutdown_grace: Duration::from_secs(5),
        transfers: Some(TransferOptions {
            monime: MonimeConfig {
                base_url: sandbox.base_url.clone(),
                token: ApiToken::new(BENCH_TOKEN),
                space_id: "spc-bench".into(),
                version: DEFAULT_VERSION.into(),
                timeout: opts.client_timeout,
                connect_timeout: opts.client_timeout,
            },
            settings: TransferSettings {
                platform_account_id: PLATFORM_ACCOUNT.into(),
                poll_initial: opts.poll_initial,
                poll_max: Duration::from_secs(2),
                poll_inline: opts.poll_initial,
            },
            breaker: BreakerConfig::default(),
            rate_limit: None,
            max_in_flight_per_company: 0,
        }),
        ..WorkerOptions::for_queues(&[transfer::QUEUE], opts.concurrency)
    };
    // The clock runs from the worker's start (its start-up included) until the database
    // shows every transfer job finished.
    let started = Instant::now();
    let stop = CancellationToken::new();
    let workers = tokio::spawn(run_workers(
        handler_pool.clone(),
        engine_pool,
        options,
        stop.clone(),
    ));
    let deadline = started + Duration::from_secs(300);
    let mut watch = DrainWatch::new(transfer::QUEUE);
    loop {
        let unfinished = watch.unfinished(&handler_pool).await?;
        if !unfinished || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    workers.await.context("the worker task")??;

    let (completed, failed, retries): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'completed'), \
                count(*) FILTER (WHERE status = 'failed'), \
                coalesce(sum(retry_count), 0)::bigint FROM commission_transfers",
    )
    .fetch_one(&handler_pool)
    .await?;
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM commission_transfers")
        .fetch_all(&handler_pool)
        .await?;
    let executions = sandbox.counts.executions();
    let exactly_once = sandbox.counts.total_executions() as usize == opts.n
        && executions.len() == opts.n
        && keys.len() == opts.n
        && keys.iter().all(|k| executions.get(k) == Some(&1));
    let faults = sandbox.counts.faults();
    sandbox.shutdown().await;
    handler_pool.close().await;
    Ok(json!({
        "scenario": "transfers",
        "run": run,
        "n": opts.n,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "per_s": (opts.n as f64 / seconds).round(),
        "retries": retries,
        "faults": faults,
        "failed": failed,
        "latency_ms": opts.latency.as_millis() as u64,
        "backoff_base_ms": opts.retry.base.as_millis() as u64,
        "ok": exactly_once && completed as usize == opts.n && failed == 0,
    }))
}

/// `n` tickets over a few companies, inserted with one statement.
async fn seed_tickets(pool: &Db, n: usize) -> anyhow::Result<Vec<i64>> {
    sqlx::query(
        "INSERT INTO companies (id, name, monime_account_id, commission_bps, currency) \
         SELECT 'co-' || c, 'Company ' || c, 'fa-company-' || c, 250, 'SLE' \
         FROM generate_series(1, $1) c",
    )
    .bind(COMPANIES as i32)
    .execute(pool)
    .await
    .context("seeding companies")?;
    sqlx::query(
        "INSERT INTO routes (id, company_id, origin, destination) \
         SELECT 'rt-' || c, 'co-' || c, 'Freetown', 'Bo' FROM generate_series(1, $1) c",
    )
    .bind(COMPANIES as i32)
    .execute(pool)
    .await
    .context("seeding routes")?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         SELECT 'pay-' || g, 'evt-' || g, 'co-' || (g % $2 + 1), 'rt-' || (g % $2 + 1), \
                '+23276000000', 50000, 1250, 'SLE' \
         FROM generate_series(1, $1) g RETURNING id",
    )
    .bind(n as i64)
    .bind(COMPANIES as i64)
    .fetch_all(pool)
    .await
    .context("seeding tickets")?;
    Ok(ids)
}
