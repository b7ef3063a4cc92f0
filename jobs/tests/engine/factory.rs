//! Jobs in any state, for tests: enqueue, then set the row directly.

use chrono::{DateTime, Utc};
use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, JobId, NewJob, RetryPolicy};
use poda_jobs::probe::ProbeJob;

pub async fn probes(pool: &Db, queue: &str, count: usize) -> Vec<JobId> {
    let jobs: Vec<NewJob> = (0..count)
        .map(|i| {
            let mut job = ProbeJob::new(i as i64).to_job(RetryPolicy::default());
            job.queue = queue.to_owned();
            job
        })
        .collect();
    enqueue_many_pooled(pool, &jobs)
        .await
        .expect("enqueue probes")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Puts job `id` in `state`, finished at `finished_at` (running jobs get a lease).
pub async fn set_state(pool: &Db, id: JobId, state: &str, finished_at: Option<DateTime<Utc>>) {
    sqlx::query(
        "UPDATE jobs SET state = $2::job_state, finished_at = $3, \
         lease_owner = CASE WHEN $2 = 'running' THEN gen_random_uuid() END, \
         lease_expires_at = CASE WHEN $2 = 'running' THEN now() + interval '1 hour' END, \
         created_at = coalesce($3, created_at) - interval '1 hour' \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(finished_at)
    .execute(pool)
    .await
    .expect("set job state");
}

pub async fn exists(pool: &Db, id: JobId) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("look up job")
}
