//! Handler slots of one backend, shared by the backend (which takes them when it hands out
//! a job) and the ack middleware (which frees them when a run ends).

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::task::AtomicWaker;

/// Handler slots of one backend: how many of its jobs run now, and who to wake when one ends.
#[derive(Default)]
pub struct Slots {
    in_flight: AtomicUsize,
    waker: AtomicWaker,
}

impl Slots {
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn take(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes `waker` when a slot frees up.
    pub(super) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// A job ended: free its slot and wake the backend, which may claim again.
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.waker.wake();
    }
}
