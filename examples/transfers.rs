//! Temporary runner for the `transfers` benchmark until `bench transfers` is wired in
//! bin/bench.rs: `cargo run --release --example transfers [n] [runs]`
//! (POSTGRES_ADMIN_URL picks the server).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    poda::telemetry::init_with_default(
        poda::telemetry::LogFormat::Pretty,
        "warn,apalis=off,poda_jobs::engine::ack=off",
    );
    let mut opts = poda::bench::transfers::TransfersOptions::default();
    if let Ok(url) = std::env::var("POSTGRES_ADMIN_URL") {
        opts.server_url = url;
    }
    let mut args = std::env::args().skip(1);
    if let Some(n) = args.next() {
        opts.n = n.parse()?;
    }
    if let Some(runs) = args.next() {
        opts.runs = runs.parse()?;
    }
    poda::bench::transfers::run_transfers(opts).await?;
    Ok(())
}
