//! The long-running loops of a worker process (completer, heartbeat, rescuer, listener,
//! maintainer, batch runners, …), each spawned under a name and watched: a loop that ends
//! before it was told to stop (it returned, or it panicked) is dead. A process with a dead
//! loop is half alive (it may hold leases it no longer renews, or outcomes it no longer
//! writes), so the worker shuts down and exits non-zero when one dies, and its health check
//! names the dead ones meanwhile.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::outcome::panic_message;

/// The watched loops of one process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Loops {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    running: Mutex<Vec<Watched>>,
    dead: Mutex<Vec<String>>,
    broken: CancellationToken,
}

impl Inner {
    fn mark_dead(&self, name: String) {
        self.dead.lock().expect("loops lock").push(name);
        self.broken.cancel();
    }
}

struct Watched {
    name: String,
    abort: AbortHandle,
    /// Cancelled when the loop has ended, however it ended.
    ended: CancellationToken,
}

impl Loops {
    /// Spawns `body` as the loop `name`. It may end once `stop` is cancelled; ending (or
    /// panicking) before that marks it dead.
    pub fn spawn<F>(&self, name: impl Into<String>, stop: &CancellationToken, body: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let inner = self.inner.clone();
        let stop = stop.clone();
        let watched = name.clone();
        let ended = CancellationToken::new();
        let ended_on_drop = ended.clone().drop_guard();
        let handle = tokio::spawn(async move {
            let _ended_on_drop = ended_on_drop;
            let result = AssertUnwindSafe(body).catch_unwind().await;
            if stop.is_cancelled() {
                return;
            }
            match result {
                Ok(()) => tracing::error!(task = %watched, "a worker loop ended on its own"),
                Err(panic) => tracing::error!(task = %watched, panic = %panic_message(panic),
                    "a worker loop panicked"),
            }
            inner.mark_dead(watched);
        });
        self.inner
            .running
            .lock()
            .expect("loops lock")
            .push(Watched {
                name,
                abort: handle.abort_handle(),
                ended,
            });
    }

    /// Records that a loop run outside [`Loops::spawn`] (an apalis worker, say) died.
    pub fn mark_dead(&self, name: impl Into<String>) {
        self.inner.mark_dead(name.into());
    }

    /// The loops that died, by name.
    pub fn dead(&self) -> Vec<String> {
        self.inner.dead.lock().expect("loops lock").clone()
    }

    /// Returns once some loop has died.
    pub async fn broken(&self) {
        self.inner.broken.cancelled().await
    }

    /// Every loop's name.
    pub fn names(&self) -> Vec<String> {
        let running = self.inner.running.lock().expect("loops lock");
        running.iter().map(|w| w.name.clone()).collect()
    }

    /// Waits for the loops whose names start with `prefix` to end, and forgets them.
    pub async fn join(&self, prefix: &str) {
        let ended: Vec<CancellationToken> = {
            let running = self.inner.running.lock().expect("loops lock");
            running
                .iter()
                .filter(|w| w.name.starts_with(prefix))
                .map(|w| w.ended.clone())
                .collect()
        };
        for end in ended {
            end.cancelled().await;
        }
        self.forget(prefix, false);
    }

    /// Aborts the loops whose names start with `prefix`, and forgets them.
    pub fn abort(&self, prefix: &str) {
        self.forget(prefix, true);
    }

    fn forget(&self, prefix: &str, abort: bool) {
        let mut running = self.inner.running.lock().expect("loops lock");
        running.retain(|w| {
            let ours = w.name.starts_with(prefix);
            if ours && abort {
                w.abort.abort();
            }
            !ours
        });
    }
}

/// The pace of a periodic loop: a tick every `interval` (the first at once; a late one delays
/// the next rather than bunching up), until `stop`.
pub struct Every<'a> {
    ticker: tokio::time::Interval,
    stop: &'a CancellationToken,
}

impl<'a> Every<'a> {
    pub fn new(interval: std::time::Duration, stop: &'a CancellationToken) -> Every<'a> {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { ticker, stop }
    }

    /// Waits for the next tick: `true`, or `false` once the loop is told to stop.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.ticker.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_ends_before_its_stop_is_dead_and_one_that_stops_is_not() {
        let loops = Loops::default();
        let stop = CancellationToken::new();
        loops.spawn("stops", &stop, {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        let other = CancellationToken::new();
        loops.spawn("panics", &other, async { panic!("boom") });
        tokio::time::timeout(std::time::Duration::from_secs(5), loops.broken())
            .await
            .expect("the panicking loop breaks the set");
        assert_eq!(loops.dead(), vec!["panics".to_owned()]);
        stop.cancel();
        loops.join("stops").await;
        assert_eq!(loops.dead(), vec!["panics".to_owned()]);
        assert_eq!(loops.names(), vec!["panics".to_owned()]);
    }
}
