//! Enqueueing: one job or many, on a pool, a connection or inside a caller's transaction.
//!
//! ```ignore
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO payments ...").execute(&mut *tx).await?;
//! enqueue_one(&mut tx, &NewJob::new("tickets", "ticket", payload)).await?;
//! tx.commit().await?; // the job exists if and only if the payment row does
//! ```

use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection, PgPool};

use super::error::EngineError;
use super::job::{Enqueued, JobId, NewJob};
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
    let arguments = Columns::from_jobs(jobs)?.into_arguments()?;
    let rows: Vec<(i64, bool, i64)> =
        sqlx::query_as_with(include_str!("enqueue_many.sql"), arguments)
            .fetch_all(&mut *conn)
            .await?;

    let mut result: Vec<Enqueued> = rows
        .iter()
        .map(|(id, created, _)| Enqueued {
            id: JobId(*id),
            created: *created,
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
        let found: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT j.queue, j.unique_key, j.id FROM jobs j \
             JOIN unnest($1::text[], $2::text[]) AS k(queue, unique_key) \
               ON j.queue = k.queue AND j.unique_key = k.unique_key",
        )
        .bind(&queues)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await?;
        for &i in &missing {
            let job = &jobs[i];
            let existing = found
                .iter()
                .find(|(q, k, _)| *q == job.queue && Some(k.as_str()) == job.unique_key.as_deref())
                .map(|(_, _, id)| JobId(*id))
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
/// than [`enqueue_many`], which has to find out which keys exist.
pub async fn insert_new_jobs(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<u64, EngineError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let arguments = Columns::from_jobs(jobs)?.into_arguments()?;
    let (inserted, _notified): (i64, i64) =
        sqlx::query_as_with(include_str!("insert_new.sql"), arguments)
            .fetch_one(&mut *conn)
            .await?;
    Ok(inserted as u64)
}

/// Enqueues one job; see [`enqueue_many`].
pub async fn enqueue_one(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued, EngineError> {
    let mut all = enqueue_many(conn, std::slice::from_ref(job)).await?;
    all.pop()
        .ok_or_else(|| EngineError::InvalidJob("enqueue returned no row".into()))
}

/// [`enqueue_many`] on a connection of `pool`, committed at once.
pub async fn enqueue_many_pooled(
    pool: &PgPool,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>, EngineError> {
    let mut conn = pool.acquire().await?;
    enqueue_many(&mut conn, jobs).await
}

/// [`enqueue_one`] on a connection of `pool`, committed at once.
pub async fn enqueue_one_pooled(pool: &PgPool, job: &NewJob) -> Result<Enqueued, EngineError> {
    let mut conn = pool.acquire().await?;
    enqueue_one(&mut conn, job).await
}

/// The jobs as one array per column, for `unnest`.
struct Columns {
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<String>,
    unique_key: Vec<Option<String>>,
    run_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    max_attempts: Vec<i32>,
    backoff_base_ms: Vec<i32>,
    backoff_max_ms: Vec<i32>,
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
        };
        for job in jobs {
            if job.queue.is_empty() || job.kind.is_empty() {
                return Err(EngineError::InvalidJob(
                    "queue and kind must not be empty".into(),
                ));
            }
            job.retry.validate().map_err(EngineError::InvalidJob)?;
            c.queue.push(job.queue.clone());
            c.kind.push(job.kind.clone());
            c.payload.push(serde_json::to_string(&job.payload)?);
            c.unique_key.push(job.unique_key.clone());
            c.run_at.push(job.run_at);
            c.max_attempts.push(job.retry.max_attempts);
            c.backoff_base_ms.push(job.retry.base.as_millis() as i32);
            c.backoff_max_ms.push(job.retry.max.as_millis() as i32);
        }
        Ok(c)
    }

    /// The columns as the statements' parameters $1..$8, and the NOTIFY channel as $9.
    fn into_arguments(self) -> Result<PgArguments, sqlx::Error> {
        let mut arguments = PgArguments::default();
        let add = |result: Result<(), BoxDynError>| result.map_err(sqlx::Error::Encode);
        add(arguments.add(self.queue))?;
        add(arguments.add(self.kind))?;
        add(arguments.add(self.payload))?;
        add(arguments.add(self.unique_key))?;
        add(arguments.add(self.run_at))?;
        add(arguments.add(self.max_attempts))?;
        add(arguments.add(self.backoff_base_ms))?;
        add(arguments.add(self.backoff_max_ms))?;
        add(arguments.add(NOTIFY_CHANNEL))?;
        Ok(arguments)
    }
}
