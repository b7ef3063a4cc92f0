//! Lease renewal: while this process holds jobs, their leases are pushed forward on a task of
//! their own, independent of fetching and of how busy the handlers are.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::EngineError;
use super::job::JobId;
use super::registry::Registry;

/// Extends the leases of `jobs` held by `owner` to now + `lease`; returns how many were
/// still held (the others were rescued and belong to another attempt now).
pub async fn extend_leases(
    pool: &PgPool,
    owner: Uuid,
    jobs: &[(JobId, i32)],
    lease: Duration,
) -> Result<u64, EngineError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = jobs.iter().map(|(id, _)| id.0).collect();
    let attempts: Vec<i32> = jobs.iter().map(|(_, a)| *a).collect();
    let lease_ms = lease.as_millis() as i64;
    let result = sqlx::query_file!(
        "src/engine/extend_leases.sql",
        &ids,
        &attempts,
        owner,
        lease_ms,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Renews every held job's lease each `interval` until `stop`.
pub async fn run_heartbeat(
    pool: PgPool,
    owner: Uuid,
    registry: Registry,
    lease: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let held = registry.snapshot();
        if held.is_empty() {
            continue;
        }
        match extend_leases(&pool, owner, &held, lease).await {
            Ok(renewed) if renewed < held.len() as u64 => {
                tracing::debug!(
                    held = held.len(),
                    renewed,
                    "some leases were already taken over"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, held = held.len(), "lease renewal failed"),
        }
    }
}
