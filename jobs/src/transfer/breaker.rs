//! A circuit breaker per worker process for calls to Monime.
//!
//! Closed: calls go through and their outcomes fill a sliding time window. When the window
//! holds at least `min_calls` outcomes and at least `failure_rate` of them failed, the circuit
//! opens: no call goes out for `reset`, and the jobs that would have called are snoozed (no
//! attempt spent). After `reset`, one call is let through as a probe (half-open): success
//! closes the circuit, failure opens it again. Time is passed in, so tests need no clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_MIN_CALLS: usize = 20;
pub const DEFAULT_FAILURE_RATE: f64 = 0.5;
pub const DEFAULT_RESET: Duration = Duration::from_secs(5);
/// Outcomes kept at most, whatever the window (memory bound under heavy load).
const MAX_OUTCOMES: usize = 100_000;

pub const BREAKER_STATE: &str = "poda_transfer_breaker_state";
pub const BREAKER_OPENED: &str = "poda_transfer_breaker_opened_total";

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub window: Duration,
    pub min_calls: usize,
    pub failure_rate: f64,
    pub reset: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: DEFAULT_WINDOW,
            min_calls: DEFAULT_MIN_CALLS,
            failure_rate: DEFAULT_FAILURE_RATE,
            reset: DEFAULT_RESET,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// After the reset time: one probe call at a time.
    HalfOpen {
        probing: bool,
    },
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }
}

struct Inner {
    state: BreakerState,
    outcomes: VecDeque<(Instant, bool)>,
    failures: usize,
}

/// Shared by every transfer handler of the process. Cheap to clone.
#[derive(Clone)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
}

/// Leave to make one call. Record its outcome with [`Permit::record`]; dropping a probe's
/// permit without a record lets another call probe.
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        metrics::gauge!(BREAKER_STATE).set(0.0);
        Breaker {
            config,
            inner: Arc::new(Mutex::new(Inner {
                state: BreakerState::Closed,
                outcomes: VecDeque::new(),
                failures: 0,
            })),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// A permit to call now, or how long to hold back.
    pub fn acquire(&self) -> Result<Permit, Duration> {
        self.acquire_at(Instant::now())
    }

    pub fn acquire_at(&self, now: Instant) -> Result<Permit, Duration> {
        let mut inner = self.lock();
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open { until } if now < until => return Err(until - now),
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: false } => {
                inner.state = BreakerState::HalfOpen { probing: true };
                metrics::gauge!(BREAKER_STATE).set(inner.state.gauge());
                tracing::info!("Monime circuit half-open: one probe call");
                true
            }
            // Someone is probing: come back after about a reset period.
            BreakerState::HalfOpen { probing: true } => return Err(self.config.reset),
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        })
    }

    fn record_at(&self, now: Instant, probe: bool, success: bool) {
        let mut inner = self.lock();
        if probe {
            if success {
                inner.state = BreakerState::Closed;
                inner.outcomes.clear();
                inner.failures = 0;
                tracing::info!("Monime circuit closed: the probe call succeeded");
            } else {
                self.open(&mut inner, now, "the probe call failed");
            }
            metrics::gauge!(BREAKER_STATE).set(inner.state.gauge());
            return;
        }
        inner.outcomes.push_back((now, success));
        if !success {
            inner.failures += 1;
        }
        let horizon = now.checked_sub(self.config.window);
        while let Some(&(at, ok)) = inner.outcomes.front() {
            let stale = horizon.is_some_and(|h| at < h) || inner.outcomes.len() > MAX_OUTCOMES;
            if !stale {
                break;
            }
            inner.outcomes.pop_front();
            if !ok {
                inner.failures -= 1;
            }
        }
        let calls = inner.outcomes.len();
        if inner.state == BreakerState::Closed
            && calls >= self.config.min_calls
            && inner.failures as f64 >= self.config.failure_rate * calls as f64
        {
            let reason = format!("{} of the last {calls} calls failed", inner.failures);
            self.open(&mut inner, now, &reason);
            metrics::gauge!(BREAKER_STATE).set(inner.state.gauge());
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, reason: &str) {
        inner.state = BreakerState::Open {
            until: now + self.config.reset,
        };
        inner.outcomes.clear();
        inner.failures = 0;
        metrics::counter!(BREAKER_OPENED).increment(1);
        tracing::warn!(
            reset_ms = self.config.reset.as_millis() as u64,
            reason,
            "Monime circuit opened: transfer jobs are held back"
        );
    }

    fn release_probe(&self) {
        let mut inner = self.lock();
        if inner.state == (BreakerState::HalfOpen { probing: true }) {
            inner.state = BreakerState::HalfOpen { probing: false };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent counters; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Permit {
    pub fn record(self, success: bool) {
        self.record_at(Instant::now(), success)
    }

    pub fn record_at(mut self, now: Instant, success: bool) {
        self.recorded = true;
        self.breaker.record_at(now, self.probe, success);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_rate: 0.5,
            reset: Duration::from_secs(5),
        })
    }

    fn call(b: &Breaker, now: Instant, ok: bool) {
        b.acquire_at(now).expect("closed").record_at(now, ok);
    }

    #[test]
    fn breaker_stays_closed_when_failures_are_below_the_minimum_calls() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            call(&b, t, false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_opens_at_half_failures_then_probes_after_reset() {
        let b = breaker();
        let t = Instant::now();
        call(&b, t, true);
        call(&b, t, true);
        call(&b, t, false);
        assert_eq!(b.state(), BreakerState::Closed);
        call(&b, t, false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let wait = b
            .acquire_at(t + Duration::from_secs(1))
            .err()
            .expect("open");
        assert_eq!(wait, Duration::from_secs(4));
        // Half-open: one probe, the others wait.
        let probe = b.acquire_at(t + Duration::from_secs(5)).expect("probe");
        assert!(b.acquire_at(t + Duration::from_secs(5)).is_err());
        probe.record_at(t + Duration::from_secs(5), false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let probe = b.acquire_at(t + Duration::from_secs(10)).expect("probe");
        probe.record_at(t + Duration::from_secs(10), true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = breaker();
        let t = Instant::now();
        call(&b, t, false);
        call(&b, t, false);
        let later = t + Duration::from_secs(11);
        call(&b, later, true);
        call(&b, later, true);
        call(&b, later, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_dropped_probe_lets_another_call_probe() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            call(&b, t, false);
        }
        let probe = b.acquire_at(t + Duration::from_secs(6)).expect("probe");
        drop(probe);
        assert!(b.acquire_at(t + Duration::from_secs(6)).is_ok());
    }
}
