//! Completion: outcomes of runs are written in batches, fenced by each run's claim token.
//!
//! Handlers hand their outcome to a [`CompletionHandle`] and free their slot at once; one task
//! per process gathers outcomes and writes each batch with one statement when the batch fills
//! or a few milliseconds after its first outcome. The channel is bounded, so a database that
//! falls behind slows handlers down instead of growing memory. [`CompletionHandle::flush`]
//! waits until everything sent before it is written (used at shutdown).
//!
//! No outcome is dropped while the process lives: a batch the database does not take is
//! written again, with backoff, for as long as it takes (its jobs stay held, so their leases
//! keep being renewed). Only at the end of a shutdown does the completer give up, and it logs
//! the ids of the jobs whose outcome it could not write: those run again.

use std::time::Duration;

use crate::db::Db;
use sqlx::{PgConnection, PgExecutor};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use super::job::JobId;
use super::notify::Signals;
use super::outcome::{Action, OutcomeColumns};
use super::registry::Registry;

pub const DEFAULT_COMPLETION_BATCH: usize = 1_000;
pub const DEFAULT_COMPLETION_INTERVAL: Duration = Duration::from_millis(2);
/// Outcomes waiting to be written before handlers have to wait. A handler's slot frees as soon
/// as its outcome is queued, so this also bounds the jobs a process holds beyond its slots;
/// kept small so completion batches and lease renewal stay cheap when handlers outrun the
/// completer.
pub const DEFAULT_COMPLETION_BACKLOG: usize = 1_000;
/// One write of a batch that takes longer than this (a connection that went half-open) is
/// abandoned and tried again on another connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between two writes of a batch the database refused.
const WRITE_RETRY_MAX_PAUSE: Duration = Duration::from_secs(2);

/// The outcome of one run: which claim of which job, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: JobId,
    /// The run's claim token (see `claim_batch`): the fence of this write.
    pub token: i32,
    pub action: Action,
}

/// Writes `completions` in one statement; returns the ids that changed. An outcome whose job
/// is no longer running under that claim token is ignored.
pub async fn complete_many(
    pool: &Db,
    completions: &[Completion],
) -> Result<Vec<JobId>, EngineError> {
    Ok(write_outcomes(pool, completions)
        .await?
        .into_iter()
        .map(|row| row.id)
        .collect())
}

/// One row [`write_outcomes`] changed.
struct Written {
    id: JobId,
    queue: String,
    runnable_again: bool,
}

/// Writes a batch. A batch that only completes or releases jobs commits asynchronously (the
/// engine pool's default: losing it in a server crash only runs those jobs again); a batch
/// that schedules a retry, a snooze or a failure for good commits durably, so a schedule that
/// was acknowledged survives a crash.
async fn write_outcomes(
    pool: &Db,
    completions: &[Completion],
) -> Result<Vec<Written>, EngineError> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let columns = OutcomeColumns::new(completions.iter().map(|c| (c.id.0, c.token, &c.action)));
    if completions.iter().any(|c| c.action.must_be_durable()) {
        // Not a macro: a transaction's settings are statements of their own.
        let mut tx = pool
            .begin_with_settings("SET LOCAL synchronous_commit = on")
            .await?;
        let changed = apply_outcomes(&mut *tx, &columns).await?;
        pool.commit(tx).await?;
        Ok(changed)
    } else {
        Ok(apply_outcomes(pool, &columns).await?)
    }
}

/// The completion statement (`complete_many.sql`) for `columns`, on `executor`.
async fn apply_outcomes<'c>(
    executor: impl PgExecutor<'c>,
    columns: &OutcomeColumns<'_>,
) -> sqlx::Result<Vec<Written>> {
    let rows = sqlx::query_file!(
        "src/engine/complete_many.sql",
        &columns.ids,
        &columns.tokens,
        &columns.states as &[&str],
        &columns.delays as &[Option<i64>],
        &columns.errors as &[Option<&str>],
        &columns.refunds,
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Written {
            id: JobId(row.id),
            queue: row.queue,
            runnable_again: row.runnable_again,
        })
        .collect())
}

/// Prepares the completion on `conn` and loads what it reads into the session's caches, by
/// running it for no job ([`super::warm`]).
pub(super) async fn complete_nothing(conn: &mut PgConnection) -> sqlx::Result<()> {
    apply_outcomes(conn, &OutcomeColumns::new(std::iter::empty())).await?;
    Ok(())
}

enum Message {
    Outcome(Completion),
    Flush(oneshot::Sender<()>),
}

/// Where handlers send outcomes. Cheap to clone.
#[derive(Clone)]
pub struct CompletionHandle {
    tx: mpsc::Sender<Message>,
}

impl CompletionHandle {
    /// Queues an outcome; waits only when the backlog is full.
    pub async fn send(&self, completion: Completion) -> Result<(), EngineError> {
        self.tx
            .send(Message::Outcome(completion))
            .await
            .map_err(|_| EngineError::Stopped)
    }

    /// Waits until every outcome sent before this call has been written (or given up).
    pub async fn flush(&self) -> Result<(), EngineError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Flush(done))
            .await
            .map_err(|_| EngineError::Stopped)?;
        wait.await.map_err(|_| EngineError::Stopped)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CompleterConfig {
    pub batch: usize,
    pub interval: Duration,
    pub backlog: usize,
}

impl Default for CompleterConfig {
    fn default() -> Self {
        CompleterConfig {
            batch: DEFAULT_COMPLETION_BATCH,
            interval: DEFAULT_COMPLETION_INTERVAL,
            backlog: DEFAULT_COMPLETION_BACKLOG,
        }
    }
}

/// The task that writes batches. It ends when every handle is dropped, after writing what
/// it holds, or when told to give up (the end of a shutdown's grace).
pub struct Completer {
    rx: mpsc::Receiver<Message>,
    pool: Db,
    registry: Registry,
    signals: Signals,
    /// Retries due within this long wake this process's idle workers when they are due.
    wake_within: Duration,
    config: CompleterConfig,
    give_up: CancellationToken,
}

impl Completer {
    /// The completer and the handle to send it outcomes. Cancelling `give_up` makes it stop
    /// retrying, log what it could not write, and end.
    pub fn new(
        pool: Db,
        registry: Registry,
        signals: Signals,
        wake_within: Duration,
        config: CompleterConfig,
        give_up: CancellationToken,
    ) -> (Self, CompletionHandle) {
        let (tx, rx) = mpsc::channel(config.backlog.max(1));
        (
            Completer {
                rx,
                pool,
                registry,
                signals,
                wake_within,
                config,
                give_up,
            },
            CompletionHandle { tx },
        )
    }

    pub async fn run(mut self) {
        let mut batch: Vec<Completion> = Vec::with_capacity(self.config.batch);
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // Wait for the first message of a batch, then gather until full or the interval ends.
            let first = tokio::select! {
                message = self.rx.recv() => message,
                _ = self.give_up.cancelled() => None,
            };
            let Some(first) = first else {
                break;
            };
            let mut flush_now = self.take(first, &mut batch, &mut waiters);
            let deadline = tokio::time::Instant::now() + self.config.interval;
            while !flush_now && batch.len() < self.config.batch {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(message)) => flush_now = self.take(message, &mut batch, &mut waiters),
                    Ok(None) | Err(_) => break,
                }
            }
            // Drain whatever else is already queued, up to the batch size, without waiting.
            while batch.len() < self.config.batch {
                match self.rx.try_recv() {
                    Ok(message) => {
                        self.take(message, &mut batch, &mut waiters);
                    }
                    Err(_) => break,
                }
            }
            self.write(&mut batch).await;
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        // Every handle is gone, or the shutdown's grace is over: write what is left unless
        // told to give up, then name what was not written.
        while let Ok(message) = self.rx.try_recv() {
            self.take(message, &mut batch, &mut waiters);
        }
        self.write(&mut batch).await;
        for waiter in waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Adds a message to the batch; true when it asks for an immediate flush.
    fn take(
        &self,
        message: Message,
        batch: &mut Vec<Completion>,
        waiters: &mut Vec<oneshot::Sender<()>>,
    ) -> bool {
        match message {
            Message::Outcome(c) => {
                batch.push(c);
                false
            }
            Message::Flush(done) => {
                waiters.push(done);
                true
            }
        }
    }

    /// Writes `batch`, trying again until the database takes it or the completer is told to
    /// give up. Its jobs stay held (and their leases renewed) until then.
    async fn write(&self, batch: &mut Vec<Completion>) {
        if batch.is_empty() {
            return;
        }
        batch.sort_by_key(|c| c.id);
        let mut backoff = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(50),
            max_interval: WRITE_RETRY_MAX_PAUSE,
            max_elapsed_time: None,
            ..Default::default()
        };
        let mut failures = 0u32;
        while !self.give_up.is_cancelled() {
            let written = tokio::time::timeout(WRITE_TIMEOUT, write_outcomes(&self.pool, batch))
                .await
                .unwrap_or_else(|_| Err(EngineError::Timeout("writing job outcomes")));
            match written {
                Ok(changed) => {
                    if failures > 0 {
                        tracing::info!(
                            jobs = batch.len(),
                            failures,
                            "job outcomes written after the database came back"
                        );
                    }
                    self.wake_for_runnable(batch, &changed);
                    let stale = batch.len() - changed.len();
                    if stale > 0 {
                        tracing::info!(
                            stale,
                            "ignored outcomes of runs that are no longer their job's claim"
                        );
                    }
                    self.registry
                        .forget_many(batch.iter().map(|c| (c.id, c.token)));
                    batch.clear();
                    return;
                }
                Err(error) => {
                    failures += 1;
                    let wait = backoff::backoff::Backoff::next_backoff(&mut backoff)
                        .unwrap_or(WRITE_RETRY_MAX_PAUSE);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %error, jobs = batch.len(), failures,
                            "writing job outcomes failed; trying again until it succeeds");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.give_up.cancelled() => {}
                    }
                }
            }
        }
        let ids: Vec<i64> = batch.iter().map(|c| c.id.0).collect();
        tracing::error!(jobs = ?ids,
            "shutting down with job outcomes that could not be written; these jobs run again once their lease lapses");
        batch.clear();
    }

    /// Jobs this batch made runnable again (a retry, snooze or release) would otherwise wait
    /// for the next poll of an idle worker: wake this process's workers of their queue when
    /// the earliest of them is due, if that is within the poll interval.
    fn wake_for_runnable(&self, batch: &[Completion], changed: &[Written]) {
        let mut due: std::collections::HashMap<&str, Duration> = Default::default();
        for row in changed.iter().filter(|r| r.runnable_again) {
            let delay = batch
                .binary_search_by_key(&row.id, |c| c.id)
                .ok()
                .map(|i| match &batch[i].action {
                    Action::Retry { delay, .. } | Action::Snooze { delay } => *delay,
                    _ => Duration::ZERO,
                })
                .unwrap_or_default();
            if delay <= self.wake_within {
                let earliest = due.entry(row.queue.as_str()).or_insert(delay);
                *earliest = (*earliest).min(delay);
            }
        }
        for (queue, delay) in due {
            if delay.is_zero() {
                self.signals.wake(queue);
            } else {
                let signals = self.signals.clone();
                let queue = queue.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    signals.wake(&queue);
                });
            }
        }
    }
}
