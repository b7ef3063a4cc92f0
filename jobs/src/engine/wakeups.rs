//! Wake-ups sent after the jobs' own transaction has committed, from a transaction of their
//! own that commits asynchronously.
//!
//! A NOTIFY takes a server-wide lock at commit and holds it until its transaction ends, WAL
//! flush included: transactions that notify commit one at a time, across every database of
//! the server. A durable commit that notifies makes every other notifier wait for its flush,
//! and under a steady stream the enqueuer's group commit and the ticket batches queued on
//! each other there (docs/wake-after-commit.md). So the paths that commit durably and often
//! write their jobs without a NOTIFY (`poda_enqueue_many(…, wake => false)`,
//! [`super::insert_new_jobs`]) and hand the queue to [`Wakeups::wake`] once they have
//! committed. One statement at a time sends every queue named since the last one, on a
//! session with `synchronous_commit = off`, so the lock is held for the commit record alone.
//!
//! A wake-up is a hint: workers also poll, so one lost with a connection or a server crash
//! costs at most a poll interval.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::notify::NOTIFY_CHANNEL;
use crate::db::{Db, SessionSettings};

/// The wake-ups' session: nothing waits for their commit to reach the disk.
const SESSION: SessionSettings = &[("synchronous_commit", "off"), ("statement_timeout", "5s")];

/// A send that fails is logged and dropped; the next wake sends again.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Queues to wake once their jobs are committed. Cheap to clone.
#[derive(Clone)]
pub struct Wakeups {
    inner: Arc<Inner>,
}

struct Inner {
    /// Named since the last send.
    pending: Mutex<BTreeSet<String>>,
    signal: Notify,
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups {
            inner: Arc::new(Inner {
                pending: Mutex::default(),
                signal: Notify::new(),
            }),
        }
    }
}

impl Wakeups {
    /// Sends the wake-ups on a connection of its own (a sibling of `pool`) until `stop`. What
    /// is pending then is dropped, a send under way too: workers poll, so it costs them at
    /// most a poll interval, and a stop never waits on a database that does not answer.
    pub async fn run(self, pool: Db, stop: CancellationToken) {
        let pool = pool.sibling(1, SESSION);
        while stop
            .run_until_cancelled(self.send_next(&pool))
            .await
            .is_some()
        {}
        pool.close().await;
    }

    /// Waits for a wake and sends every queue named by then, in one statement.
    async fn send_next(&self, pool: &Db) {
        self.inner.signal.notified().await;
        let queues = self.take();
        if !queues.is_empty() {
            send(pool, &queues).await;
        }
    }

    /// Wakes `queue`'s workers: call it after the transaction that enqueued into it committed.
    pub fn wake(&self, queue: &str) {
        {
            let mut pending = self.inner.pending.lock().expect("wake-ups lock");
            if !pending.contains(queue) {
                pending.insert(queue.to_owned());
            }
        }
        // A permit is kept if the sender is busy: what arrives meanwhile goes in its next send.
        self.inner.signal.notify_one();
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.pending.lock().expect("wake-ups lock"))
            .into_iter()
            .collect()
    }
}

/// One statement: a NOTIFY per queue, committed by itself.
async fn send(pool: &Db, queues: &[String]) {
    let sent = tokio::time::timeout(
        SEND_TIMEOUT,
        sqlx::query_file!("src/engine/wake.sql", NOTIFY_CHANNEL, queues).fetch_one(pool),
    )
    .await;
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(error = %error, ?queues, "sending wake-ups failed; workers find the jobs at their next poll")
        }
        Err(_) => {
            tracing::warn!(?queues, timeout = ?SEND_TIMEOUT, "sending wake-ups timed out; workers find the jobs at their next poll")
        }
    }
}
