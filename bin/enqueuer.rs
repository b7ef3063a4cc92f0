//! `enqueuer`: the HTTP enqueuer (Monime webhooks in, durable jobs out, admin API).

use std::process::ExitCode;

use clap::Parser;
use poda::cli::EnqueuerCli;
use poda::enqueuer::{Enqueuer, EnqueuerSettings};
use poda::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = EnqueuerCli::parse();
    telemetry::init(cli.common.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: EnqueuerCli) -> anyhow::Result<()> {
    let settings = EnqueuerSettings::from_args(&cli.common, &cli.run)?;
    let enqueuer = Enqueuer::build(settings).await?;
    enqueuer.run_until_stopped(shutdown::on_signal()).await
}
