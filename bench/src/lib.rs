//! `bench`: the queue workloads of BENCHMARKS.md (w1–w4), run against a real Postgres.
//!
//! Every run creates its own database (`bench_poda_…`), loads it, runs `ANALYZE`, starts real
//! `worker` processes (the binary next to `bench`) and waits until they are connected and
//! listening before the clock starts; it stops the clock when the *database* shows every job
//! completed, then stops the workers with SIGTERM, reads the probe tallies they wrote at
//! shutdown and checks that each `n` ran exactly once. One `RESULT {json}` line per run goes
//! to stdout; a min/median/max table goes to stderr at the end.

pub mod demo;
pub mod drained;
pub mod enqueuer_process;
pub mod fanout;
pub mod ingest;
pub mod receiver;
pub mod report;
pub mod scratch;
pub mod soak;
pub mod tickets;
pub mod transfers;
pub mod w1;
pub mod w2;
pub mod w3;
pub mod w4;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use poda_jobs::db::Db;
use poda_jobs::engine::{
    enqueue_many_pooled, migrate, pause_queue, resume_queue, NewJob, RetryPolicy,
};
use poda_jobs::probe::{self, ProbeJob};
use poda_jobs::testing::PgBouncer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use poda::tally::{read_tally, TallyEntry};

use crate::drained::DrainWatch;

/// The server that benchmarks create their databases on, when neither flag nor env says.
pub const DEFAULT_BENCH_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Server connections of a benchmark's PgBouncer (`--pgbouncer`): fewer than its workers
/// open between them, so sessions are shared as they are in production.
pub const PGBOUNCER_POOL_SIZE: u32 = 20;
/// Calls of enqueue_many carry this many jobs (the W1 rule).
pub const ENQUEUE_CALL: usize = 1_000;

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Measured runs per configuration; the table shows their min/median/max.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker process counts to measure, comma-separated (w2; other scenarios use one).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub procs: Vec<usize>,
    /// Jobs per run (default: 100,000 for w1/w2, 2,000 for w3, 10,000 for w4).
    #[arg(long)]
    pub n: Option<usize>,
    /// Postgres server URL; each run creates and drops its own `bench_poda_*` database there
    /// (the database part of the URL is only used to connect for CREATE/DROP DATABASE).
    #[arg(long, env = "POSTGRES_ADMIN_URL", default_value = DEFAULT_BENCH_SERVER_URL, hide_env_values = true)]
    pub database_url: String,
    /// Handler slots per worker process (C). Each process gets C + 2 database connections.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Jobs per claim statement in the workers (`worker --batch-size`).
    #[arg(long, default_value_t = 1_000)]
    pub batch_size: usize,
    /// Jobs a worker may claim beyond its free slots (`worker --prefetch`; the workers' own
    /// default is 0). Reported with every result: like graphile-worker's local queue, it
    /// trades fairness between replicas for fewer claims when jobs are no-ops.
    #[arg(long, default_value_t = 984)]
    pub prefetch: usize,
    /// w2: load this many already-completed jobs into the table first (the claim path must not
    /// slow down as finished jobs accumulate).
    #[arg(long, default_value_t = 0)]
    pub finished: usize,
    /// w3: jobs enqueued per second, one at a time.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// The `worker` binary to start (default: the one next to this executable).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Connect the workers through a PgBouncer in transaction mode that each run starts in
    /// front of the server (`pgbouncer` must be installed); they LISTEN on a direct session.
    #[arg(long)]
    pub pgbouncer: bool,
    /// More flags for the probe workers (`bench soak --retention`).
    #[arg(skip)]
    pub worker_flags: Vec<String>,
}

impl BenchArgs {
    pub fn n_or(&self, default: usize) -> usize {
        self.n.unwrap_or(default)
    }

    fn worker_bin(&self) -> anyhow::Result<PathBuf> {
        worker_binary(self.worker_bin.as_deref())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.runs == 0 {
            bail!("--runs must be at least 1");
        }
        if self.procs.is_empty() || self.procs.contains(&0) {
            bail!("--procs must list process counts of at least 1");
        }
        if self.n == Some(0) {
            bail!("--n must be at least 1");
        }
        if self.concurrency == 0 || self.batch_size == 0 || self.rate == 0 {
            bail!("--concurrency, --batch-size and --rate must be at least 1");
        }
        PgConnectOptions::from_str(&self.database_url)
            .context("--database-url is not a valid Postgres URL")?;
        Ok(())
    }
}

/// Prints one result line in the `RESULT {json}` contract.
pub fn print_result(result: &serde_json::Value) {
    println!("RESULT {result}");
}

/// A database of one run: created and migrated, dropped by [`BenchDb::drop_db`].
pub struct BenchDb {
    pub name: String,
    pub url: String,
    /// Fully durable pool (enqueue, checks).
    pub pool: Db,
    server: String,
    /// The PgBouncer the workers reach the database through, if any.
    pub bouncer: Option<PgBouncer>,
}

/// What a timed drain saw: its time, the workers' tallies, and the jobs completed of all.
pub struct Drain {
    pub seconds: f64,
    pub entries: Vec<TallyEntry>,
    pub completed: i64,
    pub total: i64,
}

impl BenchDb {
    pub async fn create(
        server: &str,
        scenario: &str,
        run: usize,
        pgbouncer: bool,
    ) -> anyhow::Result<BenchDb> {
        let name = format!(
            "bench_poda_{scenario}_{}_{run}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut admin = admin_connection(server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await.ok();
        let options = PgConnectOptions::from_str(server)?
            .database(&name)
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map(Db::from)
            .with_context(|| format!("connecting to {name}"))?;
        let bouncer = match pgbouncer {
            true => Some(PgBouncer::start(server, PGBOUNCER_POOL_SIZE).await),
            false => None,
        };
        let db = BenchDb {
            url: url_with_database(server, &name),
            name,
            pool,
            server: server.to_owned(),
            bouncer,
        };
        migrate::run_migrations(&db.pool)
            .await
            .context("migrating the bench database")?;
        Ok(db)
    }

    pub async fn analyze(&self) -> anyhow::Result<()> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn drop_db(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = admin_connection(&self.server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }

    /// Enqueues probes `0..n` in calls of [`ENQUEUE_CALL`]; `tweak` shapes each payload.
    pub async fn load_probes(
        &self,
        n: usize,
        retry: RetryPolicy,
        tweak: impl Fn(&mut ProbeJob),
    ) -> anyhow::Result<()> {
        let mut start = 0;
        while start < n {
            let end = (start + ENQUEUE_CALL).min(n);
            let jobs: Vec<NewJob> = (start..end)
                .map(|i| {
                    let mut job = ProbeJob::new(i as i64);
                    tweak(&mut job);
                    job.to_job(retry)
                })
                .collect();
            enqueue_many_pooled(&self.pool, &jobs).await?;
            start = end;
        }
        Ok(())
    }

    /// Inserts `n` completed probe jobs of an hour ago, generated by the server, and vacuums
    /// the table so the run starts from a settled one.
    pub async fn load_finished(&self, n: usize) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO jobs (queue, kind, payload, state, attempt, max_attempts, backoff_base_ms, \
                               backoff_max_ms, run_at, created_at, attempted_at, finished_at) \
             SELECT $1, $2, jsonb_build_object('n', -g), 'completed', 1, 25, 1000, 3600000, \
                    now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour', \
                    now() - interval '1 hour' \
             FROM generate_series(1, $3::bigint) g",
        )
        .bind(probe::QUEUE)
        .bind(probe::KIND)
        .bind(n as i64)
        .execute(&self.pool)
        .await
        .context("loading finished jobs")?;
        sqlx::query("VACUUM ANALYZE jobs")
            .execute(&self.pool)
            .await
            .context("vacuuming jobs")?;
        Ok(())
    }

    pub async fn pause_probes(&self) -> anyhow::Result<()> {
        pause_queue(&self.pool, probe::QUEUE, &poda::ops::cli_actor()).await?;
        Ok(())
    }

    pub async fn resume_probes(&self) -> anyhow::Result<()> {
        resume_queue(&self.pool, probe::QUEUE, &poda::ops::cli_actor()).await?;
        Ok(())
    }

    /// Starts `procs` workers on the paused probe queue, resumes it, and stops the clock
    /// when the database shows every job finished: the timed part of W2 and W4.
    pub async fn timed_drain(&self, args: &BenchArgs, procs: usize) -> anyhow::Result<Drain> {
        self.pause_probes().await?;
        let workers = Workers::start(args, self, procs).await?;
        let started = Instant::now();
        self.resume_probes().await?;
        let finished = self.wait_all_finished(Duration::from_secs(600)).await?;
        let seconds = finished.duration_since(started).as_secs_f64();
        let entries = workers.stop().await?;
        let (completed, total) = self.completed_count().await?;
        Ok(Drain {
            seconds,
            entries,
            completed,
            total,
        })
    }

    /// Polls until no probe job is available or running; returns when it saw that.
    pub async fn wait_all_finished(&self, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut watch = DrainWatch::new(probe::QUEUE);
        loop {
            let busy = watch.unfinished(&self.pool).await?;
            if !busy {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("jobs were still unfinished after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// (completed, all jobs).
    pub async fn completed_count(&self) -> anyhow::Result<(i64, i64)> {
        Ok(
            sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM jobs",
            )
            .fetch_one(&self.pool)
            .await?,
        )
    }
}

async fn admin_connection(server: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(server)
        .context("--database-url is not a valid Postgres URL")?
        .disable_statement_logging();
    PgConnection::connect_with(&options)
        .await
        .context("connecting to the Postgres server (--database-url)")
}

/// The `worker` binary to start: `explicit` if given, else the one beside the running
/// executable (target/<profile>/), or one directory up when running as an example.
pub fn worker_binary(explicit: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(bin) => Ok(bin.to_path_buf()),
        None => binary_beside_bench("worker"),
    }
}

/// The project's binary `name` beside the running executable (target/<profile>/), or one
/// directory up when running as an example.
pub fn binary_beside_bench(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no `{name}` binary next to {} (build it with `cargo build --release --bins`)",
        exe.display()
    )
}

/// `RUST_LOG` of the processes a scenario starts: `BENCH_WORKER_LOG`, else warnings only.
pub fn child_log_filter() -> String {
    std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into())
}

/// Asks `child` to stop as an operator would (SIGTERM: finish, release, exit 0).
pub fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Waits up to a minute for `child` (`what`, for the error) to exit after [`sigterm`];
/// anything but exit 0 is an error.
pub async fn exit_of(child: &mut Child, what: &str) -> anyhow::Result<()> {
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .with_context(|| format!("{what} did not exit within 60 s of SIGTERM"))??;
    if !status.success() {
        bail!("{what} exited with {status}");
    }
    Ok(())
}

/// `url` with its database replaced by `name` (query parameters kept).
pub fn url_with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Worker processes of one run.
pub struct Workers {
    children: Vec<Child>,
    tallies: Vec<PathBuf>,
    /// Where the probe workers write their tallies (none for other queues).
    dir: Option<PathBuf>,
}

impl Workers {
    /// Starts `procs` probe worker processes on `db`, each writing a tally, and waits until
    /// each says it is ready.
    pub async fn start(args: &BenchArgs, db: &BenchDb, procs: usize) -> anyhow::Result<Workers> {
        let dir = std::env::temp_dir().join(format!("{}_tally", db.name));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the tally directory {}", dir.display()))?;
        let tallies: Vec<PathBuf> = (0..procs)
            .map(|i| dir.join(format!("worker_{i}.tally")))
            .collect();
        let per_worker = tallies.iter().map(|tally| {
            let mut flags: Vec<std::ffi::OsString> = [
                "--queues",
                probe::QUEUE,
                "--concurrency",
                &args.concurrency.to_string(),
                "--batch-size",
                &args.batch_size.to_string(),
                "--prefetch",
                &args.prefetch.to_string(),
                // C + 2 connections: one for handlers (the no-op probe uses none), C for the
                // engine pool, one for the maintenance lock.
                "--handler-connections",
                "1",
                "--engine-connections",
                &args.concurrency.to_string(),
                "--probe-tally",
            ]
            .iter()
            .map(Into::into)
            .collect();
            flags.push(tally.into());
            flags.extend(args.worker_flags.iter().map(Into::into));
            flags
        });
        let mut workers = Workers::launch(
            &args.worker_bin()?,
            &db.url,
            db.bouncer.as_ref(),
            per_worker.collect(),
            &[],
        )
        .await?;
        workers.tallies = tallies;
        workers.dir = Some(dir);
        Ok(workers)
    }

    /// Starts one worker process of `bin` on `database_url` per entry of `flags` (its
    /// command-line flags), each with `env` in its environment, and waits until each says it
    /// is ready (`--announce-ready`: its connections are open and notifications arrive). With
    /// `bouncer`, the workers reach the database through it in transaction mode and LISTEN on
    /// `database_url` directly.
    pub async fn launch(
        bin: &Path,
        database_url: &str,
        bouncer: Option<&PgBouncer>,
        flags: Vec<Vec<std::ffi::OsString>>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Workers> {
        let mut workers = Workers {
            children: Vec::new(),
            tallies: Vec::new(),
            dir: None,
        };
        for flags in flags {
            let mut command = Command::new(bin);
            match bouncer {
                None => command.arg("--database-url").arg(database_url),
                Some(bouncer) => command
                    .arg("--database-url")
                    .arg(bouncer.route(database_url))
                    .env("DATABASE_POOLER", "transaction")
                    .env("DATABASE_LISTEN_URL", database_url),
            };
            let mut child = command
                .args(flags)
                .envs(env.iter().copied())
                .arg("--announce-ready")
                .env("RUST_LOG", child_log_filter())
                .env_remove("WORKER_QUEUES")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            workers.children.push(child);
            let ready = tokio::time::timeout(Duration::from_secs(30), async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Some(line) = lines.next_line().await? {
                    if line.trim() == "ready" {
                        // Keep draining stdout so the worker never blocks on a full pipe.
                        tokio::spawn(
                            async move { while let Ok(Some(_)) = lines.next_line().await {} },
                        );
                        return Ok(());
                    }
                }
                bail!("the worker exited before it was ready")
            })
            .await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("a worker was not ready within 30 s"),
            }
        }
        Ok(workers)
    }

    /// The exit status of a worker that has already exited, if any.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .find_map(|child| child.try_wait().ok().flatten())
    }

    /// SIGTERMs every worker, waits for them to exit and reads their tallies.
    pub async fn stop(mut self) -> anyhow::Result<Vec<TallyEntry>> {
        // Every worker hears SIGTERM before the first is waited for: they drain side by side.
        for child in &self.children {
            sigterm(child);
        }
        for child in &mut self.children {
            exit_of(child, "a worker").await?;
        }
        let mut entries = Vec::new();
        for tally in &self.tallies {
            entries.extend(read_tally(tally)?);
        }
        Ok(entries)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// How the tally matched the expectation that every `n` in `0..n` ran `runs_each` times,
/// attempts 1..=runs_each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactlyOnce {
    pub distinct: usize,
    pub duplicates: usize,
    pub missing: usize,
}

impl ExactlyOnce {
    pub fn check(entries: &[TallyEntry], n: usize, runs_each: i32) -> ExactlyOnce {
        // seen[n] counts the runs of n, per attempt.
        let mut seen = vec![[0u32; 4]; n];
        let mut duplicates = 0;
        let mut stray = 0;
        for e in entries {
            let slot = usize::try_from(e.n).ok().filter(|&i| i < n);
            let attempt = usize::try_from(e.attempt)
                .ok()
                .filter(|&a| (1..=3).contains(&a));
            match (slot, attempt) {
                (Some(i), Some(a)) if a as i32 <= runs_each => {
                    seen[i][a] += 1;
                    if seen[i][a] > 1 {
                        duplicates += 1;
                    }
                }
                _ => stray += 1,
            }
        }
        let complete = seen
            .iter()
            .filter(|runs| (1..=runs_each as usize).all(|a| runs[a] >= 1))
            .count();
        let distinct = seen
            .iter()
            .filter(|runs| runs.iter().any(|&c| c > 0))
            .count();
        ExactlyOnce {
            distinct,
            duplicates: duplicates + stray,
            missing: n - complete,
        }
    }

    pub fn ok(&self, n: usize) -> bool {
        self.distinct == n && self.duplicates == 0 && self.missing == 0
    }
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds for JSON: two decimals.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Runs `f` for one run's database and always drops the database afterwards.
pub async fn with_db<T, F>(args: &BenchArgs, scenario: &str, run: usize, f: F) -> anyhow::Result<T>
where
    F: AsyncFnOnce(&BenchDb) -> anyhow::Result<T>,
{
    let db = BenchDb::create(&args.database_url, scenario, run, args.pgbouncer).await?;
    let result = f(&db).await;
    let dropped = db.drop_db().await;
    let value = result?;
    dropped?;
    Ok(value)
}

/// Rounds for JSON: three decimals.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The queue workloads, so `all` and single scenarios share one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
}

impl Workload {
    pub const ALL: &'static [Workload] = &[Workload::W1, Workload::W2, Workload::W3, Workload::W4];

    pub async fn run(self, args: &BenchArgs, summary: &mut report::Summary) -> anyhow::Result<()> {
        match self {
            Workload::W1 => w1::run(args, summary).await,
            Workload::W2 => w2::run(args, summary).await,
            Workload::W3 => w3::run(args, summary).await,
            Workload::W4 => w4::run(args, summary).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            url_with_database(
                "postgres://postgres@127.0.0.1:5432/postgres",
                "bench_poda_x"
            ),
            "postgres://postgres@127.0.0.1:5432/bench_poda_x"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h:1/db?sslmode=disable", "b"),
            "postgres://u:p@h:1/b?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h", "b"), "postgres://h/b");
    }
}
