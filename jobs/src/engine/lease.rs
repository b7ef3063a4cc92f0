//! Lease renewal: while this process holds runs, their leases are pushed forward on a task of
//! their own, independent of fetching and of how busy the handlers are. A heartbeat renews
//! only the leases that would otherwise run out within [`RENEW_AHEAD`] heartbeats: a run
//! shorter than what that leaves (half an interval with the default third of the lease)
//! never writes its job's row between its claim and its outcome. Each renewal also names the
//! renewed runs that are no longer their job's claim, and their handlers are told to stop; a
//! process that does not LISTEN for cancellations checks every held run each poll interval
//! ([`run_cancel_watch`]).

use super::loops::Every;
use std::time::{Duration, Instant};

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use super::job::JobId;
use super::registry::Registry;

/// A heartbeat renews a lease that would run out within this many heartbeat intervals:
/// left alone, it is renewed by the next heartbeat, whose statement may take up to one
/// interval, and still has half an interval to spare.
pub const RENEW_AHEAD: f64 = 2.5;

/// What one renewal found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The runs whose leases were pushed forward.
    pub renewed: Vec<(JobId, i32)>,
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
        renewed: rows
            .iter()
            .filter(|r| r.renewed)
            .map(|r| (JobId(r.id), r.claim_token))
            .collect(),
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

/// The instant before which a lease written then runs out within [`RENEW_AHEAD`]
/// heartbeats of `now`: `now` itself (every lease due) for a lease no longer than that, or
/// when the clock cannot go back that far.
fn renew_cut(now: Instant, lease: Duration, interval: Duration) -> Instant {
    now.checked_sub(lease.saturating_sub(interval.mul_f64(RENEW_AHEAD)))
        .unwrap_or(now)
}

/// Each `interval` until `stop`, renews the leases of the held runs that would otherwise run
/// out within [`RENEW_AHEAD`] intervals. A renewal that does not answer within the interval
/// is abandoned (a half-open connection must not hold up the next one), and its runs stay
/// due; after a database outage the first renewal that gets through restores every lease
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
        let sent = Instant::now();
        let held = registry.due_for_renewal(renew_cut(sent, lease, interval));
        if held.is_empty() {
            continue;
        }
        let renewed = tokio::time::timeout(interval, extend_leases(&pool, &held, lease))
            .await
            .unwrap_or(Err(EngineError::Timeout("renewing leases")));
        match renewed {
            Ok(Renewal { renewed, lost }) => {
                registry.lease_renewed(&renewed, sent);
                stop_lost(&registry, &lost);
                let renewed = renewed.len();
                if failing {
                    tracing::info!(held = held.len(), renewed, "lease renewal works again");
                    failing = false;
                }
                if renewed < held.len() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_the_default_third_a_lease_is_renewed_once_older_than_half_an_interval() {
        let (lease, interval) = (Duration::from_secs(15), Duration::from_secs(5));
        let now = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            renew_cut(now, lease, interval),
            now - Duration::from_millis(2_500)
        );
        // A lease no longer than the look-ahead is always due.
        assert_eq!(renew_cut(now, interval * 2, interval), now);
    }
}
