//! Ticket-domain fixtures: companies, routes, payment codes and ticket jobs, and the counts
//! that prove "one payment, one ticket, one transfer job".

use crate::db::Db;

use crate::ticket::{Currency, Money, TicketJob};

pub async fn seed_company(pool: &Db, id: &str, currency: &str, commission_bps: i32) {
    sqlx::query(
        "INSERT INTO companies (id, name, monime_account_id, commission_bps, currency) \
         VALUES ($1, $1, 'fa-' || $1, $2, $3)",
    )
    .bind(id)
    .bind(commission_bps)
    .bind(currency)
    .execute(pool)
    .await
    .expect("seed a company");
}

pub async fn seed_route(pool: &Db, id: &str, company_id: &str) {
    sqlx::query(
        "INSERT INTO routes (id, company_id, origin, destination) \
         VALUES ($1, $2, 'Freetown', 'Bo')",
    )
    .bind(id)
    .bind(company_id)
    .execute(pool)
    .await
    .expect("seed a route");
}

/// An active code of `company_id`, valid on any of its routes, never expiring.
pub async fn seed_payment_code(pool: &Db, code: &str, company_id: &str, usage_limit: i32) {
    sqlx::query("INSERT INTO payment_codes (code, company_id, usage_limit) VALUES ($1, $2, $3)")
        .bind(code)
        .bind(company_id)
        .bind(usage_limit)
        .execute(pool)
        .await
        .expect("seed a payment code");
}

/// A company `co-1` (SLE, 250 bps) with route `rt-1`.
pub async fn seed_one_company(pool: &Db) {
    seed_company(pool, "co-1", "SLE", 250).await;
    seed_route(pool, "rt-1", "co-1").await;
}

/// A ticket job paid in SLE.
pub fn ticket_job(
    payment_id: &str,
    company_id: &str,
    route_id: &str,
    value_minor: i64,
) -> TicketJob {
    TicketJob {
        payment_id: payment_id.to_owned(),
        event_id: format!("evt-{payment_id}"),
        amount: Money {
            currency: Currency::Sle,
            value_minor,
        },
        company_id: company_id.to_owned(),
        route_id: route_id.to_owned(),
        passenger_phone: "+23276123456".to_owned(),
        payment_code: None,
        financial_transaction_reference: Some(format!("txn-{payment_id}")),
    }
}

/// What the ticket flow has written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketCounts {
    pub tickets: i64,
    pub distinct_payments: i64,
    pub transfer_jobs: i64,
    /// Tickets without their commission-transfer job (must be 0).
    pub tickets_without_transfer: i64,
    /// Transfer jobs whose ticket does not exist (must be 0).
    pub transfers_without_ticket: i64,
}

pub async fn ticket_counts(pool: &Db) -> TicketCounts {
    let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tickets), \
                (SELECT count(DISTINCT payment_id) FROM tickets), \
                (SELECT count(*) FROM jobs WHERE queue = 'commission_transfers'), \
                (SELECT count(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM jobs j \
                    WHERE j.queue = 'commission_transfers' AND j.unique_key = 'ticket:' || t.id \
                      AND (j.payload->>'ticket_id')::bigint = t.id)), \
                (SELECT count(*) FROM jobs j WHERE j.queue = 'commission_transfers' \
                    AND NOT EXISTS (SELECT 1 FROM tickets t \
                        WHERE t.id = (j.payload->>'ticket_id')::bigint))",
    )
    .fetch_one(pool)
    .await
    .expect("count tickets");
    TicketCounts {
        tickets: row.0,
        distinct_payments: row.1,
        transfer_jobs: row.2,
        tickets_without_transfer: row.3,
        transfers_without_ticket: row.4,
    }
}

/// Ticket jobs by state: (completed, failed, other).
pub async fn ticket_job_states(pool: &Db) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'completed'), \
                count(*) FILTER (WHERE state = 'failed'), \
                count(*) FILTER (WHERE state NOT IN ('completed', 'failed')) \
         FROM jobs WHERE queue = 'tickets'",
    )
    .fetch_one(pool)
    .await
    .expect("count ticket jobs")
}
