//! Injected faults: which create requests fail, and how.
//!
//! The choice is a deterministic hash of (seed, idempotency key, how many creates that key has
//! sent), so a run is reproducible and a key meets at most `max_per_key` faults: with a
//! transient fault rate r, about r of the transfers meet one fault, and none fails forever.

use std::hash::{Hash, Hasher};
use std::time::Duration;

/// How a request fails. The `After*` kinds happen after the transfer was executed: the caller
/// loses the answer, not the transfer, which is what idempotency keys are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// 429 with `Retry-After`, nothing executed.
    TooManyRequests,
    /// 500, nothing executed.
    ServerError,
    /// Executed, then 503.
    AfterUnavailable,
    /// Executed, then the answer takes `slow_for` (past the client's timeout).
    AfterSlow,
    /// Executed, then the connection is dropped mid-response.
    AfterReset,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::TooManyRequests,
        FaultKind::ServerError,
        FaultKind::AfterUnavailable,
        FaultKind::AfterSlow,
        FaultKind::AfterReset,
    ];

    pub fn executes_first(self) -> bool {
        matches!(
            self,
            FaultKind::AfterUnavailable | FaultKind::AfterSlow | FaultKind::AfterReset
        )
    }
}

#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Share of transfers (0.0..=1.0) whose create requests meet a transient fault.
    pub transient_rate: f64,
    /// Faults a key meets at most (its first creates); later creates succeed.
    pub max_per_key: u32,
    /// The kinds to draw from.
    pub kinds: Vec<FaultKind>,
    /// `Retry-After` of a 429, in seconds.
    pub retry_after_s: u64,
    /// How long a slow answer takes.
    pub slow_for: Duration,
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            transient_rate: 0.0,
            max_per_key: 1,
            kinds: FaultKind::ALL.to_vec(),
            retry_after_s: 1,
            slow_for: Duration::from_secs(15),
            seed: 0x5eed,
        }
    }
}

impl FaultConfig {
    /// The fault for create number `n` (0-based) of `key`, if any.
    pub fn pick(&self, key: &str, n: u32) -> Option<FaultKind> {
        if n >= self.max_per_key || self.kinds.is_empty() || self.transient_rate <= 0.0 {
            return None;
        }
        let h = hash(&(self.seed, key, n));
        let draw = (h % 1_000_000) as f64 / 1_000_000.0;
        // A key that draws a fault on its first create is "a faulty transfer"; its later
        // creates (up to max_per_key) fault with the same odds.
        if draw >= self.transient_rate {
            return None;
        }
        let kind = (hash(&(h, "kind")) % self.kinds.len() as u64) as usize;
        Some(self.kinds[kind])
    }
}

fn hash(value: &impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rate_is_close_to_the_configured_share_and_bounded_per_key() {
        let faults = FaultConfig {
            transient_rate: 0.2,
            max_per_key: 1,
            ..FaultConfig::default()
        };
        let hit = (0..10_000)
            .filter(|i| faults.pick(&format!("k{i}"), 0).is_some())
            .count();
        assert!((1_700..2_300).contains(&hit), "{hit}");
        assert!((0..1000).all(|i| faults.pick(&format!("k{i}"), 1).is_none()));
    }
}
