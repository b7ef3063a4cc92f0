//! Periodic jobs: named schedules (a 6-field cron expression, seconds first, read in an IANA
//! time zone) that enqueue one job per slot. Every worker process runs the scheduler loop;
//! there is no leader. A slot is enqueued by whichever replica gets there first:
//!
//! ```text
//! BEGIN
//!   UPDATE job_schedules SET last_slot = <slot> WHERE name = … AND last_slot < <slot> RETURNING
//!   (a row came back) enqueue the job, unique key schedule:<name>:<slot RFC 3339 UTC>
//! COMMIT
//! ```
//!
//! The guarded update serialises replicas on the schedule's row: the second one finds the slot
//! taken and enqueues nothing, and the unique key makes a second enqueue of a slot return the
//! first job anyway. A replica always enqueues the most recent slot due, so slots missed while
//! every replica was down run once afterwards, not once each. Only transactions are used (no
//! session state), so the loop works through a transaction pooler.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;

use crate::db::Db;

use super::enqueue::enqueue_one;
use super::error::EngineError;
use super::job::{Enqueued, NewJob};

/// After a failed pass (database down), try again this soon.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Wake at least this often, so a clock that jumps is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule name {0:?} must be 1 to 64 characters of a-z, 0-9, '-' and '_'")]
    Name(String),
    #[error("schedule {name:?}: {expression:?} is not a 6-field cron expression (seconds minutes hours day-of-month month day-of-week): {reason}")]
    Expression {
        name: String,
        expression: String,
        reason: String,
    },
    #[error(
        "schedule {name:?}: {time_zone:?} is not an IANA time zone (e.g. UTC, Africa/Freetown)"
    )]
    TimeZone { name: String, time_zone: String },
    #[error("schedule {name:?}: {expression:?} has no slot in the future")]
    NoSlot { name: String, expression: String },
    #[error("schedule {name:?}: queue and kind must not be empty")]
    Job { name: String },
}

/// One named schedule and the job each of its slots enqueues.
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    cron: cron::Schedule,
    expression: String,
    time_zone: Tz,
    queue: String,
    kind: String,
    payload: serde_json::Value,
}

impl Schedule {
    /// Checks the name, the expression (6 fields, seconds first) and the time zone.
    pub fn new(
        name: &str,
        expression: &str,
        time_zone: &str,
        queue: &str,
        kind: &str,
        payload: serde_json::Value,
    ) -> Result<Self, ScheduleError> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return Err(ScheduleError::Name(name.to_owned()));
        }
        let expression = expression.split_whitespace().collect::<Vec<_>>().join(" ");
        let bad = |reason: String| ScheduleError::Expression {
            name: name.to_owned(),
            expression: expression.clone(),
            reason,
        };
        let fields = expression.split(' ').filter(|f| !f.is_empty()).count();
        if fields != 6 {
            return Err(bad(format!("it has {fields} fields")));
        }
        let cron = cron::Schedule::from_str(&expression).map_err(|e| bad(e.to_string()))?;
        let time_zone = Tz::from_str(time_zone.trim()).map_err(|_| ScheduleError::TimeZone {
            name: name.to_owned(),
            time_zone: time_zone.to_owned(),
        })?;
        if queue.trim().is_empty() || kind.trim().is_empty() {
            return Err(ScheduleError::Job {
                name: name.to_owned(),
            });
        }
        let schedule = Schedule {
            name: name.to_owned(),
            cron,
            expression,
            time_zone,
            queue: queue.trim().to_owned(),
            kind: kind.trim().to_owned(),
            payload,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::NoSlot {
                name: schedule.name,
                expression: schedule.expression,
            });
        }
        Ok(schedule)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone(&self) -> &str {
        self.time_zone.name()
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.time_zone))
            .next()
            .map(|slot| slot.with_timezone(&Utc))
    }

    /// The most recent slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let probe = (t + chrono::Duration::seconds(1)).with_timezone(&self.time_zone);
        self.cron
            .after(&probe)
            .rev()
            .map(|slot| slot.with_timezone(&Utc))
            .find(|slot| *slot <= t)
    }

    /// The unique key of the job of `slot`: `schedule:<name>:<slot, RFC 3339 UTC>`.
    pub fn unique_key(&self, slot: DateTime<Utc>) -> String {
        format!(
            "schedule:{}:{}",
            self.name,
            slot.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }

    /// The job of `slot`.
    pub fn job(&self, slot: DateTime<Utc>) -> NewJob {
        NewJob::new(&self.queue, &self.kind, self.payload.clone())
            .with_unique_key(self.unique_key(slot))
    }
}

/// A schedule's row in `job_schedules`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub name: String,
    pub expression: String,
    pub time_zone: String,
    pub last_slot: Option<DateTime<Utc>>,
    pub next_slot: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Every schedule's row, by name.
pub async fn list(pool: &Db) -> Result<Vec<ScheduleRow>, EngineError> {
    let mut conn = pool.unit().await?;
    let rows = sqlx::query_as!(
        ScheduleRow,
        "SELECT name, expression, time_zone, last_slot, next_slot, updated_at \
         FROM job_schedules ORDER BY name"
    )
    .fetch_all(&mut *conn)
    .await?;
    conn.done().await?;
    Ok(rows)
}

/// Records `schedules` in `job_schedules`: a new one starts at its most recent slot (which is
/// not enqueued: a schedule runs from its first slot after it was added); a known one keeps
/// its last slot and takes the expression and time zone given now.
pub async fn register(pool: &Db, schedules: &[Schedule]) -> Result<(), EngineError> {
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    for s in schedules {
        sqlx::query!(
            "INSERT INTO job_schedules AS s (name, expression, time_zone, last_slot, next_slot) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE \
             SET expression = excluded.expression, time_zone = excluded.time_zone, \
                 next_slot = excluded.next_slot, updated_at = now() \
             WHERE (s.expression, s.time_zone, s.next_slot) \
                   IS DISTINCT FROM (excluded.expression, excluded.time_zone, excluded.next_slot)",
            s.name,
            s.expression,
            s.time_zone(),
            s.latest_at_or_before(now),
            s.next_after(now),
        )
        .execute(&mut *tx)
        .await?;
    }
    pool.commit(tx).await?;
    Ok(())
}

/// Enqueues `schedule`'s most recent slot at or before `now` unless some replica already has:
/// returns the job when this call enqueued it (or found it under its key), `None` when the
/// slot was already taken or none is due.
pub async fn enqueue_due(
    pool: &Db,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Option<(DateTime<Utc>, Enqueued)>, EngineError> {
    let Some(slot) = schedule.latest_at_or_before(now) else {
        return Ok(None);
    };
    let next = schedule.next_after(slot);
    let mut tx = pool.begin().await?;
    let advanced = sqlx::query_scalar!(
        "UPDATE job_schedules SET last_slot = $2, next_slot = $3, updated_at = now() \
         WHERE name = $1 AND (last_slot IS NULL OR last_slot < $2) \
         RETURNING name",
        schedule.name,
        slot,
        next,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if advanced.is_none() {
        pool.commit(tx).await?;
        return Ok(None);
    }
    let enqueued = enqueue_one(&mut tx, &schedule.job(slot)).await?;
    pool.commit(tx).await?;
    Ok(Some((slot, enqueued)))
}

/// The scheduler loop of one process: registers `schedules`, then wakes at each next slot
/// of any of them and enqueues what is due, until `stop`.
pub async fn run_scheduler(pool: Db, schedules: Vec<Schedule>, stop: CancellationToken) {
    if schedules.is_empty() {
        stop.cancelled().await;
        return;
    }
    loop {
        match register(&pool, &schedules).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(error = %error, "could not record the schedules; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    }
    tracing::info!(schedules = ?schedules.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "scheduler started");
    loop {
        let now = Utc::now();
        let mut failed = false;
        for schedule in &schedules {
            match enqueue_due(&pool, schedule, now).await {
                Ok(Some((slot, enqueued))) => {
                    tracing::info!(schedule = %schedule.name(), slot = %slot, job.id = %enqueued.id,
                        created = enqueued.created, "scheduled job enqueued");
                }
                Ok(None) => {}
                Err(error) => {
                    failed = true;
                    tracing::warn!(schedule = %schedule.name(), error = %error,
                        "could not enqueue a scheduled job; trying again");
                }
            }
        }
        let wait = if failed {
            ERROR_PAUSE
        } else {
            let next = schedules
                .iter()
                .filter_map(|s| s.next_after(now))
                .min()
                .map(|next| (next - Utc::now()).to_std().unwrap_or_default())
                .unwrap_or(MAX_SLEEP);
            next.min(MAX_SLEEP)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hourly(tz: &str) -> Schedule {
        Schedule::new("h", "0 0 * * * *", tz, "q", "k", serde_json::json!({})).unwrap()
    }

    #[test]
    fn slots_at_or_before_and_after() {
        let s = hourly("UTC");
        assert_eq!(
            s.latest_at_or_before(at("2026-12-05T10:00:00Z")),
            Some(at("2026-12-05T10:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-12-05T10:59:59.9Z")),
            Some(at("2026-12-05T10:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-12-05T10:00:00Z")),
            Some(at("2026-12-05T11:00:00Z"))
        );
        assert_eq!(
            s.unique_key(at("2026-12-05T10:00:00Z")),
            "schedule:h:2026-12-05T10:00:00Z"
        );
    }

    #[test]
    fn a_time_zone_moves_the_slots() {
        let s = Schedule::new(
            "d",
            "0 0 8 * * *",
            "America/New_York",
            "q",
            "k",
            serde_json::json!({}),
        )
        .unwrap();
        // 08:00 in New York in December is 13:00 UTC.
        assert_eq!(
            s.next_after(at("2026-12-05T00:00:00Z")),
            Some(at("2026-12-05T13:00:00Z"))
        );
        assert_eq!(hourly("Africa/Freetown").time_zone(), "Africa/Freetown");
    }

    #[test]
    fn bad_schedules_are_refused_by_name() {
        let err = |expr: &str, tz: &str| {
            Schedule::new("nightly", expr, tz, "q", "k", serde_json::json!({}))
                .unwrap_err()
                .to_string()
        };
        let five = err("0 * * * *", "UTC");
        assert!(
            five.contains("\"nightly\"") && five.contains("5 fields"),
            "{five}"
        );
        let bad = err("0 0 25 * * *", "UTC");
        assert!(
            bad.contains("\"nightly\"") && bad.contains("6-field"),
            "{bad}"
        );
        let tz = err("0 0 * * * *", "Mars/Olympus");
        assert!(tz.contains("Mars/Olympus"), "{tz}");
        assert!(Schedule::new(
            "Bad Name",
            "* * * * * *",
            "UTC",
            "q",
            "k",
            serde_json::json!({})
        )
        .is_err());
    }
}
