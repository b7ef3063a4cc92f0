//! What can go wrong with a commission transfer, in domain words, and how each case is retried.

use std::sync::Arc;
use std::time::Duration;

use super::monime::MonimeError;
use crate::engine::JobError;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("ticket {ticket_id} does not exist")]
    TicketNotFound { ticket_id: i64 },
    #[error("database error for the transfer of ticket {ticket_id}")]
    Database {
        ticket_id: i64,
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The worker is stopping and did not write this run's row or answer; the job runs again.
    #[error("the worker stopped before the transfer of ticket {ticket_id} was recorded")]
    Stopped { ticket_id: i64 },
    /// Connection error, timeout, 429 or 5xx: worth another try.
    #[error("transient Monime error for ticket {ticket_id}")]
    Transient {
        ticket_id: i64,
        #[source]
        source: MonimeError,
    },
    /// Any other 4xx: Monime refused the request; retrying the same request cannot help.
    #[error("Monime rejected the transfer of ticket {ticket_id}")]
    Rejected {
        ticket_id: i64,
        #[source]
        source: MonimeError,
    },
    /// Monime executed the transfer and it failed (`failureDetail.code`).
    #[error("Monime failed the transfer of ticket {ticket_id}: {code}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    FailedAtMonime {
        ticket_id: i64,
        code: String,
        message: Option<String>,
    },
    /// The row exists but cannot be used (a column the handler needs is missing or invalid).
    #[error("the transfer row of ticket {ticket_id} is unreadable; it needs an operator")]
    UnreadableRow { ticket_id: i64 },
    /// The row is failed and waits for an operator; the job does nothing on its own.
    #[error("the transfer of ticket {ticket_id} failed earlier ({reason}); it needs an operator: `worker retry-transfer {ticket_id}`")]
    AwaitingOperator { ticket_id: i64, reason: String },
}

impl TransferError {
    pub fn database(ticket_id: i64, source: sqlx::Error) -> Self {
        TransferError::database_shared(ticket_id, Arc::new(source))
    }

    /// A database error shared by every transfer of a batch.
    pub fn database_shared(ticket_id: i64, source: Arc<sqlx::Error>) -> Self {
        TransferError::Database { ticket_id, source }
    }

    /// The wait Monime asked for (429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TransferError::Transient {
                source: MonimeError::Status { retry_after, .. },
                ..
            } => *retry_after,
            _ => None,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TransferError::TicketNotFound { .. }
                | TransferError::UnreadableRow { .. }
                | TransferError::Rejected { .. }
                | TransferError::FailedAtMonime { .. }
                | TransferError::AwaitingOperator { .. }
        )
    }
}

impl From<TransferError> for JobError {
    fn from(error: TransferError) -> Self {
        if error.is_permanent() {
            return JobError::permanent(error);
        }
        match error.retry_after() {
            Some(delay) => JobError::retry_after(error, delay),
            None => JobError::retryable(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> MonimeError {
        MonimeError::Status {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: String::new(),
        }
    }

    #[test]
    fn a_429_retries_after_monime_delay() {
        let error = TransferError::Transient {
            ticket_id: 1,
            source: status(429, Some(7)),
        };
        match JobError::from(error) {
            JobError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn rejections_and_monime_failures_are_permanent() {
        let rejected = TransferError::Rejected {
            ticket_id: 1,
            source: status(400, None),
        };
        assert!(matches!(
            JobError::from(rejected),
            JobError::Permanent { .. }
        ));
        let failed = TransferError::FailedAtMonime {
            ticket_id: 1,
            code: "fund_insufficient".into(),
            message: None,
        };
        assert!(matches!(JobError::from(failed), JobError::Permanent { .. }));
        let server = TransferError::Transient {
            ticket_id: 1,
            source: status(503, None),
        };
        assert!(matches!(
            JobError::from(server),
            JobError::Retryable {
                retry_after: None,
                ..
            }
        ));
    }
}
