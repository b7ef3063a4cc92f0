//! The audit trail: who did what to which subject, and when (`audit_events`, see
//! docs/audit-trail.md).
//!
//! An event is written inside the transaction of the change it records, so the trail holds an
//! event exactly when the change committed. [`record`] takes that open transaction (any
//! connection inside it); the hot batch statements (tickets, transfer answers) write their
//! events in the same statement instead, from the rows they changed, with the action and actor
//! names below as parameters.
//!
//! This module sits at the crate root, next to [`crate::db`], and depends on nothing else of
//! the crate: the engine's operator actions (retry, cancel, pause, resume, prune) and the job
//! kinds (tickets, transfers, cycles) both write events, and neither may depend on the other.
//! It is neither a job kind nor part of the engine; it is a table and its row shape.
//!
//! Operator actions take an [`Actor`]: the CLI passes [`Actor::cli`], the admin API
//! [`Actor::Api`], the console [`Actor::Console`]. Events the job kinds write while they run
//! carry [`Actor::Worker`]; repairs a reader makes on its own ([`crate::cycle::abandoned`])
//! carry [`Actor::System`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::db::Db;

/// The actions recorded, as stored in `audit_events.action`.
pub mod action {
    pub const TICKET_ISSUED: &str = "ticket.issued";
    pub const TRANSFER_CREATED: &str = "transfer.created";
    pub const TRANSFER_COMPLETED: &str = "transfer.completed";
    pub const TRANSFER_FAILED: &str = "transfer.failed";
    pub const TRANSFER_RETRIED: &str = "transfer.retried";
    pub const CYCLE_CREATED: &str = "cycle.created";
    pub const CYCLE_ACTIVATED: &str = "cycle.activated";
    pub const CYCLE_FAILED: &str = "cycle.failed";
    pub const JOB_RETRIED: &str = "job.retried";
    pub const JOB_CANCELLED: &str = "job.cancelled";
    pub const JOBS_PRUNED: &str = "jobs.pruned";
    pub const QUEUE_PAUSED: &str = "queue.paused";
    pub const QUEUE_RESUMED: &str = "queue.resumed";
    pub const CONSOLE_LOGIN: &str = "console.login";
    pub const CONSOLE_LOGOUT: &str = "console.logout";
}

/// The subjects events are about, as stored in `audit_events.subject_type`.
pub mod subject {
    /// A ticket, by `tickets.id`.
    pub const TICKET: &str = "ticket";
    /// A commission transfer, by its ticket's id (one transfer per ticket, whatever its
    /// generation).
    pub const TRANSFER: &str = "transfer";
    /// A contribution cycle, by `contribution_cycles.id`.
    pub const CYCLE: &str = "cycle";
    /// A job, by `jobs.id`.
    pub const JOB: &str = "job";
    /// A queue, by name.
    pub const QUEUE: &str = "queue";
    /// The console's sessions (its one operator, `admin`).
    pub const CONSOLE: &str = "console";
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator at the `worker` command line, by operating-system user: `cli:<user>`.
    Cli { os_user: String },
    /// The admin HTTP API (one admin token): `api:admin`.
    Api,
    /// The operator console (one admin session): `console:admin`.
    Console,
    /// A worker running a job: `worker`.
    Worker,
    /// Poda on its own, outside any job or operator request (a repair made by a reader):
    /// `system`.
    System,
}

impl Actor {
    /// The operator at the command line, by operating-system user name (the command line
    /// finds it: `poda::ops::cli_actor`).
    pub fn cli(os_user: impl Into<String>) -> Actor {
        Actor::Cli {
            os_user: os_user.into(),
        }
    }

    /// The name as stored in `audit_events.actor`.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Cli { os_user } => write!(f, "cli:{os_user}"),
            Actor::Api => f.write_str("api:admin"),
            Actor::Console => f.write_str("console:admin"),
            Actor::Worker => f.write_str("worker"),
            Actor::System => f.write_str("system"),
        }
    }
}

/// One event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub action: &'static str,
    pub subject_type: &'static str,
    pub subject_id: String,
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(
        action: &'static str,
        subject_type: &'static str,
        subject_id: impl ToString,
        data: serde_json::Value,
    ) -> Event {
        Event {
            action,
            subject_type,
            subject_id: subject_id.to_string(),
            data,
        }
    }
}

/// Records `event` by `actor` on `conn`, which is inside the transaction of the change the
/// event records: it commits, or rolls back, with it.
pub async fn record(conn: &mut PgConnection, actor: &Actor, event: &Event) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO audit_events (actor, action, subject_type, subject_id, data) \
         VALUES ($1, $2, $3, $4, $5)",
        actor.name(),
        event.action,
        event.subject_type,
        event.subject_id,
        event.data,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One recorded event, as the console and tests read it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject_type: String,
    pub subject_id: String,
    pub data: serde_json::Value,
}

/// Which events to list: one subject type, or one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectFilter {
    pub subject_type: String,
    /// `None`: every subject of the type.
    pub subject_id: Option<String>,
}

impl SubjectFilter {
    pub fn of_type(subject_type: impl Into<String>) -> SubjectFilter {
        SubjectFilter {
            subject_type: subject_type.into(),
            subject_id: None,
        }
    }

    pub fn one(subject_type: impl Into<String>, subject_id: impl ToString) -> SubjectFilter {
        SubjectFilter {
            subject_type: subject_type.into(),
            subject_id: Some(subject_id.to_string()),
        }
    }
}

/// The most events one [`list`] returns.
pub const MAX_PAGE: i64 = 1_000;

/// Events newest first: those of `subject` (all when `None`), older than `before_id` (the
/// last id of the previous page; `None`: from the newest), at most `limit` (1 to
/// [`MAX_PAGE`]). Reads the primary key backwards, or `audit_events_subject_idx` for a
/// subject type (and id).
pub async fn list(
    db: &Db,
    subject: Option<&SubjectFilter>,
    before_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    let limit = limit.clamp(1, MAX_PAGE);
    let subject_type = subject.map(|s| s.subject_type.as_str());
    let subject_id = subject.and_then(|s| s.subject_id.as_deref());
    sqlx::query_as!(
        AuditRow,
        "SELECT id, at, actor, action, subject_type, subject_id, data FROM audit_events \
         WHERE ($1::text IS NULL OR subject_type = $1) \
           AND ($2::text IS NULL OR subject_id = $2) \
           AND ($3::bigint IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4",
        subject_type,
        subject_id,
        before_id,
        limit,
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_have_their_stored_names() {
        assert_eq!(Actor::cli("ops").name(), "cli:ops");
        assert_eq!(Actor::Api.name(), "api:admin");
        assert_eq!(Actor::Console.name(), "console:admin");
        assert_eq!(Actor::Worker.name(), "worker");
        assert_eq!(Actor::System.name(), "system");
    }
}
