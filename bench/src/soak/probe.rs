//! The probe soak: a producer (this process, its own durable connection) enqueues probe jobs
//! at `rate` per second, in one statement every 100 ms; one worker process drains them. Every
//! figure is computed after the run from the worker's tally and the producer's log, so
//! measuring costs the server nothing while it runs: a phase's throughput is the jobs whose
//! handler started in it, its lag the wait of each of those jobs from its enqueue call to its
//! handler's start (which includes the enqueue's commit and the claim), and its backlog the
//! jobs enqueued and not yet started.

use std::time::{Duration, Instant};

use anyhow::Context;
use poda::tally::{now_us, TallyEntry};
use poda_jobs::engine::{enqueue_many_pooled, NewJob, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::{ratio_result, run_phases, server_settings, with_fields, PhaseRecord, SoakOptions};
use crate::{percentile, print_result, round2, BenchArgs, BenchDb, Workers};

/// The producer enqueues one statement per tick.
const TICK: Duration = Duration::from_millis(100);

/// The producer's log: (time in µs, jobs enqueued so far), one entry per statement.
type ProducedLog = Vec<(i64, i64)>;

/// Runs the probe soak on `db` and prints one `RESULT` per phase and one for the ratio.
pub async fn run_probe(
    args: &BenchArgs,
    db: &BenchDb,
    options: &SoakOptions,
) -> anyhow::Result<Vec<Value>> {
    let settings = server_settings(db).await?;
    db.analyze().await?;
    let workers = Workers::start(args, db, 1).await?;
    let producer = Producer::start(db, options.rate);
    let phases = run_phases(db, options).await?;
    let produced = producer.stop().await?;
    let mut entries = workers.stop().await?;
    entries.sort_unstable_by_key(|e| e.started_at_us);

    let mut results: Vec<Value> = phases
        .iter()
        .map(|record| phase_result(record, &entries, &produced, options, &settings))
        .collect();
    results.extend(ratio_result("probe", &results, &settings));
    let duplicates = duplicates(&entries);
    for result in &mut results {
        result["duplicates"] = json!(duplicates);
    }
    for result in &results {
        print_result(result);
    }
    Ok(results)
}

/// Enqueues probe jobs at a steady rate until stopped.
struct Producer {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<ProducedLog>>,
}

impl Producer {
    fn start(db: &BenchDb, rate: u32) -> Producer {
        let pool = db.pool.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TICK);
            let started = Instant::now();
            let mut log = ProducedLog::new();
            let mut produced: i64 = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => return Ok(log),
                }
                // What the rate asks for by now: a late tick catches up, so the offered rate
                // holds on average whatever one statement took.
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as i64;
                if due <= produced {
                    continue;
                }
                let at = now_us();
                let jobs: Vec<NewJob> = (produced..due)
                    .map(|n| {
                        ProbeJob {
                            enqueued_at_us: Some(at),
                            ..ProbeJob::new(n)
                        }
                        .to_job(RetryPolicy::default())
                    })
                    .collect();
                enqueue_many_pooled(&pool, &jobs)
                    .await
                    .context("enqueueing the soak's probe jobs")?;
                produced = due;
                log.push((now_us(), produced));
            }
        });
        Producer { stop, task }
    }

    async fn stop(self) -> anyhow::Result<ProducedLog> {
        let _ = self.stop.send(true);
        self.task.await.context("the soak producer panicked")?
    }
}

/// The entries of `sorted` (by start) whose handler started in `from..to`.
fn started_in(sorted: &[TallyEntry], from_us: i64, to_us: i64) -> &[TallyEntry] {
    let lo = sorted.partition_point(|e| e.started_at_us < from_us);
    let hi = sorted.partition_point(|e| e.started_at_us < to_us);
    &sorted[lo..hi.max(lo)]
}

/// One phase's figures from the tally (sorted by start) and the producer's log.
fn phase_result(
    record: &PhaseRecord,
    entries: &[TallyEntry],
    produced: &ProducedLog,
    options: &SoakOptions,
    settings: &Value,
) -> Value {
    let phase = &record.phase;
    let seconds = phase.seconds();
    let started = started_in(entries, phase.from_us, phase.to_us);
    let mut lags = lags_ms(started);
    lags.sort_by(f64::total_cmp);
    let offered = produced_by(produced, phase.to_us) - produced_by(produced, phase.from_us);

    // The worst 10-second window: lag and backlog must hold through the whole phase.
    let mut worst_lag_p99 = 0.0_f64;
    let mut backlog_max = 0_i64;
    for (window_from, window_to) in phase.windows() {
        let mut window_lags = lags_ms(started_in(entries, window_from, window_to));
        window_lags.sort_by(f64::total_cmp);
        if !window_lags.is_empty() {
            worst_lag_p99 = worst_lag_p99.max(percentile(&window_lags, 99.0));
        }
        backlog_max = backlog_max.max(backlog_at(entries, produced, window_to));
    }
    let result = json!({
        "scenario": "soak", "workload": "probe", "phase": phase.name,
        "seconds": round2(seconds),
        "per_s": (started.len() as f64 / seconds).round() as u64,
        "offered_per_s": (offered as f64 / seconds).round() as u64,
        "rate": options.rate,
        "lag_p50_ms": round2(percentile(&lags, 50.0)),
        "lag_p99_ms": round2(percentile(&lags, 99.0)),
        "lag_p99_ms_worst_10s": round2(worst_lag_p99),
        "backlog_end": backlog_at(entries, produced, phase.to_us),
        "backlog_max": backlog_max,
        "server": settings,
    });
    with_fields(result, record.tables_json())
}

fn lags_ms(entries: &[TallyEntry]) -> Vec<f64> {
    entries
        .iter()
        .filter_map(|e| {
            e.enqueued_at_us
                .map(|at| (e.started_at_us - at) as f64 / 1e3)
        })
        .collect()
}

/// Jobs enqueued (committed) by `at_us`.
fn produced_by(log: &ProducedLog, at_us: i64) -> i64 {
    let i = log.partition_point(|&(t, _)| t <= at_us);
    if i == 0 {
        0
    } else {
        log[i - 1].1
    }
}

/// Jobs enqueued by `at_us` whose handler had not started by then (`sorted` by start).
fn backlog_at(sorted: &[TallyEntry], produced: &ProducedLog, at_us: i64) -> i64 {
    let started = sorted.partition_point(|e| e.started_at_us <= at_us) as i64;
    (produced_by(produced, at_us) - started).max(0)
}

/// Handler starts beyond one per job: a run of a job whose lease was never lost again.
fn duplicates(entries: &[TallyEntry]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    entries.iter().filter(|e| !seen.insert(e.n)).count()
}

#[cfg(test)]
mod tests {
    use super::super::{Phase, TableState};
    use super::*;

    fn entry(n: i64, started_at_us: i64) -> TallyEntry {
        TallyEntry {
            n,
            attempt: 1,
            started_at_us,
            enqueued_at_us: Some(started_at_us - 1_000),
        }
    }

    #[test]
    fn backlog_counts_jobs_enqueued_and_not_started() {
        let produced = vec![(100, 10), (200, 20)];
        let entries: Vec<TallyEntry> = (0..15).map(|n| entry(n, 150 + n)).collect();
        assert_eq!(produced_by(&produced, 99), 0);
        assert_eq!(produced_by(&produced, 150), 10);
        assert_eq!(backlog_at(&entries, &produced, 100), 10);
        assert_eq!(backlog_at(&entries, &produced, 160), 0);
        assert_eq!(backlog_at(&entries, &produced, 250), 5);
    }

    #[test]
    fn a_phase_counts_the_jobs_started_in_it_and_their_lag() {
        let entries: Vec<TallyEntry> = (0..100).map(|n| entry(n, n * 10_000)).collect();
        let produced = vec![(0, 50), (500_000, 100)];
        let record = PhaseRecord {
            phase: Phase {
                name: "free",
                from_us: 0,
                to_us: 1_000_000,
            },
            end: TableState::default(),
            jobs_mb_by_minute: Vec::new(),
        };
        let options = SoakOptions {
            rate: 100,
            free: Duration::from_secs(1),
            held: Duration::ZERO,
        };
        let r = phase_result(&record, &entries, &produced, &options, &json!({}));
        assert_eq!(r["per_s"], 100);
        assert_eq!(r["lag_p99_ms"], 1.0);
        assert_eq!(r["backlog_end"], 0);
        assert_eq!(duplicates(&entries), 0);
    }
}
