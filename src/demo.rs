//! The demo: Poda end to end on the local Postgres, with progress and a summary.
//!
//! It recreates the `poda_demo` database, starts the enqueuer and the workers in this process,
//! sends signed Monime webhooks (each becomes a durable ticket job), and drains a batch of
//! probe jobs of which some fail once (durable retry) and a few fail for good.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use poda_jobs::engine::{enqueue_many, JobState, RetryPolicy};
use poda_jobs::probe::{self, ProbeJob};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::bench::ingest::payment_completed_body;
use crate::config::{DatabaseSettings, Secret};
use crate::enqueuer::{Enqueuer, EnqueuerSettings};
use crate::http::webhooks::signature::sign;
use crate::ops;
use crate::worker::{run_workers, WorkerOptions};

pub const DEMO_DATABASE: &str = "poda_demo";
const DEMO_SECRET: &str = "whsec_demo_only";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Any database URL on the server to use; the demo works in its own `poda_demo` database.
    pub server_url: Secret,
    pub jobs: usize,
    pub webhooks: usize,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let server = DatabaseSettings::new(options.server_url.clone(), 1);
    let demo_url = recreate_database(&server).await?;
    let database = DatabaseSettings::new(demo_url, 40);
    let pool = database.connect().await?;
    ops::migrate(&pool).await?;
    println!(
        "▸ database {DEMO_DATABASE} on {} recreated and migrated",
        server.target()
    );

    // 1. Signed webhooks → durable ticket jobs, acknowledged only after COMMIT.
    let shutdown = CancellationToken::new();
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
    let enqueuer = Enqueuer::build_with_pool(
        EnqueuerSettings::new(addr, database.clone(), vec![Secret::new(DEMO_SECRET)]),
        pool.clone(),
    )
    .await?;
    let url = format!("http://127.0.0.1:{}/webhooks/monime", enqueuer.port());
    let server_task = tokio::spawn(enqueuer.run_until_stopped(shutdown.clone()));
    let (accepted, duplicates) = send_webhooks(&url, options.webhooks).await?;
    println!(
        "▸ webhooks: {accepted} payments accepted (202), {duplicates} redeliveries answered with the same job (200)"
    );
    let ticket_jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1")
        .bind(poda_jobs::ticket::QUEUE)
        .fetch_one(&pool)
        .await?;
    println!("  {ticket_jobs} ticket jobs are durable in the `tickets` queue (one per payment)");

    // 2. A batch of jobs drained by the workers, with durable retries.
    let retry = RetryPolicy::new(3, Duration::from_millis(200), Duration::from_secs(2));
    let jobs: Vec<_> = (0..options.jobs as i64)
        .map(|n| {
            let probe = ProbeJob {
                fail_times: i32::from(n % 10 == 0),
                permanent: n % 500 == 499,
                ..ProbeJob::new(n)
            };
            probe.to_job(retry)
        })
        .collect();
    let mut conn = pool.acquire().await?;
    for chunk in jobs.chunks(1_000) {
        enqueue_many(&mut conn, chunk).await?;
    }
    drop(conn);
    println!(
        "▸ enqueued {} jobs: every 10th fails once and retries after ~200 ms, every 500th fails for good",
        options.jobs
    );

    let started = Instant::now();
    let worker_options = WorkerOptions {
        queues: vec![probe::QUEUE.to_owned()],
        concurrency: 16,
        batch_size: 100,
        engine: Default::default(),
        shutdown_grace: Duration::from_secs(10),
        transfers: None,
    };
    let engine_pool = database.connect_async_commit().await?;
    let stop_workers = CancellationToken::new();
    let workers = tokio::spawn(run_workers(
        pool.clone(),
        engine_pool,
        worker_options,
        stop_workers.clone(),
    ));

    let bar = ProgressBar::new(options.jobs as u64).with_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} finished  {per_sec}  {msg}")
            .expect("a progress template"),
    );
    loop {
        let (finished, retrying): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('completed', 'failed')), \
                    count(*) FILTER (WHERE state = 'available' AND last_error IS NOT NULL) \
             FROM jobs WHERE queue = $1",
        )
        .bind(probe::QUEUE)
        .fetch_one(&pool)
        .await?;
        bar.set_position(finished as u64);
        bar.set_message(format!("{retrying} waiting to retry"));
        if finished as usize >= options.jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    let elapsed = started.elapsed();
    stop_workers.cancel();
    workers.await.context("the worker task")??;
    shutdown.cancel();
    server_task.await.context("the enqueuer task")??;

    // 3. Summary.
    let count = |state: JobState| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE queue = $1 AND state = $2",
            )
            .bind(probe::QUEUE)
            .bind(state)
            .fetch_one(&pool)
            .await
        }
    };
    let completed = count(JobState::Completed).await?;
    let failed = count(JobState::Failed).await?;
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'completed' AND attempt > 1",
    )
    .bind(probe::QUEUE)
    .fetch_one(&pool)
    .await?;
    println!(
        "▸ drained in {:.2} s ({:.0} jobs/s): {completed} completed ({retried} after a retry), {failed} failed for good",
        elapsed.as_secs_f64(),
        options.jobs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "\nSELECT * FROM job_queue_stats;\n{}",
        ops::stats_table(&pool).await?
    );
    let failures: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, last_error FROM job_failures ORDER BY id LIMIT 3")
            .fetch_all(&pool)
            .await?;
    println!("\nSELECT id, last_error FROM job_failures LIMIT 3;");
    for (id, error) in failures {
        println!("  {id}  {error}");
    }
    println!("\nExplore it: psql {DEMO_DATABASE}, or DATABASE_URL=…/{DEMO_DATABASE} worker stats");
    Ok(())
}

/// Drops and creates the demo database; returns its URL.
async fn recreate_database(server: &DatabaseSettings) -> anyhow::Result<Secret> {
    let options: PgConnectOptions = server.connect_options()?;
    let mut admin = PgConnection::connect_with(
        &options
            .clone()
            .database("postgres")
            .disable_statement_logging(),
    )
    .await
    .with_context(|| format!("connecting to Postgres at {}", server.target()))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .context("dropping the old demo database")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {DEMO_DATABASE}"
    )))
    .execute(&mut admin)
    .await
    .context("creating the demo database")?;
    admin.close().await.ok();
    let url = server.url.expose();
    let base = url.split('?').next().unwrap_or(url);
    let prefix = match base.rfind('/') {
        Some(slash) if slash > base.find("://").map(|i| i + 2).unwrap_or(0) => &base[..slash],
        _ => base,
    };
    Ok(Secret::new(format!("{prefix}/{DEMO_DATABASE}")))
}

/// Sends `n` signed payments plus a redelivery of every tenth; returns (202s, duplicate 200s).
async fn send_webhooks(url: &str, n: usize) -> anyhow::Result<(usize, usize)> {
    let client = reqwest::Client::new();
    let mut accepted = 0;
    let mut duplicates = 0;
    let redeliveries = (0..n).step_by(10);
    for i in (0..n).chain(redeliveries) {
        let body = payment_completed_body("demo", i);
        let signature = sign(DEMO_SECRET, chrono::Utc::now().timestamp(), &body);
        let response = client
            .post(url)
            .header("Monime-Signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("sending a webhook to the enqueuer")?;
        match response.status().as_u16() {
            202 => accepted += 1,
            200 => duplicates += 1,
            other => anyhow::bail!(
                "the enqueuer answered {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    Ok((accepted, duplicates))
}
