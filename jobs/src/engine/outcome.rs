//! What became of one run: the handler's result (or panic) decided into an [`Action`], and
//! actions as the outcome statements (`complete_many`, `finish_locked`) take them.

use std::time::Duration;

use super::job::JobMeta;
use super::retry::{BoxError, JobError, Outcome};

/// What became of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Complete,
    /// Back to available after `delay`, the attempt spent and the error kept.
    Retry {
        delay: Duration,
        error: String,
    },
    /// Terminal failure with the error kept.
    Fail {
        error: String,
    },
    /// Back to available after `delay` without spending the attempt.
    Snooze {
        delay: Duration,
    },
    /// Claimed but never started: back to available at once, attempt given back.
    Release,
    /// The run was told to stop because its job is no longer its claim (an operator cancelled
    /// it): `cancelled`, fenced like every outcome, so it only ever confirms what is there.
    Cancelled,
}

impl Action {
    /// Whether losing this outcome in a server crash would lose something the job cannot get
    /// back by running again: a retry's or a snooze's schedule, or a failure for good. Those
    /// are committed durably; a completion or a release may commit asynchronously.
    pub fn must_be_durable(&self) -> bool {
        matches!(
            self,
            Action::Retry { .. } | Action::Snooze { .. } | Action::Fail { .. }
        )
    }

    /// The outcome as the outcome statements take it: the new state, the delay before the job
    /// runs again in ms (None keeps run_at), the error to keep, and whether the attempt is
    /// given back.
    pub(super) fn as_columns(&self) -> (&'static str, Option<i64>, Option<&str>, bool) {
        let ms = |d: &Duration| Some(d.as_millis().min(i64::MAX as u128) as i64);
        match self {
            Action::Complete => ("completed", None, None, false),
            Action::Retry { delay, error } => ("available", ms(delay), Some(error.as_str()), false),
            Action::Fail { error } => ("failed", None, Some(error.as_str()), false),
            Action::Snooze { delay } => ("available", ms(delay), None, true),
            // From now: in front of every claim window, so other processes claim it at once.
            Action::Release => ("available", Some(0), None, true),
            Action::Cancelled => ("cancelled", None, None, false),
        }
    }
}

/// Outcomes as the outcome statements (`complete_many`, `finish_locked`) take them: one array
/// per column (their parameters $1..$6), one element per job.
pub(super) struct OutcomeColumns<'a> {
    pub ids: Vec<i64>,
    pub tokens: Vec<i32>,
    pub states: Vec<&'static str>,
    pub delays: Vec<Option<i64>>,
    pub errors: Vec<Option<&'a str>>,
    pub refunds: Vec<bool>,
}

impl<'a> OutcomeColumns<'a> {
    /// From (job id, claim token, action) triples.
    pub(super) fn new(outcomes: impl ExactSizeIterator<Item = (i64, i32, &'a Action)>) -> Self {
        let n = outcomes.len();
        let mut columns = OutcomeColumns {
            ids: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            delays: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            refunds: Vec::with_capacity(n),
        };
        for (id, token, action) in outcomes {
            let (state, delay, error, refund) = action.as_columns();
            columns.ids.push(id);
            columns.tokens.push(token);
            columns.states.push(state);
            columns.delays.push(delay);
            columns.errors.push(error);
            columns.refunds.push(refund);
        }
        columns
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
                    error: storable(error_chain(source.as_ref())),
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

/// The longest error text kept per attempt.
const MAX_ERROR_LEN: usize = 8 * 1024;

/// An error text Postgres can store (text and jsonb refuse NUL) and of a bounded length, so
/// that no handler's error can make its outcome impossible to write. Every error [`decide`]
/// records goes through it.
pub fn storable(mut error: String) -> String {
    if error.contains('\0') {
        error = error.replace('\0', "\u{FFFD}");
    }
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push('…');
    }
    error
}

fn retry_or_fail(
    meta: &JobMeta,
    error: String,
    retry_after: Option<std::time::Duration>,
) -> Action {
    let error = storable(error);
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

pub fn log_outcome(meta: &JobMeta, action: &Action) {
    match action {
        Action::Retry { delay, error } => tracing::warn!(
            job.id = %meta.id, job.queue = %meta.queue, job.kind = %meta.kind, job.attempt = meta.attempt,
            retry_in_ms = delay.as_millis() as u64, error = %error, "job failed; will retry"),
        Action::Fail { error } => tracing::error!(
            job.id = %meta.id, job.queue = %meta.queue, job.kind = %meta.kind, job.attempt = meta.attempt,
            error = %error, "job failed for good"),
        Action::Cancelled => tracing::info!(
            job.id = %meta.id, job.queue = %meta.queue, job.kind = %meta.kind, job.attempt = meta.attempt,
            "run stopped: its job was cancelled"),
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

pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_are_made_storable() {
        assert_eq!(storable("a\0b".into()), "a\u{FFFD}b");
        let long = "é".repeat(MAX_ERROR_LEN);
        let kept = storable(long);
        assert!(kept.len() <= MAX_ERROR_LEN + "…".len());
        assert!(kept.ends_with('…'));
        assert_eq!(storable("fine".into()), "fine");
    }
}
