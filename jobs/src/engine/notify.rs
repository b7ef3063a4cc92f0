//! Wake-ups: enqueue sends one NOTIFY per queue per statement (the durable hot paths send it
//! after their commit instead, [`super::wakeups`]); a listener per process turns them into
//! per-queue signals. Workers also poll, so a lost notification (or no listener,
//! behind a transaction pooler without a direct listen URL) only costs the poll interval.
//! The listener keeps a session of its own, opened with a pool's connect options.
//!
//! The same session listens for cancellations: an operator's cancel of a running job sends
//! `<job id>:<claim token>` on [`CANCEL_CHANNEL`], and the listener hands it to the engine,
//! which tells that run's handler. Without a listener the engine polls its held runs instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel enqueue notifies, with the queue name as payload.
pub const NOTIFY_CHANNEL: &str = "poda_jobs";

/// The channel a cancel of a running job notifies, with `<job id>:<claim token>` as payload.
pub const CANCEL_CHANNEL: &str = "poda_cancel";

/// A cancellation's payload: the job id and the claim token of the run to stop.
pub fn parse_cancel(payload: &str) -> Option<(i64, i32)> {
    let (id, token) = payload.split_once(':')?;
    Some((id.parse().ok()?, token.parse().ok()?))
}

/// One queue's wake-up signal. The generation counter closes the gap between a claim that
/// found nothing and the wait that follows it: a notification in between is not lost.
#[derive(Default)]
pub struct QueueSignal {
    notify: Notify,
    generation: AtomicU64,
}

impl QueueSignal {
    pub fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Waits until woken after generation `seen`, or `timeout` passes.
    pub async fn wait_since(&self, seen: u64, timeout: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.generation() != seen {
            return;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}

/// The signals of every queue this process works.
#[derive(Clone)]
pub struct Signals {
    inner: Arc<Mutex<HashMap<String, Arc<QueueSignal>>>>,
    /// True while the listener is LISTENing.
    listening: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            inner: Arc::default(),
            listening: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Signals {
    /// Waits until the listener is LISTENing (notifications sent from then on are seen).
    pub async fn wait_listening(&self) {
        let mut rx = self.listening.subscribe();
        let _ = rx.wait_for(|listening| *listening).await;
    }

    pub fn get(&self, queue: &str) -> Arc<QueueSignal> {
        let mut map = self.inner.lock().expect("signals lock");
        map.entry(queue.to_owned()).or_default().clone()
    }

    pub fn wake(&self, queue: &str) {
        let signal = self.inner.lock().expect("signals lock").get(queue).cloned();
        if let Some(signal) = signal {
            signal.wake();
        }
    }

    pub fn wake_all(&self) {
        let all: Vec<_> = self
            .inner
            .lock()
            .expect("signals lock")
            .values()
            .cloned()
            .collect();
        for signal in all {
            signal.wake();
        }
    }
}

/// Listens on [`NOTIFY_CHANNEL`] and [`CANCEL_CHANNEL`] until `stop`, reconnecting with
/// exponential backoff. Each cancellation (job id, claim token) goes to `on_cancel`.
pub async fn run_listener(
    pool: PgPool,
    signals: Signals,
    on_cancel: impl Fn(i64, i32) + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let mut backoff = reconnect_backoff();
    loop {
        let listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = connect(&pool) => l,
        };
        match listener {
            Ok(mut listener) => {
                backoff = reconnect_backoff();
                signals.listening.send_replace(true);
                // Anything sent while we were not listening is picked up by this wake-up (and
                // cancellations by the next lease renewal, which names lost runs).
                signals.wake_all();
                loop {
                    let received = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = listener.try_recv() => r,
                    };
                    match received {
                        Ok(Some(n)) if n.channel() == CANCEL_CHANNEL => {
                            match parse_cancel(n.payload()) {
                                Some((id, token)) => on_cancel(id, token),
                                None => tracing::warn!(
                                    payload = n.payload(),
                                    "a cancellation that does not parse"
                                ),
                            }
                        }
                        Ok(Some(n)) => signals.wake(n.payload()),
                        Ok(None) => {
                            signals.listening.send_replace(false);
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            break;
                        }
                        Err(error) => {
                            signals.listening.send_replace(false);
                            tracing::warn!(error = %error, "LISTEN failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not LISTEN; workers poll meanwhile")
            }
        }
        let wait = backoff::backoff::Backoff::next_backoff(&mut backoff)
            .unwrap_or(Duration::from_secs(30));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Not a macro: LISTEN takes no parameter (the channel is an identifier), and PgListener sends it.
    listener
        .listen_all([NOTIFY_CHANNEL, CANCEL_CHANNEL])
        .await?;
    Ok(listener)
}

/// Reconnects within a few seconds of the database coming back (workers poll meanwhile).
fn reconnect_backoff() -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoff {
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(5),
        max_elapsed_time: None,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cancel;

    #[test]
    fn a_cancellation_names_a_job_and_a_claim() {
        assert_eq!(parse_cancel("42:3"), Some((42, 3)));
        assert_eq!(parse_cancel("42"), None);
        assert_eq!(parse_cancel("x:3"), None);
    }
}
