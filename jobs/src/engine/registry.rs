//! The jobs this process holds: claimed (waiting in a backend's buffer) or started. Lease
//! renewal renews exactly these, so a job whose outcome could not be written stops being
//! renewed and is rescued, and a forced shutdown knows which jobs never started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::job::JobId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub attempt: i32,
    pub started: bool,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<JobId, Held>>>,
}

impl Registry {
    pub fn hold_many(&self, jobs: impl IntoIterator<Item = (JobId, i32)>) {
        let mut map = self.inner.lock().expect("registry lock");
        for (id, attempt) in jobs {
            map.insert(
                id,
                Held {
                    attempt,
                    started: false,
                },
            );
        }
    }

    pub fn mark_started(&self, id: JobId) {
        if let Some(held) = self.inner.lock().expect("registry lock").get_mut(&id) {
            held.started = true;
        }
    }

    pub fn forget_many(&self, ids: impl IntoIterator<Item = JobId>) {
        let mut map = self.inner.lock().expect("registry lock");
        for id in ids {
            map.remove(&id);
        }
    }

    /// Every held job with its attempt, for lease renewal.
    pub fn snapshot(&self) -> Vec<(JobId, i32)> {
        let map = self.inner.lock().expect("registry lock");
        map.iter().map(|(id, held)| (*id, held.attempt)).collect()
    }

    /// Held jobs that never started, for release at shutdown.
    pub fn unstarted(&self) -> Vec<(JobId, i32)> {
        let map = self.inner.lock().expect("registry lock");
        map.iter()
            .filter(|(_, held)| !held.started)
            .map(|(id, held)| (*id, held.attempt))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
