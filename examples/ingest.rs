//! Temporary runner for the `ingest` benchmark until `bench ingest` is wired in bin/bench.rs:
//! `cargo run --release --example ingest [requests] [burst] [paced_rate]`
//! (POSTGRES_ADMIN_URL picks the server).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = poda::bench::ingest::IngestOptions::default();
    if let Ok(url) = std::env::var("POSTGRES_ADMIN_URL") {
        opts.server_url = url;
    }
    let mut args = std::env::args().skip(1);
    if let Some(n) = args.next() {
        opts.requests = n.parse()?;
    }
    if let Some(burst) = args.next() {
        opts.burst = burst.parse()?;
    }
    if let Some(rate) = args.next() {
        opts.paced_rate = Some(rate.parse()?);
    }
    poda::bench::ingest::run_ingest(opts).await?;
    Ok(())
}
