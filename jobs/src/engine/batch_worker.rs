//! Batch workers: a queue whose jobs are run a whole batch at a time, inside the transaction
//! that claimed them.
//!
//! ```text
//! BEGIN
//!   claim_locked    up to `batch_size` runnable jobs, FOR NO KEY UPDATE SKIP LOCKED
//!   handler         the batch's work, on the same connection; one result per job
//!   finish_locked   every job's outcome (completed, retry with backoff, failed)
//! COMMIT
//! ```
//!
//! For work that is itself a database write (tickets), this is both faster and stronger than
//! a lease: the claim writes no row version (the row lock is the claim), the work and the
//! jobs' outcomes commit together, and a process that dies mid-batch leaves nothing behind —
//! its transaction rolls back and the jobs are runnable at once, with no rescue to wait for.
//! `idle_in_transaction_session_timeout` (the engine's lease) ends a transaction whose process
//! stopped talking to the server without closing its connection.
//!
//! Any number of runners (per process and across processes) claim side by side; each skips
//! the rows the others hold, and a process's runners start each claim after the rows they
//! last claimed ([`super::claim_cursor`]). If the transaction fails (the connection is lost, the handler
//! panicked, the commit is refused), nothing of the batch was written, and every job's
//! failure is recorded from a new transaction: a retry after the job's backoff, or a failure
//! for good on its last attempt.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{set_local, Db, ARRAY_PLANS, INDEX_PLANS};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::claim_cursor::ClaimCursor;
use super::job::{JobId, JobMeta};
use super::outcome::{decide, log_outcome, panic_message, Action, OutcomeColumns};
use super::retry::{BoxError, JobError, Outcome, RetryPolicy};
use super::runtime::Engine;
use super::wakeups::Wakeups;

/// A runner whose claim failed waits this long before it claims again.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The work of a batch queue: runs jobs on the connection whose transaction claimed them.
pub trait BatchHandler: Send + Sync + 'static {
    type Args: DeserializeOwned + Send + Sync + 'static;

    /// Runs `jobs` on `conn`, inside the claiming transaction; returns one result per job, in
    /// order. The transaction plans each statement once, on its indexes
    /// ([`INDEX_PLANS`]): write lookups and writes by key. A handler that writes must
    /// isolate its own failures (a savepoint), so the transaction stays usable for the
    /// outcomes; if it does not, the commit fails and every job of the batch is retried.
    fn run<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        jobs: &'a [Self::Args],
    ) -> impl Future<Output = Vec<Result<Outcome, JobError>>> + Send + 'a;

    /// The queues `run` enqueues into without a NOTIFY ([`super::insert_new_jobs`]): the
    /// runner wakes them once the batch's transaction has committed ([`Wakeups`]).
    fn wakes(&self) -> &[&str] {
        &[]
    }
}

/// One batch queue of one process.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub queue: String,
    /// Jobs per transaction at most.
    pub batch_size: usize,
    /// Transactions at once.
    pub runners: usize,
    /// How long one batch's handler may take; past it the transaction is dropped (rolled
    /// back) and every job of the batch fails as a retryable attempt.
    pub run_timeout: Duration,
    /// A runner whose claim was part-full starts its next claim no sooner than this after
    /// the last one began, so that under a steady stream each transaction gathers the jobs
    /// that arrived meanwhile instead of one or two. A claim after a longer idle wait starts
    /// at once; a full claim is followed by the next at once.
    pub claim_interval: Duration,
}

impl BatchSettings {
    /// Jobs a process holds at most.
    pub fn jobs_at_once(&self) -> usize {
        self.batch_size * self.runners
    }
}

/// A claimed job as `claim_locked` returns it.
struct LockedRow {
    id: i64,
    priority: i16,
    run_at: chrono::DateTime<chrono::Utc>,
    kind: String,
    payload: String,
    attempt: i32,
    claim_token: i32,
    max_attempts: i32,
    backoff_base_ms: i32,
    backoff_max_ms: i32,
}

impl LockedRow {
    /// What the handler and the outcome see: the attempt this run spends.
    fn meta(&self, queue: &str) -> JobMeta {
        JobMeta {
            id: JobId(self.id),
            queue: queue.to_owned(),
            kind: self.kind.clone(),
            attempt: self.attempt + 1,
            claim_token: self.claim_token,
            retry: RetryPolicy::from_row(
                self.max_attempts,
                self.backoff_base_ms,
                self.backoff_max_ms,
            ),
            // A batch holds its jobs' row locks until it commits: an operator's cancel waits
            // for the batch, so there is no running batch job to tell.
            cancel: super::registry::RunCancel::never(),
        }
    }
}

/// The runners of one batch queue, watched among the process's loops.
pub struct BatchRunners {
    engine: Engine,
    prefix: String,
}

impl BatchRunners {
    /// Waits until every runner has ended (after `stop`, each ends after the batch it runs).
    pub async fn join(&self) {
        self.engine.loops().join(&self.prefix).await
    }

    /// Aborts the runners: their transactions roll back and their jobs are free at once.
    pub fn abort(&self) {
        self.engine.loops().abort(&self.prefix)
    }
}

/// Starts `settings.runners` runners of `handler` on `pool`; they stop claiming once `stop`
/// is cancelled and end after the batch they are running.
pub fn start<H: BatchHandler>(
    engine: &Engine,
    pool: Db,
    settings: BatchSettings,
    handler: H,
    stop: CancellationToken,
) -> BatchRunners {
    let handler = Arc::new(handler);
    let cursor = Arc::new(ClaimCursor::new(engine.config().poll_interval));
    let prefix = format!("batch:{}:", settings.queue);
    // Jobs made runnable behind the runners' window are moved in front of it.
    super::backend::spawn_straggler_sweep(
        engine,
        format!("{prefix}sweep"),
        &settings.queue,
        cursor.window(),
        stop.clone(),
    );
    for i in 0..settings.runners.max(1) {
        engine.loops().spawn(
            format!("{prefix}{i}"),
            &stop,
            run(
                cursor.clone(),
                engine.clone(),
                pool.clone(),
                settings.clone(),
                handler.clone(),
                stop.clone(),
            ),
        );
    }
    tracing::info!(queue = %settings.queue, batch_size = settings.batch_size,
        runners = settings.runners, "batch worker started");
    BatchRunners {
        engine: engine.clone(),
        prefix,
    }
}

async fn run<H: BatchHandler>(
    cursor: Arc<ClaimCursor>,
    engine: Engine,
    pool: Db,
    settings: BatchSettings,
    handler: Arc<H>,
    stop: CancellationToken,
) {
    let signal = engine.signals().get(&settings.queue);
    let poll = engine.config().poll_interval;
    let lease = engine.config().lease;
    while !stop.is_cancelled() {
        let seen = signal.generation();
        let began = tokio::time::Instant::now();
        let batch = run_batch(
            &cursor,
            &pool,
            &settings,
            lease,
            handler.as_ref(),
            engine.wakeups(),
        );
        match batch.await {
            Ok(n) if n >= settings.batch_size => continue,
            Ok(_) => {
                // A part-full claim took every runnable job: wait for more, then let more
                // gather until the interval since this claim has passed.
                tokio::select! {
                    _ = async {
                        signal.wait_since(seen, poll).await;
                        tokio::time::sleep_until(began + settings.claim_interval).await;
                    } => {}
                    _ = stop.cancelled() => {}
                }
            }
            Err(error) => {
                tracing::warn!(queue = %settings.queue, error = %error,
                    "claiming a batch failed; trying again shortly");
                tokio::select! {
                    _ = tokio::time::sleep(CLAIM_ERROR_PAUSE) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
}

/// Claims, runs and finishes one batch; returns how many jobs it claimed.
async fn run_batch<H: BatchHandler>(
    cursor: &ClaimCursor,
    pool: &Db,
    settings: &BatchSettings,
    lease: Duration,
    handler: &H,
    wakeups: &Wakeups,
) -> Result<usize, sqlx::Error> {
    let queue = settings.queue.as_str();
    // Not a macro: SET LOCAL takes no parameter, so the lease is formatted into the text.
    let mut tx = pool.begin_with_settings(&batch_settings(lease)).await?;
    let after = cursor.after();
    let limit = settings.batch_size as i64;
    let rows = sqlx::query_file_as!(
        LockedRow,
        "src/engine/claim_locked.sql",
        queue,
        limit,
        &after.map(|a| a.map(|(run_at, _)| run_at)) as &[Option<chrono::DateTime<chrono::Utc>>],
        &after.map(|a| a.map(|(_, id)| id)) as &[Option<i64>],
    )
    .fetch_all(&mut *tx)
    .await?;
    let claimed: Vec<_> = rows.iter().map(|r| (r.priority, r.run_at, r.id)).collect();
    cursor.record(settings.batch_size, &claimed, Instant::now());
    if rows.is_empty() {
        pool.commit(tx).await?;
        return Ok(0);
    }
    let claimed = rows.len();
    super::metrics::record_claimed(queue, claimed);
    let metas: Vec<JobMeta> = rows.iter().map(|r| r.meta(queue)).collect();

    // Payloads that do not decode fail their own job for good; the rest run together.
    let mut actions: Vec<Option<Action>> = vec![None; claimed];
    let mut args = Vec::with_capacity(claimed);
    let mut runs = Vec::with_capacity(claimed);
    for (i, row) in rows.iter().enumerate() {
        match serde_json::from_str::<H::Args>(&row.payload) {
            Ok(decoded) => {
                args.push(decoded);
                runs.push(i);
            }
            Err(error) => {
                tracing::error!(job.id = row.id, job.queue = queue, error = %error,
                    "payload does not decode; failing the job");
                actions[i] = Some(Action::Fail {
                    error: format!(
                        "payload does not decode as {}: {error}",
                        std::any::type_name::<H::Args>()
                    ),
                });
            }
        }
    }

    // What is known before the handler runs: the payloads that do not decode. They fail for
    // good whatever becomes of the batch's transaction.
    let undecodable = actions.clone();
    let started = Instant::now();
    let results = tokio::time::timeout(
        settings.run_timeout,
        AssertUnwindSafe(handler.run(&mut tx, &args)).catch_unwind(),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let results = match results {
        Ok(Ok(results)) if results.len() == args.len() => results,
        Err(_) => {
            drop(tx);
            let error = format!(
                "the batch took longer than its timeout of {:?} and was rolled back",
                settings.run_timeout
            );
            record_failure(pool, &rows, &metas, &undecodable, &error).await;
            return Ok(claimed);
        }
        Ok(Ok(results)) => {
            let error = format!(
                "the batch handler returned {} results for {} jobs",
                results.len(),
                args.len()
            );
            drop(tx);
            record_failure(pool, &rows, &metas, &undecodable, &error).await;
            return Ok(claimed);
        }
        Ok(Err(panic)) => {
            drop(tx);
            let error = format!("handler panicked: {}", panic_message(panic));
            record_failure(pool, &rows, &metas, &undecodable, &error).await;
            return Ok(claimed);
        }
    };
    // One observation per batch: its jobs ran together, in `seconds`.
    super::metrics::record_handler(queue, seconds);
    for (&i, result) in runs.iter().zip(results) {
        actions[i] = Some(decide(
            &metas[i],
            Ok(result.map_err(|e| Box::new(e) as BoxError)),
        ));
    }
    let actions: Vec<Action> = actions
        .into_iter()
        .map(|a| a.expect("every claimed job has an outcome"))
        .collect();

    let finished = async {
        // The outcomes' join is planned for this batch, not by INDEX_PLANS (ARRAY_PLANS).
        sqlx::raw_sql(sqlx::AssertSqlSafe(set_local(ARRAY_PLANS)))
            .execute(&mut *tx)
            .await?;
        finish(&mut tx, &rows, &actions).await?;
        pool.commit(tx).await
    }
    .await;
    match finished {
        Ok(()) => {
            for queue in handler.wakes() {
                wakeups.wake(queue);
            }
            for (meta, action) in metas.iter().zip(&actions) {
                log_outcome(meta, action);
            }
            super::metrics::record_outcomes(queue, &actions);
        }
        Err(error) => {
            let error =
                format!("the batch's transaction failed, nothing of it was written: {error}");
            record_failure(pool, &rows, &metas, &undecodable, &error).await;
        }
    }
    Ok(claimed)
}

/// BEGIN, and the settings of a batch transaction:
/// - `idle_in_transaction_session_timeout` = the lease (whole milliseconds): the server ends a
///   transaction whose process stopped talking to it, and its jobs are free again;
/// - [`INDEX_PLANS`] (generic plans, sequential scans priced out): a batch's statements
///   are lookups and writes by key, so each is planned once per connection on its indexes
///   (planning them for every batch was ~5 % of the server's time in `bench tickets`), and a
///   plan made while a table was empty never turns into a scan of the grown table.
fn batch_settings(lease: Duration) -> String {
    format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}; {}",
        lease.as_millis().max(1),
        set_local(INDEX_PLANS)
    )
}

/// After the batch's transaction failed: each job spends its attempt with `error` (a retry
/// after its backoff, or a failure for good on its last attempt), from a new transaction; a
/// job whose payload does not decode fails for good. If
/// that fails too, the jobs stay runnable without having spent an attempt.
async fn record_failure(
    pool: &Db,
    rows: &[LockedRow],
    metas: &[JobMeta],
    undecodable: &[Option<Action>],
    error: &str,
) {
    let actions: Vec<Action> = metas
        .iter()
        .zip(undecodable)
        .map(|(meta, known)| {
            known
                .clone()
                .unwrap_or_else(|| decide(meta, Ok(Err(error.into()))))
        })
        .collect();
    let written = async {
        let mut conn = pool.unit().await?;
        finish(&mut conn, rows, &actions).await?;
        conn.done().await
    }
    .await;
    match written {
        Ok(()) => {
            for (meta, action) in metas.iter().zip(&actions) {
                log_outcome(meta, action);
            }
            if let Some(meta) = metas.first() {
                super::metrics::record_outcomes(&meta.queue, &actions);
            }
        }
        Err(write_error) => {
            tracing::error!(jobs = rows.len(), error = %error, write_error = %write_error,
                "a failed batch could not be recorded; its jobs run again without spending an attempt");
        }
    }
}

/// Writes `actions` (one per row) with `finish_locked`. It joins the outcomes' arrays against
/// `jobs`, so it must be custom-planned: inside a batch transaction the caller sets
/// [`ARRAY_PLANS`] first; the pools plan every statement anyway.
async fn finish(
    conn: &mut PgConnection,
    rows: &[LockedRow],
    actions: &[Action],
) -> Result<(), sqlx::Error> {
    let columns = OutcomeColumns::new(
        rows.iter()
            .zip(actions)
            .map(|(row, action)| (row.id, row.claim_token, action)),
    );
    sqlx::query_file!(
        "src/engine/finish_locked.sql",
        &columns.ids,
        &columns.tokens,
        &columns.states as &[&str],
        &columns.delays as &[Option<i64>],
        &columns.errors as &[Option<&str>],
        &columns.refunds,
    )
    .execute(conn)
    .await?;
    Ok(())
}
