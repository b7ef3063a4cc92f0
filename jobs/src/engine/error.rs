//! The engine's error type. Every sqlx error passes through [`map_sqlx_error`] so that callers
//! see conflicts and missing rows in the engine's own words.

use super::job::{JobId, JobState};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("unique constraint {constraint} was violated")]
    UniqueConflict {
        constraint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("job {id} does not exist")]
    NotFound { id: JobId },
    #[error("job {id} is {state}: {reason}")]
    WrongState {
        id: JobId,
        state: JobState,
        reason: &'static str,
    },
    #[error("queue {queue:?} does not exist (known queues are listed by `worker stats`)")]
    UnknownQueue { queue: String },
    #[error("the database is not migrated (missing: {missing}); run `worker migrate` or start with --migrate")]
    NotMigrated { missing: String },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("payload does not encode as JSON: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("the engine has stopped")]
    Stopped,
    #[error("{0} took too long; the connection is abandoned")]
    Timeout(&'static str),
}

impl EngineError {
    /// The database error behind this one, if a statement failed.
    pub fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            EngineError::Database(e) | EngineError::UniqueConflict { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> Self {
        map_sqlx_error(error)
    }
}

/// Turns SQLSTATE 23505 into [`EngineError::UniqueConflict`]; everything else is a database error.
pub fn map_sqlx_error(error: sqlx::Error) -> EngineError {
    if let sqlx::Error::Database(db) = &error {
        if db.code().as_deref() == Some("23505") {
            let constraint = db.constraint().unwrap_or("unknown").to_owned();
            return EngineError::UniqueConflict {
                constraint,
                source: error,
            };
        }
    }
    EngineError::Database(error)
}
