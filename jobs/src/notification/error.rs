//! Why a delivery failed, and whether trying again can help.

use std::time::Duration;

use crate::engine::JobError;

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("the notification receiver could not be reached")]
    Transport(#[source] reqwest::Error),
    #[error("the notification receiver answered {status}")]
    Rejected {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("building the HTTP client failed")]
    Client(#[source] reqwest::Error),
}

impl NotificationError {
    /// Connection errors, timeouts, 408, 429 and 5xx are retried; other 4xx are not.
    pub fn is_permanent(&self) -> bool {
        match self {
            NotificationError::Transport(_) => false,
            NotificationError::Rejected { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            NotificationError::Client(_) => true,
        }
    }
}

impl From<NotificationError> for JobError {
    fn from(error: NotificationError) -> Self {
        if error.is_permanent() {
            return JobError::permanent(error);
        }
        match error {
            NotificationError::Rejected {
                retry_after: Some(delay),
                ..
            } => JobError::retry_after(error, delay),
            other => JobError::retryable(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16) -> NotificationError {
        NotificationError::Rejected {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn client_errors_are_permanent_except_408_and_429() {
        assert!(rejected(400).is_permanent());
        assert!(rejected(404).is_permanent());
        assert!(!rejected(408).is_permanent());
        assert!(!rejected(429).is_permanent());
        assert!(!rejected(500).is_permanent());
        assert!(!rejected(503).is_permanent());
    }

    #[test]
    fn retry_after_is_honoured() {
        let error = NotificationError::Rejected {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        match JobError::from(error) {
            JobError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
}
