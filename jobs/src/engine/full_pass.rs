//! When a maintenance pass reads its whole index range, and when only a window of it.
//!
//! The rescue (`jobs_running_idx`) and the straggler sweep (`jobs_claim_idx`) read ranges in
//! which every finished run or claimed job leaves an entry that vacuum removes later, or, while
//! a snapshot is held open elsewhere in the database, not at all. A full pass crosses them all;
//! a windowed pass reads only the recent part of the range. A full pass is still needed now and
//! then for what a window cannot see, so it runs at most once per period, and never more often
//! than a fixed multiple of its own last duration allows: its share of one connection stays
//! bounded however many entries a held snapshot keeps.

use std::time::{Duration, Instant};

/// The schedule of one loop's full passes.
#[derive(Debug, Clone)]
pub struct FullPasses {
    /// The least time between the starts of two full passes.
    period: Duration,
    /// A full pass that took `d` is followed by windowed passes for at least `d` × this.
    share: u32,
    /// When the next full pass is due (`None`: now).
    next: Option<Instant>,
}

impl FullPasses {
    pub fn new(period: Duration, share: u32) -> FullPasses {
        FullPasses {
            period,
            share,
            next: None,
        }
    }

    /// Whether a pass starting at `now` reads the whole range.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| next <= now)
    }

    /// Records a full pass that began at `began` and has just ended.
    pub fn ran(&mut self, began: Instant) {
        let took = began.elapsed();
        self.next = Some(began + self.period.max(took * self.share));
    }

    /// Makes the next pass a full one.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_is_full_and_the_next_full_one_waits_its_period() {
        let mut passes = FullPasses::new(Duration::from_secs(60), 20);
        let t0 = Instant::now();
        assert!(passes.due(t0));
        passes.ran(t0);
        assert!(!passes.due(t0 + Duration::from_secs(59)));
        assert!(passes.due(t0 + Duration::from_secs(60)));
        passes.reset();
        assert!(passes.due(t0));
    }

    #[test]
    fn a_slow_full_pass_waits_its_share_before_the_next() {
        let mut passes = FullPasses::new(Duration::ZERO, 100);
        let began = Instant::now() - Duration::from_millis(50);
        passes.ran(began);
        assert!(!passes.due(began + Duration::from_secs(4)));
        assert!(passes.due(began + Duration::from_secs(6)));
    }
}
