//! Group commit: concurrent webhook deliveries share one transaction.
//!
//! ```text
//! handler ──submit(delivery)──▶ batcher (poda_jobs::batch): first delivery, then more until
//!                                max_batch or max_delay ──▶ flush task (≤ max_in_flight)
//! flush: BEGIN; INSERT webhook_events … ON CONFLICT DO NOTHING; enqueue_many(tickets);
//!        UPDATE webhook_events SET job_id; look up duplicates; COMMIT ──▶ oneshot per delivery
//! ```
//!
//! Each handler answers only after its own batch committed. A failed batch answers every
//! delivery in it with an error (503), and no other batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use poda_jobs::batch::{self, BatchHandle, BatcherConfig};
use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many, JobId, NewJob};
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
}

impl GroupCommit {
    pub fn start(pool: Db, config: GroupCommitConfig) -> GroupCommit {
        let batcher = BatcherConfig {
            batch: config.max_batch,
            delay: config.max_delay,
            in_flight: config.max_in_flight,
            backlog: (config.max_batch * config.max_in_flight * 2).max(64),
        };
        // It ends when every handle is dropped (`stop`), after writing what it holds.
        let (inner, task) = batch::start(
            "group_commit",
            batcher,
            CancellationToken::new(),
            move |deliveries| {
                let pool = pool.clone();
                async move { flush(&pool, deliveries).await }
            },
        );
        GroupCommit {
            handle: GroupCommitHandle { inner },
            task,
        }
    }

    pub fn handle(&self) -> GroupCommitHandle {
        self.handle.clone()
    }

    /// Writes what was submitted and stops, once every other handle has been dropped.
    pub async fn stop(self) {
        drop(self.handle);
        let _ = self.task.await;
    }
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

/// Writes one batch in one transaction and returns, in input order, what each delivery did.
pub async fn write_batch(pool: &Db, deliveries: &[Delivery]) -> Result<Vec<Recorded>, EngineError> {
    let mut tx = pool.begin().await?;
    let recorded = write_in(&mut tx, deliveries).await?;
    pool.commit(tx).await?;
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

/// The statements of one batch, on `conn` inside the caller's transaction.
async fn write_in(
    conn: &mut PgConnection,
    deliveries: &[Delivery],
) -> Result<Vec<Recorded>, EngineError> {
    // Rows go in sorted by key, so two concurrent batches lock keys in the same order.
    let mut order: Vec<usize> = (0..deliveries.len()).collect();
    order.sort_by(|&a, &b| deliveries[a].event_id.cmp(&deliveries[b].event_id));
    let mut event_ids = Vec::with_capacity(order.len());
    let mut names = Vec::with_capacity(order.len());
    let mut payment_ids = Vec::with_capacity(order.len());
    let mut payloads = Vec::with_capacity(order.len());
    let mut first_of_event: HashMap<&str, usize> = HashMap::with_capacity(order.len());
    for &i in &order {
        let d = &deliveries[i];
        if first_of_event.contains_key(d.event_id.as_str()) {
            continue;
        }
        first_of_event.insert(&d.event_id, i);
        event_ids.push(d.event_id.as_str());
        names.push(d.event_name.as_str());
        payment_ids.push(d.payment_id.as_deref());
        payloads.push(d.payload.as_str());
    }

    let inserted: Vec<String> = sqlx::query_scalar!(
        "INSERT INTO webhook_events (event_id, event_name, payment_id, payload) \
         SELECT e, n, p, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
             AS t(e, n, p, b) \
         ON CONFLICT (event_id) DO NOTHING \
         RETURNING event_id",
        &event_ids as &[&str],
        &names as &[&str],
        &payment_ids as &[Option<&str>],
        &payloads as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?;
    let inserted: HashSet<&str> = inserted.iter().map(String::as_str).collect();

    // New events that announce a payment enqueue its ticket job (deduplicated by payment id).
    let mut tickets: Vec<(&str, &TicketJob)> = first_of_event
        .iter()
        .filter(|(event_id, _)| inserted.contains(*event_id))
        .filter_map(|(event_id, &i)| deliveries[i].ticket.as_ref().map(|t| (*event_id, t)))
        .collect();
    tickets.sort_by(|a, b| a.1.payment_id.cmp(&b.1.payment_id));
    let jobs: Vec<NewJob> = tickets
        .iter()
        .map(|(_, t)| {
            NewJob::from_payload(ticket::QUEUE, ticket::KIND, t)
                .map(|job| job.with_unique_key(t.unique_key()))
        })
        .collect::<Result<_, _>>()?;
    let enqueued = enqueue_many(&mut *conn, &jobs).await?;
    let mut job_of_event: HashMap<&str, JobId> = tickets
        .iter()
        .zip(&enqueued)
        .map(|((event_id, _), e)| (*event_id, e.id))
        .collect();
    if !job_of_event.is_empty() {
        let (ids, jobs): (Vec<&str>, Vec<i64>) =
            job_of_event.iter().map(|(e, j)| (*e, j.0)).unzip();
        sqlx::query!(
            "UPDATE webhook_events w SET job_id = t.j \
             FROM unnest($1::text[], $2::bigint[]) AS t(e, j) WHERE w.event_id = t.e",
            &ids as &[&str],
            &jobs,
        )
        .execute(&mut *conn)
        .await?;
    }

    // Redeliveries: the job id recorded with the first delivery.
    let earlier: Vec<&str> = first_of_event
        .keys()
        .filter(|e| !inserted.contains(*e))
        .copied()
        .collect();
    if !earlier.is_empty() {
        let found = sqlx::query!(
            "SELECT event_id, job_id FROM webhook_events WHERE event_id = ANY($1::text[])",
            &earlier as &[&str],
        )
        .fetch_all(&mut *conn)
        .await?;
        let found: HashMap<String, Option<i64>> =
            found.into_iter().map(|r| (r.event_id, r.job_id)).collect();
        for e in earlier {
            if let Some(Some(job)) = found.get(e) {
                job_of_event.insert(e, JobId(*job));
            }
        }
    }

    Ok(deliveries
        .iter()
        .enumerate()
        .map(|(i, d)| Recorded {
            job_id: job_of_event.get(d.event_id.as_str()).copied(),
            first_delivery: inserted.contains(d.event_id.as_str())
                && first_of_event.get(d.event_id.as_str()) == Some(&i),
        })
        .collect())
}
