//! The `commission_transfers` handler: one run moves a ticket's transfer one step forward.
//!
//! 1. Load the ticket and its transfer row; write the row (with the idempotency key and the
//!    exact request body) if there is none yet, before anything is sent.
//! 2. Completed: done. Failed: waits for an operator (`worker retry-transfer`).
//! 3. Circuit open, or the global rate limit reached: snooze (no attempt spent).
//! 4. No Monime transfer id yet: `POST` the stored body under the stored key (a repeat after a
//!    crash or a lost answer gets the original transfer back). Otherwise `GET` its status.
//!    The create and the recording of its answer are shielded from cancellation: a job
//!    cancelled while Monime holds the request still records the transfer, then stops.
//! 5. `pending`/`processing`: snooze and poll again after a growing delay. `completed`: record
//!    it. `failed`: record it with Monime's reason, fail for good. Connection errors,
//!    timeouts, 429 and 5xx: durable retry (429 after `Retry-After`). Other 4xx: fail for good.

use std::time::Duration;

use crate::db::Db;
use rand::Rng;

use super::breaker::Breaker;
use super::error::TransferError;
use super::monime::{InternalTransfer, MonimeClient, MonimeError, TransferStatus};
use super::rate_limit::GlobalRateLimit;
use super::store::{Answer, RowStatus, TransferRow as Row, TransferStore};
use super::TransferJob;
use crate::audit::{action, subject, Actor};
use crate::engine::{JobError, JobMeta, Outcome};
use crate::events::event_type;

pub const DEFAULT_POLL_INITIAL: Duration = Duration::from_millis(500);
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_POLL_INLINE: Duration = Duration::from_millis(250);

pub const HELD_BACK: &str = "poda_transfer_held_back_total";
pub const MONIME_CALLS: &str = "poda_transfer_monime_calls_total";

#[derive(Debug, Clone)]
pub struct TransferSettings {
    /// `MONIME_PLATFORM_ACCOUNT_ID`: where commissions go.
    pub platform_account_id: String,
    /// First status poll after Monime accepted a transfer; each later poll waits twice as long.
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// After a create Monime answered `pending`, wait this long in the handler and read the
    /// status once before snoozing (most transfers finish within it, which saves a claim and a
    /// completion); zero snoozes at once.
    pub poll_inline: Duration,
}

/// What every transfer handler of a process shares: the pools, the row store, one Monime
/// client (one connection pool), one circuit breaker and the global rate limit.
#[derive(Clone)]
pub struct TransferContext {
    /// Durable writes: failures and rate-limit slots.
    pub pool: Db,
    /// Status updates that may commit asynchronously (`synchronous_commit = off`): losing one
    /// in a server crash only makes the job ask Monime again under the same key.
    pub status_pool: Db,
    /// The rows (written durably before the first call) and the common answers, batched.
    pub store: TransferStore,
    pub client: MonimeClient,
    pub breaker: Breaker,
    pub rate_limit: Option<GlobalRateLimit>,
    pub settings: TransferSettings,
}

/// Runs one step of `job`'s transfer.
pub async fn handle(
    ctx: &TransferContext,
    meta: &JobMeta,
    job: TransferJob,
) -> Result<Outcome, JobError> {
    let ticket_id = job.ticket_id;
    let Some(row) = ctx.store.load_or_create(ticket_id).await? else {
        return Ok(Outcome::Done);
    };
    match row.status {
        RowStatus::Completed => return Ok(Outcome::Done),
        RowStatus::Failed => {
            return Err(TransferError::AwaitingOperator {
                ticket_id,
                reason: row
                    .last_error
                    .unwrap_or_else(|| "no reason kept".to_owned()),
            }
            .into())
        }
        RowStatus::Pending | RowStatus::Processing => {}
    }

    let permit = match ctx.breaker.acquire() {
        Ok(permit) => permit,
        Err(wait) => {
            metrics::counter!(HELD_BACK, "reason" => "breaker").increment(1);
            tracing::debug!(
                ticket_id,
                wait_ms = wait.as_millis() as u64,
                "circuit open: transfer held back"
            );
            return Ok(Outcome::Snooze(jittered(
                wait.max(Duration::from_millis(50)),
            )));
        }
    };
    if row.monime_transfer_id.is_none() {
        if let Some(limit) = &ctx.rate_limit {
            if let Some(wait) = pace(ctx, limit, &row)
                .await
                .map_err(|e| TransferError::database(ticket_id, e))?
            {
                drop(permit);
                metrics::counter!(HELD_BACK, "reason" => "rate_limit").increment(1);
                return Ok(Outcome::Snooze(wait));
            }
        }
        if meta.is_cancelled() {
            // Cancelled before anything was sent: nothing to record.
            return Ok(Outcome::Done);
        }
        // Shielded from cancellation: once the create is on its way, Monime's answer is
        // recorded whatever happens to this run. The section runs as a task of its own, which
        // a cancelled run that is dropped does not take down with it.
        let (ctx, meta) = (ctx.clone(), meta.clone());
        let shielded =
            tokio::spawn(async move { call_and_record(&ctx, &meta, ticket_id, row, permit).await });
        return match shielded.await {
            Ok(outcome) => outcome,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(JobError::retryable(error)),
        };
    }
    call_and_record(ctx, meta, ticket_id, row, permit).await
}

/// Asks Monime (creates the transfer, or reads its status once it has an id) and records the
/// answer.
async fn call_and_record(
    ctx: &TransferContext,
    meta: &JobMeta,
    ticket_id: i64,
    row: Row,
    permit: super::breaker::Permit,
) -> Result<Outcome, JobError> {
    let (call, result) = match row.monime_transfer_id.as_deref() {
        Some(id) => ("get", ctx.client.get_internal_transfer(id).await),
        None => {
            let created = ctx
                .client
                .create_internal_transfer(&row.key, &row.body)
                .await;
            ("create", created)
        }
    };
    let transient = matches!(&result, Err(e) if e.is_transient());
    permit.record(!transient);
    metrics::counter!(MONIME_CALLS, "call" => call, "result" => outcome_label(&result))
        .increment(1);
    let result = match result {
        // A cancelled run records the answer it has and stops: no status read in between.
        Ok(transfer)
            if call == "create" && is_unfinished(transfer.status) && !meta.is_cancelled() =>
        {
            Ok(poll_inline(ctx, transfer).await)
        }
        other => other,
    };

    match result {
        Ok(transfer) => on_answer(ctx, ticket_id, &row, transfer).await,
        Err(error) if error.is_transient() => {
            let last = meta.attempt >= meta.retry.max_attempts;
            record_transient(&ctx.status_pool, &row, &error, last)
                .await
                .map_err(|e| TransferError::database(ticket_id, e))?;
            Err(TransferError::Transient {
                ticket_id,
                source: error,
            }
            .into())
        }
        Err(error) => {
            record_failed(
                &ctx.pool,
                &row,
                Failure {
                    code: "rejected",
                    reason: &error.to_string(),
                    monime_transfer_id: None,
                    monime_status: None,
                    last_retry: false,
                },
            )
            .await
            .map_err(|e| TransferError::database(ticket_id, e))?;
            Err(TransferError::Rejected {
                ticket_id,
                source: error,
            }
            .into())
        }
    }
}

fn answer(row: &Row, transfer: &InternalTransfer) -> Answer {
    Answer {
        row_id: row.id,
        key: row.key.clone(),
        monime_transfer_id: transfer.id.clone(),
        monime_status: transfer.status.as_str().to_owned(),
    }
}

/// Under the global rate limit: `None` to create now, or how long to wait for the slot this
/// transfer holds. A reserved slot is kept in the row (`call_not_before`), so a waiting job
/// asks the limit once per call, however long the backlog.
async fn pace(
    ctx: &TransferContext,
    limit: &GlobalRateLimit,
    row: &Row,
) -> Result<Option<Duration>, sqlx::Error> {
    match row.slot_in_s {
        // Woken before its slot: wait for the rest.
        Some(s) if s > 0.001 => return Ok(Some(Duration::from_secs_f64(s))),
        // Its slot has come: use it, once.
        Some(_) => {
            sqlx::query!(
                "UPDATE commission_transfers SET call_not_before = NULL WHERE id = $1",
                row.id,
            )
            .execute(&ctx.status_pool)
            .await?;
            return Ok(None);
        }
        None => {}
    }
    let Some(wait) = limit.reserve().await? else {
        return Ok(None);
    };
    sqlx::query!(
        "UPDATE commission_transfers \
         SET call_not_before = now() + $2 * interval '1 second', updated_at = now() WHERE id = $1",
        row.id,
        wait.as_secs_f64(),
    )
    .execute(&ctx.pool)
    .await?;
    Ok(Some(wait))
}

fn is_unfinished(status: TransferStatus) -> bool {
    matches!(status, TransferStatus::Pending | TransferStatus::Processing)
}

/// One status read after `poll_inline`, if the circuit allows; any trouble keeps the answer
/// Monime gave to the create (the job then snoozes and polls later).
async fn poll_inline(ctx: &TransferContext, accepted: InternalTransfer) -> InternalTransfer {
    if ctx.settings.poll_inline.is_zero() {
        return accepted;
    }
    tokio::time::sleep(ctx.settings.poll_inline).await;
    let Ok(permit) = ctx.breaker.acquire() else {
        return accepted;
    };
    let read = ctx.client.get_internal_transfer(&accepted.id).await;
    permit.record(!matches!(&read, Err(e) if e.is_transient()));
    metrics::counter!(MONIME_CALLS, "call" => "get", "result" => outcome_label(&read)).increment(1);
    match read {
        Ok(transfer) if transfer.id == accepted.id => transfer,
        _ => accepted,
    }
}

async fn on_answer(
    ctx: &TransferContext,
    ticket_id: i64,
    row: &Row,
    transfer: InternalTransfer,
) -> Result<Outcome, JobError> {
    let db = |e: sqlx::Error| TransferError::database(ticket_id, e);
    match transfer.status {
        TransferStatus::Completed => {
            let answer = answer(row, &transfer);
            ctx.store.record_completed(ticket_id, answer).await?;
            Ok(Outcome::Done)
        }
        TransferStatus::Pending | TransferStatus::Processing => {
            let answer = answer(row, &transfer);
            match ctx.store.record_unfinished(ticket_id, answer).await? {
                Some(polls) => Ok(Outcome::Snooze(poll_delay(&ctx.settings, polls))),
                // The row moved on without this run (finished, or retried by an operator
                // under a new key): nothing of this run's is left to do.
                None => {
                    tracing::info!(
                        ticket_id,
                        "transfer row changed under a stale run; leaving it"
                    );
                    Ok(Outcome::Done)
                }
            }
        }
        TransferStatus::Failed => {
            let (code, message) = match transfer.failure_detail {
                Some(detail) => (detail.code, detail.message),
                None => ("unknown".to_owned(), None),
            };
            let error = TransferError::FailedAtMonime {
                ticket_id,
                code: code.clone(),
                message,
            };
            record_failed(
                &ctx.pool,
                row,
                Failure {
                    code: &code,
                    reason: &error.to_string(),
                    monime_transfer_id: Some(&transfer.id),
                    monime_status: Some("failed"),
                    last_retry: false,
                },
            )
            .await
            .map_err(db)?;
            Err(error.into())
        }
    }
}

async fn record_transient(
    pool: &Db,
    row: &Row,
    error: &MonimeError,
    last_attempt: bool,
) -> Result<(), sqlx::Error> {
    let text = error.to_string();
    if last_attempt {
        // Out of retries: the row waits for an operator. Monime may or may not have the
        // transfer, so an operator retry keeps the same key (see `retry_failed_transfer`).
        record_failed(
            pool,
            row,
            Failure {
                code: "retries_exhausted",
                reason: &format!("no retries left: {text}"),
                monime_transfer_id: None,
                monime_status: None,
                last_retry: true,
            },
        )
        .await?;
    } else {
        sqlx::query!(
            "UPDATE commission_transfers SET retry_count = retry_count + 1, last_error = $2, \
             updated_at = now() \
             WHERE id = $1 AND idempotency_key = $3 AND status IN ('pending', 'processing')",
            row.id,
            text,
            row.key.as_str(),
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// How a transfer failed for good.
struct Failure<'a> {
    code: &'a str,
    reason: &'a str,
    /// Monime's transfer id, when its answer named one; `None` keeps the row's.
    monime_transfer_id: Option<&'a str>,
    /// Monime's status, when it gave one; `None` keeps the row's.
    monime_status: Option<&'a str>,
    /// The failure is the last retry's: it counts in `retry_count`.
    last_retry: bool,
}

/// Marks the run's row failed, with its audit and outbox events, in one statement.
async fn record_failed(pool: &Db, row: &Row, failure: Failure<'_>) -> Result<(), sqlx::Error> {
    sqlx::query_file!(
        "src/transfer/record_failed.sql",
        row.id,
        row.key.as_str(),
        failure.code,
        failure.reason,
        failure.monime_transfer_id,
        failure.monime_status,
        i32::from(failure.last_retry),
        Actor::Worker.name(),
        action::TRANSFER_FAILED,
        subject::TRANSFER,
        event_type::TRANSFER_FAILED,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The wait before status poll number `polls` (1-based): doubles from the initial delay up to
/// the cap, with jitter.
pub fn poll_delay(settings: &TransferSettings, polls: i32) -> Duration {
    let exponent = polls.saturating_sub(1).clamp(0, 20) as u32;
    let nominal = settings
        .poll_initial
        .saturating_mul(1u32 << exponent)
        .min(settings.poll_max);
    jittered(nominal)
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

fn outcome_label(result: &Result<InternalTransfer, MonimeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(MonimeError::Transport(_)) => "transport",
        Err(MonimeError::Decode { .. }) => "decode",
        Err(MonimeError::Status { status, .. }) if *status == 429 => "429",
        Err(MonimeError::Status { status, .. }) if *status >= 500 => "5xx",
        Err(MonimeError::Status { .. }) => "4xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delay_grows_to_the_cap() {
        let settings = TransferSettings {
            platform_account_id: "fa".into(),
            poll_initial: Duration::from_millis(100),
            poll_max: Duration::from_millis(1000),
            poll_inline: Duration::ZERO,
        };
        let d1 = poll_delay(&settings, 1).as_millis();
        let d3 = poll_delay(&settings, 3).as_millis();
        let d9 = poll_delay(&settings, 9).as_millis();
        assert!((90..=110).contains(&d1), "{d1}");
        assert!((360..=440).contains(&d3), "{d3}");
        assert!((900..=1100).contains(&d9), "{d9}");
    }
}
