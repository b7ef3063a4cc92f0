//! The transfer rows, read and written for many handlers at once.
//!
//! Every transfer run reads its row (writing it first, with key and body, if there is none)
//! and, in the common case, records Monime's answer. One statement per run for each of those
//! made single-row statements, and their round trips, most of the database's work in a run of
//! thousands of transfers. The store gathers the runs of one moment into one statement each
//! ([`crate::batch`]): the load and the insert of many rows, and the completion or poll
//! record of many answers. The rare outcomes (failures, rate-limit slots) stay single-row in
//! the handler.
//!
//! A row's `transfer.created` and `transfer.completed` audit events are written by the
//! statement that writes the row, so they commit with it, batch and all.
//!
//! Durability is unchanged: rows and their request bodies are written on the durable pool
//! before any call is made; answers are recorded on the status pool, whose commits may be
//! asynchronous (losing one only makes the job ask Monime again under the same key).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::TransferError;
use super::monime::{AccountRef, Amount, CreateTransfer, IdempotencyKey};
use crate::audit::{action, subject, Actor};
use crate::batch::{self, BatchHandle, BatcherConfig};
use crate::events::event_type;
use crate::sqlstate::may_be_caused_by_a_row;

/// Statements of each kind being written at once (each holds a connection).
pub const ROW_BATCHES_IN_FLIGHT: usize = 4;

/// Rows or answers per statement, and the wait for company: short next to a Monime call.
const BATCHER: BatcherConfig = BatcherConfig {
    batch: 100,
    delay: Duration::from_millis(2),
    in_flight: ROW_BATCHES_IN_FLIGHT,
    backlog: 2_000,
};

/// The `commission_transfer_status` enum of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "commission_transfer_status", rename_all = "lowercase")]
pub enum RowStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

/// A transfer row as a run works with it: a snapshot taken when the run started. Every write
/// of the run's outcome is fenced by the snapshot's idempotency key and by the row still being
/// unfinished, so a run that stalled past its lease cannot turn a completed row back, or
/// mark a newer generation (an operator retry under a new key) failed with an old answer.
#[derive(Debug, Clone)]
pub struct TransferRow {
    pub id: i64,
    pub status: RowStatus,
    pub key: IdempotencyKey,
    pub body: String,
    pub monime_transfer_id: Option<String>,
    pub monime_status: Option<String>,
    pub last_error: Option<String>,
    /// Seconds until the rate-limit slot this transfer holds (negative: it has come).
    pub slot_in_s: Option<f64>,
}

#[derive(Debug)]
struct Loaded {
    ticket_id: i64,
    company_id: String,
    commission_minor: i64,
    currency: String,
    monime_account_id: String,
    transfer_id: Option<i64>,
    status: Option<RowStatus>,
    idempotency_key: Option<String>,
    request_body: Option<String>,
    monime_transfer_id: Option<String>,
    monime_status: Option<String>,
    last_error: Option<String>,
    slot_in_s: Option<f64>,
}

/// Monime's answer for a row, to record.
#[derive(Debug)]
pub struct Answer {
    pub row_id: i64,
    pub key: IdempotencyKey,
    pub monime_transfer_id: String,
    /// Monime's status (`pending` or `processing` for [`TransferStore::record_unfinished`]).
    pub monime_status: String,
}

type Shared<T> = Result<T, Arc<sqlx::Error>>;

/// Where transfer handlers read their rows and record Monime's answers. Cheap to clone.
#[derive(Clone)]
pub struct TransferStore {
    rows: BatchHandle<i64, Result<Option<TransferRow>, TransferError>>,
    completions: BatchHandle<Answer, Shared<()>>,
    unfinished: BatchHandle<Answer, Shared<Option<i32>>>,
}

impl TransferStore {
    /// Starts the store's batchers: rows on the durable `pool`, answers on `status_pool`.
    /// Cancelling `stop` ends them once what was sent is written.
    pub fn start(
        pool: Db,
        status_pool: Db,
        platform_account_id: String,
        stop: CancellationToken,
    ) -> (TransferStore, Vec<JoinHandle<()>>) {
        let platform = Arc::new(platform_account_id);
        let (rows, loading) = batch::start("transfer_rows", BATCHER, stop.clone(), {
            move |tickets| {
                let pool = pool.clone();
                let platform = platform.clone();
                async move { load_or_create_many(&pool, &platform, tickets).await }
            }
        });
        let completing = status_pool.clone();
        let (completions, completing) = batch::start(
            "transfer_completions",
            BATCHER,
            stop.clone(),
            move |answers| {
                let pool = completing.clone();
                async move { record_completed_many(&pool, answers).await }
            },
        );
        let (unfinished, polling) = batch::start("transfer_polls", BATCHER, stop, move |answers| {
            let pool = status_pool.clone();
            async move { record_unfinished_many(&pool, answers).await }
        });
        let store = TransferStore {
            rows,
            completions,
            unfinished,
        };
        (store, vec![loading, completing, polling])
    }

    /// The ticket's transfer row, written first (key and exact request body) if there is
    /// none. `None`: nothing to transfer (a zero commission).
    pub async fn load_or_create(
        &self,
        ticket_id: i64,
    ) -> Result<Option<TransferRow>, TransferError> {
        self.rows
            .submit(ticket_id)
            .await
            .map_err(|_| TransferError::Stopped { ticket_id })?
    }

    /// Records that Monime completed the row's transfer.
    pub async fn record_completed(
        &self,
        ticket_id: i64,
        answer: Answer,
    ) -> Result<(), TransferError> {
        self.completions
            .submit(answer)
            .await
            .map_err(|_| TransferError::Stopped { ticket_id })?
            .map_err(|e| TransferError::database_shared(ticket_id, e))
    }

    /// Records that Monime has not finished the row's transfer, counting the poll; returns the
    /// polls so far, or `None` if the row moved on without this run.
    pub async fn record_unfinished(
        &self,
        ticket_id: i64,
        answer: Answer,
    ) -> Result<Option<i32>, TransferError> {
        self.unfinished
            .submit(answer)
            .await
            .map_err(|_| TransferError::Stopped { ticket_id })?
            .map_err(|e| TransferError::database_shared(ticket_id, e))
    }
}

async fn load_many(pool: &Db, tickets: &[i64]) -> Result<HashMap<i64, Loaded>, sqlx::Error> {
    let loaded = sqlx::query_file_as!(Loaded, "src/transfer/load_transfers.sql", tickets)
        .fetch_all(pool)
        .await?;
    Ok(loaded.into_iter().map(|l| (l.ticket_id, l)).collect())
}

/// Loads the rows of `tickets` and writes those that do not exist yet; one result per ticket.
async fn load_or_create_many(
    pool: &Db,
    platform_account_id: &str,
    tickets: Vec<i64>,
) -> Vec<Result<Option<TransferRow>, TransferError>> {
    let mut loaded = match load_many(pool, &tickets).await {
        Ok(loaded) => loaded,
        Err(e) => return all_failed(&tickets, e),
    };
    // The rows to write: tickets with a commission and no row yet (each once).
    let mut new_rows: Vec<NewRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for ticket_id in &tickets {
        if let Some(l) = loaded.get(ticket_id) {
            let unwritten = l.transfer_id.is_none() && l.commission_minor != 0;
            if unwritten && seen.insert(*ticket_id) {
                new_rows.push(NewRow::of(l, platform_account_id));
            }
        }
    }
    let mut written: HashMap<i64, TransferRow> = HashMap::new();
    let mut refused: HashMap<i64, Arc<sqlx::Error>> = HashMap::new();
    if !new_rows.is_empty() {
        let inserted = match insert_many(pool, platform_account_id, &new_rows).await {
            Ok(ids) => ids,
            // Connection or server trouble: every run of the batch retries.
            Err(e) if !may_be_caused_by_a_row(&e) => return all_failed(&tickets, e),
            Err(e) if new_rows.len() == 1 => {
                refused.insert(new_rows[0].ticket_id, Arc::new(e));
                HashMap::new()
            }
            // One row the database refuses must not fail the runs it shares a batch with:
            // write them one by one, so each run gets its own answer.
            Err(_) => {
                let mut ids = HashMap::new();
                for row in &new_rows {
                    match insert_many(pool, platform_account_id, std::slice::from_ref(row)).await {
                        Ok(id) => ids.extend(id),
                        Err(e) => {
                            refused.insert(row.ticket_id, Arc::new(e));
                        }
                    }
                }
                ids
            }
        };
        let mut raced = Vec::new();
        for row in new_rows {
            match inserted.get(&row.ticket_id) {
                Some(&id) => {
                    written.insert(row.ticket_id, row.into_row(id));
                }
                None if refused.contains_key(&row.ticket_id) => {}
                // Another run wrote it meanwhile: use that one.
                None => raced.push(row.ticket_id),
            }
        }
        if !raced.is_empty() {
            match load_many(pool, &raced).await {
                Ok(again) => loaded.extend(again),
                Err(e) => return all_failed(&tickets, e),
            }
        }
    }
    tickets
        .iter()
        .map(|&ticket_id| {
            if let Some(row) = written.get(&ticket_id) {
                return Ok(Some(row.clone()));
            }
            if let Some(e) = refused.get(&ticket_id) {
                return Err(TransferError::database_shared(ticket_id, e.clone()));
            }
            let l = loaded
                .get(&ticket_id)
                .ok_or(TransferError::TicketNotFound { ticket_id })?;
            if l.transfer_id.is_none() && l.commission_minor == 0 {
                tracing::debug!(
                    ticket_id,
                    "no commission on this ticket: nothing to transfer"
                );
                return Ok(None);
            }
            row_of(l)
                .map(Some)
                .ok_or(TransferError::UnreadableRow { ticket_id })
        })
        .collect()
}

fn all_failed<T>(tickets: &[i64], e: sqlx::Error) -> Vec<Result<T, TransferError>> {
    let e = Arc::new(e);
    tickets
        .iter()
        .map(|&ticket_id| Err(TransferError::database_shared(ticket_id, e.clone())))
        .collect()
}

/// A row to write, with its key and body built once.
struct NewRow {
    ticket_id: i64,
    company_id: String,
    source_account_id: String,
    amount_minor: i64,
    currency: String,
    key: IdempotencyKey,
    body: String,
}

impl NewRow {
    fn of(l: &Loaded, platform_account_id: &str) -> NewRow {
        NewRow {
            ticket_id: l.ticket_id,
            company_id: l.company_id.clone(),
            source_account_id: l.monime_account_id.clone(),
            amount_minor: l.commission_minor,
            currency: l.currency.clone(),
            key: IdempotencyKey::for_ticket(l.ticket_id, 1),
            body: request_body(l, platform_account_id),
        }
    }

    fn into_row(self, id: i64) -> TransferRow {
        TransferRow {
            id,
            status: RowStatus::Pending,
            key: self.key,
            body: self.body,
            monime_transfer_id: None,
            monime_status: None,
            last_error: None,
            slot_in_s: None,
        }
    }
}

/// Writes `rows` in one statement; returns the ids of those written, by ticket.
async fn insert_many(
    pool: &Db,
    platform_account_id: &str,
    rows: &[NewRow],
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    let column = |f: fn(&NewRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let inserted = sqlx::query_file!(
        "src/transfer/insert_transfers.sql",
        &rows.iter().map(|r| r.ticket_id).collect::<Vec<_>>(),
        &column(|r| r.company_id.clone()),
        &column(|r| r.source_account_id.clone()),
        &rows.iter().map(|r| r.amount_minor).collect::<Vec<_>>(),
        &column(|r| r.currency.clone()),
        &column(|r| r.key.as_str().to_owned()),
        &column(|r| r.body.clone()),
        platform_account_id,
        Actor::Worker.name(),
        action::TRANSFER_CREATED,
        subject::TRANSFER,
    )
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().map(|r| (r.ticket_id, r.id)).collect())
}

fn row_of(loaded: &Loaded) -> Option<TransferRow> {
    Some(TransferRow {
        id: loaded.transfer_id?,
        status: loaded.status?,
        // The stored key was valid when written (a CHECK bounds its length).
        key: IdempotencyKey::parse(loaded.idempotency_key.clone()?).ok()?,
        body: loaded.request_body.clone()?,
        monime_transfer_id: loaded.monime_transfer_id.clone(),
        monime_status: loaded.monime_status.clone(),
        last_error: loaded.last_error.clone(),
        slot_in_s: loaded.slot_in_s,
    })
}

/// The create request's exact bytes: built once, when the row is written.
fn request_body(loaded: &Loaded, platform_account_id: &str) -> String {
    let mut metadata = serde_json::Map::new();
    metadata.insert("ticket_id".into(), loaded.ticket_id.to_string().into());
    metadata.insert("company_id".into(), loaded.company_id.clone().into());
    let body = CreateTransfer {
        amount: Amount {
            currency: loaded.currency.clone(),
            value: loaded.commission_minor,
        },
        source_financial_account: AccountRef {
            id: loaded.monime_account_id.clone(),
        },
        destination_financial_account: AccountRef {
            id: platform_account_id.to_owned(),
        },
        description: format!("Commission for ticket {}", loaded.ticket_id),
        metadata,
    };
    serde_json::to_string(&body).expect("a transfer request serialises")
}

/// The answers' columns, sorted by row id so concurrent batches lock shared rows in one order.
fn answer_columns(mut answers: Vec<Answer>) -> (Vec<i64>, Vec<String>, Vec<String>, Vec<String>) {
    answers.sort_by_key(|a| a.row_id);
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for a in answers {
        columns.0.push(a.row_id);
        columns.1.push(a.monime_transfer_id);
        columns.2.push(a.monime_status);
        columns.3.push(a.key.as_str().to_owned());
    }
    columns
}

async fn record_completed_many(pool: &Db, answers: Vec<Answer>) -> Vec<Shared<()>> {
    let n = answers.len();
    let (ids, monime_ids, _, keys) = answer_columns(answers);
    let result = sqlx::query_file!(
        "src/transfer/record_completed.sql",
        &ids,
        &monime_ids,
        &keys,
        Actor::Worker.name(),
        action::TRANSFER_COMPLETED,
        subject::TRANSFER,
        event_type::TRANSFER_COMPLETED,
    )
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(Arc::new);
    vec![result; n]
}

async fn record_unfinished_many(pool: &Db, answers: Vec<Answer>) -> Vec<Shared<Option<i32>>> {
    let order: Vec<i64> = answers.iter().map(|a| a.row_id).collect();
    let (ids, monime_ids, statuses, keys) = answer_columns(answers);
    let polled = sqlx::query_file!(
        "src/transfer/record_unfinished.sql",
        &ids,
        &monime_ids,
        &statuses,
        &keys,
    )
    .fetch_all(pool)
    .await;
    match polled {
        Ok(polled) => {
            let polls: HashMap<i64, i32> = polled.into_iter().map(|r| (r.id, r.polls)).collect();
            order.iter().map(|id| Ok(polls.get(id).copied())).collect()
        }
        Err(e) => {
            let e = Arc::new(e);
            order.iter().map(|_| Err(e.clone())).collect()
        }
    }
}
