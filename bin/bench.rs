//! `bench`: benchmarks and the demo.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use poda::config::{Secret, DEFAULT_DATABASE_URL};
use poda::demo::{self, DemoOptions};

#[derive(Debug, Parser)]
#[command(name = "bench", version, about = "Poda benchmarks and the demo")]
struct Cli {
    /// Postgres URL of the server to use; each scenario works in databases of its own.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    database_url: Secret,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Poda end to end on the local Postgres (database poda_demo), with progress and a summary.
    Demo {
        /// Jobs to drain.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Signed payment webhooks to send.
        #[arg(long, default_value_t = 200)]
        webhooks: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    poda::telemetry::init_with_default(
        poda::telemetry::LogFormat::Pretty,
        poda::telemetry::QUIET_FILTER,
    );
    let result = match cli.scenario {
        Scenario::Demo { jobs, webhooks } => {
            demo::run(DemoOptions {
                server_url: cli.database_url,
                jobs,
                webhooks,
            })
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
