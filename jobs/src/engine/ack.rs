//! The backend's middleware: it wraps every run, turns the handler's result (or panic) into
//! an [`Action`](super::outcome::Action), hands it to the completer and frees the slot.
//!
//! It sits outside the user's middleware, so timeouts and other layer errors count as
//! failures of the run like any handler error. It also bounds every run by the queue's run
//! timeout: a run past it is dropped (its slot freed, its connections returned) and fails
//! as a retryable attempt, so no handler holds a job, a slot and a renewed lease forever.
//!
//! A run whose cancellation token fires (its job was cancelled while it ran) is given
//! [`CANCEL_GRACE`] to return by itself (handlers that await the token stop at once and may
//! write their last word), then dropped; its outcome is [`Action::Cancelled`], fenced by
//! its claim token like any other.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::task::Task;
use futures::future::BoxFuture;
use futures::FutureExt;
use tower::{Layer, Service};

use super::complete::{Completion, CompletionHandle};
use super::job::JobMeta;
use super::outcome::{decide, log_outcome, panic_message, Action};
use super::registry::RunCancel;
use super::retry::{BoxError, Outcome};
use super::slots::Slots;

#[derive(Clone)]
pub struct AckLayer {
    completer: CompletionHandle,
    slots: Arc<Slots>,
    run_timeout: Duration,
}

impl AckLayer {
    pub(super) fn new(
        completer: CompletionHandle,
        slots: Arc<Slots>,
        run_timeout: Duration,
    ) -> Self {
        AckLayer {
            completer,
            slots,
            run_timeout,
        }
    }
}

/// How long a cancelled run may take to return by itself before it is dropped.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// How a run ended under [`until_stopped`].
enum Stopped<T> {
    /// It returned before it was told to stop.
    Finished(T),
    /// It was told to stop: what it returned within the grace, or `None` if it was dropped.
    Cancelled(Option<T>),
}

/// Runs `run` to its end, or, once `cancel` fires, for at most [`CANCEL_GRACE`] more. The
/// run is polled first, and the signal is only waited on (boxed, outside this future) once
/// the run is pending: a run that is ready at once never looks at it, and every run's future
/// stays as small as it was without cancellation.
async fn until_stopped<F: std::future::Future>(cancel: &RunCancel, run: F) -> Stopped<F::Output> {
    tokio::pin!(run);
    let mut signal: Option<BoxFuture<'_, ()>> = None;
    let first_end = std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = run.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let signal = signal.get_or_insert_with(|| cancel.cancelled().boxed());
        signal.as_mut().poll(cx).map(|()| None)
    });
    if let Some(out) = first_end.await {
        return Stopped::Finished(out);
    }
    Stopped::Cancelled(tokio::time::timeout(CANCEL_GRACE, run).await.ok())
}

/// A run that went past its queue's run timeout.
#[derive(Debug, thiserror::Error)]
#[error("the run took longer than its timeout of {0:?} and was stopped")]
pub struct RunTimedOut(pub Duration);

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            completer: self.completer.clone(),
            slots: self.slots.clone(),
            run_timeout: self.run_timeout,
        }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    completer: CompletionHandle,
    slots: Arc<Slots>,
    run_timeout: Duration,
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Response: Into<Outcome>,
    S::Error: Into<BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let meta = task.data().get::<JobMeta>().cloned();
        let completer = self.completer.clone();
        let slots = self.slots.clone();
        let run_timeout = self.run_timeout;
        let cancel = meta.as_ref().map(|m| m.cancel.clone()).unwrap_or_default();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(task)));
        async move {
            let started = Instant::now();
            let mut was_cancelled = false;
            let result: Result<Result<Outcome, BoxError>, String> = match run {
                Ok(future) => {
                    let stoppable = until_stopped(&cancel, AssertUnwindSafe(future).catch_unwind());
                    match tokio::time::timeout(run_timeout, stoppable).await {
                        Ok(Stopped::Finished(Ok(result))) => Ok(result.map(Into::into).map_err(Into::into)),
                        Ok(Stopped::Finished(Err(panic))) => Err(panic_message(panic)),
                        Ok(Stopped::Cancelled(ended)) => {
                            was_cancelled = true;
                            match ended {
                                Some(Ok(result)) => Ok(result.map(Into::into).map_err(Into::into)),
                                Some(Err(panic)) => Err(panic_message(panic)),
                                // Dropped after the grace: the action below says cancelled.
                                None => Ok(Ok(Outcome::Done)),
                            }
                        }
                        Err(_) => Ok(Err(Box::new(RunTimedOut(run_timeout)) as BoxError)),
                    }
                }
                Err(panic) => Err(panic_message(panic)),
            };
            let Some(meta) = meta else {
                // Not a Poda job (no JobMeta): nothing to acknowledge.
                slots.release();
                return Ok(());
            };
            super::metrics::record_handler(&meta.queue, started.elapsed().as_secs_f64());
            // A cancelled run's job is no longer its claim: whatever it returned, record that.
            // (A run that returned before it heard of a cancel is fenced off by its claim token.)
            let action = if was_cancelled {
                Action::Cancelled
            } else {
                decide(&meta, result)
            };
            log_outcome(&meta, &action);
            super::metrics::record_outcome(&meta.queue, &action);
            let sent = completer
                .send(Completion {
                    id: meta.id,
                    token: meta.claim_token,
                    action,
                })
                .await;
            slots.release();
            if sent.is_err() {
                tracing::error!(job.id = %meta.id, "engine stopped before the outcome was recorded; the job will run again");
            }
            Ok(())
        }
        .boxed()
    }
}
