//! Issuing tickets: a batch of ticket jobs becomes tickets, payment-code usage and
//! commission-transfer jobs inside the transaction that claimed the jobs, and each job learns
//! its own outcome.
//!
//! ```text
//! (the batch worker: BEGIN, claim_locked)
//! SAVEPOINT
//!   lock_payment_codes   the batch's codes, FOR UPDATE in code order
//!   look_up_batch        companies, routes, existing tickets and each code's last use number,
//!                        set-based
//!   (Rust)               reject what cannot become a ticket; number each code's new uses up
//!                        to its limit
//!   insert_tickets       one multi-row INSERT … ON CONFLICT (payment_id) DO NOTHING, and
//!                        the inserted tickets' `ticket.issued` audit and outbox events, in
//!                        one statement
//!   exhaust_codes        the codes whose last use this batch issued (rare; skipped otherwise)
//!   insert_new_jobs      one commission_transfers job per inserted ticket (its key is new)
//! RELEASE SAVEPOINT
//! (the batch worker: finish_locked, COMMIT)
//! ```
//!
//! A ticket never exists without its transfer job, its numbered code use and its finished
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
    status: String,
    expired: bool,
}

/// What the database knows about one ticket of the batch.
struct Found {
    company_currency: Option<String>,
    commission_bps: Option<i32>,
    route_company_id: Option<String>,
    ticket_id: Option<i64>,
    /// The highest use number among the tickets of the payment's code (NULL: no code, or
    /// no use yet), read after the code was locked.
    code_used: Option<i32>,
}

/// What becomes of one payment of the batch.
enum Decision {
    /// The payment already has its ticket.
    Existing(i64),
    Rejected(TicketError),
    /// Write the ticket.
    Write(NewTicket),
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

    let to_write: Vec<(usize, NewTicket)> = decisions
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            Decision::Write(new) => Some((i, *new)),
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

    exhaust_codes(&mut tx, &unique, &to_write, &written, &codes).await?;
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
            Decision::Write(_) => {
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

/// What a payment's ticket is written with, beyond the payment itself.
#[derive(Clone, Copy)]
struct NewTicket {
    commission_minor: i64,
    /// Its use number of the payment's code (None: no code).
    code_use: Option<i32>,
}

/// Checks each payment against what the database holds, in input order; numbers each code's
/// new uses after its last one, so the batch never issues more than a code has left.
fn decide_many(
    tickets: &[&TicketJob],
    found: &[Found],
    codes: &HashMap<String, CodeRow>,
) -> Vec<Decision> {
    // Every ticket of a code read the same last use: the code was locked before the read.
    let mut last_use: HashMap<&str, i32> = tickets
        .iter()
        .zip(found)
        .filter_map(|(t, f)| Some((t.payment_code.as_deref()?, f.code_used.unwrap_or(0))))
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
                    let Some(code) = ticket.payment_code.as_deref() else {
                        return Decision::Write(NewTicket {
                            commission_minor,
                            code_use: None,
                        });
                    };
                    let usage_limit = codes[code].usage_limit;
                    let last = last_use.get_mut(code).expect("a ticket's code was read");
                    if *last >= usage_limit {
                        return Decision::Rejected(TicketError::PaymentCodeExhausted {
                            payment_id: ticket.payment_id.clone(),
                            code: code.to_owned(),
                            usage_limit,
                        });
                    }
                    *last += 1;
                    Decision::Write(NewTicket {
                        commission_minor,
                        code_use: Some(*last),
                    })
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
    let codes: Vec<Option<&str>> = tickets.iter().map(|t| t.payment_code.as_deref()).collect();
    let rows = sqlx::query_file!(
        "src/ticket/look_up_batch.sql",
        &payment_ids as &[&str],
        &company_ids as &[&str],
        &route_ids as &[&str],
        &codes as &[Option<&str>],
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
            code_used: row.code_used,
        })
        .collect())
}

/// Inserts the tickets of `to_write` (position in `tickets`, what to write); returns payment id
/// → new ticket id for those inserted.
async fn insert_tickets(
    conn: &mut PgConnection,
    tickets: &[&TicketJob],
    to_write: &[(usize, NewTicket)],
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
    let mut code_uses = Vec::with_capacity(n);
    for &(i, new) in to_write {
        let t = tickets[i];
        payment_ids.push(t.payment_id.as_str());
        event_ids.push(t.event_id.as_str());
        company_ids.push(t.company_id.as_str());
        route_ids.push(t.route_id.as_str());
        codes.push(t.payment_code.as_deref());
        phones.push(t.passenger_phone.as_str());
        amounts.push(t.amount.value_minor);
        commissions.push(new.commission_minor);
        currencies.push(t.amount.currency.as_str());
        references.push(t.financial_transaction_reference.as_deref());
        code_uses.push(new.code_use);
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
        &code_uses as &[Option<i32>],
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

/// Marks exhausted the codes whose last use this batch issued. Most batches take no code's
/// last use and send nothing: the code rows are written once in their lifetime, not per use.
async fn exhaust_codes(
    conn: &mut PgConnection,
    tickets: &[&TicketJob],
    to_write: &[(usize, NewTicket)],
    written: &HashMap<String, i64>,
    codes: &HashMap<String, CodeRow>,
) -> Result<(), sqlx::Error> {
    let mut exhausted: Vec<&str> = to_write
        .iter()
        .filter(|(i, _)| written.contains_key(&tickets[*i].payment_id))
        .filter_map(|(i, new)| {
            let code = tickets[*i].payment_code.as_deref()?;
            (new.code_use? >= codes[code].usage_limit).then_some(code)
        })
        .collect();
    if exhausted.is_empty() {
        return Ok(());
    }
    exhausted.sort_unstable();
    exhausted.dedup();
    sqlx::query_file!("src/ticket/exhaust_codes.sql", &exhausted as &[&str])
        .execute(&mut *conn)
        .await?;
    Ok(())
}
