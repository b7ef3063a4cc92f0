//! What can go wrong issuing a ticket, in the domain's words, and which of it is worth
//! retrying.
//!
//! Everything about the payment itself (unknown company or route, a route of another company,
//! a currency the company does not take, a payment code that cannot be used, a row the
//! database refuses) is permanent: running the job again cannot change the answer, so it
//! fails for good with the reason kept on the job. Trouble reaching the database is
//! retryable: the job waits in Postgres and runs again.

use std::sync::Arc;

use crate::engine::EngineError;
use crate::engine::JobError;

use super::Currency;

/// Cheap to clone: errors shared by a whole batch hold their source behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TicketError {
    #[error("payment {payment_id}: amount {value_minor} is not a positive number of minor units")]
    NonPositiveAmount {
        payment_id: String,
        value_minor: i64,
    },
    #[error("payment {payment_id}: company {company_id} does not exist")]
    UnknownCompany {
        payment_id: String,
        company_id: String,
    },
    #[error(
        "payment {payment_id}: paid in {paid} but company {company_id} sells in {company_currency}"
    )]
    CurrencyMismatch {
        payment_id: String,
        company_id: String,
        paid: Currency,
        company_currency: String,
    },
    #[error("payment {payment_id}: route {route_id} does not exist")]
    UnknownRoute {
        payment_id: String,
        route_id: String,
    },
    #[error("payment {payment_id}: route {route_id} belongs to company {route_company_id}, not {company_id}")]
    RouteOfAnotherCompany {
        payment_id: String,
        route_id: String,
        company_id: String,
        route_company_id: String,
    },
    #[error("payment {payment_id}: payment code {code} does not exist")]
    UnknownPaymentCode { payment_id: String, code: String },
    #[error("payment {payment_id}: payment code {code} is exhausted (used {usage_limit} of {usage_limit} times)")]
    PaymentCodeExhausted {
        payment_id: String,
        code: String,
        usage_limit: i32,
    },
    #[error("payment {payment_id}: payment code {code} has expired")]
    PaymentCodeExpired { payment_id: String, code: String },
    #[error("payment {payment_id}: payment code {code} is disabled")]
    PaymentCodeDisabled { payment_id: String, code: String },
    #[error("payment {payment_id}: payment code {code} is not valid for company {company_id} and route {route_id}")]
    PaymentCodeNotForTrip {
        payment_id: String,
        code: String,
        company_id: String,
        route_id: String,
    },
    /// The database refused this ticket's rows (a data or constraint error found when the
    /// ticket was written on its own, after its batch failed).
    #[error("payment {payment_id}: the database refused the ticket")]
    Refused {
        payment_id: String,
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The database could not be reached or gave up on the batch's transaction.
    #[error("writing the ticket batch failed")]
    Database(#[source] Arc<sqlx::Error>),
    /// Enqueueing the commission-transfer jobs failed (the batch was rolled back).
    #[error("enqueueing the commission transfers failed")]
    Enqueue(#[source] Arc<EngineError>),
}

impl TicketError {
    /// True when running the job again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, TicketError::Database(_) | TicketError::Enqueue(_))
    }
}

impl From<TicketError> for JobError {
    fn from(error: TicketError) -> Self {
        if error.is_permanent() {
            JobError::permanent(error)
        } else {
            JobError::retryable(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_are_permanent_and_database_trouble_is_retryable() {
        let unknown = TicketError::UnknownCompany {
            payment_id: "pay-1".into(),
            company_id: "co-x".into(),
        };
        assert!(matches!(
            JobError::from(unknown),
            JobError::Permanent { .. }
        ));
        let down = TicketError::Database(Arc::new(sqlx::Error::PoolTimedOut));
        assert!(matches!(JobError::from(down), JobError::Retryable { .. }));
    }

    #[test]
    fn messages_name_the_payment_and_the_reason() {
        let e = TicketError::PaymentCodeExhausted {
            payment_id: "pay-9".into(),
            code: "PROMO".into(),
            usage_limit: 50,
        };
        assert_eq!(
            e.to_string(),
            "payment pay-9: payment code PROMO is exhausted (used 50 of 50 times)"
        );
    }
}
