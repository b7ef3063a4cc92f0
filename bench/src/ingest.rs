//! `ingest`: signed `payment.completed` webhooks against an in-process enqueuer, at fixed
//! concurrency over keep-alive connections, plus one burst of fresh connections. Reports
//! requests/s and latency percentiles, and checks that every 202 has its job in Postgres.
//!
//! It creates its own database (`bench_poda_<uuid>`), migrates it, and drops it afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scratch::with_scratch_database;
use anyhow::Context;
use poda_jobs::db::Db;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use poda::config::{DatabaseSettings, Secret};
use poda::enqueuer::{Enqueuer, EnqueuerSettings};
use poda::http::group_commit::GroupCommitConfig;
use poda::http::webhooks::signature::sign;

const BENCH_SECRET: &str = "whsec_bench";
const DESIRED_FD_LIMIT: u64 = 65_536;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The Postgres server (the database part is ignored): a `bench_poda_*` database is
    /// created there and dropped afterwards.
    pub server_url: String,
    /// Keep-alive connections per run.
    pub concurrencies: Vec<usize>,
    /// Requests per run.
    pub requests: usize,
    /// Fresh connections that each send one webhook at once (0: no burst).
    pub burst: usize,
    /// Times each run is repeated.
    pub runs: usize,
    pub group_commit: GroupCommitConfig,
    /// Connections of the enqueuer's pool.
    pub db_connections: u32,
    /// Also run open-loop at this many requests/s (one run per concurrency), latency counted
    /// from each request's scheduled send time.
    pub paced_rate: Option<f64>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            server_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            concurrencies: vec![64, 256, 1024],
            requests: 20_000,
            burst: 10_000,
            runs: 1,
            group_commit: GroupCommitConfig::default(),
            db_connections: 16,
            paced_rate: None,
        }
    }
}

/// Runs the scenario; prints and returns one `RESULT` object per run.
pub async fn run_ingest(opts: IngestOptions) -> anyhow::Result<Vec<Value>> {
    raise_fd_limit();
    with_scratch_database(&opts.server_url, "ingest", |db, _| {
        run_on_database(&opts, db)
    })
    .await
}

async fn run_on_database(opts: &IngestOptions, db: PgConnectOptions) -> anyhow::Result<Vec<Value>> {
    let pool = PgPoolOptions::new()
        .max_connections(opts.db_connections)
        .connect_with(db)
        .await
        .map(Db::from)
        .context("connecting to the bench database")?;
    poda_jobs::engine::migrate::run_migrations(&pool)
        .await
        .context("migrating the bench database")?;

    let mut settings = EnqueuerSettings::new(
        "127.0.0.1:0".parse::<SocketAddr>()?,
        // Unused: the enqueuer runs on `pool`.
        DatabaseSettings::new(Secret::default(), opts.db_connections),
        vec![Secret::new(BENCH_SECRET)],
    );
    settings.group_commit = opts.group_commit.clone();
    // One client sends everything: the per-client limit would measure itself.
    settings.rate_limit.per_second = 0;
    let enqueuer = Enqueuer::build_with_pool(settings, pool.clone()).await?;
    let url = format!("http://127.0.0.1:{}/webhooks/monime", enqueuer.port());
    let stop = CancellationToken::new();
    let server = tokio::spawn(enqueuer.run_until_stopped(stop.clone()));

    let mut results = Vec::new();
    let outcome: anyhow::Result<()> = async {
        for run in 1..=opts.runs {
            for &concurrency in &opts.concurrencies {
                // Warm-up: opens the connections; not measured.
                let client = client(concurrency)?;
                let label = format!("w{run}c{concurrency}");
                load(&client, &url, &label, concurrency * 2, concurrency, None).await;
                let label = format!("r{run}c{concurrency}");
                let sample = load(&client, &url, &label, opts.requests, concurrency, None).await;
                results.push(report(&pool, run, concurrency, None, sample).await?);
                if let Some(rate) = opts.paced_rate {
                    let label = format!("p{run}c{concurrency}");
                    let sample = load(
                        &client,
                        &url,
                        &label,
                        opts.requests,
                        concurrency,
                        Some(rate),
                    )
                    .await;
                    results.push(report(&pool, run, concurrency, Some(rate), sample).await?);
                }
            }
            if opts.burst > 0 {
                // Every request on a fresh connection, all at once.
                let client = client(opts.burst)?;
                let label = format!("r{run}b{}", opts.burst);
                let sample = load(&client, &url, &label, opts.burst, opts.burst, None).await;
                results.push(report(&pool, run, opts.burst, None, sample).await?);
            }
        }
        Ok(())
    }
    .await;

    stop.cancel();
    server.await.context("joining the enqueuer")??;
    pool.close().await;
    outcome?;
    Ok(results)
}

fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()?)
}

struct Sample {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    job_ids: Vec<i64>,
    failures: usize,
}

/// Sends `n` webhooks from `concurrency` tasks, each one request at a time; with `rate`,
/// request `i` is due at `i / rate` s and its latency counts from then.
async fn load(
    client: &reqwest::Client,
    url: &str,
    label: &str,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Sample {
    let epoch = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, label) = (client.clone(), url.to_owned(), label.to_owned());
            let (next, start, epoch) = (next.clone(), start.clone(), epoch.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut jobs = Vec::new();
                let mut failures = 0;
                start.wait().await;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let body = payment_completed_body(&label, i);
                    let header = sign(BENCH_SECRET, chrono::Utc::now().timestamp(), &body);
                    let sent = match (rate, epoch.get()) {
                        (Some(rate), Some(epoch)) => {
                            let due = *epoch + Duration::from_secs_f64(i as f64 / rate);
                            tokio::time::sleep_until(due).await;
                            due.into_std()
                        }
                        _ => Instant::now(),
                    };
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("Monime-Signature", header)
                        .body(body)
                        .send()
                        .await;
                    let job = match response {
                        Ok(r) if r.status().as_u16() == 202 => r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v["job_id"].as_i64()),
                        _ => None,
                    };
                    latencies.push(sent.elapsed().as_micros() as u64);
                    match job {
                        Some(job) => jobs.push(job),
                        None => failures += 1,
                    }
                }
                (latencies, jobs, failures)
            })
        })
        .collect();
    let _ = epoch.set(tokio::time::Instant::now());
    start.wait().await;
    let began = Instant::now();
    let mut sample = Sample {
        elapsed: Duration::ZERO,
        latencies_us: Vec::with_capacity(n),
        job_ids: Vec::with_capacity(n),
        failures: 0,
    };
    for task in tasks {
        match task.await {
            Ok((latencies, jobs, failures)) => {
                sample.latencies_us.extend(latencies);
                sample.job_ids.extend(jobs);
                sample.failures += failures;
            }
            Err(_) => sample.failures += 1,
        }
    }
    sample.elapsed = began.elapsed();
    sample
}

/// A `payment.completed` envelope as Monime sends it, for payment `pay-<label>-<i>`.
pub fn payment_completed_body(label: &str, i: usize) -> Vec<u8> {
    let payment = format!("pay-{label}-{i}");
    serde_json::to_vec(&json!({
        "apiVersion": "caph.2025-08-23",
        "event": {"id": format!("evt-{label}-{i}"), "name": "payment.completed",
                  "timestamp": chrono::Utc::now().to_rfc3339()},
        "object": {"id": payment, "type": "payment"},
        "data": {"id": payment, "status": "completed",
                 "amount": {"currency": "SLE", "value": 50_000},
                 "financialTransactionReference": format!("txn-{label}-{i}"),
                 "metadata": {"company_id": "co-bench", "route_id": "rt-bench",
                              "passenger_phone": "+23276000000", "payment_code": null}}
    }))
    .expect("a JSON body")
}

async fn report(
    pool: &Db,
    run: usize,
    concurrency: usize,
    paced_rate: Option<f64>,
    mut sample: Sample,
) -> anyhow::Result<Value> {
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
        .bind(&sample.job_ids)
        .fetch_one(pool)
        .await
        .context("counting acknowledged jobs")?;
    sample.latencies_us.sort_unstable();
    let n = sample.latencies_us.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        sample.latencies_us[idx] as f64 / 1000.0
    };
    let result = json!({
        "scenario": "ingest",
        "run": run,
        "n": n,
        "concurrency": concurrency,
        "paced_rate": paced_rate,
        "per_s": (n as f64 / sample.elapsed.as_secs_f64()).round(),
        "p50_ms": round2(pct(0.50)),
        "p95_ms": round2(pct(0.95)),
        "p99_ms": round2(pct(0.99)),
        "max_ms": round2(pct(1.0)),
        "accepted": sample.job_ids.len(),
        "failed": sample.failures,
        "ok": sample.failures == 0 && stored as usize == sample.job_ids.len(),
    });
    println!("RESULT {result}");
    Ok(result)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Raises the open-file limit (10,000 connections need 20,000 descriptors in one process).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = DESIRED_FD_LIMIT.max(soft);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
