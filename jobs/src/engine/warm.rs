//! Warming a new engine connection. Its first claim would otherwise pay for what the session
//! has not done yet: loading `jobs` and its indexes into the backend's caches, compiling and
//! planning the claim function, preparing the claim and the completion statements. That was
//! 2–7 ms on each of a worker's connections, and with jobs arriving one at a time those first
//! claims were the slowest 1 % of all (docs/plan-cache.md).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Runs the claim and the completion once on `conn`, for no job: nothing is claimed or written.
/// A failure is logged and otherwise ignored: warming only moves work, and a connection that
/// cannot run these statements fails its first real one with the same error.
pub async fn warm_up(conn: &mut PgConnection) {
    if let Err(error) = run(conn).await {
        tracing::debug!(error = %error, "warming an engine connection failed");
    }
}

async fn run(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query_file!(
        "src/engine/claim_batch.sql",
        "",
        0_i64,
        Uuid::nil(),
        0_i64,
        None::<DateTime<Utc>>,
    )
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query_file!(
        "src/engine/complete_many.sql",
        &[] as &[i64],
        &[] as &[i32],
        &[] as &[&str],
        &[] as &[Option<i64>],
        &[] as &[Option<&str>],
        &[] as &[bool],
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(())
}
