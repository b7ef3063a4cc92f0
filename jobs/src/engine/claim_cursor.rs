//! Where a batch queue's next claim starts.
//!
//! Runners that claim side by side each skip the rows the others hold locked, and the index
//! entries of rows just finished that are not yet cleaned up: with 3 runners of 200 jobs,
//! every claim stepped over a few hundred such rows before it found free ones. The cursor
//! remembers the last (priority, run_at, id) this process claimed in a full batch, and the
//! next claim starts after it within that priority; more and less urgent priorities are read
//! from their start, so an urgent job never waits behind the cursor.
//!
//! Rows can become runnable behind the cursor: a batch of another process rolled back, a job
//! whose enqueueing transaction committed after later ids were claimed, a job scheduled in the
//! past. So the cursor goes back whenever a claim comes back short (the queue has nothing
//! more above it) and at least every `rewind_every` (the poll interval): not to the start of
//! the queue, whose claimed entries a held snapshot keeps, but to the process's claim window
//! (a lookback behind the latest job claimed, [`super::claim_window`]), whose sweep moves
//! rows made runnable further behind in front of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::claim_window::ClaimWindow;

/// A claim's starting point: rows of the priority after (run_at, id); `None` is the start of
/// the queue.
pub type Position = Option<(i16, DateTime<Utc>, i64)>;

/// Per priority (element p for priority p), the (run_at, id) a claim reads after; `None`
/// reads that priority from its start.
pub type After = [Option<(DateTime<Utc>, i64)>; 4];

#[derive(Debug)]
pub struct ClaimCursor {
    rewind_every: Duration,
    window: Arc<ClaimWindow>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    position: Position,
    rewound_at: Instant,
}

impl ClaimCursor {
    pub fn new(rewind_every: Duration) -> Self {
        ClaimCursor {
            rewind_every,
            window: Arc::default(),
            state: Mutex::new(State {
                position: None,
                rewound_at: Instant::now(),
            }),
        }
    }

    /// Where the next claim starts.
    pub fn position(&self) -> Position {
        self.lock().position
    }

    /// Where the next claim starts, per priority: after the cursor in its priority, at the
    /// claim window's start in the others.
    pub fn after(&self) -> After {
        let position = self.position();
        let starts = self.window.starts();
        std::array::from_fn(|p| match position {
            Some((priority, run_at, id)) if usize::try_from(priority) == Ok(p) => {
                Some((run_at, id))
            }
            _ => starts[p].map(|start| (start, 0)),
        })
    }

    /// The claim window the cursor falls back to, for its straggler sweep.
    pub fn window(&self) -> &Arc<ClaimWindow> {
        &self.window
    }

    /// Records a claim that asked for `limit` rows and got `claimed` (their priority, run_at
    /// and id):
    /// a full batch moves the cursor past its last row (never backwards: runners claim side
    /// by side); a short one, or the rewind period running out, sends it back to the window.
    /// Either way the window's fronts move to what was claimed.
    pub fn record(&self, limit: usize, claimed: &[(i16, DateTime<Utc>, i64)], now: Instant) {
        self.window.record(
            claimed
                .iter()
                .map(|&(priority, run_at, _)| (priority, run_at)),
        );
        let mut state = self.lock();
        if claimed.len() < limit || now.duration_since(state.rewound_at) >= self.rewind_every {
            state.position = None;
            state.rewound_at = now;
            return;
        }
        let last = claimed.iter().copied().max();
        if last > state.position {
            state.position = last;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64, id: i64) -> (i16, DateTime<Utc>, i64) {
        (1, DateTime::from_timestamp(second, 0).unwrap(), id)
    }

    #[test]
    fn full_batches_move_the_cursor_forward_only() {
        let cursor = ClaimCursor::new(Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(cursor.position(), None);
        cursor.record(2, &[at(10, 5), at(10, 7)], now);
        assert_eq!(cursor.position(), Some(at(10, 7)));
        // A runner that read an older position reports an earlier batch afterwards.
        cursor.record(2, &[at(9, 1), at(9, 2)], now);
        assert_eq!(cursor.position(), Some(at(10, 7)));
        cursor.record(2, &[at(11, 3), at(10, 9)], now);
        assert_eq!(cursor.position(), Some(at(11, 3)));
    }

    #[test]
    fn a_short_claim_or_the_rewind_period_sends_the_cursor_back() {
        let cursor = ClaimCursor::new(Duration::from_secs(1));
        let start = Instant::now();
        cursor.record(2, &[at(10, 5), at(10, 7)], start);
        cursor.record(2, &[at(10, 8)], start);
        assert_eq!(cursor.position(), None, "a short claim rewinds");

        cursor.record(2, &[at(10, 5), at(10, 7)], start);
        cursor.record(
            2,
            &[at(12, 1), at(12, 2)],
            start + Duration::from_millis(1_500),
        );
        assert_eq!(
            cursor.position(),
            None,
            "full claims rewind once the period is over"
        );
        cursor.record(
            2,
            &[at(12, 3), at(12, 4)],
            start + Duration::from_millis(1_600),
        );
        assert_eq!(cursor.position(), Some(at(12, 4)));
    }

    #[test]
    fn claims_start_after_the_cursor_in_its_priority_and_at_the_window_elsewhere() {
        let cursor = ClaimCursor::new(Duration::from_secs(60));
        assert_eq!(
            cursor.after(),
            [None; 4],
            "nothing claimed: every priority from its start"
        );
        let now = Instant::now();
        cursor.record(
            2,
            &[(0, DateTime::from_timestamp(5, 0).unwrap(), 1), at(10, 7)],
            now,
        );
        let window = cursor.window().starts();
        assert_eq!(
            cursor.after(),
            [
                window[0].map(|s| (s, 0)),
                Some((at(10, 7).1, 7)),
                None,
                None
            ]
        );
        // A short claim rewinds the cursor to the window, not to the start of the queue.
        cursor.record(2, &[at(11, 8)], now);
        let window = cursor.window().starts();
        assert_eq!(cursor.after()[1], window[1].map(|s| (s, 0)));
        assert!(cursor.after()[1].is_some());
    }
}
