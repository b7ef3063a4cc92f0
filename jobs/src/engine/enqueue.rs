//! Enqueueing: one job or many, on a pool, a connection or inside a caller's transaction.
//!
//! ```ignore
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO payments ...").execute(&mut *tx).await?;
//! enqueue_one(&mut tx, &NewJob::new("tickets", "ticket", payload)).await?;
//! tx.commit().await?; // the job exists if and only if the payment row does
//! ```

use crate::db::Db;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::EngineError;
use super::job::{Enqueued, JobId, NewJob, Priority};
use super::notify::NOTIFY_CHANNEL;

/// Enqueues `jobs` with one statement and returns, in input order, each job's id and whether
/// it was created (false: its unique key existed, and the existing job's id is returned).
/// Pass `&mut tx` to enqueue inside a transaction, or a pooled connection.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>, EngineError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    if jobs.iter().all(|job| job.unique_key.is_none()) {
        // No job can be a duplicate: every one is created.
        let ids = insert_new(conn, jobs, Some(NOTIFY_CHANNEL)).await?;
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued { id, created: true })
            .collect());
    }
    let c = Columns::from_jobs(jobs)?;
    let rows = sqlx::query_file!(
        "src/engine/enqueue_many.sql",
        &c.queue,
        &c.kind,
        &c.payload,
        &c.unique_key as &[Option<String>],
        &c.run_at as &[Option<DateTime<Utc>>],
        &c.max_attempts,
        &c.backoff_base_ms,
        &c.backoff_max_ms,
        c.priority.as_deref(),
        c.concurrency_key.as_deref() as Option<&[Option<String>]>,
        NOTIFY_CHANNEL,
        Priority::DEFAULT,
    )
    .fetch_all(&mut *conn)
    .await?;

    let mut result: Vec<Enqueued> = rows
        .iter()
        .map(|row| Enqueued {
            id: JobId(row.id),
            created: row.created,
        })
        .collect();

    // Rows skipped for an existing key: a new statement sees the committed winner even when
    // it committed while ours ran.
    let missing: Vec<usize> = (0..jobs.len()).filter(|&i| !result[i].created).collect();
    if !missing.is_empty() {
        let queues: Vec<&str> = missing.iter().map(|&i| jobs[i].queue.as_str()).collect();
        let keys: Vec<&str> = missing
            .iter()
            .map(|&i| jobs[i].unique_key.as_deref().unwrap_or_default())
            .collect();
        let found = sqlx::query!(
            "SELECT j.queue, j.unique_key AS \"unique_key!\", j.id FROM jobs j \
             JOIN unnest($1::text[], $2::text[]) AS k(queue, unique_key) \
               ON j.queue = k.queue AND j.unique_key = k.unique_key",
            &queues as &[&str],
            &keys as &[&str],
        )
        .fetch_all(&mut *conn)
        .await?;
        for &i in &missing {
            let job = &jobs[i];
            let existing = found
                .iter()
                .find(|f| {
                    f.queue == job.queue && Some(f.unique_key.as_str()) == job.unique_key.as_deref()
                })
                .map(|f| JobId(f.id))
                .ok_or_else(|| {
                    EngineError::InvalidJob(format!(
                        "job with unique key {:?} in queue {} was neither inserted nor found",
                        job.unique_key, job.queue
                    ))
                })?;
            result[i].id = existing;
        }
    }
    Ok(result)
}

/// Inserts `jobs` with one statement, for jobs whose unique keys cannot exist yet (keyed by
/// a row the caller has just inserted in the same transaction); returns how many. A key that
/// does exist fails with a unique violation instead of returning the existing job. Cheaper
/// than [`enqueue_many`] with keys, which has to find out which keys exist.
///
/// It sends no NOTIFY: the caller wakes the jobs' queues once its transaction has committed
/// ([`super::wakeups::Wakeups`]; a batch queue's runner does it for its handler).
pub async fn insert_new_jobs(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<u64, EngineError> {
    Ok(insert_new(conn, jobs, None).await?.len() as u64)
}

/// Inserts `jobs` without looking for existing unique keys; returns their ids in input order.
/// With a `channel`, the caller's commit notifies each queue on it.
async fn insert_new(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    channel: Option<&str>,
) -> Result<Vec<JobId>, EngineError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let c = Columns::from_jobs(jobs)?;
    let row = sqlx::query_file!(
        "src/engine/insert_new.sql",
        &c.queue,
        &c.kind,
        &c.payload,
        &c.unique_key as &[Option<String>],
        &c.run_at as &[Option<DateTime<Utc>>],
        &c.max_attempts,
        &c.backoff_base_ms,
        &c.backoff_max_ms,
        c.priority.as_deref(),
        c.concurrency_key.as_deref() as Option<&[Option<String>]>,
        channel,
        Priority::DEFAULT,
    )
    .fetch_one(&mut *conn)
    .await?;
    if row.ids.len() != jobs.len() {
        return Err(EngineError::InvalidJob(format!(
            "{} jobs were given and {} inserted",
            jobs.len(),
            row.ids.len()
        )));
    }
    Ok(row.ids.into_iter().map(JobId).collect())
}

/// Enqueues one job; see [`enqueue_many`].
pub async fn enqueue_one(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued, EngineError> {
    the_one(enqueue_many(conn, std::slice::from_ref(job)).await?)
}

/// The one job a single-job enqueue returned.
fn the_one(mut all: Vec<Enqueued>) -> Result<Enqueued, EngineError> {
    all.pop()
        .ok_or_else(|| EngineError::InvalidJob("enqueue returned no row".into()))
}

/// [`enqueue_many`] on a connection of `pool`, committed at once.
pub async fn enqueue_many_pooled(pool: &Db, jobs: &[NewJob]) -> Result<Vec<Enqueued>, EngineError> {
    let mut conn = pool.unit().await?;
    let enqueued = enqueue_many(&mut conn, jobs).await?;
    conn.done().await?;
    Ok(enqueued)
}

/// [`enqueue_one`] on a connection of `pool`, committed at once.
pub async fn enqueue_one_pooled(pool: &Db, job: &NewJob) -> Result<Enqueued, EngineError> {
    the_one(enqueue_many_pooled(pool, std::slice::from_ref(job)).await?)
}

/// The jobs as one array per column, for `unnest`: the statements' parameters $1..$10 (the
/// NOTIFY channel is $11, the default priority $12). The priorities and the concurrency keys
/// are sent only when some job sets one: most batches would send two arrays of defaults,
/// encoded, decoded and unnested for nothing.
struct Columns {
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<String>,
    unique_key: Vec<Option<String>>,
    run_at: Vec<Option<DateTime<Utc>>>,
    max_attempts: Vec<i32>,
    backoff_base_ms: Vec<i32>,
    backoff_max_ms: Vec<i32>,
    /// `None`: every job has the default priority.
    priority: Option<Vec<i16>>,
    /// `None`: no job has a key.
    concurrency_key: Option<Vec<Option<String>>>,
}

impl Columns {
    fn from_jobs(jobs: &[NewJob]) -> Result<Self, EngineError> {
        let mut c = Columns {
            queue: Vec::with_capacity(jobs.len()),
            kind: Vec::with_capacity(jobs.len()),
            payload: Vec::with_capacity(jobs.len()),
            unique_key: Vec::with_capacity(jobs.len()),
            run_at: Vec::with_capacity(jobs.len()),
            max_attempts: Vec::with_capacity(jobs.len()),
            backoff_base_ms: Vec::with_capacity(jobs.len()),
            backoff_max_ms: Vec::with_capacity(jobs.len()),
            priority: None,
            concurrency_key: None,
        };
        for job in jobs {
            if job.queue.is_empty() || job.kind.is_empty() {
                return Err(EngineError::InvalidJob(
                    "queue and kind must not be empty".into(),
                ));
            }
            job.retry.validate().map_err(EngineError::InvalidJob)?;
            Priority::check(job.priority).map_err(EngineError::InvalidJob)?;
            c.queue.push(job.queue.clone());
            c.kind.push(job.kind.clone());
            c.payload.push(serde_json::to_string(&job.payload)?);
            c.unique_key.push(job.unique_key.clone());
            c.run_at.push(job.run_at);
            c.max_attempts.push(job.retry.max_attempts);
            c.backoff_base_ms.push(job.retry.base.as_millis() as i32);
            c.backoff_max_ms.push(job.retry.max.as_millis() as i32);
        }
        if jobs.iter().any(|job| job.priority != Priority::DEFAULT) {
            c.priority = Some(jobs.iter().map(|job| job.priority).collect());
        }
        if jobs.iter().any(|job| job.concurrency_key.is_some()) {
            c.concurrency_key = Some(jobs.iter().map(|job| job.concurrency_key.clone()).collect());
        }
        Ok(c)
    }
}
