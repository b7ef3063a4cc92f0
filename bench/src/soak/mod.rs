//! Soak: a steady offered load, first with vacuum free, then with a `REPEATABLE READ`
//! transaction held open in the same database, which keeps vacuum from removing any row
//! version written after it began (DESIGN §12). Two workloads: probe jobs ([`probe`]) and
//! signed payment webhooks through tickets to commission transfers ([`tickets`]).

pub mod probe;
pub mod tickets;

use std::time::Duration;

use anyhow::Context;
use poda::tally::now_us;
use serde_json::Value;

use crate::BenchDb;

/// A snapshot is only held after the load has run this long with vacuum free.
pub const MIN_WARM_UP: Duration = Duration::from_secs(60);
/// `--private-db`: the settings of a test cluster that a soak must not run under (no fsync,
/// no full-page writes, little memory) put back to PostgreSQL's defaults, so that the cluster
/// runs as `initdb` leaves a production server: autovacuum on, durable commits.
pub const PRODUCTION_SETTINGS: &str = "fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 128MB
max_connections = 100";
/// Lag and backlog are also reported per window of this length, worst window first.
const WINDOW_US: i64 = 10_000_000;

/// One soak run's shape.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Jobs (or payments) offered per second.
    pub rate: u32,
    /// The free phase.
    pub free: Duration,
    /// The held phase (none when zero).
    pub held: Duration,
}

/// A phase of the run, in µs since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub name: &'static str,
    pub from_us: i64,
    pub to_us: i64,
}

impl Phase {
    fn seconds(&self) -> f64 {
        (self.to_us - self.from_us) as f64 / 1e6
    }

    /// The phase cut into windows of [`WINDOW_US`].
    fn windows(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (self.from_us..self.to_us)
            .step_by(WINDOW_US as usize)
            .map(|from| (from, (from + WINDOW_US).min(self.to_us)))
    }
}

/// What the jobs tables looked like at the end of a phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableState {
    pub jobs_bytes: i64,
    pub dead_tuples: i64,
}

/// A phase as it ran: its times, the jobs tables at its end, and their size after each of
/// its minutes.
#[derive(Debug, Clone)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub end: TableState,
    pub jobs_mb_by_minute: Vec<i64>,
}

impl PhaseRecord {
    /// The tables' figures of a `RESULT`.
    fn tables_json(&self) -> Value {
        serde_json::json!({
            "jobs_bytes_end": self.end.jobs_bytes,
            "dead_tuples_end": self.end.dead_tuples,
            "jobs_mb_by_minute": self.jobs_mb_by_minute,
        })
    }
}

/// Merges `extra`'s fields into `result`.
fn with_fields(mut result: Value, extra: Value) -> Value {
    if let (Some(result), Value::Object(extra)) = (result.as_object_mut(), extra) {
        result.extend(extra);
    }
    result
}

/// Waits out one phase of `length` while the load runs, reading the tables' size every
/// minute and at the end.
async fn phase(db: &BenchDb, name: &'static str, length: Duration) -> anyhow::Result<PhaseRecord> {
    let from_us = now_us();
    let started = tokio::time::Instant::now();
    let mut jobs_mb_by_minute = Vec::new();
    for minute in 1..=length.as_secs() / 60 {
        tokio::time::sleep_until(started + Duration::from_secs(minute * 60)).await;
        jobs_mb_by_minute.push(table_state(db).await?.jobs_bytes >> 20);
    }
    tokio::time::sleep_until(started + length).await;
    let to_us = now_us();
    Ok(PhaseRecord {
        phase: Phase {
            name,
            from_us,
            to_us,
        },
        end: table_state(db).await?,
        jobs_mb_by_minute,
    })
}

/// Runs the free phase, then, if asked, the held one, while the load runs (the tables' state
/// at the held phase's end is read while the snapshot is still held).
async fn run_phases(db: &BenchDb, options: &SoakOptions) -> anyhow::Result<Vec<PhaseRecord>> {
    let mut phases = vec![phase(db, "free", options.free).await?];
    if !options.held.is_zero() {
        let mut holder = db.pool.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *holder)
            .await?;
        // The first statement takes the snapshot; it reads no Poda table.
        sqlx::query("SELECT 1").execute(&mut *holder).await?;
        eprintln!(
            "soak: holding a REPEATABLE READ snapshot for {} s",
            options.held.as_secs()
        );
        phases.push(phase(db, "held", options.held).await?);
        holder.rollback().await?;
    }
    Ok(phases)
}

/// The settings the run's figures depend on, printed with them.
async fn server_settings(db: &BenchDb) -> anyhow::Result<Value> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings \
         WHERE name IN ('autovacuum', 'autovacuum_naptime', 'shared_buffers', 'fsync', \
                        'full_page_writes', 'synchronous_commit', 'server_version') \
         ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(Value::Object(
        rows.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
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

/// The final result: the held phase's throughput over the free one's.
fn ratio_result(workload: &str, results: &[Value], settings: &Value) -> Option<Value> {
    let [free, held] = results else {
        return None;
    };
    let ratio = held["per_s"].as_f64()? / free["per_s"].as_f64().filter(|v| *v > 0.0)?;
    Some(serde_json::json!({
        "scenario": "soak", "workload": workload,
        "held_over_free": crate::round2(ratio),
        "server": settings,
    }))
}
