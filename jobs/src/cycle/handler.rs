//! The fan-out: keyset chunks of `INSERT … SELECT`, each committed with the cycle's progress
//! and cursor, then activation with one notification job per agent.

use std::time::Instant;

use crate::audit::{self, action, subject, Actor, Event};
use crate::db::Db;
use crate::events::{self, event_type};

use crate::engine::outcome::error_chain;
use crate::engine::{enqueue_many, JobError, JobMeta, Outcome};
use crate::notification::AgentSummaryJob;
use crate::ticket::{Currency, Money};

use super::error::CycleError;
use super::{CycleConfig, CycleId, CycleJob, CycleStatus};

/// Runs one fan-out job. Idempotent: a settled cycle is left alone, and an unsettled one
/// continues from its last committed chunk. A permanent error, or a retryable one on the
/// last attempt, marks the cycle `Failed` with the reason. If that update is lost while the
/// job still ends for good, the next reader of the cycle marks it Failed
/// ([`super::abandoned`]).
#[tracing::instrument(skip_all, fields(cycle.id = %job.cycle_id, job.id = %meta.id, job.attempt = meta.attempt))]
pub async fn handle(
    pool: &Db,
    config: &CycleConfig,
    meta: &JobMeta,
    job: CycleJob,
) -> Result<Outcome, JobError> {
    let id = job.cycle_id;
    let error = match fan_out(pool, config, id).await {
        Ok(()) => return Ok(Outcome::Done),
        Err(error) => error,
    };
    let last_attempt = meta.attempt >= meta.retry.max_attempts;
    if error.is_permanent() || last_attempt {
        let reason = error_chain(&error);
        tracing::error!(error = %reason, "fan-out failed for good; marking the cycle Failed");
        if let Err(mark) = mark_failed(pool, id, &reason, &Actor::Worker).await {
            tracing::warn!(error = %mark, "could not mark the cycle Failed; retrying");
            if !last_attempt {
                return Err(JobError::retryable(error));
            }
        }
        return Err(JobError::permanent(error));
    }
    tracing::warn!(error = %error_chain(&error), "fan-out interrupted; it will resume");
    Err(error.into())
}

async fn fan_out(pool: &Db, config: &CycleConfig, id: CycleId) -> Result<(), CycleError> {
    let db = CycleError::database;
    sqlx::query_file!("src/cycle/start_fan_out.sql", id.0)
        .execute(pool)
        .await
        .map_err(db(id))?;
    let status = sqlx::query_scalar!(
        "SELECT status AS \"status: CycleStatus\" FROM contribution_cycles WHERE id = $1",
        id.0,
    )
    .fetch_optional(pool)
    .await
    .map_err(db(id))?;
    match status {
        None => return Err(CycleError::NotFound { id }),
        Some(CycleStatus::Initializing) => {}
        Some(settled) => {
            tracing::info!(status = %settled, "cycle already settled; nothing to do");
            return Ok(());
        }
    }

    let started = Instant::now();
    let mut chunks = 0u64;
    loop {
        let chunk = sqlx::query_file!("src/cycle/fan_out_chunk.sql", id.0, config.chunk_size)
            .fetch_one(pool)
            .await
            .map_err(db(id))?;
        if !chunk.live {
            tracing::info!("cycle settled by another run");
            return Ok(());
        }
        if chunk.scanned == 0 {
            break;
        }
        chunks += 1;
        tracing::debug!(
            scanned = chunk.scanned,
            inserted = chunk.inserted,
            processed = chunk.processed,
            "chunk committed"
        );
    }
    activate(pool, id).await?;
    tracing::info!(
        chunks,
        seconds = started.elapsed().as_secs_f64(),
        "fan-out finished; cycle is Active"
    );
    Ok(())
}

/// The cycle row as activation needs it.
struct Settling {
    status: CycleStatus,
    code: String,
    claim_reference: String,
    tier_id: i64,
    amount_minor: i64,
    currency: String,
    processed: i64,
    deadline: chrono::DateTime<chrono::Utc>,
}

/// `Initializing` → `Active` with the final totals, one notification job per agent with
/// members in the cycle, and the `cycle.activated` event, in one transaction.
async fn activate(pool: &Db, id: CycleId) -> Result<(), CycleError> {
    let db = CycleError::database;
    let mut tx = pool.begin().await.map_err(db(id))?;
    let cycle = sqlx::query_as!(
        Settling,
        "SELECT status AS \"status: CycleStatus\", code, claim_reference, tier_id, amount_minor, \
                currency, processed, deadline \
         FROM contribution_cycles WHERE id = $1 FOR UPDATE",
        id.0,
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(db(id))?
    .ok_or(CycleError::NotFound { id })?;
    if cycle.status != CycleStatus::Initializing {
        return Ok(());
    }
    let target =
        cycle
            .amount_minor
            .checked_mul(cycle.processed)
            .ok_or(CycleError::TargetOverflow {
                id,
                members: cycle.processed,
                amount_minor: cycle.amount_minor,
            })?;
    sqlx::query!(
        "UPDATE contribution_cycles \
         SET status = 'Active', total = processed, target_minor = $2, activated_at = now(), \
             updated_at = now() \
         WHERE id = $1",
        id.0,
        target,
    )
    .execute(&mut *tx)
    .await
    .map_err(db(id))?;

    let agents = sqlx::query!(
        "SELECT agent_id, members, amount_minor FROM contribution_cycle_agents \
         WHERE cycle_id = $1 ORDER BY agent_id",
        id.0,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db(id))?;
    let currency =
        Currency::parse(&cycle.currency).ok_or_else(|| CycleError::UnsupportedCurrency {
            id,
            currency: cycle.currency.clone(),
        })?;
    let jobs: Vec<_> = agents
        .into_iter()
        .map(|agent| {
            AgentSummaryJob {
                cycle_id: id,
                cycle_code: cycle.code.clone(),
                claim_reference: cycle.claim_reference.clone(),
                tier_id: cycle.tier_id,
                agent_id: agent.agent_id,
                members: agent.members,
                contribution: Money {
                    currency,
                    value_minor: cycle.amount_minor,
                },
                total: Money {
                    currency,
                    value_minor: agent.amount_minor,
                },
                deadline: cycle.deadline,
            }
            .to_job()
        })
        .collect();
    enqueue_many(&mut tx, &jobs)
        .await
        .map_err(|source| CycleError::Enqueue { id, source })?;
    let data = serde_json::json!({
        "code": cycle.code,
        "contributions": cycle.processed,
        "target_minor": target,
        "currency": cycle.currency,
        "agents": jobs.len(),
    });
    let event = Event::new(action::CYCLE_ACTIVATED, subject::CYCLE, id, data);
    audit::record(&mut tx, &Actor::Worker, &event)
        .await
        .map_err(db(id))?;
    let published = serde_json::json!({
        "cycle_id": id,
        "code": cycle.code,
        "contributions": cycle.processed,
        "target": { "currency": cycle.currency, "value": target },
        "agents": jobs.len(),
    });
    events::publish(&mut tx, event_type::CYCLE_ACTIVATED, &published)
        .await
        .map_err(db(id))?;
    pool.commit(tx).await.map_err(db(id))?;
    tracing::info!(
        contributions = cycle.processed,
        agents = jobs.len(),
        "cycle activated"
    );
    Ok(())
}

/// Marks a cycle that is still Initializing Failed with `reason`, and records its
/// `cycle.failed` event by `actor` in the same statement; whether it was.
pub(super) async fn mark_failed(
    conn: impl sqlx::PgExecutor<'_>,
    id: CycleId,
    reason: &str,
    actor: &Actor,
) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query!(
        "WITH failed AS ( \
           UPDATE contribution_cycles \
           SET status = 'Failed', error = $2, failed_at = now(), updated_at = now() \
           WHERE id = $1 AND status = 'Initializing' \
           RETURNING id, code, processed, error) \
         INSERT INTO audit_events (actor, action, subject_type, subject_id, data) \
         SELECT $3, $4, $5, id::text, \
                jsonb_build_object('code', code, 'processed', processed, 'reason', error) \
         FROM failed",
        id.0,
        reason,
        actor.name(),
        action::CYCLE_FAILED,
        subject::CYCLE,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(marked > 0)
}
