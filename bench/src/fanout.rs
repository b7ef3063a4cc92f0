//! `fanout`: contributions per second for cycles of N members (5,000, 100,000 and 1,000,000 by
//! default), each created as an admin would and fanned out by an in-process worker.
//!
//! Each run gets a fresh database (`bench_poda_<uuid>`), loads one tier per size (N active
//! members over a few hundred agents, plus inactive members and another tier's members that
//! must not be swept in), `VACUUM ANALYZE`s, and starts the worker before the clock. The clock
//! runs from the create call (cycle + fan-out job, one transaction) until the database shows
//! the cycle Active. `ok` checks exactly N − 1 contributions (the deceased excluded), one per
//! member, and processed = total. The database is dropped afterwards, also after an error.

use std::time::{Duration, Instant};

use crate::scratch::with_scratch_database;
use anyhow::{ensure, Context};
use poda::config::{async_commit_options, handler_options};
use poda_jobs::cycle::{self, create_cycle, CycleConfig, CycleId, CycleStatus, NewCycle};
use poda_jobs::db::Db;
use poda_jobs::ticket::{Currency, Money};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use poda::worker::{run_workers, WorkerOptions};

pub const DEFAULT_SIZES: &[i64] = &[5_000, 100_000, 1_000_000];
/// Agents the members are spread over (one notification job each at activation).
const AGENTS: i64 = 250;
const CONTRIBUTION_MINOR: i64 = 2_500;

#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// The Postgres server (the database part is ignored): a `bench_poda_*` database is
    /// created there per run and dropped afterwards.
    pub server_url: String,
    /// Members per cycle; one cycle per size and run.
    pub sizes: Vec<i64>,
    /// Times the whole set of sizes is measured, each on a fresh database.
    pub runs: usize,
    /// Members per fan-out chunk.
    pub chunk_size: i64,
    /// Give up on a cycle that is not Active after this long.
    pub timeout: Duration,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            server_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            sizes: DEFAULT_SIZES.to_vec(),
            runs: 3,
            chunk_size: cycle::DEFAULT_CHUNK_SIZE,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Runs the scenario; prints and returns one `RESULT` object per cycle measured, then a
/// min/median/max table on stderr.
pub async fn run_fanout(opts: FanoutOptions) -> anyhow::Result<Vec<Value>> {
    ensure!(!opts.sizes.is_empty(), "fanout: no sizes to measure");
    ensure!(
        opts.sizes.iter().all(|&n| n >= 2),
        "fanout: a cycle needs at least 2 members"
    );
    ensure!(
        opts.chunk_size >= 1,
        "fanout: the chunk size must be positive"
    );
    let mut results = Vec::new();
    for run in 1..=opts.runs {
        let outcome = with_scratch_database(&opts.server_url, "fanout", |db, _| {
            run_on_database(&opts, run, db)
        })
        .await;
        results.extend(outcome?);
    }
    eprintln!("{}", summary_table(&opts.sizes, &results));
    Ok(results)
}

async fn run_on_database(
    opts: &FanoutOptions,
    run: usize,
    db: PgConnectOptions,
) -> anyhow::Result<Vec<Value>> {
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(handler_options(db.clone()))
        .await
        .map(Db::from)
        .context("connecting to the bench database")?;
    poda_jobs::engine::migrate::run_migrations(&pool)
        .await
        .context("migrating the bench database")?;
    let mut tiers = Vec::new();
    for &members in &opts.sizes {
        tiers.push((members, load_tier(&pool, members).await?));
    }
    sqlx::query("VACUUM ANALYZE members")
        .execute(&pool)
        .await
        .context("vacuuming members")?;

    let engine_pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(async_commit_options(db.clone()))
        .await
        .map(Db::from)
        .context("connecting the engine pool")?;
    let options = WorkerOptions {
        cycle: CycleConfig {
            chunk_size: opts.chunk_size,
        },
        ..WorkerOptions::for_queues(&[cycle::QUEUE], 2)
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run_workers(
        pool.clone(),
        engine_pool,
        options,
        stop.clone(),
    ));

    let mut results = Vec::new();
    let measured: anyhow::Result<()> = async {
        for (members, (tier, deceased)) in &tiers {
            results.push(measure(&pool, opts, run, *members, *tier, *deceased).await?);
        }
        Ok(())
    }
    .await;
    stop.cancel();
    worker
        .await
        .context("joining the worker")?
        .context("running the worker")?;
    pool.close().await;
    measured?;
    Ok(results)
}

/// One tier with `members` active members (the first is the one who died), plus members that
/// must not be swept in: 1 % inactive in the tier. Returns (tier id, deceased member id).
async fn load_tier(pool: &Db, members: i64) -> anyhow::Result<(i64, i64)> {
    let tier: i64 =
        sqlx::query_scalar("INSERT INTO tiers (name, currency) VALUES ($1, 'SLE') RETURNING id")
            .bind(format!("bench-{members}"))
            .fetch_one(pool)
            .await
            .context("creating a tier")?;
    let first: i64 = sqlx::query_scalar(
        "WITH m AS ( \
           INSERT INTO members (tier_id, status, agent_id, wallet_id) \
           SELECT $1, CASE WHEN g <= $2 THEN 'active' ELSE 'inactive' END::member_status, \
                  'agent-' || (g % $3), 'wallet-' || g \
           FROM generate_series(1, $2 + $2 / 100) g \
           RETURNING id) \
         SELECT min(id) FROM m",
    )
    .bind(tier)
    .bind(members)
    .bind(AGENTS)
    .fetch_one(pool)
    .await
    .with_context(|| format!("loading {members} members"))?;
    Ok((tier, first))
}

async fn measure(
    pool: &Db,
    opts: &FanoutOptions,
    run: usize,
    members: i64,
    tier: i64,
    deceased: i64,
) -> anyhow::Result<Value> {
    let new = NewCycle {
        tier_id: tier,
        deceased_member_id: deceased,
        claim_reference: format!("bench-{run}-{members}"),
        contribution: Money {
            currency: Currency::Sle,
            value_minor: CONTRIBUTION_MINOR,
        },
        duration_days: 30,
    };
    let started = Instant::now();
    let id = create_cycle(pool, &new, None, &poda::ops::cli_actor())
        .await
        .context("creating the cycle")?
        .id;
    let status = wait_settled(pool, id, opts.timeout).await?;
    let seconds = started.elapsed().as_secs_f64();

    let expected = members - 1;
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT member_id) FROM member_contributions WHERE cycle_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .context("counting contributions")?;
    let (total, processed): (Option<i64>, i64) =
        sqlx::query_as("SELECT total, processed FROM contribution_cycles WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .context("reading the cycle")?;
    let ok = status == CycleStatus::Active
        && rows == expected
        && distinct == expected
        && processed == expected
        && total == Some(expected);
    let result = json!({
        "scenario": "fanout",
        "run": run,
        "members": members,
        "contributions": rows,
        "chunk_size": opts.chunk_size,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "per_s": (rows as f64 / seconds).round(),
        "ok": ok,
    });
    println!("RESULT {result}");
    Ok(result)
}

async fn wait_settled(pool: &Db, id: CycleId, timeout: Duration) -> anyhow::Result<CycleStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status: CycleStatus =
            sqlx::query_scalar("SELECT status FROM contribution_cycles WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .context("reading the cycle's status")?;
        if status.is_settled() {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "cycle {id} is not Active after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// min / median / max seconds and contributions/s per size.
fn summary_table(sizes: &[i64], results: &[Value]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "fanout members",
        "runs",
        "seconds min / median / max",
        "contributions/s median",
        "ok",
    ]);
    for &members in sizes {
        let of_size: Vec<&Value> = results
            .iter()
            .filter(|r| r["members"].as_i64() == Some(members))
            .collect();
        let mut seconds: Vec<f64> = of_size
            .iter()
            .filter_map(|r| r["seconds"].as_f64())
            .collect();
        let mut rates: Vec<f64> = of_size.iter().filter_map(|r| r["per_s"].as_f64()).collect();
        if seconds.is_empty() {
            continue;
        }
        seconds.sort_by(f64::total_cmp);
        rates.sort_by(f64::total_cmp);
        let all_ok = of_size.iter().all(|r| r["ok"] == true);
        table.add_row(vec![
            members.to_string(),
            seconds.len().to_string(),
            format!(
                "{:.3} / {:.3} / {:.3}",
                seconds[0],
                seconds[seconds.len() / 2],
                seconds[seconds.len() - 1]
            ),
            format!("{:.0}", rates[rates.len() / 2]),
            all_ok.to_string(),
        ]);
    }
    table.to_string()
}
