//! `bench`: runs the named benchmark scenarios (see `bench --help` and BENCHMARKS.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use poda::bench::{self, report::Summary, BenchArgs};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "Run Poda's benchmark scenarios against a real Postgres",
    long_about = "Run Poda's benchmark scenarios against a real Postgres.\n\n\
        Each run creates and drops its own database (bench_poda_*) on the server named by \
        --database-url, starts real `worker` processes (the binary next to this one) and waits \
        until they are connected before the clock starts. Prints one `RESULT {json}` line per \
        run to stdout and a min/median/max table to stderr. Exits non-zero when a run fails its \
        exactly-once check."
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = BenchCli::parse();
    poda::telemetry::init(poda::telemetry::LogFormat::Pretty);
    let mut summary = Summary::default();
    let result = match &cli.scenario {
        Scenario::W1(args) => run(args, &mut summary, &[bench::Workload::W1]).await,
        Scenario::W2(args) => run(args, &mut summary, &[bench::Workload::W2]).await,
        Scenario::W3(args) => run(args, &mut summary, &[bench::Workload::W3]).await,
        Scenario::W4(args) => run(args, &mut summary, &[bench::Workload::W4]).await,
        Scenario::All(args) => run(args, &mut summary, bench::Workload::ALL).await,
    };
    summary.print();
    match result {
        Ok(()) if summary.failures() == 0 => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(error) => {
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
