//! The rescuer: makes jobs of dead workers runnable again. Every worker process runs it; the
//! bound on how long a killed worker's jobs wait is `lease + interval`.
//!
//! A lease runs out when its worker stops renewing it, but also when the *database* was away
//! (restarted, or the network to it cut) for longer than a lease: then every live worker's
//! leases have run out too, and the first rescuer back would take jobs whose handlers are
//! still running. So a rescuer only rescues after it has reached the database without a break
//! for a whole grace (the lease, by default), and the statement itself rescues nothing during
//! that grace after the server started. Live workers renew their leases within a heartbeat of
//! reconnecting, well inside the grace; dead ones cannot, and their jobs are rescued once the
//! grace has passed.
//!
//! Most passes read only the leases that ran out since the last complete pass (less an
//! overlap): every completed run leaves an entry in `jobs_running_idx` behind it, and while a
//! snapshot is held open elsewhere in the database none of them can be removed, so a pass
//! from the oldest lease would cross every run since the snapshot (at 2,000 runs/s, 150 ms
//! after three minutes, and growing). A full pass, from the oldest lease, runs first, after
//! any failure, and then every [`FULL_PASS_EVERY`] or twenty times its own last duration,
//! whichever is longer: it catches what a window cannot see, a lease written already expired
//! or a row that a statement which then rolled back held locked while the window passed.
//!
//! Every pass is bounded by the interval. A full pass also carries a bound to the server, a
//! little shorter, as its statements' `statement_timeout`, so one that outlasts it stops there
//! instead of holding a connection and a backend until the pool's own timeout. A full pass
//! cancelled by the server, or one that outlasted the interval while the database still
//! answers a probe, is given up, not counted as an outage: the windows go on, and the next
//! full pass comes as late as after a full pass that long. Under a snapshot held for hours a
//! full pass can outgrow any bound, and rescue must not stop with it.

use crate::engine::full_pass::FullPasses;
use crate::engine::loops::Every;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::db::Db;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::error::EngineError;
use crate::engine::notify::Signals;
use crate::sqlstate::is_query_canceled;

pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(5);
const RESCUE_BATCH: i64 = 1_000;

pub const DEFAULT_RESCUE_GRACE: Duration = Duration::from_secs(15);

/// How often a pass reads every expired lease, from the oldest, at least
/// ([`FullPasses`]).
pub const FULL_PASS_EVERY: Duration = Duration::from_secs(60);
/// A full pass that took `d` is followed by windowed passes for at least `d` × this.
const FULL_PASS_SHARE: u32 = 20;
/// A full pass's statements are cancelled by the server at this share of the interval, so
/// the cancellation reaches the rescuer before its own bound, the interval.
const SERVER_BOUND_SHARE: f64 = 0.8;
/// A windowed pass starts this long before the start of the last complete pass: a lease
/// whose claim or renewal committed a little late is still in range.
const WINDOW_OVERLAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct RescuerConfig {
    pub interval: Duration,
    /// How long the database must have been reachable without a break (and up since its
    /// start) before expired leases are rescued. At least the lease: live workers need a
    /// heartbeat after an outage to renew theirs.
    pub grace: Duration,
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: DEFAULT_RESCUE_INTERVAL,
            grace: DEFAULT_RESCUE_GRACE,
        }
    }
}

/// What one pass did, per queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RescueReport {
    pub requeued: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
}

impl RescueReport {
    pub fn total(&self) -> u64 {
        self.requeued.values().sum::<u64>() + self.failed.values().sum::<u64>()
    }
}

pub struct Rescuer {
    pool: Db,
    config: RescuerConfig,
}

impl Rescuer {
    pub fn new(config: RescuerConfig, pool: Db) -> Self {
        Rescuer { pool, config }
    }

    /// One full pass, in batches until no expired lease is left. `now` moves the clock for
    /// tests (`None`: the server's clock).
    pub async fn run_once(&self, now: Option<DateTime<Utc>>) -> Result<RescueReport, EngineError> {
        self.pass(now, None).await
    }

    /// One pass, in batches, over the leases that expired within `lookback` before `now`
    /// (all of them when `None`).
    pub async fn pass(
        &self,
        now: Option<DateTime<Utc>>,
        lookback: Option<Duration>,
    ) -> Result<RescueReport, EngineError> {
        self.pass_within(now, lookback, None).await
    }

    /// [`Rescuer::pass`], its statements cancelled by the server once `bound` has passed
    /// since it began (SQLSTATE 57014, see [`is_query_canceled`]); what earlier batches
    /// rescued stays rescued.
    pub async fn pass_within(
        &self,
        now: Option<DateTime<Utc>>,
        lookback: Option<Duration>,
        bound: Option<Duration>,
    ) -> Result<RescueReport, EngineError> {
        let began = Instant::now();
        let mut report = RescueReport::default();
        let grace_ms = self.config.grace.as_millis() as i64;
        let lookback_ms = lookback.map(|l| l.as_millis() as i64);
        loop {
            let batch = sqlx::query_file!(
                "src/engine/maintenance/rescue_expired.sql",
                now,
                RESCUE_BATCH,
                grace_ms,
                lookback_ms,
            );
            let rows = match bound {
                None => batch.fetch_all(&self.pool).await?,
                Some(bound) => {
                    // At least a millisecond: 0 would turn the timeout off.
                    let left_ms = bound.saturating_sub(began.elapsed()).as_millis().max(1);
                    let mut tx = self
                        .pool
                        .begin_with_settings(&format!("SET LOCAL statement_timeout = {left_ms}"))
                        .await?;
                    let rows = batch.fetch_all(&mut *tx).await?;
                    self.pool.commit(tx).await?;
                    rows
                }
            };
            for row in &rows {
                let bucket = if row.state == "failed" {
                    &mut report.failed
                } else {
                    &mut report.requeued
                };
                *bucket.entry(row.queue.clone()).or_default() += 1;
            }
            if (rows.len() as i64) < RESCUE_BATCH {
                return Ok(report);
            }
        }
    }

    pub async fn run(self, signals: Signals, stop: CancellationToken) {
        let mut every = Every::new(self.config.interval, &stop);
        // Since when the database has answered every pass promptly; None after a failure.
        let mut reachable_since: Option<Instant> = None;
        let mut passes = PassSchedule::default();
        while every.tick().await {
            let rescue = reachable_since.is_some_and(|since| since.elapsed() >= self.config.grace);
            let began = Instant::now();
            let lookback = passes.lookback(began);
            let full = rescue && lookback.is_none();
            // A full pass may only be slow: a snapshot held open elsewhere keeps every
            // finished run's index entry, and the pass crosses them all. The server stops it
            // a little before the interval, so that its cancellation arrives before the
            // client's bound. That bound stays the interval for every pass: a pass that
            // waited longer may have waited out a break longer than the leases' margin.
            let server_bound = full.then(|| self.config.interval.mul_f64(SERVER_BOUND_SHARE));
            let pass = async {
                if rescue {
                    self.pass_within(None, lookback, server_bound)
                        .await
                        .map(Some)
                } else {
                    self.probe().await.map(|()| None)
                }
            };
            let result = match tokio::time::timeout(self.config.interval, pass).await {
                Ok(Err(error)) if full && error.sqlx().is_some_and(is_query_canceled) => {
                    self.full_pass_given_up(&mut passes, began);
                    continue;
                }
                Ok(result) => result,
                // Silence from a slow pass (one that waited for a connection, say) or from a
                // database out of reach: a probe tells them apart.
                Err(_) if full && self.answers_promptly().await => {
                    self.full_pass_given_up(&mut passes, began);
                    continue;
                }
                Err(_) => Err(EngineError::Timeout("a rescue pass")),
            };
            // A pass bounded by the interval: one that waited longer for a connection may
            // have waited out an outage, and counts as one.
            if rescue {
                passes.finished(began, lookback, result.is_ok());
            }
            match result {
                Ok(report) => {
                    if reachable_since.is_none() {
                        tracing::info!(
                            grace_s = self.config.grace.as_secs(),
                            "database reachable; rescuing expired leases after the grace"
                        );
                        reachable_since = Some(Instant::now());
                    }
                    if let Some(report) = report.filter(|r| r.total() > 0) {
                        tracing::warn!(requeued = ?report.requeued, failed = ?report.failed,
                            "rescued jobs whose lease expired");
                        for (queue, n) in &report.requeued {
                            crate::engine::metrics::record_rescued(queue, *n);
                            signals.wake(queue);
                        }
                    }
                }
                Err(error) => {
                    if reachable_since.is_some() {
                        tracing::warn!(error = %error, "rescue pass failed; rescuing again only after the database has been reachable for the grace");
                    }
                    reachable_since = None;
                }
            }
        }
    }

    fn full_pass_given_up(&self, passes: &mut PassSchedule, began: Instant) {
        tracing::warn!(
            interval_ms = self.config.interval.as_millis() as u64,
            "a full rescue pass did not finish within the interval; windowed passes go on and the next full pass comes later"
        );
        passes.overran(began);
    }

    /// Whether the database answers a probe within the interval.
    async fn answers_promptly(&self) -> bool {
        matches!(
            tokio::time::timeout(self.config.interval, self.probe()).await,
            Ok(Ok(()))
        )
    }

    /// Whether the database answers.
    async fn probe(&self) -> Result<(), EngineError> {
        sqlx::query!("SELECT 1 AS \"one!\"")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}

/// Which leases the next pass reads: all of them (a full pass) or those that expired since
/// the last complete pass began, less [`WINDOW_OVERLAP`].
#[derive(Debug)]
struct PassSchedule {
    /// When the last pass that completed began.
    last_complete: Option<Instant>,
    full: FullPasses,
}

impl Default for PassSchedule {
    fn default() -> Self {
        PassSchedule {
            last_complete: None,
            full: FullPasses::new(FULL_PASS_EVERY, FULL_PASS_SHARE),
        }
    }
}

impl PassSchedule {
    /// The lookback of a pass beginning at `now`; `None` for a full pass.
    fn lookback(&self, now: Instant) -> Option<Duration> {
        let last = self.last_complete?;
        if self.full.due(now) {
            return None;
        }
        Some(now.saturating_duration_since(last) + WINDOW_OVERLAP)
    }

    /// Records a full pass that began at `began` and was given up unfinished while the
    /// database answered: the next full pass waits as long as after one that took this long,
    /// and windows go on from the last complete pass (from this one's start if none has
    /// completed), so expiries from now on are rescued whatever a full pass costs.
    fn overran(&mut self, began: Instant) {
        self.last_complete.get_or_insert(began);
        self.full.ran(began);
    }

    /// Records a pass that began at `began` with `lookback`; a failed one makes the next a
    /// full pass.
    fn finished(&mut self, began: Instant, lookback: Option<Duration>, ok: bool) {
        if !ok {
            self.last_complete = None;
            self.full.reset();
            return;
        }
        self.last_complete = Some(began);
        if lookback.is_none() {
            self.full.ran(began);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_is_full_then_windows_cover_since_the_last_complete_pass() {
        let mut passes = PassSchedule::default();
        let t0 = Instant::now();
        assert_eq!(passes.lookback(t0), None);
        passes.finished(t0, None, true);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            passes.lookback(t1),
            Some(Duration::from_secs(5) + WINDOW_OVERLAP)
        );
        passes.finished(t1, passes.lookback(t1), true);
        let t2 = t1 + Duration::from_secs(7);
        assert_eq!(
            passes.lookback(t2),
            Some(Duration::from_secs(7) + WINDOW_OVERLAP)
        );
    }

    #[test]
    fn a_failed_pass_makes_the_next_one_full() {
        let mut passes = PassSchedule::default();
        let t0 = Instant::now();
        passes.finished(t0, None, true);
        let t1 = t0 + Duration::from_secs(5);
        passes.finished(t1, passes.lookback(t1), false);
        assert_eq!(passes.lookback(t1 + Duration::from_secs(5)), None);
    }

    #[test]
    fn after_a_full_pass_overran_windows_go_on_and_the_next_full_pass_waits_its_share() {
        let mut passes = PassSchedule::default();
        let t0 = Instant::now() - Duration::from_secs(10);
        passes.finished(t0, None, true);
        // A full pass that began at t1 was given up 5 s later.
        let t1 = t0 + FULL_PASS_EVERY;
        let overran_at = Instant::now() - Duration::from_secs(5);
        passes.overran(overran_at);
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(
            passes.lookback(t2),
            Some(t2.saturating_duration_since(t0) + WINDOW_OVERLAP),
            "a window from the last complete pass"
        );
        let next_full = overran_at + Duration::from_secs(5) * FULL_PASS_SHARE;
        assert!(passes
            .lookback(next_full - Duration::from_secs(1))
            .is_some());
        assert_eq!(passes.lookback(next_full + Duration::from_secs(1)), None);
    }

    #[test]
    fn when_the_first_full_pass_overran_windows_start_from_it() {
        let mut passes = PassSchedule::default();
        let t0 = Instant::now() - Duration::from_secs(5);
        passes.overran(t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            passes.lookback(t1),
            Some(Duration::from_secs(10) + WINDOW_OVERLAP)
        );
    }

    #[test]
    fn a_full_pass_comes_round_again_after_its_period() {
        let mut passes = PassSchedule::default();
        let t0 = Instant::now();
        passes.finished(t0, None, true);
        let due = t0 + FULL_PASS_EVERY;
        assert!(passes.lookback(due - Duration::from_secs(1)).is_some());
        assert_eq!(passes.lookback(due), None);
    }
}
