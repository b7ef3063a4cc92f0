//! `tickets`: N queued ticket jobs drained by real `worker` processes into tickets, each with
//! its payment-code use and its commission-transfer job. Reports tickets/s from the moment the
//! queue is opened to the moment the database shows every job finished, and checks that
//! there are exactly N tickets and N transfer jobs.
//!
//! Each run creates its own database (`bench_poda_<uuid>`), seeds companies, routes and
//! payment codes, enqueues the jobs with the queue paused, starts the workers (the `worker`
//! binary next to the running executable) and waits until they listen, then opens the queue
//! and starts the clock. The database is dropped afterwards, whatever happened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::drained::DrainWatch;
use crate::scratch::with_scratch_database;
use crate::{url_with_database, worker_binary, Workers, PGBOUNCER_POOL_SIZE};
use anyhow::{bail, Context};
use poda_jobs::db::Db;
use poda_jobs::testing::PgBouncer;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use poda_jobs::engine::{enqueue_many, notify::NOTIFY_CHANNEL, NewJob};
use poda_jobs::ticket::{self, Currency, Money, TicketJob};

pub const DEFAULT_TICKETS_N: usize = 100_000;
const COMPANIES: usize = 10;
const ROUTES_PER_COMPANY: usize = 10;
const CODES_PER_COMPANY: usize = 10;
/// Every this many payments uses a payment code (coprime with COMPANIES, so every company's
/// codes are used).
const CODE_EVERY: usize = 7;
const ENQUEUE_CHUNK: usize = 5_000;

#[derive(Debug, Clone)]
pub struct TicketsOptions {
    /// The Postgres server (the database part is ignored).
    pub server_url: String,
    /// Ticket jobs per run.
    pub n: usize,
    pub runs: usize,
    /// Worker processes per run; one result per entry and run.
    pub procs: Vec<usize>,
    /// The `worker` binary; default: next to the running executable (or one directory up,
    /// for examples).
    pub worker_exe: Option<PathBuf>,
    /// How long one run may take before it is abandoned.
    pub timeout: Duration,
    /// Connect the workers through a PgBouncer in transaction mode (see `BenchArgs`).
    pub pgbouncer: bool,
}

impl Default for TicketsOptions {
    fn default() -> Self {
        TicketsOptions {
            server_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            n: DEFAULT_TICKETS_N,
            runs: 3,
            procs: vec![1],
            worker_exe: None,
            timeout: Duration::from_secs(600),
            pgbouncer: false,
        }
    }
}

/// Runs the scenario; prints and returns one `RESULT` object per run.
pub async fn run_tickets(opts: TicketsOptions) -> anyhow::Result<Vec<Value>> {
    let worker = match &opts.worker_exe {
        Some(path) => path.clone(),
        None => worker_binary(None)?,
    };
    let mut results = Vec::new();
    for run in 1..=opts.runs {
        for &procs in &opts.procs {
            let result = run_once(&opts, &opts.server_url, &worker, run, procs.max(1)).await?;
            println!("RESULT {result}");
            results.push(result);
        }
    }
    Ok(results)
}

async fn run_once(
    opts: &TicketsOptions,
    server: &str,
    worker: &Path,
    run: usize,
    procs: usize,
) -> anyhow::Result<Value> {
    with_scratch_database(server, "tickets", |db, name| async move {
        measure(opts, db, &name, worker, run, procs).await
    })
    .await
}

async fn measure(
    opts: &TicketsOptions,
    db: PgConnectOptions,
    name: &str,
    worker: &Path,
    run: usize,
    procs: usize,
) -> anyhow::Result<Value> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db)
        .await
        .map(Db::from)
        .context("connecting to the bench database")?;
    poda_jobs::engine::migrate::run_migrations(&pool)
        .await
        .context("migrating the bench database")?;
    seed(&pool).await.context("seeding companies and routes")?;
    sqlx::query("UPDATE job_queues SET paused_at = now() WHERE name = $1")
        .bind(ticket::QUEUE)
        .execute(&pool)
        .await
        .context("pausing the tickets queue")?;
    enqueue(&pool, opts.n)
        .await
        .context("enqueueing ticket jobs")?;
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .context("analyzing")?;

    let url = url_with_database(&opts.server_url, name);
    let flags = (0..procs).map(|_| worker_flags()).collect();
    let bouncer = match opts.pgbouncer {
        true => Some(PgBouncer::start(&opts.server_url, PGBOUNCER_POOL_SIZE).await),
        false => None,
    };
    let mut workers = Workers::launch(worker, &url, bouncer.as_ref(), flags, &[]).await?;
    let outcome = async {
        let started = Instant::now();
        sqlx::query(
            "WITH opened AS (UPDATE job_queues SET paused_at = NULL WHERE name = $1 RETURNING name) \
             SELECT pg_notify($2, name) FROM opened",
        )
        .bind(ticket::QUEUE)
        .bind(NOTIFY_CHANNEL)
        .execute(&pool)
        .await
        .context("opening the tickets queue")?;
        let mut watch = DrainWatch::new(ticket::QUEUE);
        loop {
            let unfinished = watch.unfinished(&pool).await?;
            if !unfinished {
                break;
            }
            if started.elapsed() > opts.timeout {
                bail!("ticket jobs still unfinished after {:?}", opts.timeout);
            }
            if let Some(exited) = workers.exited() {
                bail!("a worker exited early: {exited}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, anyhow::Error>(started.elapsed().as_secs_f64())
    }
    .await;
    let stopped = workers.stop().await;
    let seconds = outcome?;
    stopped.context("stopping the workers")?;

    let (tickets, distinct, transfers, orphans, completed): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM tickets), \
                    (SELECT count(DISTINCT payment_id) FROM tickets), \
                    (SELECT count(*) FROM jobs WHERE queue = 'commission_transfers'), \
                    (SELECT count(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM jobs j \
                        WHERE j.queue = 'commission_transfers' AND j.unique_key = 'ticket:' || t.id)), \
                    (SELECT count(*) FROM jobs WHERE queue = 'tickets' AND state = 'completed')",
        )
        .fetch_one(&pool)
        .await
        .context("checking the tickets")?;
    let code_uses_exact: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM payment_code_usage c WHERE c.used_count <> \
             (SELECT count(*) FROM tickets t WHERE t.payment_code = c.code))",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let n = opts.n as i64;
    let ok = tickets == n
        && distinct == n
        && transfers == n
        && orphans == 0
        && completed == n
        && code_uses_exact;
    let per_s = n as f64 / seconds;
    eprintln!(
        "tickets run {run}, {procs} proc(s): {n} tickets in {seconds:.2} s = {per_s:.0}/s, ok = {ok}"
    );
    Ok(json!({
        "scenario": "tickets",
        "run": run,
        "procs": procs,
        "pgbouncer": opts.pgbouncer,
        "n": n,
        "seconds": round2(seconds),
        "per_s": per_s.round(),
        "ok": ok,
        "tickets": tickets,
        "transfer_jobs": transfers,
        "batch_size": ticket::DEFAULT_BATCH_SIZE,
        "batches_in_flight": ticket::DEFAULT_BATCHES_IN_FLIGHT,
    }))
}

/// Companies (two of them selling in USD), routes, and payment codes whose limits the run
/// never reaches.
pub(crate) async fn seed(pool: &Db) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO companies (id, name, monime_account_id, commission_bps, currency) \
         SELECT 'co-' || c, 'Company ' || c, 'fa-co-' || c, 100 + 50 * c, \
                CASE WHEN c >= $1 - 2 THEN 'USD' ELSE 'SLE' END \
         FROM generate_series(0, $1 - 1) c",
    )
    .bind(COMPANIES as i32)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO routes (id, company_id, origin, destination) \
         SELECT 'rt-' || c || '-' || r, 'co-' || c, 'Freetown', 'Town ' || r \
         FROM generate_series(0, $1 - 1) c, generate_series(0, $2 - 1) r",
    )
    .bind(COMPANIES as i32)
    .bind(ROUTES_PER_COMPANY as i32)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO payment_codes (code, company_id, usage_limit) \
         SELECT 'CODE-' || c || '-' || k, 'co-' || c, 1000000000 \
         FROM generate_series(0, $1 - 1) c, generate_series(0, $2 - 1) k",
    )
    .bind(COMPANIES as i32)
    .bind(CODES_PER_COMPANY as i32)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) fn payment(i: usize) -> TicketJob {
    let company = i % COMPANIES;
    let currency = if company >= COMPANIES - 2 {
        Currency::Usd
    } else {
        Currency::Sle
    };
    TicketJob {
        payment_id: format!("pay-bench-{i:08}"),
        event_id: format!("evt-bench-{i:08}"),
        amount: Money {
            currency,
            value_minor: 1_000 + (i as i64 * 7_919) % 99_000,
        },
        company_id: format!("co-{company}"),
        route_id: format!("rt-{company}-{}", (i / COMPANIES) % ROUTES_PER_COMPANY),
        passenger_phone: format!("+2327{:07}", i % 10_000_000),
        payment_code: i.is_multiple_of(CODE_EVERY).then(|| {
            format!(
                "CODE-{company}-{}",
                (i / CODE_EVERY / COMPANIES) % CODES_PER_COMPANY
            )
        }),
        financial_transaction_reference: Some(format!("txn-bench-{i:08}")),
    }
}

async fn enqueue(pool: &Db, n: usize) -> anyhow::Result<()> {
    let mut conn = pool.pool().acquire().await?;
    let mut start = 0;
    while start < n {
        let end = (start + ENQUEUE_CHUNK).min(n);
        let jobs: Vec<NewJob> = (start..end).map(|i| payment(i).to_job()).collect();
        enqueue_many(&mut conn, &jobs).await?;
        start = end;
    }
    Ok(())
}

/// The tickets workers' flags, and any from `BENCH_WORKER_ARGS` for tuning runs
/// (`BENCH_WORKER_ARGS="--ticket-batch-size 300"`).
fn worker_flags() -> Vec<std::ffi::OsString> {
    let extra = std::env::var("BENCH_WORKER_ARGS").unwrap_or_default();
    ["--queues", ticket::QUEUE]
        .into_iter()
        .chain(extra.split_whitespace())
        .map(Into::into)
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_payments_fit_their_company() {
        for i in 0..100 {
            let p = payment(i);
            assert!(p
                .route_id
                .starts_with(&format!("rt-{}-", &p.company_id[3..])));
            assert!(p.amount.value_minor > 0);
        }
    }
}
