pub mod app;
pub mod browser;
pub mod cycles;
pub mod monime;
pub mod process;

use poda_jobs::db::Db;

/// Raises this process's open-file limit to its hard limit (many concurrent connections).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Enqueues probe jobs `0..n` with the default retry policy, each sleeping `sleep_ms` and
/// recording its run in `probe_runs` (for exactly-once checks).
pub async fn enqueue_recorded_probes(pool: &Db, n: i64, sleep_ms: u64) {
    use poda_jobs::probe::ProbeJob;
    let jobs: Vec<_> = (0..n)
        .map(|n| {
            ProbeJob {
                record: true,
                sleep_ms,
                ..ProbeJob::new(n)
            }
            .to_job(poda_jobs::RetryPolicy::default())
        })
        .collect();
    for chunk in jobs.chunks(5_000) {
        poda_jobs::engine::enqueue_many_pooled(pool, chunk)
            .await
            .unwrap();
    }
}

/// Jobs in `state`, of every queue.
pub async fn count_state(pool: &Db, state: poda_jobs::engine::JobState) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How long tests wait for a worker to get something done.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The one number `sql` selects.
pub async fn count(pool: &Db, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}
