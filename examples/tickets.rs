//! Temporary runner for the `tickets` benchmark until `bench tickets` is wired in bin/bench.rs:
//! `cargo build --release --bin worker && cargo run --release --example tickets [n] [runs] [procs,…]`
//! (POSTGRES_ADMIN_URL picks the server).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = poda::bench::tickets::TicketsOptions::default();
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
    if let Some(procs) = args.next() {
        opts.procs = procs.split(',').map(str::parse).collect::<Result<_, _>>()?;
    }
    poda::bench::tickets::run_tickets(opts).await?;
    Ok(())
}
