//! Where a queue's claims start (docs/claim-window.md).
//!
//! The claim index keeps an entry for every job claimed since the last vacuum, and while any
//! transaction in the database holds an old snapshot vacuum can remove none of them. A claim
//! that reads a priority from its start crosses them all, visiting each one's row to learn it
//! is no longer runnable: with a snapshot held for minutes at thousands of jobs a second,
//! every claim took longer than the jobs took to arrive.
//!
//! So a process remembers, per priority, the latest run_at it has claimed (its front), and
//! its claims read from the front less [`LOOKBACK`]. The lookback covers a job whose
//! enqueueing transaction began before jobs the front has passed and committed after: its
//! run_at is its transaction's start. A job made runnable further behind (a release at
//! shutdown, a rescue, a job scheduled in the past, a transaction open longer than the
//! lookback) is a straggler: the sweep ([`sweep_stragglers`]) finds it and moves its run_at to
//! now, in front of every claim.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::error::EngineError;
use crate::db::Db;

/// How far behind its front a claim reads. Every claim crosses the entries of the jobs claimed
/// within it, which a held snapshot keeps: at 2,000 jobs/s a second of them cost each claim
/// ~0.5 ms, so it covers an enqueueing transaction's usual length (a few ms, tens under load)
/// with room, and the sweep moves the rare longer one's jobs in front at its next run.
pub const LOOKBACK: Duration = Duration::from_millis(250);
/// Priorities 0 (most urgent) to 3.
const PRIORITIES: usize = 4;
/// Stragglers moved per statement.
const SWEEP_BATCH: i64 = 1_000;
/// The sweep waits at least this many times its last run's duration before the next, so its
/// share of one connection stays under 1/SWEEP_SHARE however slow it gets. Without a held
/// snapshot a sweep takes about a millisecond and runs every poll interval; with one, it
/// visits the rows behind every entry of [`SWEEP_HORIZON`] (~30 ms at 2,000 jobs/s), and a
/// sweep every ~6 s rather than every ~0.6 s keeps that I/O off the claims' and enqueues' tail.
pub const SWEEP_SHARE: u32 = 200;
/// A full sweep reads every entry behind the window, which a held snapshot keeps (every job
/// claimed since it was taken); the next full sweep waits at least this many times its
/// duration, and the sweeps between read only [`SWEEP_HORIZON`] behind the window.
pub const FULL_SWEEP_SHARE: u32 = 100;
/// How far behind the window a sweep between full ones reads: a job enqueued by a transaction
/// that was open up to this long, or rolled back that recently, is found within a poll.
pub const SWEEP_HORIZON: Duration = Duration::from_secs(10);

/// Per priority, the earliest run_at a claim reads; `None` reads that priority from its start.
pub type Starts = [Option<DateTime<Utc>>; PRIORITIES];

/// The claim fronts of one queue in one process.
#[derive(Debug, Default)]
pub struct ClaimWindow {
    fronts: Mutex<[Option<DateTime<Utc>>; PRIORITIES]>,
}

impl ClaimWindow {
    /// Where the next claim starts, per priority.
    pub fn starts(&self) -> Starts {
        let lookback = chrono::Duration::from_std(LOOKBACK).expect("the lookback fits");
        self.lock().map(|front| front.map(|at| at - lookback))
    }

    /// Moves the fronts to the latest run_at claimed in each priority (never backwards:
    /// claims of one queue may overlap).
    pub fn record(&self, claimed: impl IntoIterator<Item = (i16, DateTime<Utc>)>) {
        let mut fronts = self.lock();
        for (priority, run_at) in claimed {
            if let Some(front) = usize::try_from(priority)
                .ok()
                .and_then(|p| fronts.get_mut(p))
            {
                if *front < Some(run_at) {
                    *front = Some(run_at);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<DateTime<Utc>>; PRIORITIES]> {
        self.fronts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Moves every runnable job of `queue` behind the window's starts, and at most `horizon`
/// behind them (`None`: back to the queue's start), to run now, in front of them; returns
/// how many it moved.
pub async fn sweep_stragglers(
    pool: &Db,
    queue: &str,
    window: &ClaimWindow,
    horizon: Option<Duration>,
) -> Result<u64, EngineError> {
    let horizon = horizon.map(|h| chrono::Duration::from_std(h).expect("the horizon fits"));
    let mut moved = 0;
    for (priority, start) in window.starts().into_iter().enumerate() {
        let Some(start) = start else { continue };
        let from = horizon.map(|h| start - h);
        loop {
            let n = sqlx::query_file!(
                "src/engine/requeue_stragglers.sql",
                queue,
                priority as i16,
                start,
                SWEEP_BATCH,
                from,
            )
            .execute(pool)
            .await?
            .rows_affected();
            moved += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(second, 0).unwrap()
    }

    #[test]
    fn claims_start_a_lookback_behind_the_latest_run_at_claimed_per_priority() {
        let window = ClaimWindow::default();
        assert_eq!(window.starts(), [None; 4]);
        window.record([(1, at(100)), (1, at(105)), (3, at(50))]);
        // An overlapping claim that reports an earlier batch afterwards moves nothing back.
        window.record([(1, at(90))]);
        let lookback = chrono::Duration::from_std(LOOKBACK).unwrap();
        assert_eq!(
            window.starts(),
            [
                None,
                Some(at(105) - lookback),
                None,
                Some(at(50) - lookback)
            ]
        );
    }

    #[test]
    fn priorities_outside_the_range_are_ignored() {
        let window = ClaimWindow::default();
        window.record([(-1, at(1)), (4, at(2))]);
        assert_eq!(window.starts(), [None; 4]);
    }
}
