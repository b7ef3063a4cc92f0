//! Soak: a steady offered load, first with vacuum free, then with a `REPEATABLE READ`
//! transaction held open in the same database, which keeps vacuum from removing any row
//! version written after it began (DESIGN §12).
//!
//! The probe scenario: a producer (this process, its own durable connection) enqueues probe
//! jobs at `rate` per second, in one statement every 100 ms; one worker process drains them.
//! Every figure is computed after the run from the worker's tally and the producer's log, so
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

use super::{percentile, print_result, round2, BenchArgs, BenchDb, Workers};

/// The producer enqueues one statement per tick.
const TICK: Duration = Duration::from_millis(100);
/// Lag and backlog are also reported per window of this length, worst window first.
const WINDOW_US: i64 = 10_000_000;
/// A snapshot is only held after the queue has run this long with vacuum free.
pub const MIN_WARM_UP: Duration = Duration::from_secs(60);

/// One soak run's shape.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Probe jobs offered per second.
    pub rate: u32,
    /// The free phase.
    pub free: Duration,
    /// The held phase (none when zero).
    pub held: Duration,
}

/// A phase of the run, in µs since the Unix epoch.
#[derive(Debug, Clone, Copy)]
struct Phase {
    name: &'static str,
    from_us: i64,
    to_us: i64,
}

/// What the server's tables looked like at the end of a phase.
#[derive(Debug, Clone, Copy, Default)]
struct TableState {
    jobs_bytes: i64,
    dead_tuples: i64,
}

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

    let free_from = now_us();
    tokio::time::sleep(options.free).await;
    let free_to = now_us();
    let mut phases = vec![Phase {
        name: "free",
        from_us: free_from,
        to_us: free_to,
    }];
    let mut states = vec![table_state(db).await?];
    if !options.held.is_zero() {
        let mut holder = db.pool.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *holder)
            .await?;
        // The first statement takes the snapshot; it reads no Poda table.
        sqlx::query("SELECT 1").execute(&mut *holder).await?;
        let held_from = now_us();
        eprintln!(
            "soak: holding a REPEATABLE READ snapshot for {} s",
            options.held.as_secs()
        );
        tokio::time::sleep(options.held).await;
        let held_to = now_us();
        // The state is read while the snapshot is still held: what it left behind.
        states.push(table_state(db).await?);
        holder.rollback().await?;
        phases.push(Phase {
            name: "held",
            from_us: held_from,
            to_us: held_to,
        });
    }
    let produced = producer.stop().await?;
    let mut entries = workers.stop().await?;
    entries.sort_unstable_by_key(|e| e.started_at_us);

    let mut results = Vec::new();
    for (phase, state) in phases.iter().zip(&states) {
        results.push(phase_result(
            phase, state, &entries, &produced, options, &settings,
        ));
    }
    if let [free, held] = &results[..] {
        let ratio = held["per_s"].as_f64().unwrap_or(0.0) / free["per_s"].as_f64().unwrap_or(1.0);
        results.push(json!({
            "scenario": "soak", "workload": "probe",
            "held_over_free": round2(ratio),
            "server": settings,
        }));
    }
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

/// The settings the run's figures depend on, printed with them.
async fn server_settings(db: &BenchDb) -> anyhow::Result<Value> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings \
         WHERE name IN ('autovacuum', 'autovacuum_naptime', 'shared_buffers', \
                        'synchronous_commit', 'server_version') \
         ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(Value::Object(
        rows.into_iter().map(|(k, v)| (k, Value::String(v))).collect(),
    ))
}

/// The size of every table and index that holds jobs, and their dead row versions.
async fn table_state(db: &BenchDb) -> anyhow::Result<TableState> {
    let (jobs_bytes, dead_tuples): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, \
                coalesce(sum(s.n_dead_tup), 0)::bigint \
         FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.relname LIKE 'jobs%' AND c.relkind IN ('r', 'p')",
    )
    .fetch_one(&db.pool)
    .await
    .context("reading the size of the jobs tables")?;
    Ok(TableState {
        jobs_bytes,
        dead_tuples,
    })
}

/// The entries of `sorted` (by start) whose handler started in `from..to`.
fn started_in(sorted: &[TallyEntry], from_us: i64, to_us: i64) -> &[TallyEntry] {
    let lo = sorted.partition_point(|e| e.started_at_us < from_us);
    let hi = sorted.partition_point(|e| e.started_at_us < to_us);
    &sorted[lo..hi.max(lo)]
}

/// One phase's figures from the tally (sorted by start) and the producer's log.
fn phase_result(
    phase: &Phase,
    state: &TableState,
    entries: &[TallyEntry],
    produced: &ProducedLog,
    options: &SoakOptions,
    settings: &Value,
) -> Value {
    let seconds = (phase.to_us - phase.from_us) as f64 / 1e6;
    let started = started_in(entries, phase.from_us, phase.to_us);
    let mut lags = lags_ms(started);
    lags.sort_by(f64::total_cmp);
    let offered = produced_by(produced, phase.to_us) - produced_by(produced, phase.from_us);

    // The worst 10-second window: lag and backlog must hold through the whole phase.
    let mut worst_lag_p99 = 0.0_f64;
    let mut backlog_max = 0_i64;
    let mut window_from = phase.from_us;
    while window_from < phase.to_us {
        let window_to = (window_from + WINDOW_US).min(phase.to_us);
        let mut window_lags = lags_ms(started_in(entries, window_from, window_to));
        window_lags.sort_by(f64::total_cmp);
        if !window_lags.is_empty() {
            worst_lag_p99 = worst_lag_p99.max(percentile(&window_lags, 99.0));
        }
        backlog_max = backlog_max.max(backlog_at(entries, produced, window_to));
        window_from = window_to;
    }
    json!({
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
        "jobs_bytes_end": state.jobs_bytes,
        "dead_tuples_end": state.dead_tuples,
        "server": settings,
    })
}

fn lags_ms(entries: &[TallyEntry]) -> Vec<f64> {
    entries
        .iter()
        .filter_map(|e| e.enqueued_at_us.map(|at| (e.started_at_us - at) as f64 / 1e3))
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
        let phase = Phase {
            name: "free",
            from_us: 0,
            to_us: 1_000_000,
        };
        let options = SoakOptions {
            rate: 100,
            free: Duration::from_secs(1),
            held: Duration::ZERO,
        };
        let r = phase_result(
            &phase,
            &TableState::default(),
            &entries,
            &produced,
            &options,
            &json!({}),
        );
        assert_eq!(r["per_s"], 100);
        assert_eq!(r["lag_p99_ms"], 1.0);
        assert_eq!(r["backlog_end"], 0);
        assert_eq!(duplicates(&entries), 0);
    }
}
