//! Group commit: concurrent webhook deliveries share one transaction.
//!
//! ```text
//! handler ──submit(delivery)──▶ batcher (poda_jobs::batch): first delivery, then more until
//!                                max_batch or max_delay ──▶ flush task (≤ max_in_flight)
//! flush: one statement (record_webhooks.sql), committed by itself: the new events' ticket
//!        jobs (poda_enqueue_many), the events with their jobs, the redeliveries' jobs
//!        ──▶ oneshot per delivery
//! ```
//!
//! Each handler answers only after its own batch committed. A failed batch answers every
//! delivery in it with an error (503), and no other batch. A batch that enqueued ticket jobs
//! wakes the ticket workers after its commit, from a session of its own ([`Wakeups`]): a
//! NOTIFY in the durable commit would hold a server-wide lock through its WAL flush.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poda_jobs::batch::{self, BatchHandle, BatcherConfig};
use poda_jobs::db::{Db, INDEX_PLANS};
use poda_jobs::engine::wakeups::Wakeups;
use poda_jobs::engine::{JobId, NewJob};
use poda_jobs::ticket::{self, TicketJob};
use poda_jobs::EngineError;
use sqlx::PgConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_MAX_BATCH: usize = 512;
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(2);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// At most this many deliveries per transaction.
    pub max_batch: usize,
    /// How long the first delivery of a batch waits for others.
    pub max_delay: Duration,
    /// Transactions being written at once (each holds one connection).
    pub max_in_flight: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_batch: DEFAULT_MAX_BATCH,
            max_delay: DEFAULT_MAX_DELAY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// One verified, parsed webhook to record.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub event_name: String,
    pub payment_id: Option<String>,
    /// The raw body (valid JSON), stored as the event's payload.
    pub payload: String,
    /// The ticket job to enqueue when this is the first delivery of a `payment.completed`.
    pub ticket: Option<TicketJob>,
}

/// What recording a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The ticket job of the event; `None` for events that enqueue nothing.
    pub job_id: Option<JobId>,
    /// False when the event id had been recorded before (a redelivery).
    pub first_delivery: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupCommitError {
    #[error("the writer has stopped")]
    Stopped,
    #[error("the batch could not be committed: {0}")]
    BatchFailed(Arc<EngineError>),
    /// The database refused this delivery's own data; written alone, it fails alone.
    #[error("the database refused this delivery: {0}")]
    Refused(Arc<EngineError>),
}

/// Submits deliveries to the writer. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommitHandle {
    inner: BatchHandle<Delivery, Result<Recorded, GroupCommitError>>,
}

impl GroupCommitHandle {
    /// Records `delivery` in the next batch and returns once that batch has committed.
    pub async fn submit(&self, delivery: Delivery) -> Result<Recorded, GroupCommitError> {
        self.inner
            .submit(delivery)
            .await
            .map_err(|_| GroupCommitError::Stopped)?
    }
}

/// The running writer: the shared micro-batcher (`poda_jobs::batch`), one transaction per
/// batch.
pub struct GroupCommit {
    handle: GroupCommitHandle,
    task: JoinHandle<()>,
    /// Sends the ticket queue's wake-ups; stopped after the writer.
    wakeups: JoinHandle<()>,
    stop_wakeups: CancellationToken,
}

impl GroupCommit {
    pub fn start(pool: &Db, config: GroupCommitConfig) -> GroupCommit {
        // The batch's statement finds its rows by key: planned once per connection
        // (INDEX_PLANS, docs/plan-cache.md), not at every batch as the enqueuer's other
        // statements are. Planning it took more of the server's time than running it.
        let pool = pool.sibling(config.max_in_flight as u32, INDEX_PLANS);
        let batcher = BatcherConfig {
            batch: config.max_batch,
            delay: config.max_delay,
            in_flight: config.max_in_flight,
            backlog: (config.max_batch * config.max_in_flight * 2).max(64),
        };
        let wakeups = Wakeups::default();
        let stop_wakeups = CancellationToken::new();
        let wakeups_task = tokio::spawn(wakeups.clone().run(pool.clone(), stop_wakeups.clone()));
        // It ends when every handle is dropped (`stop`), after writing what it holds.
        let (inner, task) = batch::start(
            "group_commit",
            batcher,
            CancellationToken::new(),
            move |deliveries| {
                let pool = pool.clone();
                let wakeups = wakeups.clone();
                async move {
                    let results = flush(&pool, deliveries).await;
                    if results.iter().any(enqueued_a_job) {
                        wakeups.wake(ticket::QUEUE);
                    }
                    results
                }
            },
        );
        GroupCommit {
            handle: GroupCommitHandle { inner },
            task,
            wakeups: wakeups_task,
            stop_wakeups,
        }
    }

    pub fn handle(&self) -> GroupCommitHandle {
        self.handle.clone()
    }

    /// Writes what was submitted and stops, once every other handle has been dropped.
    pub async fn stop(self) {
        drop(self.handle);
        let _ = self.task.await;
        self.stop_wakeups.cancel();
        let _ = self.wakeups.await;
    }
}

/// Whether a delivery's batch committed a ticket job it may have created (a first delivery
/// whose payment's job was new, or already there from another event: a wake-up too many is
/// harmless).
fn enqueued_a_job(result: &Result<Recorded, GroupCommitError>) -> bool {
    matches!(
        result,
        Ok(Recorded {
            first_delivery: true,
            job_id: Some(_)
        })
    )
}

#[tracing::instrument(skip_all, fields(batch.size = deliveries.len()))]
async fn flush(pool: &Db, deliveries: Vec<Delivery>) -> Vec<Result<Recorded, GroupCommitError>> {
    let started = Instant::now();
    let size = deliveries.len();
    let result = write_batch(pool, &deliveries).await;
    metrics::histogram!("enqueuer_group_commit_batch_size").record(size as f64);
    metrics::histogram!("enqueuer_group_commit_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(recorded) => recorded.into_iter().map(Ok).collect(),
        Err(error) if size > 1 && is_data_error(&error) => {
            // Some delivery's data (a value jsonb or a column cannot hold) failed the batch:
            // write each under a savepoint of one transaction, so only the one that caused it
            // fails, and commit once.
            tracing::warn!(error = %error, batch.size = size, "group commit refused a row; writing its deliveries one by one");
            match write_each(pool, &deliveries).await {
                Ok(results) => results
                    .into_iter()
                    .zip(&deliveries)
                    .map(|(result, delivery)| {
                        result.map_err(|error| {
                            tracing::warn!(error = %error, event.id = %delivery.event_id, "webhook refused by the database");
                            GroupCommitError::Refused(Arc::new(error))
                        })
                    })
                    .collect(),
                Err(error) => batch_failed(error, size),
            }
        }
        Err(error) if is_data_error(&error) => {
            tracing::warn!(error = %error, "webhook refused by the database");
            vec![Err(GroupCommitError::Refused(Arc::new(error)))]
        }
        Err(error) => batch_failed(error, size),
    }
}

/// Every delivery of a batch whose transaction failed: each is answered 503.
fn batch_failed(error: EngineError, size: usize) -> Vec<Result<Recorded, GroupCommitError>> {
    metrics::counter!("enqueuer_group_commit_failures_total").increment(1);
    tracing::error!(error = %error, batch.size = size, "group commit failed; its deliveries are answered 503");
    vec![Err(GroupCommitError::BatchFailed(Arc::new(error))); size]
}

/// An error caused by the rows written (SQLSTATE classes 22 and 23), not by the connection.
fn is_data_error(error: &EngineError) -> bool {
    error.sqlx().is_some_and(poda_jobs::sqlstate::is_data_error)
}

/// Writes one batch in one statement, which commits by itself, and returns, in input order,
/// what each delivery did.
pub async fn write_batch(pool: &Db, deliveries: &[Delivery]) -> Result<Vec<Recorded>, EngineError> {
    let mut conn = pool.unit().await?;
    let recorded = write_in(&mut conn, deliveries).await?;
    conn.done().await?;
    Ok(recorded)
}

/// Writes each delivery under a savepoint of one transaction and commits once: a delivery
/// whose data the database refuses fails alone (its own result); any other failure fails all.
async fn write_each(
    pool: &Db,
    deliveries: &[Delivery],
) -> Result<Vec<Result<Recorded, EngineError>>, EngineError> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let mut one = sqlx::Connection::begin(&mut *tx).await?;
        match write_in(&mut one, std::slice::from_ref(delivery)).await {
            Ok(mut recorded) => {
                one.commit().await?;
                results.push(Ok(recorded.remove(0)));
            }
            Err(error) if is_data_error(&error) => {
                one.rollback().await?;
                results.push(Err(error));
            }
            Err(error) => return Err(error),
        }
    }
    pool.commit(tx).await?;
    Ok(results)
}

/// One batch's statement (`record_webhooks.sql`) on `conn`: directly it commits by itself,
/// inside the caller's transaction it commits with it.
async fn write_in(
    conn: &mut PgConnection,
    deliveries: &[Delivery],
) -> Result<Vec<Recorded>, EngineError> {
    // Each event once, sorted by id, so two concurrent batches lock events in the same order.
    let mut order: Vec<usize> = (0..deliveries.len()).collect();
    order.sort_by(|&a, &b| deliveries[a].event_id.cmp(&deliveries[b].event_id));
    order.dedup_by(|a, b| deliveries[*a].event_id == deliveries[*b].event_id);
    let jobs: Vec<Option<NewJob>> = order
        .iter()
        .map(|&i| deliveries[i].ticket.as_ref().map(TicketJob::to_job))
        .collect();
    let policy = JobPolicy::of(jobs.iter().flatten())?;
    let mut event_ids = Vec::with_capacity(order.len());
    let mut names = Vec::with_capacity(order.len());
    let mut payment_ids = Vec::with_capacity(order.len());
    let mut payloads = Vec::with_capacity(order.len());
    let mut job_payloads = Vec::with_capacity(order.len());
    let mut unique_keys = Vec::with_capacity(order.len());
    for (&i, job) in order.iter().zip(&jobs) {
        let d = &deliveries[i];
        event_ids.push(d.event_id.as_str());
        names.push(d.event_name.as_str());
        payment_ids.push(d.payment_id.as_deref());
        payloads.push(d.payload.as_str());
        job_payloads.push(job.as_ref().map(|job| job.payload.to_string()));
        unique_keys.push(job.as_ref().and_then(|job| job.unique_key.as_deref()));
    }

    let rows = sqlx::query_file!(
        "src/http/record_webhooks.sql",
        &event_ids as &[&str],
        &names as &[&str],
        &payment_ids as &[Option<&str>],
        &payloads as &[&str],
        &job_payloads as &[Option<String>],
        &unique_keys as &[Option<&str>],
        policy.queue,
        policy.kind,
        policy.max_attempts,
        policy.priority,
        policy.backoff_base_ms,
        policy.backoff_max_ms,
    )
    .fetch_all(&mut *conn)
    .await?;
    let by_event: HashMap<&str, (bool, Option<i64>)> = rows
        .iter()
        .map(|row| (row.event_id.as_str(), (row.first_delivery, row.job_id)))
        .collect();

    // A delivery repeated within the batch is a redelivery of its first occurrence.
    let mut seen: HashSet<&str> = HashSet::with_capacity(deliveries.len());
    deliveries
        .iter()
        .map(|d| {
            // The statement answers every event it was given.
            let (first, job_id) = by_event.get(d.event_id.as_str()).copied().ok_or_else(|| {
                EngineError::InvalidJob(format!("event {} was given and not answered", d.event_id))
            })?;
            Ok(Recorded {
                job_id: job_id.map(JobId),
                first_delivery: first && seen.insert(d.event_id.as_str()),
            })
        })
        .collect()
}

/// What the batch's ticket jobs share, passed to the statement once: every one is made by
/// [`TicketJob::to_job`]. A batch whose jobs differed would be refused, not written wrongly.
struct JobPolicy {
    queue: String,
    kind: String,
    max_attempts: i32,
    priority: i16,
    backoff_base_ms: i32,
    backoff_max_ms: i32,
}

impl JobPolicy {
    fn of<'a>(jobs: impl IntoIterator<Item = &'a NewJob>) -> Result<JobPolicy, EngineError> {
        let mut jobs = jobs.into_iter().peekable();
        // A batch without ticket jobs passes the policy of a ticket job, which nothing uses.
        let none = NewJob::new(ticket::QUEUE, ticket::KIND, serde_json::Value::Null);
        let first = jobs.peek().copied().unwrap_or(&none);
        if let Some(job) = jobs.find(|job| {
            job.queue != first.queue
                || job.kind != first.kind
                || job.retry != first.retry
                || job.priority != first.priority
                || job.run_at.is_some()
                || job.concurrency_key.is_some()
        }) {
            return Err(EngineError::InvalidJob(format!(
                "a webhook's job ({}/{}) differs from the batch's first in its policy, run time \
                 or concurrency key, which one statement cannot record",
                job.queue, job.kind
            )));
        }
        Ok(JobPolicy {
            queue: first.queue.clone(),
            kind: first.kind.clone(),
            max_attempts: first.retry.max_attempts,
            priority: first.priority,
            backoff_base_ms: first.retry.base.as_millis() as i32,
            backoff_max_ms: first.retry.max.as_millis() as i32,
        })
    }
}
