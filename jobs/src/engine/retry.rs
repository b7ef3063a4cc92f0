//! What a handler can say about a run, and the durable retry schedule.
//!
//! The schedule is our own pure function rather than the `backoff` crate's
//! `ExponentialBackoff`: that type is a stateful iterator (the n-th delay needs n calls) with
//! wall-clock bookkeeping, while a durable retry needs "the delay after attempt n" from a
//! policy stored with the job, computed in one call by whichever process sees the failure.
//! The `backoff` crate is used where in-memory retrying is right: reconnecting the listener.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Each delay is spread uniformly over ±JITTER of its nominal value, so jobs that failed
/// together do not come back together.
pub const JITTER: f64 = 0.2;

/// How often a job may run and how long it waits between failed attempts: the delay after
/// attempt n is `base · 2^(n−1)`, capped at `max`, with ±20 % jitter. Stored with each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl RetryPolicy {
    pub const fn new(max_attempts: i32, base: Duration, max: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            base,
            max,
        }
    }

    /// The policy as a job row stores it (`max_attempts`, `backoff_base_ms`, `backoff_max_ms`;
    /// the table's checks keep the delays non-negative).
    pub fn from_row(max_attempts: i32, backoff_base_ms: i32, backoff_max_ms: i32) -> Self {
        let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
        RetryPolicy::new(max_attempts, ms(backoff_base_ms), ms(backoff_max_ms))
    }

    /// The nominal delay after `attempt` failed (1-based), before jitter.
    pub fn nominal_delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let factor = 1u32 << exponent;
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay after `attempt` failed, with jitter.
    pub fn delay(&self, attempt: i32) -> Duration {
        let nominal = self.nominal_delay(attempt).as_secs_f64();
        let spread = rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER);
        Duration::from_secs_f64(nominal * spread)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts < 1 {
            return Err(format!(
                "max_attempts must be at least 1, not {}",
                self.max_attempts
            ));
        }
        if self.max < self.base {
            return Err("the backoff cap is below its base".into());
        }
        if self.max.as_millis() > i32::MAX as u128 {
            return Err("the backoff cap is longer than 24 days".into());
        }
        Ok(())
    }
}

/// A handler's success: done, or come back later without spending an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Reschedule after the delay; the attempt is given back (polling a provider, holding
    /// back while a circuit is open).
    Snooze(Duration),
}

impl From<()> for Outcome {
    fn from(_: ()) -> Self {
        Outcome::Done
    }
}

/// A handler's failure. Any other error a handler returns counts as retryable.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again: after `retry_after` if given (a provider's `Retry-After`), else per the
    /// job's schedule. Spends an attempt; the last attempt fails the job for good.
    #[error("{source}")]
    Retryable {
        #[source]
        source: BoxError,
        retry_after: Option<Duration>,
    },
    /// Do not try again: the job fails for good with this error kept.
    #[error("{source}")]
    Permanent {
        #[source]
        source: BoxError,
    },
}

impl JobError {
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        JobError::Retryable {
            source: source.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(source: impl Into<BoxError>, delay: Duration) -> Self {
        JobError::Retryable {
            source: source.into(),
            retry_after: Some(delay),
        }
    }

    pub fn permanent(source: impl Into<BoxError>) -> Self {
        JobError::Permanent {
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_delay_doubles_from_base_up_to_the_cap() {
        let policy = RetryPolicy::new(10, Duration::from_secs(2), Duration::from_secs(20));
        let delays: Vec<u64> = (1..=6).map(|a| policy.nominal_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 20, 20]);
    }

    #[test]
    fn delay_stays_within_jitter_of_nominal() {
        let policy = RetryPolicy::new(10, Duration::from_secs(2), Duration::from_secs(3600));
        for attempt in 1..=5 {
            let nominal = policy.nominal_delay(attempt).as_secs_f64();
            for _ in 0..200 {
                let d = policy.delay(attempt).as_secs_f64();
                assert!(
                    d >= nominal * (1.0 - JITTER) - 1e-9 && d <= nominal * (1.0 + JITTER) + 1e-9
                );
            }
        }
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.nominal_delay(i32::MAX), DEFAULT_BACKOFF_MAX);
        assert_eq!(policy.nominal_delay(0), DEFAULT_BACKOFF_BASE);
    }
}
