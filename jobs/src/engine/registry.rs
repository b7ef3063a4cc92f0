//! The runs this process holds: claimed (waiting in a backend's buffer) or started, each by
//! its job id and claim token. Lease renewal renews exactly these, so a run whose outcome
//! could not be written stops being renewed only when the process gives it up, and a
//! shutdown knows which runs never started.
//!
//! Entries are keyed by job id but matched by claim token: when the same process claims a
//! job again (after an operator cancelled and retried it), the new claim replaces the old
//! one, and the old run's late outcome neither forgets nor marks the new one.
//!
//! Each held run has a cancellation token, handed to its handler in `JobMeta`: [`Registry::cancel`]
//! fires it when the run stops being its job's claim (an operator's cancel, told by NOTIFY or
//! found by the poll of held jobs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::job::JobId;

#[derive(Debug, Clone)]
pub struct Held {
    pub token: i32,
    pub started: bool,
    /// Fired when this run is no longer its job's claim.
    pub cancel: CancellationToken,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<JobId, Held>>>,
}

impl Registry {
    /// Holds each (job, claim token): a newer claim of a job replaces an older one.
    pub fn hold_many(&self, claims: impl IntoIterator<Item = (JobId, i32)>) {
        let mut map = self.inner.lock().expect("registry lock");
        for (id, token) in claims {
            let held = map.entry(id).or_insert_with(|| Held {
                token,
                started: false,
                cancel: CancellationToken::new(),
            });
            if token > held.token {
                *held = Held {
                    token,
                    started: false,
                    cancel: CancellationToken::new(),
                };
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

    /// The cancellation token of run (job, claim token), if this process holds it.
    pub fn cancel_token(&self, id: JobId, token: i32) -> Option<CancellationToken> {
        let map = self.inner.lock().expect("registry lock");
        map.get(&id)
            .filter(|held| held.token == token)
            .map(|held| held.cancel.clone())
    }

    /// Tells run (job, claim token) to stop, if this process holds it; returns whether it did.
    /// A token of `None` matches any claim of the job.
    pub fn cancel(&self, id: JobId, token: Option<i32>) -> bool {
        let map = self.inner.lock().expect("registry lock");
        match map.get(&id) {
            Some(held) if token.is_none_or(|t| t == held.token) => {
                held.cancel.cancel();
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

    /// Every held run with its claim token, for lease renewal.
    pub fn snapshot(&self) -> Vec<(JobId, i32)> {
        let map = self.inner.lock().expect("registry lock");
        map.iter().map(|(id, held)| (*id, held.token)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_outcome_of_an_older_claim_does_not_forget_the_newer_one() {
        let registry = Registry::default();
        let job = JobId(7);
        registry.hold_many([(job, 1)]);
        registry.mark_started(job, 1);
        // The same process claims the job again (cancelled, retried, claimed).
        registry.hold_many([(job, 2)]);
        // The first run ends late: neither its start nor its outcome touch the second claim.
        registry.mark_started(job, 1);
        registry.forget_many([(job, 1)]);
        assert_eq!(registry.snapshot(), vec![(job, 2)]);
        assert_eq!(registry.unstarted(), vec![(job, 2)]);
        registry.forget_many([(job, 2)]);
        assert!(registry.is_empty());
    }

    #[test]
    fn cancelling_fires_only_the_claim_named() {
        let registry = Registry::default();
        let job = JobId(7);
        registry.hold_many([(job, 1)]);
        let first = registry.cancel_token(job, 1).unwrap();
        // A cancellation of another claim of the job (an older one) does not touch this run.
        assert!(!registry.cancel(job, Some(0)));
        assert!(!first.is_cancelled());
        assert!(registry.cancel(job, Some(1)));
        assert!(first.is_cancelled());
        // A newer claim gets a fresh token.
        registry.hold_many([(job, 2)]);
        assert!(!registry.cancel_token(job, 2).unwrap().is_cancelled());
        assert!(!registry.cancel(JobId(8), None));
    }
}
