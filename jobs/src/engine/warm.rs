//! Warming a new engine connection. Its first claim would otherwise pay for what the session
//! has not done yet: loading `jobs` and its indexes into the backend's caches, compiling and
//! planning the claim function, preparing the claim and the completion statements. That was
//! 2–7 ms on each of a worker's connections, and with jobs arriving one at a time those first
//! claims were the slowest 1 % of all (docs/plan-cache.md).

use sqlx::PgConnection;

use super::{claim, complete};

/// Runs the claim and the completion once on `conn`, for no job: nothing is claimed or written.
/// A failure is logged and otherwise ignored: warming only moves work, and a connection that
/// cannot run these statements fails its first real one with the same error.
pub async fn warm_up(conn: &mut PgConnection) {
    let warmed = async {
        claim::claim_nothing(conn).await?;
        complete::complete_nothing(conn).await
    };
    if let Err(error) = warmed.await {
        tracing::debug!(error = %error, "warming an engine connection failed");
    }
}
