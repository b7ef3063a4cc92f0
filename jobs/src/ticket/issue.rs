//! Issuing tickets: a batch of ticket jobs becomes tickets, payment-code usage and
//! commission-transfer jobs inside the transaction that claimed the jobs, and each job learns
//! its own outcome.
//!
//! ```text
//! (the batch worker: BEGIN, claim_locked)
//! SAVEPOINT
//!   lock_payment_codes   the batch's codes, FOR UPDATE in code order
//!   look_up_batch        companies, routes and existing tickets, set-based
//!   (Rust)               reject what cannot become a ticket; count uses against each code's limit
//!   insert_tickets       one multi-row INSERT … ON CONFLICT (payment_id) DO NOTHING, and
//!                        the inserted tickets' `ticket.issued` audit and outbox events, in
//!                        one statement
//!   count_code_uses      the inserted tickets' codes; exhausted at the limit
//!   insert_new_jobs      one commission_transfers job per inserted ticket (its key is new)
//! RELEASE SAVEPOINT
//! (the batch worker: finish_locked, COMMIT)
//! ```
//!
//! A ticket never exists without its transfer job, its counted code use and its finished
//! ticket job: they commit together or not at all. Jobs that the set-based validation rejects
//! are left out of the writes. The writes run under a savepoint, so a failure rolls back only
//! them and the claiming transaction can still record every job's outcome. If they fail with
//! an error the server raised about the statements (not a lost connection or a server in
//! trouble), each ticket is written again under a savepoint of its own, so the one that
//! spoils the batch fails alone and the others are issued. A ticket the database refuses on
//! its own with a data or constraint error (SQLSTATE class 22 or 23) fails for good; any other
//! error is retried durably.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{Connection, PgConnection};

use super::error::TicketError;
use super::{commission_minor, TicketJob};
use crate::audit::{action, subject, Actor};
use crate::engine::EngineError;
use crate::engine::{insert_new_jobs, NewJob};
use crate::events::event_type;
use crate::sqlstate::{is_data_error, is_transaction_conflict, may_be_caused_by_a_row};
use crate::transfer::TransferJob;

/// A batch that meets a deadlock or serialization failure is tried this often in all.
const CONFLICT_TRIES: usize = 3;

/// The ticket a job ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub ticket_id: i64,
    /// False when the payment already had its ticket (a duplicate or a re-run): nothing was
    /// written for this job.
    pub created: bool,
}

/// Issues `tickets` on `conn`, which is inside a transaction: under one savepoint (falling
/// back to one savepoint each when a row spoils the batch); returns each ticket's outcome, in
/// input order. Nothing is committed here.
#[tracing::instrument(skip_all, fields(batch = tickets.len()))]
pub async fn issue_many(
    conn: &mut PgConnection,
    tickets: &[TicketJob],
) -> Vec<Result<Issued, TicketError>> {
    if tickets.is_empty() {
        return Vec::new();
    }
    match issue_batch_retrying(conn, tickets).await {
        Ok(results) => results,
        Err(failure) if tickets.len() > 1 && failure.may_be_caused_by_a_row() => {
            tracing::warn!(error = %failure, batch = tickets.len(),
                "a ticket spoiled its batch; writing the batch's tickets one by one");
            let mut results = Vec::with_capacity(tickets.len());
            for ticket in tickets {
                results.push(
                    match issue_batch_retrying(conn, std::slice::from_ref(ticket)).await {
                        Ok(mut one) => one.pop().expect("one ticket, one outcome"),
                        Err(failure) => Err(failure.into_ticket_error(ticket)),
                    },
                );
            }
            results
        }
        Err(failure) => {
            tracing::warn!(error = %failure, batch = tickets.len(), "writing a ticket batch failed");
            let error = failure.into_ticket_error(&tickets[0]);
            vec![Err(error); tickets.len()]
        }
    }
}

async fn issue_batch_retrying(
    conn: &mut PgConnection,
    tickets: &[TicketJob],
) -> Result<Vec<Result<Issued, TicketError>>, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        match issue_batch(conn, tickets).await {
            Err(failure) if tries < CONFLICT_TRIES && failure.is_transaction_conflict() => {
                tracing::info!(error = %failure, "ticket batch met a transaction conflict; trying again");
            }
            other => return other,
        }
    }
}

/// Why a batch's transaction failed (it was rolled back).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Enqueue(#[from] EngineError),
}

impl Failure {
    fn sql(&self) -> Option<&sqlx::Error> {
        match self {
            Failure::Sql(e) => Some(e),
            Failure::Enqueue(e) => e.sqlx(),
        }
    }

    fn is_data_error(&self) -> bool {
        self.sql().is_some_and(is_data_error)
    }

    fn may_be_caused_by_a_row(&self) -> bool {
        self.sql().is_some_and(may_be_caused_by_a_row)
    }

    fn is_transaction_conflict(&self) -> bool {
        self.sql().is_some_and(is_transaction_conflict)
    }

    /// The job's error: the database refusing this ticket's own rows is permanent, anything
    /// else is retryable.
    fn into_ticket_error(self, ticket: &TicketJob) -> TicketError {
        let refused = self.is_data_error();
        match self {
            Failure::Sql(source) if refused => TicketError::Refused {
                payment_id: ticket.payment_id.clone(),
                source: Arc::new(source),
            },
            Failure::Sql(source) => TicketError::Database(Arc::new(source)),
            Failure::Enqueue(source) => TicketError::Enqueue(Arc::new(source)),
        }
    }
}

/// One payment code as the batch found it (locked).
struct CodeRow {
    company_id: String,
    route_id: Option<String>,
    usage_limit: i32,
    used_count: i32,
    status: String,
    expired: bool,
}

/// What the database knows about one ticket of the batch.
struct Found {
    company_currency: Option<String>,
    commission_bps: Option<i32>,
    route_company_id: Option<String>,
    ticket_id: Option<i64>,
}

/// What becomes of one payment of the batch.
enum Decision {
    /// The payment already has its ticket.
    Existing(i64),
    Rejected(TicketError),
    /// Write the ticket with this commission.
    Write {
        commission_minor: i64,
    },
}

async fn issue_batch(
    conn: &mut PgConnection,
    tickets: &[TicketJob],
) -> Result<Vec<Result<Issued, TicketError>>, Failure> {
    // The same payment twice in one batch is written once; the others share its outcome.
    let mut first_of_payment: HashMap<&str, usize> = HashMap::with_capacity(tickets.len());
    let mut unique: Vec<&TicketJob> = Vec::with_capacity(tickets.len());
    // For each input position: its payment's slot in `unique`, and whether it came first.
    let mut slot_of: Vec<(usize, bool)> = Vec::with_capacity(tickets.len());
    for ticket in tickets {
        match first_of_payment.entry(ticket.payment_id.as_str()) {
            Entry::Occupied(slot) => slot_of.push((*slot.get(), false)),
            Entry::Vacant(slot) => {
                slot.insert(unique.len());
                slot_of.push((unique.len(), true));
                unique.push(ticket);
            }
        }
    }

    // A savepoint: dropped without commit, it rolls back to where it began.
    let mut tx = conn.begin().await?;
    let codes = lock_payment_codes(&mut tx, &unique).await?;
    let found = look_up_batch(&mut tx, &unique).await?;
    let decisions = decide_many(&unique, &found, &codes);

    let to_write: Vec<(usize, i64)> = decisions
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            Decision::Write { commission_minor } => Some((i, *commission_minor)),
            _ => None,
        })
        .collect();
    let written = insert_tickets(&mut tx, &unique, &to_write).await?;

    // A payment another transaction issued meanwhile (no code involved: codes are locked)
    // was skipped by ON CONFLICT; its ticket is committed and visible to a new statement.
    let skipped: Vec<&str> = to_write
        .iter()
        .map(|(i, _)| unique[*i].payment_id.as_str())
        .filter(|p| !written.contains_key(*p))
        .collect();
    let issued_elsewhere = if skipped.is_empty() {
        HashMap::new()
    } else {
        find_tickets(&mut tx, &skipped).await?
    };

    count_code_uses(&mut tx, &unique, &to_write, &written).await?;
    // Each new ticket's transfer, keyed by its company (the ticket's), in ticket order.
    let mut new_tickets: Vec<(i64, &str)> = written
        .iter()
        .map(|(payment, &ticket_id)| {
            let company = unique[first_of_payment[payment.as_str()]]
                .company_id
                .as_str();
            (ticket_id, company)
        })
        .collect();
    new_tickets.sort_unstable();
    let transfers: Vec<NewJob> = new_tickets
        .iter()
        .map(|&(ticket_id, company)| TransferJob { ticket_id }.to_job(company))
        .collect();
    // Keyed by tickets this transaction has just inserted: the keys cannot exist yet.
    insert_new_jobs(&mut tx, &transfers).await?;
    tx.commit().await?;

    let outcomes: Vec<Result<Issued, TicketError>> = unique
        .iter()
        .zip(decisions)
        .map(|(ticket, decision)| match decision {
            Decision::Existing(ticket_id) => Ok(Issued {
                ticket_id,
                created: false,
            }),
            Decision::Rejected(error) => Err(error),
            Decision::Write { .. } => {
                let payment = ticket.payment_id.as_str();
                if let Some(&ticket_id) = written.get(payment) {
                    Ok(Issued {
                        ticket_id,
                        created: true,
                    })
                } else if let Some(&ticket_id) = issued_elsewhere.get(payment) {
                    Ok(Issued {
                        ticket_id,
                        created: false,
                    })
                } else {
                    Err(TicketError::Database(Arc::new(sqlx::Error::RowNotFound)))
                }
            }
        })
        .collect();
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Issued { created: true, .. })))
        .count();
    tracing::debug!(tickets = tickets.len(), created, "ticket batch committed");
    // Duplicates of a payment within the batch: the first one issued it.
    Ok(slot_of
        .iter()
        .map(|&(slot, first)| match outcomes[slot].clone() {
            Ok(issued) if !first => Ok(Issued {
                created: false,
                ..issued
            }),
            other => other,
        })
        .collect())
}

/// Checks each payment against what the database holds, in input order; counts uses against
/// each code's remaining usage, so the batch never issues more than a code has left.
fn decide_many(
    tickets: &[&TicketJob],
    found: &[Found],
    codes: &HashMap<String, CodeRow>,
) -> Vec<Decision> {
    let mut left: HashMap<&str, i32> = codes
        .iter()
        .map(|(code, row)| (code.as_str(), row.usage_limit - row.used_count))
        .collect();
    tickets
        .iter()
        .zip(found)
        .map(|(ticket, found)| {
            if let Some(ticket_id) = found.ticket_id {
                return Decision::Existing(ticket_id);
            }
            match check_one(ticket, found, codes) {
                Err(error) => Decision::Rejected(error),
                Ok(commission_minor) => {
                    if let Some(code) = ticket.payment_code.as_deref() {
                        let remaining = left.get_mut(code).expect("a checked code was locked");
                        if *remaining <= 0 {
                            return Decision::Rejected(TicketError::PaymentCodeExhausted {
                                payment_id: ticket.payment_id.clone(),
                                code: code.to_owned(),
                                usage_limit: codes[code].usage_limit,
                            });
                        }
                        *remaining -= 1;
                    }
                    Decision::Write { commission_minor }
                }
            }
        })
        .collect()
}

/// Validates one payment; returns its commission in minor units.
fn check_one(
    ticket: &TicketJob,
    found: &Found,
    codes: &HashMap<String, CodeRow>,
) -> Result<i64, TicketError> {
    let payment_id = || ticket.payment_id.clone();
    if ticket.amount.value_minor <= 0 {
        return Err(TicketError::NonPositiveAmount {
            payment_id: payment_id(),
            value_minor: ticket.amount.value_minor,
        });
    }
    let (Some(company_currency), Some(commission_bps)) =
        (found.company_currency.as_deref(), found.commission_bps)
    else {
        return Err(TicketError::UnknownCompany {
            payment_id: payment_id(),
            company_id: ticket.company_id.clone(),
        });
    };
    if company_currency != ticket.amount.currency.as_str() {
        return Err(TicketError::CurrencyMismatch {
            payment_id: payment_id(),
            company_id: ticket.company_id.clone(),
            paid: ticket.amount.currency,
            company_currency: company_currency.to_owned(),
        });
    }
    let Some(route_company_id) = found.route_company_id.as_deref() else {
        return Err(TicketError::UnknownRoute {
            payment_id: payment_id(),
            route_id: ticket.route_id.clone(),
        });
    };
    if route_company_id != ticket.company_id {
        return Err(TicketError::RouteOfAnotherCompany {
            payment_id: payment_id(),
            route_id: ticket.route_id.clone(),
            company_id: ticket.company_id.clone(),
            route_company_id: route_company_id.to_owned(),
        });
    }
    if let Some(code) = ticket.payment_code.as_deref() {
        let Some(row) = codes.get(code) else {
            return Err(TicketError::UnknownPaymentCode {
                payment_id: payment_id(),
                code: code.to_owned(),
            });
        };
        let code_owned = || code.to_owned();
        match row.status.as_str() {
            "disabled" => {
                return Err(TicketError::PaymentCodeDisabled {
                    payment_id: payment_id(),
                    code: code_owned(),
                })
            }
            "expired" => {
                return Err(TicketError::PaymentCodeExpired {
                    payment_id: payment_id(),
                    code: code_owned(),
                })
            }
            "exhausted" => {
                return Err(TicketError::PaymentCodeExhausted {
                    payment_id: payment_id(),
                    code: code_owned(),
                    usage_limit: row.usage_limit,
                })
            }
            _ => {}
        }
        if row.expired {
            return Err(TicketError::PaymentCodeExpired {
                payment_id: payment_id(),
                code: code_owned(),
            });
        }
        let route_fits = row
            .route_id
            .as_deref()
            .is_none_or(|route| route == ticket.route_id);
        if row.company_id != ticket.company_id || !route_fits {
            return Err(TicketError::PaymentCodeNotForTrip {
                payment_id: payment_id(),
                code: code_owned(),
                company_id: ticket.company_id.clone(),
                route_id: ticket.route_id.clone(),
            });
        }
    }
    Ok(commission_minor(ticket.amount.value_minor, commission_bps))
}

async fn lock_payment_codes(
    conn: &mut PgConnection,
    tickets: &[&TicketJob],
) -> Result<HashMap<String, CodeRow>, sqlx::Error> {
    let mut codes: Vec<&str> = tickets
        .iter()
        .filter_map(|t| t.payment_code.as_deref())
        .collect();
    if codes.is_empty() {
        return Ok(HashMap::new());
    }
    codes.sort_unstable();
    codes.dedup();
    let rows = sqlx::query_file!("src/ticket/lock_payment_codes.sql", &codes as &[&str])
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.code,
                CodeRow {
                    company_id: row.company_id,
                    route_id: row.route_id,
                    usage_limit: row.usage_limit,
                    used_count: row.used_count,
                    status: row.status,
                    expired: row.expired,
                },
            )
        })
        .collect())
}

async fn look_up_batch(
    conn: &mut PgConnection,
    tickets: &[&TicketJob],
) -> Result<Vec<Found>, sqlx::Error> {
    let payment_ids: Vec<&str> = tickets.iter().map(|t| t.payment_id.as_str()).collect();
    let company_ids: Vec<&str> = tickets.iter().map(|t| t.company_id.as_str()).collect();
    let route_ids: Vec<&str> = tickets.iter().map(|t| t.route_id.as_str()).collect();
    let rows = sqlx::query_file!(
        "src/ticket/look_up_batch.sql",
        &payment_ids as &[&str],
        &company_ids as &[&str],
        &route_ids as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != tickets.len() {
        return Err(sqlx::Error::Protocol(format!(
            "look_up_batch returned {} rows for {} tickets",
            rows.len(),
            tickets.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|row| Found {
            company_currency: row.currency,
            commission_bps: row.commission_bps,
            route_company_id: row.route_company_id,
            ticket_id: row.ticket_id,
        })
        .collect())
}

/// Inserts the tickets at `to_write` (position, commission); returns payment id → new
/// ticket id for those inserted.
async fn insert_tickets(
    conn: &mut PgConnection,
    tickets: &[&TicketJob],
    to_write: &[(usize, i64)],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    if to_write.is_empty() {
        return Ok(HashMap::new());
    }
    let n = to_write.len();
    let mut payment_ids = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut company_ids = Vec::with_capacity(n);
    let mut route_ids = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut phones = Vec::with_capacity(n);
    let mut amounts = Vec::with_capacity(n);
    let mut commissions = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut references = Vec::with_capacity(n);
    for &(i, commission) in to_write {
        let t = tickets[i];
        payment_ids.push(t.payment_id.as_str());
        event_ids.push(t.event_id.as_str());
        company_ids.push(t.company_id.as_str());
        route_ids.push(t.route_id.as_str());
        codes.push(t.payment_code.as_deref());
        phones.push(t.passenger_phone.as_str());
        amounts.push(t.amount.value_minor);
        commissions.push(commission);
        currencies.push(t.amount.currency.as_str());
        references.push(t.financial_transaction_reference.as_deref());
    }
    let rows = sqlx::query_file!(
        "src/ticket/insert_tickets.sql",
        &payment_ids as &[&str],
        &event_ids as &[&str],
        &company_ids as &[&str],
        &route_ids as &[&str],
        &codes as &[Option<&str>],
        &phones as &[&str],
        &amounts,
        &commissions,
        &currencies as &[&str],
        &references as &[Option<&str>],
        Actor::Worker.name(),
        action::TICKET_ISSUED,
        subject::TICKET,
        event_type::TICKET_ISSUED,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.payment_id, row.id))
        .collect())
}

/// Payment id → ticket id of existing tickets.
async fn find_tickets(
    conn: &mut PgConnection,
    payment_ids: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT payment_id, id FROM tickets WHERE payment_id = ANY($1::text[])",
        payment_ids as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.payment_id, row.id))
        .collect())
}

/// Adds the inserted tickets to their codes' usage.
async fn count_code_uses(
    conn: &mut PgConnection,
    tickets: &[&TicketJob],
    to_write: &[(usize, i64)],
    written: &HashMap<String, i64>,
) -> Result<(), sqlx::Error> {
    let mut uses: HashMap<&str, i32> = HashMap::new();
    for &(i, _) in to_write {
        let t = tickets[i];
        if let Some(code) = t.payment_code.as_deref() {
            if written.contains_key(&t.payment_id) {
                *uses.entry(code).or_default() += 1;
            }
        }
    }
    if uses.is_empty() {
        return Ok(());
    }
    let mut uses: Vec<(&str, i32)> = uses.into_iter().collect();
    uses.sort_unstable();
    let (codes, counts): (Vec<&str>, Vec<i32>) = uses.into_iter().unzip();
    sqlx::query_file!("src/ticket/count_code_uses.sql", &codes as &[&str], &counts)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
