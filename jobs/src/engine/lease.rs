//! Lease renewal: while this process holds runs, their leases are pushed forward on a task of
//! their own, independent of fetching and of how busy the handlers are. Each renewal also
//! names the held runs that are no longer their job's claim, and their handlers are told to
//! stop; a process that does not LISTEN for cancellations checks that every poll interval
//! ([`run_cancel_watch`]).

use super::loops::Every;
use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use super::job::JobId;
use super::registry::Registry;

/// What one renewal found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// Leases pushed forward.
    pub renewed: u64,
    /// Runs that are no longer their job's claim (cancelled, finished, or taken over).
    pub lost: Vec<(JobId, i32)>,
}

/// Extends the leases of `claims` (job id, claim token) to now + `lease`; returns how many
/// were still held and which are lost (rescued or cancelled, and belonging to another run or
/// to none now).
pub async fn extend_leases(
    pool: &Db,
    claims: &[(JobId, i32)],
    lease: Duration,
) -> Result<Renewal, EngineError> {
    if claims.is_empty() {
        return Ok(Renewal::default());
    }
    let ids: Vec<i64> = claims.iter().map(|(id, _)| id.0).collect();
    let tokens: Vec<i32> = claims.iter().map(|(_, token)| *token).collect();
    let lease_ms = lease.as_millis() as i64;
    let rows = sqlx::query_file!("src/engine/extend_leases.sql", &ids, &tokens, lease_ms)
        .fetch_all(pool)
        .await?;
    Ok(Renewal {
        renewed: rows.iter().filter(|r| r.renewed).count() as u64,
        lost: rows
            .iter()
            .filter(|r| r.lost)
            .map(|r| (JobId(r.id), r.claim_token))
            .collect(),
    })
}

/// The runs among `claims` that are no longer their job's claim; reads only.
pub async fn lost_claims(
    pool: &Db,
    claims: &[(JobId, i32)],
) -> Result<Vec<(JobId, i32)>, EngineError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = claims.iter().map(|(id, _)| id.0).collect();
    let tokens: Vec<i32> = claims.iter().map(|(_, token)| *token).collect();
    let rows = sqlx::query_file!("src/engine/lost_claims.sql", &ids, &tokens)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (JobId(r.id), r.claim_token))
        .collect())
}

/// Tells the handlers of `lost` runs to stop.
fn stop_lost(registry: &Registry, lost: &[(JobId, i32)]) {
    for &(id, token) in lost {
        if registry.cancel(id, Some(token)) {
            tracing::debug!(job.id = %id, claim_token = token, "run is no longer its job's claim; telling its handler to stop");
        }
    }
}

/// Without LISTEN, finds each `interval` the held runs whose jobs were cancelled (or taken
/// over) and tells their handlers, until `stop`. One primary-key read per held run, no write.
pub async fn run_cancel_watch(
    pool: Db,
    registry: Registry,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut every = Every::new(interval, &stop);
    while every.tick().await {
        let held = registry.snapshot();
        if held.is_empty() {
            continue;
        }
        match tokio::time::timeout(interval, lost_claims(&pool, &held)).await {
            Ok(Ok(lost)) => stop_lost(&registry, &lost),
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "could not check held runs for cancellations")
            }
            Err(_) => tracing::debug!("checking held runs for cancellations timed out"),
        }
    }
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
    let mut every = Every::new(interval, &stop);
    let mut failing = false;
    while every.tick().await {
        fail::fail_point!("engine-heartbeat");
        let held = registry.snapshot();
        if held.is_empty() {
            continue;
        }
        let renewed = tokio::time::timeout(interval, extend_leases(&pool, &held, lease))
            .await
            .unwrap_or(Err(EngineError::Timeout("renewing leases")));
        match renewed {
            Ok(Renewal { renewed, lost }) => {
                stop_lost(&registry, &lost);
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
