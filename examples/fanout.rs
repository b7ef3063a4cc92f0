//! Temporary runner for the `fanout` benchmark until `bench fanout` is wired in bin/bench.rs:
//! `cargo run --release --example fanout [sizes,comma,separated] [runs] [chunk_size]`
//! (POSTGRES_ADMIN_URL picks the server).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    poda::telemetry::init_with_default(
        poda::telemetry::LogFormat::Pretty,
        poda::telemetry::QUIET_FILTER,
    );
    let mut opts = poda::bench::fanout::FanoutOptions::default();
    if let Ok(url) = std::env::var("POSTGRES_ADMIN_URL") {
        opts.server_url = url;
    }
    let mut args = std::env::args().skip(1);
    if let Some(sizes) = args.next() {
        opts.sizes = sizes
            .split(',')
            .map(|s| s.trim().replace('_', "").parse())
            .collect::<Result<_, _>>()?;
    }
    if let Some(runs) = args.next() {
        opts.runs = runs.parse()?;
    }
    if let Some(chunk) = args.next() {
        opts.chunk_size = chunk.parse()?;
    }
    poda::bench::fanout::run_fanout(opts).await?;
    Ok(())
}
