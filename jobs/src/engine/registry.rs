//! The runs this process holds: claimed (waiting in a backend's buffer) or started, each by
//! its job id and claim token. Lease renewal renews exactly these, so a run whose outcome
//! could not be written stops being renewed only when the process gives it up, and a
//! shutdown knows which runs never started.
//!
//! Each run remembers when the lease on its job's row was last written (no later than the
//! send of the claim or renewal that wrote it), so renewal writes only leases that are about
//! to need it ([`Registry::due_for_renewal`]).
//!
//! Entries are keyed by job id but matched by claim token: when the same process claims a
//! job again (after an operator cancelled and retried it), the new claim replaces the old
//! one, and the old run's late outcome neither forgets nor marks the new one.
//!
//! Each run's handler gets a [`RunCancel`] in `JobMeta`: [`Registry::cancel`] marks the run
//! when it stops being its job's claim (an operator's cancel, told by NOTIFY or found by the
//! poll of held jobs), and a run claimed again by this process under a newer token is no
//! longer its claim either. A cancellation token is made only for a run that waits on the
//! signal: most runs end before anything could cancel them, and a token per job (made,
//! looked up and dropped) costs the no-op drain about 8 % of its throughput.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::job::JobId;

#[derive(Debug, Clone)]
pub struct Held {
    pub token: i32,
    pub started: bool,
    /// The lease on the job's row was written at or after this instant.
    pub lease_set: Instant,
    /// The run is no longer its job's claim.
    pub cancelled: bool,
    /// Fired on cancel; made when the run first waits on its signal.
    pub waiter: Option<CancellationToken>,
}

impl Held {
    fn new(token: i32, lease_set: Instant) -> Held {
        Held {
            token,
            started: false,
            lease_set,
            cancelled: false,
            waiter: None,
        }
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<JobId, Held>>>,
}

impl Registry {
    /// Holds each (job, claim token) of a claim sent at `lease_set`: a newer claim of a job
    /// replaces an older one.
    pub fn hold_many(&self, claims: impl IntoIterator<Item = (JobId, i32)>, lease_set: Instant) {
        let mut map = self.inner.lock().expect("registry lock");
        for (id, token) in claims {
            let held = map.entry(id).or_insert_with(|| Held::new(token, lease_set));
            if token > held.token {
                // The older run (if it still runs) is no longer the claim: tell it.
                if let Some(waiter) = &held.waiter {
                    waiter.cancel();
                }
                *held = Held::new(token, lease_set);
            } else if token == held.token {
                held.started = false;
            }
        }
    }

    pub fn mark_started(&self, id: JobId, token: i32) {
        if let Some(held) = self.inner.lock().expect("registry lock").get_mut(&id) {
            if held.token == token {
                held.started = true;
            }
        }
    }

    /// Whether run (job, claim token) was told to stop, or is no longer the claim this
    /// process holds for its job. A run no longer held at all has ended: not cancelled.
    pub fn is_cancelled(&self, id: JobId, token: i32) -> bool {
        let map = self.inner.lock().expect("registry lock");
        map.get(&id)
            .is_some_and(|held| held.token != token || held.cancelled)
    }

    /// A token that fires when run (job, claim token) is told to stop (already fired if it
    /// was, or is no longer the claim); `None` for a run no longer held.
    fn waiter(&self, id: JobId, token: i32) -> Option<CancellationToken> {
        let mut map = self.inner.lock().expect("registry lock");
        let held = map.get_mut(&id)?;
        if held.token != token || held.cancelled {
            let fired = CancellationToken::new();
            fired.cancel();
            return Some(fired);
        }
        Some(
            held.waiter
                .get_or_insert_with(CancellationToken::new)
                .clone(),
        )
    }

    /// Tells run (job, claim token) to stop, if this process holds it; returns whether it did.
    /// A token of `None` matches any claim of the job.
    pub fn cancel(&self, id: JobId, token: Option<i32>) -> bool {
        let mut map = self.inner.lock().expect("registry lock");
        match map.get_mut(&id) {
            Some(held) if token.is_none_or(|t| t == held.token) => {
                held.cancelled = true;
                if let Some(waiter) = &held.waiter {
                    waiter.cancel();
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets each (job, claim token) that is still the one held.
    pub fn forget_many(&self, claims: impl IntoIterator<Item = (JobId, i32)>) {
        let mut map = self.inner.lock().expect("registry lock");
        for (id, token) in claims {
            if map.get(&id).is_some_and(|held| held.token == token) {
                map.remove(&id);
            }
        }
    }

    /// Every held run with its claim token.
    pub fn snapshot(&self) -> Vec<(JobId, i32)> {
        let map = self.inner.lock().expect("registry lock");
        map.iter().map(|(id, held)| (*id, held.token)).collect()
    }

    /// The held runs whose lease was last written before `set_before`: the ones to renew.
    pub fn due_for_renewal(&self, set_before: Instant) -> Vec<(JobId, i32)> {
        let map = self.inner.lock().expect("registry lock");
        map.iter()
            .filter(|(_, held)| held.lease_set < set_before)
            .map(|(id, held)| (*id, held.token))
            .collect()
    }

    /// Records that the leases of `claims` were written by a renewal sent at `at`.
    pub fn lease_renewed(&self, claims: &[(JobId, i32)], at: Instant) {
        let mut map = self.inner.lock().expect("registry lock");
        for (id, token) in claims {
            if let Some(held) = map.get_mut(id).filter(|held| held.token == *token) {
                held.lease_set = held.lease_set.max(at);
            }
        }
    }

    /// Held runs that never started, for release at shutdown.
    pub fn unstarted(&self) -> Vec<(JobId, i32)> {
        let map = self.inner.lock().expect("registry lock");
        map.iter()
            .filter(|(_, held)| !held.started)
            .map(|(id, held)| (*id, held.token))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run's cancellation signal, handed to its handler in `JobMeta::cancel`: it fires when the
/// run stops being its job's claim. Handing it out costs a reference count; a token is made
/// only when someone waits on it.
#[derive(Clone, Default)]
pub struct RunCancel(Source);

#[derive(Clone, Default)]
enum Source {
    /// A run nothing can cancel (a batch queue's, whose row locks make a cancel wait for it).
    #[default]
    Never,
    /// A run this process holds.
    Held {
        registry: Registry,
        id: JobId,
        token: i32,
    },
}

impl std::fmt::Debug for RunCancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunCancel")
            .field(&self.is_cancelled())
            .finish()
    }
}

impl RunCancel {
    /// A signal that never fires.
    pub fn never() -> RunCancel {
        RunCancel(Source::Never)
    }

    /// The signal of run (job, claim token) held in `registry`.
    pub fn held(registry: Registry, id: JobId, token: i32) -> RunCancel {
        RunCancel(Source::Held {
            registry,
            id,
            token,
        })
    }

    pub fn is_cancelled(&self) -> bool {
        match &self.0 {
            Source::Never => false,
            Source::Held {
                registry,
                id,
                token,
            } => registry.is_cancelled(*id, *token),
        }
    }

    /// Completes when the run is told to stop; never, for a run that cannot be or that has
    /// already ended.
    pub async fn cancelled(&self) {
        let token = match &self.0 {
            Source::Never => None,
            Source::Held {
                registry,
                id,
                token,
            } => registry.waiter(*id, *token),
        };
        match token {
            Some(token) => token.cancelled_owned().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_outcome_of_an_older_claim_does_not_forget_the_newer_one() {
        let registry = Registry::default();
        let job = JobId(7);
        registry.hold_many([(job, 1)], Instant::now());
        registry.mark_started(job, 1);
        // The same process claims the job again (cancelled, retried, claimed).
        registry.hold_many([(job, 2)], Instant::now());
        // The first run ends late: neither its start nor its outcome touch the second claim.
        registry.mark_started(job, 1);
        registry.forget_many([(job, 1)]);
        assert_eq!(registry.snapshot(), vec![(job, 2)]);
        assert_eq!(registry.unstarted(), vec![(job, 2)]);
        registry.forget_many([(job, 2)]);
        assert!(registry.is_empty());
    }

    #[test]
    fn only_leases_written_before_the_cut_are_due_and_a_renewal_moves_them_on() {
        let registry = Registry::default();
        let start = Instant::now();
        let later = start + std::time::Duration::from_secs(2);
        registry.hold_many([(JobId(1), 1)], start);
        registry.hold_many([(JobId(2), 1)], later);
        let cut = start + std::time::Duration::from_secs(1);
        assert_eq!(registry.due_for_renewal(cut), vec![(JobId(1), 1)]);
        // A renewal of another claim of the job does not count for the one held.
        registry.lease_renewed(&[(JobId(1), 0)], later);
        assert_eq!(registry.due_for_renewal(cut), vec![(JobId(1), 1)]);
        registry.lease_renewed(&[(JobId(1), 1)], later);
        assert!(registry.due_for_renewal(cut).is_empty());
        let mut due = registry.due_for_renewal(later + std::time::Duration::from_secs(1));
        due.sort();
        assert_eq!(due, vec![(JobId(1), 1), (JobId(2), 1)]);
    }

    #[test]
    fn cancelling_fires_only_the_claim_named() {
        let registry = Registry::default();
        let job = JobId(7);
        registry.hold_many([(job, 1)], Instant::now());
        let first = RunCancel::held(registry.clone(), job, 1);
        // A cancellation of another claim of the job (an older one) does not touch this run.
        assert!(!registry.cancel(job, Some(0)));
        assert!(!first.is_cancelled());
        assert!(registry.cancel(job, Some(1)));
        assert!(first.is_cancelled());
        // A newer claim starts afresh; the older run is no longer the claim.
        registry.hold_many([(job, 2)], Instant::now());
        assert!(!RunCancel::held(registry.clone(), job, 2).is_cancelled());
        assert!(first.is_cancelled());
        assert!(!registry.cancel(JobId(8), None));
        assert!(!RunCancel::never().is_cancelled());
    }

    #[tokio::test]
    async fn a_run_waiting_on_its_signal_wakes_when_cancelled() {
        let registry = Registry::default();
        let job = JobId(9);
        registry.hold_many([(job, 1)], Instant::now());
        let signal = RunCancel::held(registry.clone(), job, 1);
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.cancelled().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        registry.cancel(job, Some(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiting run is woken")
            .unwrap();
        // Once cancelled, waiting returns at once; a run no longer held never fires.
        signal.cancelled().await;
        registry.forget_many([(job, 1)]);
        assert!(!signal.is_cancelled());
    }
}
