//! Who woke a queue: for tests that keep NOTIFY out of durable commits
//! (docs/wake-after-commit.md).

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::db::Db;
use crate::engine::notify::NOTIFY_CHANNEL;

/// A session listening on the engine's wake-up channel.
pub async fn listen(pool: &Db) -> PgListener {
    let mut listener = PgListener::connect_with(pool.pool()).await.unwrap();
    listener.listen(NOTIFY_CHANNEL).await.unwrap();
    listener
}

/// Waits up to ten seconds for a wake-up of `queue` (skipping other queues'), and returns
/// the statement its sending session ran last, as `pg_stat_activity` shows it.
pub async fn next_wakeup_of(listener: &mut PgListener, pool: &Db, queue: &str) -> String {
    let sender = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let notification = listener.recv().await.unwrap();
            if notification.payload() == queue {
                return notification.process_id();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no wake-up of queue {queue} within ten seconds"));
    sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind(sender as i32)
        .fetch_one(pool)
        .await
        .unwrap()
}
