//! `worker cycle <id>`: follows a contribution cycle's fan-out until it is settled, with a
//! progress bar on a terminal and one plain line per change otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use poda_jobs::cycle::{fetch_progress, CycleId, CycleProgress};
use poda_jobs::db::Db;

/// Polls the cycle every `interval` until it is no longer Initializing; returns the last
/// progress seen. An unknown cycle is an error.
pub async fn watch_cycle(
    pool: &Db,
    id: CycleId,
    interval: Duration,
) -> anyhow::Result<CycleProgress> {
    let terminal = std::io::stdout().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut last: Option<(String, i64, Option<i64>)> = None;
    loop {
        let progress = fetch_progress(pool, id)
            .await
            .with_context(|| format!("reading cycle {id}"))?
            .with_context(|| format!("cycle {id} does not exist"))?;
        let seen = (
            progress.status.to_string(),
            progress.processed,
            progress.total,
        );
        if terminal {
            let bar = bar.get_or_insert_with(|| new_bar(&progress));
            if let Some(total) = progress.total {
                bar.set_length(total.max(progress.processed) as u64);
            }
            bar.set_position(progress.processed as u64);
            bar.set_message(progress.status.to_string());
        } else if last.as_ref() != Some(&seen) {
            println!("{}", plain_line(&progress));
        }
        last = Some(seen);
        if progress.status.is_settled() {
            if let Some(bar) = bar {
                bar.finish_with_message(progress.status.to_string());
                println!("{}", plain_line(&progress));
            }
            return Ok(progress);
        }
        tokio::time::sleep(interval).await;
    }
}

fn new_bar(progress: &CycleProgress) -> ProgressBar {
    let bar = ProgressBar::new(progress.total.unwrap_or(0) as u64);
    let style = ProgressStyle::with_template(
        "{prefix} {msg:>12} [{bar:40}] {human_pos}/{human_len} ({percent}%, eta {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("cycle {} ({})", progress.cycle_id, progress.code));
    bar
}

/// `cycle 7 (CYC-000007) Initializing 20000/49999 40.00% eta 3s`
pub fn plain_line(progress: &CycleProgress) -> String {
    let total = progress
        .total
        .map(|t| t.to_string())
        .unwrap_or_else(|| "?".into());
    let eta = progress
        .eta_seconds
        .map(|s| format!("{s}s"))
        .unwrap_or_else(|| "?".into());
    let mut line = format!(
        "cycle {} ({}) {} {}/{} {:.2}% eta {}",
        progress.cycle_id,
        progress.code,
        progress.status,
        progress.processed,
        total,
        progress.percentage,
        eta
    );
    if let Some(error) = &progress.error {
        line.push_str(&format!(" error: {error}"));
    }
    line
}
