//! Poda's Postgres backend for apalis: each worker of a queue gets a [`PgBackend`], which
//! claims batches sized to its free handler slots and hands the jobs to the worker one by one.
//!
//! The backend only decides *when* to claim; claims, completions and leases are the engine's
//! (`claim`, `complete`, `lease`). The wait between claims is event-driven: a NOTIFY for the
//! queue, a slot freed after a full claim, or the poll interval as a fallback.
//!
//! A claim runs as a task of its own, tracked by the engine, and registers what it took as
//! soon as the statement returns: a claim whose backend stops being polled (apalis stops
//! polling while jobs run, and at shutdown) or is dropped still has its jobs held, renewed
//! and, at shutdown, released without spending an attempt.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ack::AckLayer;
use super::claim::{claim_batch_from, claim_batch_per_key};
use super::claim_window::{
    sweep_stragglers, ClaimWindow, FULL_SWEEP_SHARE, SWEEP_HORIZON, SWEEP_SHARE,
};
use super::complete::Completion;
use super::enqueue::enqueue_many_pooled;
use super::error::EngineError;
use super::full_pass::FullPasses;
use super::job::{ClaimedJob, JobId, JobMeta, NewJob};
use super::notify::QueueSignal;
use super::outcome::Action;
use super::registry::RunCancel;
use super::runtime::Engine;
use super::slots::Slots;

/// After a failed claim (database down), wait this long before the next one.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The settings of one queue's backend.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub queue: String,
    /// Handler slots: at most this many jobs run at once.
    pub concurrency: usize,
    /// At most this many jobs per claim statement. A claim asks for the free slots (plus the
    /// prefetch); slots that free up while a claim is on its way are taken by the next one.
    pub batch_size: usize,
    /// Jobs a claim may take beyond the free slots, to wait in the worker under lease (renewed,
    /// and released at shutdown). 0, the default, sizes claims to the free slots exactly, so a
    /// replica never holds jobs its peers could run; more trades that for fewer claims when
    /// jobs are very short.
    pub prefetch: usize,
    /// How long one run may take; past it the run is stopped and fails as a retryable
    /// attempt (see `ack`). Each job kind declares its own.
    pub run_timeout: Duration,
    /// At most this many jobs sharing a concurrency key run at once, across every process
    /// that claims with the same limit ([`super::claim::claim_batch_per_key`]); 0, the
    /// default, sets no limit.
    pub per_key_limit: u32,
}

/// The run timeout of a queue whose job kind does not declare one.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

pub struct PgBackend<Args> {
    engine: Engine,
    settings: BackendSettings,
    signal: Arc<QueueSignal>,
    slots: Arc<Slots>,
    buffer: VecDeque<ClaimedJob>,
    claiming: Option<Claim>,
    claim_size: usize,
    /// The signal's generation when the last claim started.
    seen_generation: u64,
    /// The last claim came back short: wait for a wake-up before claiming again.
    must_wait: bool,
    waiting: Option<BoxFuture<'static, ()>>,
    closing: Option<BoxFuture<'static, Result<(), EngineError>>>,
    /// Jobs pushed through apalis' sink, written by the next flush.
    outbox: Vec<NewJob>,
    flushing: Option<BoxFuture<'static, Result<(), EngineError>>>,
    /// Where this backend's claims start (not used by a queue with a per-key limit).
    window: Arc<ClaimWindow>,
    /// The watched loop that moves the queue's stragglers in front of the window; aborted
    /// with the backend.
    sweep: Option<String>,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> PgBackend<Args> {
    /// A backend for one apalis worker of `settings.queue`.
    pub fn new(engine: &Engine, settings: BackendSettings) -> Self {
        let engine = engine.clone();
        let signal = engine.signals().get(&settings.queue);
        let window = Arc::new(ClaimWindow::default());
        // A keyed claim reads its queue from the start: it counts running jobs per key.
        let sweep = (settings.per_key_limit == 0 && tokio::runtime::Handle::try_current().is_ok())
            .then(|| {
                let name = format!("claims:{}:sweep:{}", settings.queue, Uuid::new_v4());
                spawn_straggler_sweep(
                    &engine,
                    name.clone(),
                    &settings.queue,
                    &window,
                    engine.stopping_token(),
                );
                name
            });
        PgBackend {
            engine,
            settings: BackendSettings {
                concurrency: settings.concurrency.max(1),
                batch_size: settings.batch_size.max(1),
                ..settings
            },
            signal,
            slots: Arc::default(),
            buffer: VecDeque::new(),
            claiming: None,
            claim_size: 0,
            seen_generation: 0,
            must_wait: false,
            waiting: None,
            closing: None,
            outbox: Vec::new(),
            flushing: None,
            window,
            sweep,
            _args: PhantomData,
        }
    }

    fn start_claim(&mut self, limit: usize) {
        let engine = self.engine.clone();
        let queue = self.settings.queue.clone();
        let per_key = self.settings.per_key_limit;
        let window = self.window.clone();
        self.seen_generation = self.signal.generation();
        self.claim_size = limit;
        self.claiming = Some(self.engine.track_claim(async move {
            // The claim writes each lease after this instant, on the server's clock.
            let lease_set = std::time::Instant::now();
            let jobs = if per_key == 0 {
                claim_batch_from(
                    engine.pool(),
                    &queue,
                    limit,
                    engine.owner(),
                    engine.config().lease,
                    &window,
                )
                .await?
            } else {
                // Boxed: the keyed claim's transaction and rounds make a future of many
                // kilobytes. Inline, it would size every claim task of every queue, and each
                // spawn copies its task (one claim per job when jobs arrive one at a time).
                claim_batch_per_key(
                    engine.pool(),
                    &queue,
                    limit,
                    per_key,
                    engine.owner(),
                    engine.config().lease,
                    None,
                )
                .boxed()
                .await?
            };
            // Tests widen the window between a claim's commit and its jobs being handed over,
            // to signal the process inside it (`engine-claim-returned=1*return(MS)`).
            #[cfg(feature = "failpoints")]
            if !jobs.is_empty() {
                let pause = fail::eval("engine-claim-returned", |ms| ms?.parse::<u64>().ok());
                if let Some(Some(ms)) = pause {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
            }
            engine
                .registry()
                .hold_many(jobs.iter().map(|j| (j.id, j.token)), lease_set);
            super::metrics::record_claimed(&queue, jobs.len());
            Ok(jobs)
        }));
    }
}

/// Spawns the watched loop `name` that sweeps `queue`'s stragglers (jobs made runnable
/// behind `window`) until `stop`: every poll interval, or less often when a sweep is slow (a
/// held snapshot). Moved jobs wake this process's claims of the queue. Watched, because a
/// sweep that died would leave those jobs behind every claim for good.
pub(super) fn spawn_straggler_sweep(
    engine: &Engine,
    name: String,
    queue: &str,
    window: &Arc<ClaimWindow>,
    stop: CancellationToken,
) {
    let loops = engine.loops().clone();
    let (engine, queue, window, until) = (
        engine.clone(),
        queue.to_owned(),
        window.clone(),
        stop.clone(),
    );
    loops.spawn(name, &stop, async move {
        let mut pause = engine.config().poll_interval;
        let mut full_sweeps = FullPasses::new(Duration::ZERO, FULL_SWEEP_SHARE);
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = until.cancelled() => return,
            }
            let started = std::time::Instant::now();
            let full = full_sweeps.due(started);
            let horizon = (!full).then_some(SWEEP_HORIZON);
            match sweep_stragglers(engine.pool(), &queue, &window, horizon).await {
                Ok(0) => {}
                Ok(moved) => {
                    tracing::debug!(job.queue = %queue, moved, "moved stragglers in front of the claims");
                    engine.signals().wake(&queue);
                }
                Err(error) => {
                    tracing::warn!(job.queue = %queue, error = %error, "the straggler sweep failed");
                }
            }
            if full {
                full_sweeps.ran(started);
            }
            pause = engine
                .config()
                .poll_interval
                .max(started.elapsed() * SWEEP_SHARE);
        }
    });
}

/// Releases claimed jobs that will never start here, without spending their attempt.
async fn release(engine: &Engine, jobs: Vec<ClaimedJob>) -> Result<(), EngineError> {
    if !jobs.is_empty() {
        tracing::info!(jobs = jobs.len(), "releasing jobs that never started");
    }
    for job in jobs {
        engine
            .completer()
            .send(Completion {
                id: job.id,
                token: job.token,
                action: Action::Release,
            })
            .await?;
    }
    Ok(())
}

type Claim = JoinHandle<Result<Vec<ClaimedJob>, EngineError>>;

/// Gives back, without spending an attempt, what a backend claimed and never handed out:
/// its buffered jobs, and the jobs of a claim still on its way.
async fn give_back(
    engine: Engine,
    mut unstarted: Vec<ClaimedJob>,
    claiming: Option<Claim>,
) -> Result<(), EngineError> {
    if let Some(claiming) = claiming {
        if let Ok(Ok(jobs)) = claiming.await {
            unstarted.extend(jobs);
        }
    }
    release(&engine, unstarted).await
}

/// A backend dropped without being closed (its worker restarted after a failure) gives back
/// what it claimed and never handed out.
impl<Args> Drop for PgBackend<Args> {
    fn drop(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            self.engine.loops().abort(&sweep);
        }
        if self.buffer.is_empty() && self.claiming.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let unstarted = give_back(
            self.engine.clone(),
            self.buffer.drain(..).collect(),
            self.claiming.take(),
        );
        runtime.spawn(async move {
            if let Err(error) = unstarted.await {
                tracing::warn!(error = %error, "could not release the jobs of a dropped backend; they run again after their lease");
            }
        });
    }
}

impl<Args: DeserializeOwned + Send + Sync + Clone + 'static> PgBackend<Args> {
    /// Decodes a claimed job into an apalis task. A payload that does not decode fails its
    /// job for good instead of stopping the worker.
    fn task_from(&self, job: ClaimedJob) -> Option<Task<Args>> {
        match serde_json::from_value::<Args>(job.payload) {
            Ok(args) => {
                let cancel = RunCancel::held(self.engine.registry().clone(), job.id, job.token);
                let meta = JobMeta {
                    id: job.id,
                    queue: job.queue,
                    kind: job.kind,
                    attempt: job.attempt,
                    claim_token: job.token,
                    retry: job.retry,
                    cancel,
                };
                Some(
                    TaskBuilder::new(args)
                        .task_id(TaskId::from_int(job.id.0 as u64))
                        .max_attempts(job.retry.max_attempts as usize)
                        .data(meta)
                        .build(),
                )
            }
            Err(error) => {
                tracing::error!(job.id = %job.id, job.queue = %job.queue, error = %error,
                    "payload does not decode; failing the job");
                let completer = self.engine.completer().clone();
                let completion = Completion {
                    id: job.id,
                    token: job.token,
                    action: Action::Fail {
                        error: format!(
                            "payload does not decode as {}: {error}",
                            std::any::type_name::<Args>()
                        ),
                    },
                };
                tokio::spawn(async move { completer.send(completion).await });
                None
            }
        }
    }
}

impl<Args: DeserializeOwned + Send + Sync + Clone + 'static> Backend for PgBackend<Args> {
    type Task = Task<Args>;
    type Error = EngineError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.engine.is_stopping() {
            // Shutting down: nothing more starts and nothing more is claimed; what this
            // backend holds is released when apalis closes it (or by the engine's shutdown).
            return Poll::Pending;
        }
        loop {
            // 1. Hand out what was claimed, into free slots only.
            if !self.buffer.is_empty() && self.slots.in_flight() >= self.settings.concurrency {
                self.slots.register(cx.waker());
                if self.slots.in_flight() < self.settings.concurrency {
                    continue;
                }
                return Poll::Pending;
            }
            if let Some(job) = self.buffer.pop_front() {
                let (id, token): (JobId, i32) = (job.id, job.token);
                if let Some(task) = self.task_from(job) {
                    self.slots.take();
                    self.engine.registry().mark_started(id, token);
                    return Poll::Ready(Some(Ok(task)));
                }
                continue;
            }
            // 2. A claim is under way.
            if let Some(claiming) = self.claiming.as_mut() {
                match claiming.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Ok(jobs))) => {
                        self.claiming = None;
                        self.must_wait = jobs.len() < self.claim_size;
                        self.buffer.extend(jobs);
                    }
                    Poll::Ready(Ok(Err(error))) => {
                        self.claiming = None;
                        tracing::warn!(job.queue = %self.settings.queue, error = %error, "claim failed");
                        self.waiting = Some(tokio::time::sleep(CLAIM_ERROR_PAUSE).boxed());
                    }
                    Poll::Ready(Err(error)) => {
                        self.claiming = None;
                        tracing::error!(job.queue = %self.settings.queue, error = %error, "claim task failed");
                        self.waiting = Some(tokio::time::sleep(CLAIM_ERROR_PAUSE).boxed());
                    }
                }
                continue;
            }
            // 3. Waiting for a wake-up (or after an error).
            if let Some(waiting) = self.waiting.as_mut() {
                match waiting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        self.waiting = None;
                        self.must_wait = false;
                    }
                }
                continue;
            }
            // 4. Claim only into free slots.
            let free = self
                .settings
                .concurrency
                .saturating_sub(self.slots.in_flight());
            if free == 0 {
                self.slots.register(cx.waker());
                if self.settings.concurrency > self.slots.in_flight() {
                    continue;
                }
                return Poll::Pending;
            }
            if self.must_wait {
                let signal = self.signal.clone();
                let seen = self.seen_generation;
                let poll_interval = self.engine.config().poll_interval;
                self.waiting =
                    Some(async move { signal.wait_since(seen, poll_interval).await }.boxed());
                continue;
            }
            self.start_claim((free + self.settings.prefetch).min(self.settings.batch_size));
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            let unstarted = give_back(
                self.engine.clone(),
                self.buffer.drain(..).collect(),
                self.claiming.take(),
            );
            let completer = self.engine.completer().clone();
            self.closing = Some(
                async move {
                    unstarted.await?;
                    completer.flush().await
                }
                .boxed(),
            );
        }
        let closing = self.closing.as_mut().expect("closing was just set");
        closing.poll_unpin(cx)
    }
}

impl<Args> BackendConfig for PgBackend<Args> {
    type Args = Args;
    type Id = JobId;
    type Kind = Ephemeral;
    type Config = BackendSettings;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &self.settings
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        AckLayer::new(
            self.engine.completer().clone(),
            self.slots.clone(),
            self.settings.run_timeout,
        )
    }
}

/// apalis' sink (and so `TaskSink::push`, `push_bulk`): tasks are buffered and written by the
/// flush with one `enqueue_many` statement in this backend's queue, kind = queue name.
impl<Args: Serialize> futures::Sink<Task<Args>> for PgBackend<Args> {
    type Error = EngineError;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: std::pin::Pin<&mut Self>, task: Task<Args>) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let mut job = NewJob::new(
            this.settings.queue.clone(),
            this.settings.queue.clone(),
            serde_json::to_value(&task.args)?,
        );
        if let Some(key) = task.idempotency_key() {
            job = job.with_unique_key(key);
        }
        if let Some(max) = task.max_attempts() {
            job.retry.max_attempts = max.min(i32::MAX as usize) as i32;
        }
        if let Some(at) = task
            .run_at()
            .and_then(|secs| chrono::DateTime::from_timestamp(secs as i64, 0))
        {
            job = job.with_run_at(at);
        }
        this.outbox.push(job);
        Ok(())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.flushing.is_none() {
            if this.outbox.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let jobs = std::mem::take(&mut this.outbox);
            let pool = this.engine.pool().clone();
            this.flushing =
                Some(async move { enqueue_many_pooled(&pool, &jobs).await.map(|_| ()) }.boxed());
        }
        let result = futures::ready!(this
            .flushing
            .as_mut()
            .expect("flushing was just set")
            .poll_unpin(cx));
        this.flushing = None;
        Poll::Ready(result)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        self.poll_flush(cx)
    }
}
