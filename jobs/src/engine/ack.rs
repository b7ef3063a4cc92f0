//! The backend's middleware: it wraps every run, turns the handler's result (or panic) into
//! an [`Action`], hands it to the completer and frees the slot.
//!
//! It sits outside the user's middleware, so timeouts and other layer errors count as
//! failures of the run like any handler error.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use apalis_core::task::Task;
use futures::future::BoxFuture;
use futures::FutureExt;
use tower::{Layer, Service};

use super::backend::Slots;
use super::complete::{Action, Completion, CompletionHandle};
use super::job::JobMeta;
use super::retry::{BoxError, JobError, Outcome};

#[derive(Clone)]
pub struct AckLayer {
    completer: CompletionHandle,
    slots: Arc<Slots>,
}

impl AckLayer {
    pub(super) fn new(completer: CompletionHandle, slots: Arc<Slots>) -> Self {
        AckLayer { completer, slots }
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            completer: self.completer.clone(),
            slots: self.slots.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    completer: CompletionHandle,
    slots: Arc<Slots>,
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
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(task)));
        async move {
            let started = Instant::now();
            let result: Result<Result<Outcome, BoxError>, String> = match run {
                Ok(future) => match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(result) => Ok(result.map(Into::into).map_err(Into::into)),
                    Err(panic) => Err(panic_message(panic)),
                },
                Err(panic) => Err(panic_message(panic)),
            };
            let Some(meta) = meta else {
                // Not a Poda job (no JobMeta): nothing to acknowledge.
                slots.release();
                return Ok(());
            };
            super::metrics::record_handler(&meta.queue, started.elapsed().as_secs_f64());
            let action = decide(&meta, result);
            log_outcome(&meta, &action);
            super::metrics::record_outcome(&meta.queue, &action);
            let sent = completer
                .send(Completion {
                    id: meta.id,
                    attempt: meta.attempt,
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

/// Turns one run's result into what the database should record.
pub fn decide(meta: &JobMeta, result: Result<Result<Outcome, BoxError>, String>) -> Action {
    match result {
        Ok(Ok(Outcome::Done)) => Action::Complete,
        Ok(Ok(Outcome::Snooze(delay))) => Action::Snooze { delay },
        Ok(Err(error)) => match error.downcast::<JobError>() {
            Ok(job_error) => match *job_error {
                JobError::Permanent { source } => Action::Fail {
                    error: error_chain(source.as_ref()),
                },
                JobError::Retryable {
                    source,
                    retry_after,
                } => retry_or_fail(meta, error_chain(source.as_ref()), retry_after),
            },
            Err(other) => retry_or_fail(meta, error_chain(other.as_ref()), None),
        },
        Err(panic) => retry_or_fail(meta, format!("handler panicked: {panic}"), None),
    }
}

fn retry_or_fail(
    meta: &JobMeta,
    error: String,
    retry_after: Option<std::time::Duration>,
) -> Action {
    if meta.attempt >= meta.retry.max_attempts {
        Action::Fail {
            error: format!(
                "{error} (attempt {} of {}: no attempts left)",
                meta.attempt, meta.retry.max_attempts
            ),
        }
    } else {
        Action::Retry {
            delay: retry_after.unwrap_or_else(|| meta.retry.delay(meta.attempt)),
            error,
        }
    }
}

pub(super) fn log_outcome(meta: &JobMeta, action: &Action) {
    match action {
        Action::Retry { delay, error } => tracing::warn!(
            job.id = %meta.id, job.queue = %meta.queue, job.kind = %meta.kind, job.attempt = meta.attempt,
            retry_in_ms = delay.as_millis() as u64, error = %error, "job failed; will retry"),
        Action::Fail { error } => tracing::error!(
            job.id = %meta.id, job.queue = %meta.queue, job.kind = %meta.kind, job.attempt = meta.attempt,
            error = %error, "job failed for good"),
        _ => {}
    }
}

/// `error: cause: cause`, so the kept error says why, not only what.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub(super) fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
