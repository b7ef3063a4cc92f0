//! Completion: outcomes of runs are written in batches, fenced by owner and attempt.
//!
//! Handlers hand their outcome to a [`CompletionHandle`] and free their slot at once; one task
//! per process gathers outcomes and writes each batch with one statement when the batch fills
//! or a few milliseconds after its first outcome. The channel is bounded, so a database that
//! falls behind slows handlers down instead of growing memory. [`CompletionHandle::flush`]
//! waits until everything sent before it is written (used at shutdown).

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

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
/// How long a batch is retried while the database is unreachable before it is given up;
/// its jobs then stop being renewed, and the rescuer runs them again.
const WRITE_RETRY_BUDGET: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: JobId,
    pub attempt: i32,
    pub action: Action,
}

/// Writes `completions` for `owner` in one statement; returns the ids that changed. Outcomes
/// for jobs no longer running under `owner` at that attempt are ignored.
pub async fn complete_many(
    pool: &PgPool,
    owner: Uuid,
    completions: &[Completion],
) -> Result<Vec<JobId>, EngineError> {
    Ok(write_outcomes(pool, owner, completions)
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

async fn write_outcomes(
    pool: &PgPool,
    owner: Uuid,
    completions: &[Completion],
) -> Result<Vec<Written>, EngineError> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let columns = OutcomeColumns::new(completions.iter().map(|c| (c.id.0, c.attempt, &c.action)));
    let changed = sqlx::query_file!(
        "src/engine/complete_many.sql",
        &columns.ids,
        &columns.attempts,
        &columns.states as &[&str],
        &columns.delays as &[Option<i64>],
        &columns.errors as &[Option<&str>],
        &columns.refunds,
        owner,
    )
    .fetch_all(pool)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| Written {
            id: JobId(row.id),
            queue: row.queue,
            runnable_again: row.runnable_again,
        })
        .collect())
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
/// it holds.
pub struct Completer {
    rx: mpsc::Receiver<Message>,
    pool: PgPool,
    owner: Uuid,
    registry: Registry,
    signals: Signals,
    /// Retries due within this long wake this process's idle workers when they are due.
    wake_within: Duration,
    config: CompleterConfig,
}

impl Completer {
    pub fn new(
        pool: PgPool,
        owner: Uuid,
        registry: Registry,
        signals: Signals,
        wake_within: Duration,
        config: CompleterConfig,
    ) -> (Self, CompletionHandle) {
        let (tx, rx) = mpsc::channel(config.backlog.max(1));
        (
            Completer {
                rx,
                pool,
                owner,
                registry,
                signals,
                wake_within,
                config,
            },
            CompletionHandle { tx },
        )
    }

    pub async fn run(mut self) {
        let mut batch: Vec<Completion> = Vec::with_capacity(self.config.batch);
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // Wait for the first message of a batch, then gather until full or the interval ends.
            let Some(first) = self.rx.recv().await else {
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

    async fn write(&self, batch: &mut Vec<Completion>) {
        if batch.is_empty() {
            return;
        }
        batch.sort_by_key(|c| c.id);
        let mut backoff = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_secs(5),
            max_elapsed_time: Some(WRITE_RETRY_BUDGET),
            ..Default::default()
        };
        loop {
            match write_outcomes(&self.pool, self.owner, batch).await {
                Ok(changed) => {
                    self.wake_for_runnable(batch, &changed);
                    let stale = batch.len() - changed.len();
                    if stale > 0 {
                        tracing::info!(
                            stale,
                            "ignored outcomes of jobs whose lease was taken over"
                        );
                    }
                    break;
                }
                Err(error) => match backoff::backoff::Backoff::next_backoff(&mut backoff) {
                    Some(wait) => {
                        tracing::warn!(error = %error, jobs = batch.len(), "writing job outcomes failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        tracing::error!(error = %error, jobs = batch.len(),
                            "giving up writing job outcomes; their leases will lapse and the jobs run again");
                        break;
                    }
                },
            }
        }
        self.registry.forget_many(batch.iter().map(|c| c.id));
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
