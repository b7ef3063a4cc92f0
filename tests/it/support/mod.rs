pub mod app;
pub mod cycles;
pub mod monime;
pub mod process;
pub mod worker;

/// Raises this process's open-file limit to its hard limit (many concurrent connections).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Enqueues probe jobs `0..n` with the default retry policy, each sleeping `sleep_ms` and
/// recording its run in `probe_runs` (for exactly-once checks).
pub async fn enqueue_recorded_probes(pool: &sqlx::PgPool, n: i64, sleep_ms: u64) {
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
