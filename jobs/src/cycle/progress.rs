//! A cycle's fan-out progress, as the admin API and `worker cycle` show it.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::abandoned::fail_if_abandoned;
use super::{CycleId, CycleJob, CycleStatus, QUEUE};
use crate::engine::keyed::job_is_live;

/// Progress of one cycle. `processed` only goes up (it is committed with each chunk).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleProgress {
    pub cycle_id: CycleId,
    pub code: String,
    pub status: CycleStatus,
    /// Eligible members; `None` until the fan-out starts.
    pub total: Option<i64>,
    /// Contributions created so far.
    pub processed: i64,
    /// processed / total, 0–100, two decimals; 100 once Active.
    pub percentage: f64,
    /// Estimated seconds left at the rate so far; `None` until there is a rate, 0 once settled.
    pub eta_seconds: Option<u64>,
    /// Why the cycle failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Row {
    id: CycleId,
    code: String,
    status: CycleStatus,
    total: Option<i64>,
    processed: i64,
    error: Option<String>,
    started_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// The cycle's progress, or `None` when it does not exist. An `Initializing` cycle whose
/// fan-out job has ended is marked Failed first, and shown so (see [`super::abandoned`]).
pub async fn fetch_progress(pool: &Db, id: CycleId) -> Result<Option<CycleProgress>, sqlx::Error> {
    let Some(row) = read(pool, id).await? else {
        return Ok(None);
    };
    // Only an Initializing cycle can be left behind by its fan-out job; one whose job can
    // still run (waiting or running) will be settled by it.
    let key = CycleJob { cycle_id: id }.unique_key();
    if row.status != CycleStatus::Initializing || job_is_live(pool, QUEUE, &key).await? {
        return Ok(Some(row.into_progress()));
    }
    let mut tx = pool.begin().await?;
    fail_if_abandoned(&mut tx, id).await?;
    pool.commit(tx).await?;
    Ok(read(pool, id).await?.map(Row::into_progress))
}

async fn read(pool: &Db, id: CycleId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as!(
        Row,
        "SELECT id AS \"id: CycleId\", code, status AS \"status: CycleStatus\", total, \
                processed, error, started_at, now() AS \"now!\" \
         FROM contribution_cycles WHERE id = $1",
        id.0,
    )
    .fetch_optional(pool)
    .await
}

impl Row {
    fn into_progress(self) -> CycleProgress {
        let settled = self.status.is_settled();
        let percentage = match (self.status, self.total) {
            (CycleStatus::Active | CycleStatus::Completed, _) => 100.0,
            (_, Some(total)) if total > 0 => {
                let p = self.processed as f64 * 100.0 / total as f64;
                (p.min(100.0) * 100.0).floor() / 100.0
            }
            _ => 0.0,
        };
        let eta_seconds = if settled {
            Some(0)
        } else {
            match (self.total, self.started_at) {
                (Some(total), Some(started)) if self.processed > 0 => {
                    let elapsed = (self.now - started).num_milliseconds().max(0) as f64 / 1000.0;
                    let left = (total - self.processed).max(0) as f64;
                    Some((elapsed * left / self.processed as f64).ceil() as u64)
                }
                _ => None,
            }
        };
        CycleProgress {
            cycle_id: self.id,
            code: self.code,
            status: self.status,
            total: self.total,
            processed: self.processed,
            percentage,
            eta_seconds,
            error: self.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: CycleStatus, total: Option<i64>, processed: i64, elapsed_s: i64) -> Row {
        let now = Utc::now();
        Row {
            id: CycleId(1),
            code: "CYC-000001".into(),
            status,
            total,
            processed,
            error: None,
            started_at: total.map(|_| now - chrono::Duration::seconds(elapsed_s)),
            now,
        }
    }

    #[test]
    fn progress_has_no_rate_before_the_first_chunk() {
        let p = row(CycleStatus::Initializing, None, 0, 0).into_progress();
        assert_eq!((p.percentage, p.eta_seconds), (0.0, None));
        let p = row(CycleStatus::Initializing, Some(100), 0, 3).into_progress();
        assert_eq!((p.percentage, p.eta_seconds), (0.0, None));
    }

    #[test]
    fn eta_extrapolates_the_rate_so_far() {
        // A quarter done in 2 s: 6 s left.
        let p = row(CycleStatus::Initializing, Some(1_000), 250, 2).into_progress();
        assert_eq!(p.percentage, 25.0);
        assert_eq!(p.eta_seconds, Some(6));
    }

    #[test]
    fn percentage_never_passes_100_and_is_100_once_active() {
        let p = row(CycleStatus::Initializing, Some(10), 12, 1).into_progress();
        assert_eq!(p.percentage, 100.0);
        assert_eq!(p.eta_seconds, Some(0));
        let p = row(CycleStatus::Active, Some(0), 0, 1).into_progress();
        assert_eq!((p.percentage, p.eta_seconds), (100.0, Some(0)));
        let p = row(CycleStatus::Initializing, Some(3), 1, 1).into_progress();
        assert_eq!(p.percentage, 33.33);
    }
}
