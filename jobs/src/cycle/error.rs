//! The cycle kind's errors, in domain words.

use crate::engine::EngineError;
use crate::engine::JobError;
use crate::sqlstate;

use super::CycleId;

/// Why a cycle was not created. Everything but [`CreateCycleError::Database`] is the
/// caller's mistake, and none of them wrote anything.
#[derive(Debug, thiserror::Error)]
pub enum CreateCycleError {
    #[error("{0}")]
    Invalid(String),
    #[error("tier {tier_id} does not exist")]
    TierNotFound { tier_id: i64 },
    #[error("member {member_id} does not exist")]
    MemberNotFound { member_id: i64 },
    #[error("member {member_id} belongs to tier {actual_tier_id}, not to tier {tier_id}")]
    MemberNotInTier {
        member_id: i64,
        tier_id: i64,
        actual_tier_id: i64,
    },
    #[error("tier {tier_id} collects {tier_currency}, not {currency}")]
    CurrencyMismatch {
        tier_id: i64,
        tier_currency: String,
        currency: String,
    },
    #[error(
        "Idempotency-Key {key:?} was already used for cycle {cycle_id} with a different request; \
         use a new key for a new cycle"
    )]
    IdempotencyKeyReused { key: String, cycle_id: CycleId },
    #[error("claim {claim_reference:?} already has cycle {cycle_id}")]
    ClaimHasCycle {
        claim_reference: String,
        cycle_id: CycleId,
    },
    #[error("creating the cycle failed")]
    Database(#[source] sqlx::Error),
    #[error("enqueueing the fan-out job failed")]
    Enqueue(#[source] EngineError),
}

impl From<sqlx::Error> for CreateCycleError {
    fn from(error: sqlx::Error) -> Self {
        CreateCycleError::Database(error)
    }
}

/// Why a fan-out run failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("cycle {id} does not exist")]
    NotFound { id: CycleId },
    #[error("cycle {id}: the target ({members} contributions of {amount_minor}) overflows")]
    TargetOverflow {
        id: CycleId,
        members: i64,
        amount_minor: i64,
    },
    #[error("cycle {id}: currency {currency:?} is not supported")]
    UnsupportedCurrency { id: CycleId, currency: String },
    #[error("cycle {id}: database error")]
    Database {
        id: CycleId,
        #[source]
        source: sqlx::Error,
    },
    #[error("cycle {id}: enqueueing the agent notifications failed")]
    Enqueue {
        id: CycleId,
        #[source]
        source: EngineError,
    },
}

impl CycleError {
    pub fn database(id: CycleId) -> impl FnOnce(sqlx::Error) -> CycleError {
        move |source| CycleError::Database { id, source }
    }

    /// Bad data never gets better by retrying: a missing cycle, an overflow, a violated
    /// constraint (SQLSTATE class 23) or a data exception (class 22). Connection trouble,
    /// deadlocks and timeouts are retried, and so is a unique violation (23505): it means
    /// another run of the same cycle committed a chunk first, and the retry continues from
    /// the cursor it committed.
    pub fn is_permanent(&self) -> bool {
        match self {
            CycleError::NotFound { .. }
            | CycleError::TargetOverflow { .. }
            | CycleError::UnsupportedCurrency { .. } => true,
            CycleError::Database { source, .. } => is_data_error(source),
            CycleError::Enqueue { source, .. } => match source {
                EngineError::InvalidJob(_) | EngineError::Codec(_) => true,
                other => other.sqlx().is_some_and(is_data_error),
            },
        }
    }
}

/// A data error other than a unique violation, or a row that cannot be decoded.
fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => true,
        _ => {
            sqlstate::is_data_error(error)
                && sqlstate::code(error).as_deref() != Some(sqlstate::UNIQUE_VIOLATION)
        }
    }
}

impl From<CycleError> for JobError {
    fn from(error: CycleError) -> Self {
        if error.is_permanent() {
            JobError::permanent(error)
        } else {
            JobError::retryable(error)
        }
    }
}
