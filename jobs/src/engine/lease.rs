//! Lease renewal: while this process holds runs, their leases are pushed forward on a task of
//! their own, independent of fetching and of how busy the handlers are.

use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use super::job::JobId;
use super::registry::Registry;

/// Extends the leases of `claims` (job id, claim token) to now + `lease`; returns how many
/// were still held (the others were rescued or cancelled, and belong to another run now).
pub async fn extend_leases(
    pool: &Db,
    claims: &[(JobId, i32)],
    lease: Duration,
) -> Result<u64, EngineError> {
    if claims.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = claims.iter().map(|(id, _)| id.0).collect();
    let tokens: Vec<i32> = claims.iter().map(|(_, token)| *token).collect();
    let lease_ms = lease.as_millis() as i64;
    let result = sqlx::query_file!("src/engine/extend_leases.sql", &ids, &tokens, lease_ms)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

/// Renews every held run's lease each `interval` until `stop`. A renewal that does not
/// answer within the interval is abandoned (a half-open connection must not hold up the next
/// one); after a database outage the first renewal that gets through restores every lease
/// that was not rescued meanwhile, and the rescuers' grace after an outage (see
/// `maintenance::rescue`) gives it the time to.
pub async fn run_heartbeat(
    pool: Db,
    registry: Registry,
    lease: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        fail::fail_point!("engine-heartbeat");
        let held = registry.snapshot();
        if held.is_empty() {
            continue;
        }
        let renewed = tokio::time::timeout(interval, extend_leases(&pool, &held, lease))
            .await
            .unwrap_or(Err(EngineError::Timeout("renewing leases")));
        match renewed {
            Ok(renewed) => {
                if failing {
                    tracing::info!(held = held.len(), renewed, "lease renewal works again");
                    failing = false;
                }
                if renewed < held.len() as u64 {
                    tracing::debug!(
                        held = held.len(),
                        renewed,
                        "some runs are no longer their job's claim"
                    );
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(error = %error, held = held.len(), "lease renewal failed; trying again every heartbeat");
                }
                failing = true;
            }
        }
    }
}
