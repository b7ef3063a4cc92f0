//! `worker`: runs Poda workers, or one operator command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use poda::cli::{WorkerCli, WorkerCommand};
use poda::worker::{monime_config, run_workers, WorkerOptions};
use poda::{cpu_policy, ops, shutdown, telemetry};
use poda_jobs::engine::NewJob;
use poda_jobs::transfer::monime::MonimeClient;
use poda_jobs::transfer::reconcile::ReconcileConfig;

// jemalloc: under the tickets soak glibc's malloc was a fifth of the worker's own CPU
// (docs/allocator.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Fail points named by FAILPOINTS, in builds with the `failpoints` feature (tests).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let _ = dotenvy::dotenv();
    let cli = WorkerCli::parse();
    telemetry::init(cli.common.log_format);
    if cli.command.is_none() {
        // Before the runtime's threads exist: they inherit the policy.
        let policy = cli.run.cpu_policy;
        if let Err(error) = cpu_policy::apply(policy) {
            tracing::warn!(%policy, %error, "the CPU scheduling policy could not be set; running under the kernel's default");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: WorkerCli) -> anyhow::Result<ExitCode> {
    let Some(command) = cli.command else {
        let options = WorkerOptions::from_args(&cli.run, &cli.monime)?;
        // Migrations run on a session of their own: the handlers' statement and lock timeouts
        // would cut off a long migration, or one waiting for another replica's.
        {
            let pool = cli.common.database(1).connect().await?;
            ops::ensure_schema(&pool, cli.run.migrate).await?;
            pool.close().await;
        }
        let handlers = cli
            .common
            .database(options.handler_connections())
            .connect_handlers()
            .await?;
        let engine = cli
            .common
            .database(options.engine_connections())
            .connect_async_commit()
            .await?;
        run_workers(handlers, engine, options, shutdown::on_signals()).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let pool = cli.common.database(2).connect().await?;
    match command {
        WorkerCommand::Migrate => {
            ops::migrate(&pool).await?;
            println!("migrations applied");
        }
        WorkerCommand::Stats => {
            ops::ensure_schema(&pool, false).await?;
            println!("{}", ops::stats_table(&pool).await?);
            println!("{}", ops::last_reconcile_line(&pool).await?);
        }
        WorkerCommand::Schedules => {
            ops::ensure_schema(&pool, false).await?;
            let monime = monime_config(&cli.monime)?.is_some();
            let configured = poda::schedules::schedules(&cli.run.schedules, monime)?;
            println!("{}", ops::schedules_table(&pool, &configured).await?);
        }
        WorkerCommand::Retry { id } => {
            let job = ops::retry(&pool, id).await?;
            println!(
                "job {} ({}, priority {}) is available again (attempts reset; run_at {})",
                job.id, job.queue, job.priority, job.run_at
            );
        }
        WorkerCommand::Cancel { id } => {
            let job = ops::cancel(&pool, id).await?;
            println!(
                "job {} ({}, priority {}) is cancelled",
                job.id, job.queue, job.priority
            );
        }
        WorkerCommand::Enqueue {
            queue,
            kind,
            payload,
            run_at,
            priority,
            unique_key,
            max_attempts,
        } => {
            ops::ensure_schema(&pool, false).await?;
            let mut job = NewJob::new(queue, kind, payload);
            job.run_at = run_at;
            job.priority = priority;
            job.unique_key = unique_key;
            job.retry.max_attempts = max_attempts;
            let enqueued = ops::enqueue(&pool, &job).await?;
            if !enqueued.created {
                eprintln!(
                    "the unique key is taken: job {} already exists",
                    enqueued.id
                );
            }
            println!("{}", enqueued.id);
        }
        WorkerCommand::Prune { older_than } => {
            let report = ops::prune(&pool, older_than).await?;
            if report.deleted.is_empty() {
                println!("nothing to prune");
            }
            for (queue, n) in &report.deleted {
                println!("{queue}: deleted {n} finished jobs");
            }
        }
        WorkerCommand::Pause { queue } => {
            let status = ops::pause(&pool, &queue).await?;
            let since = status.paused_at.map(|t| t.to_rfc3339()).unwrap_or_default();
            println!("queue {} is paused (since {since})", status.name);
        }
        WorkerCommand::Resume { queue } => {
            let status = ops::resume(&pool, &queue).await?;
            println!("queue {} is running", status.name);
        }
        WorkerCommand::Cycle { id, interval } => {
            ops::ensure_schema(&pool, false).await?;
            let progress = poda::cycle_watch::watch_cycle(&pool, id, interval).await?;
            if progress.status == poda_jobs::cycle::CycleStatus::Failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        WorkerCommand::RetryTransfer { ticket_id } => {
            let retried = ops::retry_transfer(&pool, ticket_id).await?;
            println!(
                "transfer of ticket {} is pending again under key {} ({}); job {} runs now",
                retried.ticket_id,
                retried.idempotency_key,
                if retried.new_key {
                    "a new key: Monime had failed it"
                } else {
                    "the same key: Monime answers with the original transfer if it has one"
                },
                retried.job_id
            );
        }
        WorkerCommand::Reconcile {
            stuck_after,
            recent,
        } => {
            ops::ensure_schema(&pool, false).await?;
            let Some((config, _)) = monime_config(&cli.monime)? else {
                anyhow::bail!("reconcile needs Monime: set MONIME_API_URL, MONIME_API_TOKEN, MONIME_SPACE_ID and MONIME_PLATFORM_ACCOUNT_ID");
            };
            let client = MonimeClient::new(config).context("building the Monime client")?;
            let (report, text) = ops::reconcile(
                &pool,
                &client,
                ReconcileConfig {
                    stuck_after,
                    recent,
                },
            )
            .await?;
            println!("{text}");
            if report.needs_attention() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
