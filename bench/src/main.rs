//! `bench`: runs the named benchmark scenarios, and the demo (see `bench --help`).

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use poda::config::parse_duration;
use poda::config::Secret;
use poda::sandbox::{self, faults::FaultConfig, SandboxConfig};
use poda_bench::demo::{self, DemoOptions};
use poda_bench::fanout::{run_fanout, FanoutOptions};
use poda_bench::ingest::{run_ingest, IngestOptions};
use poda_bench::soak;
use poda_bench::tickets::{run_tickets, TicketsOptions};
use poda_bench::transfers::{run_transfers, TransfersOptions};
use poda_bench::{self as bench, report::Summary, BenchArgs, DEFAULT_BENCH_SERVER_URL};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "Run Poda's benchmark scenarios against a real Postgres, or the demo",
    long_about = "Run Poda's benchmark scenarios against a real Postgres, or the demo.\n\n\
        Each run creates and drops its own database (bench_poda_*) on the server named by \
        --database-url, starts real `worker` processes (the binary next to this one) and waits \
        until they are connected before the clock starts. Prints one `RESULT {json}` line per \
        run to stdout and a min/median/max table to stderr. Exits non-zero when a run fails its \
        correctness check."
)]
struct BenchCli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// W1 bulk enqueue: N jobs (default 100,000) via enqueue_many in calls of 1,000.
    W1(BenchArgs),
    /// W2 drain: N no-op jobs (default 100,000) drained by each count in --procs.
    W2(BenchArgs),
    /// W3 latency: N jobs (default 2,000) enqueued one at a time at --rate per second.
    W3(BenchArgs),
    /// W4 retry: N jobs (default 10,000) failing once then succeeding, 0 ms backoff.
    W4(BenchArgs),
    /// Every queue workload in turn (w1, w2, w3, w4) with the same options.
    All(BenchArgs),
    /// Webhook ingest: signed payment.completed webhooks over keep-alive connections at fixed
    /// concurrency, then a burst of fresh connections; req/s and latency percentiles.
    Ingest(IngestArgs),
    /// Ticket creation: N queued ticket jobs (default 100,000) drained into tickets, code uses
    /// and transfer jobs by worker processes; tickets/s and an exact-count check.
    Tickets(TicketsArgs),
    /// Commission transfers: N transfers against the in-process Monime sandbox (latency and
    /// transient faults), with the real retry policy; wall time and an exactly-once check.
    Transfers(TransfersArgs),
    /// Soak: a steady offered load of probe jobs, first with vacuum free, then (with
    /// --hold-snapshot) with a REPEATABLE READ transaction held open in the same database;
    /// one RESULT per phase and the held phase's throughput over the free one's.
    Soak(SoakArgs),
    /// Run the Monime sandbox standalone (for the demo or manual tests) until Ctrl-C.
    Sandbox(SandboxArgs),
    /// Contribution-cycle fan-out: one cycle per member count; contributions/s and wall time.
    Fanout(FanoutArgs),
    /// Poda end to end on the local Postgres (database poda_demo), with progress and a summary.
    Demo(DemoArgs),
    /// Start a private PostgreSQL cluster for a script (CI on a machine whose server does not
    /// let it in): prints its admin URL and returns; the cluster is stopped and removed once
    /// process --watch-pid has exited.
    PrivateDb(PrivateDbArgs),
}

#[derive(Debug, Clone, Args)]
struct PrivateDbArgs {
    /// The process whose exit stops the cluster (a script passes its own, `$$`).
    #[arg(long)]
    watch_pid: u32,
}

#[derive(Debug, Clone, Args)]
struct TicketsArgs {
    /// Measured runs per process count.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Ticket jobs per run.
    #[arg(long, default_value_t = poda_bench::tickets::DEFAULT_TICKETS_N)]
    n: usize,
    /// Worker process counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    procs: Vec<usize>,
    /// Postgres server URL; bench_poda_* databases are created there and dropped afterwards.
    #[arg(long, env = "POSTGRES_ADMIN_URL", default_value = DEFAULT_BENCH_SERVER_URL, hide_env_values = true)]
    database_url: String,
    /// Connect the workers through a PgBouncer in transaction mode that each run starts in
    /// front of the server (`pgbouncer` must be installed); they LISTEN on a direct session.
    #[arg(long)]
    pgbouncer: bool,
}

#[derive(Debug, Clone, Args)]
struct SoakArgs {
    /// Jobs offered per second, one enqueue statement every 100 ms.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Seconds of the free phase (at least 60 before a held snapshot).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Then hold a REPEATABLE READ snapshot open for this many seconds (0: no held phase).
    #[arg(long, default_value_t = 0)]
    hold_snapshot: u64,
    /// What is offered: probe jobs drained by one worker process, or signed payment
    /// webhooks through the enqueuer to tickets and commission transfers at the sandbox.
    #[arg(long, value_enum, default_value_t = SoakScenario::Probe)]
    scenario: SoakScenario,
    /// Run on a private PostgreSQL cluster with the server's default settings (autovacuum
    /// on), as production runs, instead of --database-url.
    #[arg(long)]
    private_db: bool,
    /// Probe: the workers delete finished jobs older than this (`worker --retention`), and
    /// prune every 10 s; the jobs tables' size is reported every minute.
    #[arg(long, value_parser = parse_duration)]
    retention: Option<std::time::Duration>,
    #[command(flatten)]
    workers: SoakWorkerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SoakScenario {
    Probe,
    Tickets,
}

#[derive(Debug, Clone, Args)]
struct SoakWorkerArgs {
    /// Handler slots of the worker process.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Jobs the worker may claim beyond its free slots.
    #[arg(long, default_value_t = 984)]
    prefetch: usize,
    /// Postgres server URL; a bench_poda_* database is created there and dropped afterwards.
    #[arg(long, env = "POSTGRES_ADMIN_URL", default_value = DEFAULT_BENCH_SERVER_URL, hide_env_values = true)]
    database_url: String,
    /// The `worker` binary to start (default: the one next to this executable).
    #[arg(long)]
    worker_bin: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct TransfersArgs {
    /// Measured runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Transfers per run.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// The sandbox's latency per call.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    latency: std::time::Duration,
    /// Share of transfers (0 to 1) whose first create meets a transient fault.
    #[arg(long, default_value_t = 0.10)]
    faults: f64,
    /// Handler slots of the worker.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Postgres server URL; bench_poda_* databases are created there and dropped afterwards.
    #[arg(long, env = "POSTGRES_ADMIN_URL", default_value = DEFAULT_BENCH_SERVER_URL, hide_env_values = true)]
    database_url: String,
}

#[derive(Debug, Clone, Args)]
struct SandboxArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
    /// Latency added to every answer.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    latency: std::time::Duration,
    /// Share of transfers (0 to 1) whose first create meets a transient fault.
    #[arg(long, default_value_t = 0.0)]
    faults: f64,
    /// The API token to accept (default: any non-empty bearer token).
    #[arg(long, env = "MONIME_API_TOKEN")]
    token: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct FanoutArgs {
    /// Measured runs (each size, each run on a fresh database).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Members per cycle, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5000,100000,1000000")]
    members: Vec<i64>,
    /// Members per fan-out chunk (one INSERT … SELECT and one commit each).
    #[arg(long, default_value_t = poda_jobs::cycle::DEFAULT_CHUNK_SIZE)]
    chunk_size: i64,
    /// Postgres server URL; bench_poda_* databases are created there and dropped afterwards.
    #[arg(long, env = "POSTGRES_ADMIN_URL", default_value = DEFAULT_BENCH_SERVER_URL, hide_env_values = true)]
    database_url: String,
}

#[derive(Debug, Clone, Args)]
struct IngestArgs {
    /// Measured runs per concurrency.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Requests per run.
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Keep-alive connections, comma-separated; one set of runs each.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    concurrency: Vec<usize>,
    /// Fresh connections that each send one webhook at once (0: no burst).
    #[arg(long, default_value_t = 10_000)]
    burst: usize,
    /// Also run open-loop at this many requests/s per concurrency, latency counted from each
    /// request's scheduled send time: the target's operating point (5,000 req/s with p99 ≤ 25 ms
    /// at 256 connections). 0 turns it off.
    #[arg(long, default_value_t = 5_000.0)]
    paced_rate: f64,
    /// Postgres server URL; a bench_poda_* database is created there and dropped afterwards.
    #[arg(long, env = "POSTGRES_ADMIN_URL", default_value = DEFAULT_BENCH_SERVER_URL, hide_env_values = true)]
    database_url: String,
}

#[derive(Debug, Clone, Args)]
struct DemoArgs {
    /// Payments to send as signed webhooks (each becomes a ticket and a commission transfer).
    #[arg(long, default_value_t = 1_000)]
    payments: usize,
    /// Members of the tier whose contribution cycle the demo runs.
    #[arg(long, default_value_t = 5_000)]
    members: i64,
    /// Any Postgres URL on the server to use; the demo works in its own database poda_demo.
    /// Unset: the local server (postgres@127.0.0.1:5432) when it lets the demo in, else a
    /// private cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<Secret>,
    /// Run on a private PostgreSQL cluster of the demo's own (initdb into the target
    /// directory, a free loopback port), stopped and removed when the demo exits.
    #[arg(long)]
    private_db: bool,
    /// After the summary, leave the enqueuer running (its console under /admin shows what
    /// the demo did) until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = BenchCli::parse();
    let mut summary = Summary::default();
    let result = match &cli.scenario {
        Scenario::Demo(args) => {
            poda::telemetry::init_with_default(
                poda::telemetry::LogFormat::Pretty,
                poda::telemetry::QUIET_FILTER,
            );
            match demo::choose_server(args.database_url.clone(), args.private_db).await {
                Ok(server) => demo::run(DemoOptions {
                    server,
                    payments: args.payments,
                    members: args.members,
                    keep_running: args.keep_running,
                })
                .await
                .map(|()| None),
                Err(error) => Err(error),
            }
        }
        Scenario::PrivateDb(args) => {
            let cluster = poda_jobs::testing::PrivateCluster::start_with(
                poda_jobs::testing::SHARED_CLUSTER_SETTINGS,
            )
            .await;
            println!("{}", cluster.keep_until_exit_of(args.watch_pid));
            Ok(None)
        }
        Scenario::Sandbox(args) => {
            poda::telemetry::init(poda::telemetry::LogFormat::Pretty);
            serve_sandbox(args).await.map(|()| None)
        }
        scenario => {
            poda::telemetry::init(poda::telemetry::LogFormat::Pretty);
            // A signal drops the scenario, and with it the worker processes it started (they
            // are killed when dropped): none outlives the bench.
            let stop = poda::shutdown::on_signal();
            let work = async {
                match scenario {
                    Scenario::W1(args) => run(args, &mut summary, &[bench::Workload::W1]).await,
                    Scenario::W2(args) => run(args, &mut summary, &[bench::Workload::W2]).await,
                    Scenario::W3(args) => run(args, &mut summary, &[bench::Workload::W3]).await,
                    Scenario::W4(args) => run(args, &mut summary, &[bench::Workload::W4]).await,
                    Scenario::All(args) => run(args, &mut summary, bench::Workload::ALL).await,
                    Scenario::Ingest(args) => ingest(args, &mut summary).await,
                    Scenario::Fanout(args) => fanout(args, &mut summary).await,
                    Scenario::Tickets(args) => tickets(args, &mut summary).await,
                    Scenario::Transfers(args) => transfers(args, &mut summary).await,
                    Scenario::Soak(args) => soak(args, &mut summary).await,
                    Scenario::Demo(_) | Scenario::PrivateDb(_) | Scenario::Sandbox(_) => {
                        unreachable!("handled above")
                    }
                }
            };
            let run = tokio::select! {
                run = work => run,
                () = stop.cancelled() => Err(anyhow::anyhow!(
                    "stopped by a signal: the run's worker processes were killed; its \
                     bench_poda_* database may be left on the server"
                )),
            };
            run.map(Some)
        }
    };
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(())) => {
            summary.print();
            if summary.failures() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            summary.print();
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: &BenchArgs,
    summary: &mut Summary,
    workloads: &[bench::Workload],
) -> anyhow::Result<()> {
    args.validate()?;
    for workload in workloads {
        workload.run(args, summary).await?;
    }
    Ok(())
}

async fn ingest(args: &IngestArgs, summary: &mut Summary) -> anyhow::Result<()> {
    if args.runs == 0 || args.n == 0 || args.concurrency.is_empty() || args.concurrency.contains(&0)
    {
        anyhow::bail!("--runs, --n and every --concurrency must be at least 1");
    }
    let results = run_ingest(IngestOptions {
        server_url: args.database_url.clone(),
        concurrencies: args.concurrency.clone(),
        requests: args.n,
        burst: args.burst,
        runs: args.runs,
        paced_rate: (args.paced_rate > 0.0).then_some(args.paced_rate),
        ..IngestOptions::default()
    })
    .await?;
    for result in results {
        let mode = match result["paced_rate"].as_f64() {
            Some(rate) => format!("paced {rate}/s"),
            None => "back-to-back".to_owned(),
        };
        let config = format!("ingest c={} {mode}", result["concurrency"]);
        for figure in ["per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            if let Some(value) = result[figure].as_f64() {
                summary.add(&config, figure, value);
            }
        }
        summary.add_check(result["ok"].as_bool().unwrap_or(false));
    }
    Ok(())
}

async fn fanout(args: &FanoutArgs, summary: &mut Summary) -> anyhow::Result<()> {
    if args.runs == 0
        || args.chunk_size < 1
        || args.members.is_empty()
        || args.members.iter().any(|m| *m < 2)
    {
        anyhow::bail!("--runs and --chunk-size must be at least 1, and every --members at least 2");
    }
    let results = run_fanout(FanoutOptions {
        server_url: args.database_url.clone(),
        sizes: args.members.clone(),
        runs: args.runs,
        chunk_size: args.chunk_size,
        ..FanoutOptions::default()
    })
    .await?;
    for result in results {
        let config = format!("fanout members={}", result["members"]);
        for figure in ["seconds", "per_s"] {
            if let Some(value) = result[figure].as_f64() {
                summary.add(&config, figure, value);
            }
        }
        summary.add_check(result["ok"].as_bool().unwrap_or(false));
    }
    Ok(())
}

async fn tickets(args: &TicketsArgs, summary: &mut Summary) -> anyhow::Result<()> {
    if args.runs == 0 || args.n == 0 || args.procs.is_empty() || args.procs.contains(&0) {
        anyhow::bail!("--runs, --n and every --procs must be at least 1");
    }
    let results = run_tickets(TicketsOptions {
        server_url: args.database_url.clone(),
        n: args.n,
        runs: args.runs,
        procs: args.procs.clone(),
        pgbouncer: args.pgbouncer,
        ..TicketsOptions::default()
    })
    .await?;
    for result in results {
        let via = if args.pgbouncer { " via pgbouncer" } else { "" };
        let config = format!("tickets procs={}{via}", result["procs"]);
        for figure in ["seconds", "per_s"] {
            if let Some(value) = result[figure].as_f64() {
                summary.add(&config, figure, value);
            }
        }
        summary.add_check(result["ok"].as_bool().unwrap_or(false));
    }
    Ok(())
}

async fn transfers(args: &TransfersArgs, summary: &mut Summary) -> anyhow::Result<()> {
    if args.runs == 0 || args.n == 0 || args.concurrency == 0 || !(0.0..=1.0).contains(&args.faults)
    {
        anyhow::bail!(
            "--runs, --n and --concurrency must be at least 1, and --faults a share from 0 to 1"
        );
    }
    let results = run_transfers(TransfersOptions {
        server_url: args.database_url.clone(),
        n: args.n,
        runs: args.runs,
        latency: args.latency,
        transient_rate: args.faults,
        concurrency: args.concurrency,
        ..TransfersOptions::default()
    })
    .await?;
    for result in results {
        for figure in ["seconds", "per_s", "retries"] {
            if let Some(value) = result[figure].as_f64() {
                summary.add("transfers", figure, value);
            }
        }
        summary.add_check(result["ok"].as_bool().unwrap_or(false));
    }
    Ok(())
}

async fn soak(args: &SoakArgs, summary: &mut Summary) -> anyhow::Result<()> {
    if args.rate == 0 || args.seconds == 0 || args.workers.concurrency == 0 {
        anyhow::bail!("--rate, --seconds and --concurrency must be at least 1");
    }
    if args.hold_snapshot > 0 && args.seconds < soak::MIN_WARM_UP.as_secs() {
        anyhow::bail!(
            "--seconds must be at least {} before a held snapshot: the queue warms up first",
            soak::MIN_WARM_UP.as_secs()
        );
    }
    let options = soak::SoakOptions {
        rate: args.rate,
        free: std::time::Duration::from_secs(args.seconds),
        held: std::time::Duration::from_secs(args.hold_snapshot),
    };
    // Held by this function, so that the private cluster outlives the run.
    let private = match args.private_db {
        true => {
            Some(poda_jobs::testing::PrivateCluster::start_with(soak::PRODUCTION_SETTINGS).await)
        }
        false => None,
    };
    let bench_args = BenchArgs {
        runs: 1,
        procs: vec![1],
        n: None,
        database_url: match &private {
            Some(cluster) => cluster.admin_url(),
            None => args.workers.database_url.clone(),
        },
        concurrency: args.workers.concurrency,
        batch_size: 1_000,
        prefetch: args.workers.prefetch,
        finished: 0,
        rate: args.rate,
        worker_bin: args.workers.worker_bin.clone(),
        pgbouncer: false,
        worker_flags: match args.retention {
            Some(retention) => vec![
                "--retention".into(),
                format!("{}ms", retention.as_millis()),
                "--prune-interval".into(),
                "10s".into(),
            ],
            None => Vec::new(),
        },
    };
    bench_args.validate()?;
    let (workload, figures): (&str, &[&str]) = match args.scenario {
        SoakScenario::Probe => (
            "probe",
            &["per_s", "lag_p99_ms", "lag_p99_ms_worst_10s", "backlog_end"],
        ),
        SoakScenario::Tickets => (
            "tickets",
            &[
                "per_s",
                "webhook_p99_ms",
                "ticket_p99_ms",
                "transfer_p99_ms",
                "backlog_end",
            ],
        ),
    };
    let results = bench::with_db(&bench_args, "soak", 1, async |db| match args.scenario {
        SoakScenario::Probe => soak::probe::run_probe(&bench_args, db, &options).await,
        SoakScenario::Tickets => soak::tickets::run_tickets(db, &options).await,
    })
    .await?;
    for result in results {
        if let Some(phase) = result["phase"].as_str() {
            let config = format!("soak {workload} {phase} rate={}", args.rate);
            for figure in figures {
                // A figure that is null (a percentile past what never came) shows as NaN.
                let value = result[*figure].as_f64().unwrap_or(f64::NAN);
                summary.add(&config, figure, value);
            }
            let clean = result["duplicates"].as_u64() == Some(0)
                || result["transfers_executed_once"].as_bool() == Some(true);
            summary.add_check(clean);
        }
    }
    Ok(())
}

async fn serve_sandbox(args: &SandboxArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.faults) {
        anyhow::bail!("--faults is a share from 0 to 1");
    }
    sandbox::serve(
        args.listen,
        SandboxConfig {
            latency: args.latency,
            faults: FaultConfig {
                transient_rate: args.faults,
                ..FaultConfig::default()
            },
            token: args.token.clone(),
            ..SandboxConfig::default()
        },
    )
    .await
}
