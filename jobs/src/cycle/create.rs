//! Creating a cycle: validate, insert it `Initializing` and enqueue its fan-out job, in one
//! transaction. A repeated request with the same idempotency key returns the same cycle.

use crate::audit::{self, action, subject, Actor, Event};
use crate::db::Db;
use sqlx::PgConnection;

use crate::engine::enqueue_one;
use crate::ticket::{Currency, Money};

use super::abandoned::fail_if_abandoned;
use super::error::CreateCycleError;
use super::{
    CycleId, CycleJob, CycleStatus, MAX_DURATION_DAYS, MAX_REFERENCE_LEN, MIN_DURATION_DAYS,
};

/// A cycle to create, as an admin asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCycle {
    pub tier_id: i64,
    pub deceased_member_id: i64,
    /// The death claim the cycle pays (1–64 characters).
    pub claim_reference: String,
    /// What each member contributes: positive, integer minor units.
    pub contribution: Money,
    /// Days members have to pay (1–90).
    pub duration_days: i32,
}

impl NewCycle {
    /// Checks what can be checked without the database.
    pub fn validate(&self) -> Result<(), CreateCycleError> {
        let invalid = |m: String| Err(CreateCycleError::Invalid(m));
        let reference = self.claim_reference.trim();
        if reference.is_empty() || reference.len() > MAX_REFERENCE_LEN {
            return invalid(format!(
                "claim_reference must be 1 to {MAX_REFERENCE_LEN} characters"
            ));
        }
        if self.contribution.value_minor <= 0 {
            return invalid(format!(
                "contribution.value must be a positive integer of minor units, not {}",
                self.contribution.value_minor
            ));
        }
        if !(MIN_DURATION_DAYS..=MAX_DURATION_DAYS).contains(&self.duration_days) {
            return invalid(format!(
                "duration_days must be between {MIN_DURATION_DAYS} and {MAX_DURATION_DAYS}, not {}",
                self.duration_days
            ));
        }
        Ok(())
    }
}

/// Checks an `Idempotency-Key`: 1–64 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), CreateCycleError> {
    if key.is_empty() || key.len() > MAX_REFERENCE_LEN || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(CreateCycleError::Invalid(format!(
            "Idempotency-Key must be 1 to {MAX_REFERENCE_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

/// The cycle a create request resulted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCycle {
    pub id: CycleId,
    pub code: String,
    pub status: CycleStatus,
    /// False when an earlier request with the same idempotency key created it.
    pub created: bool,
}

/// A cycle as stored, for comparing a repeated request with the first.
#[derive(Debug)]
struct StoredCycle {
    id: CycleId,
    code: String,
    status: CycleStatus,
    tier_id: i64,
    deceased_member_id: i64,
    claim_reference: String,
    amount_minor: i64,
    currency: String,
    duration_days: i32,
}

impl StoredCycle {
    fn matches(&self, new: &NewCycle) -> bool {
        self.tier_id == new.tier_id
            && self.deceased_member_id == new.deceased_member_id
            && self.claim_reference == new.claim_reference.trim()
            && self.amount_minor == new.contribution.value_minor
            && self.currency == new.contribution.currency.as_str()
            && self.duration_days == new.duration_days
    }

    fn into_created(self) -> CreatedCycle {
        CreatedCycle {
            id: self.id,
            code: self.code,
            status: self.status,
            created: false,
        }
    }
}

/// Creates the cycle and enqueues its fan-out job in one transaction, marking the deceased
/// member `deceased`. With `idempotency_key`, a repeat of the same request returns the first
/// request's cycle, and a different request with that key is refused. Invalid input is
/// refused before anything is written. A claim with a live cycle is refused; a cycle whose
/// fan-out job has ended without settling it is marked Failed first and does not count.
///
/// A cycle created here is recorded as `cycle.created` by `actor` in the same transaction; a
/// replay records nothing.
pub async fn create_cycle(
    pool: &Db,
    new: &NewCycle,
    idempotency_key: Option<&str>,
    actor: &Actor,
) -> Result<CreatedCycle, CreateCycleError> {
    new.validate()?;
    if let Some(key) = idempotency_key {
        validate_idempotency_key(key)?;
    }
    let mut tx = pool.begin().await?;
    if let Some(key) = idempotency_key {
        if let Some(existing) = replay(&mut tx, new, key).await? {
            pool.commit(tx).await?;
            return Ok(existing);
        }
    }
    check_tier_and_member(&mut tx, new).await?;
    // The claim's Initializing cycle, if its fan-out job has ended, is Failed and no longer
    // holds the claim: mark it so before inserting (see `abandoned`).
    let initializing = sqlx::query_scalar!(
        "SELECT id AS \"id: CycleId\" FROM contribution_cycles \
         WHERE claim_reference = $1 AND status = 'Initializing'",
        new.claim_reference.trim(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = initializing {
        fail_if_abandoned(&mut tx, id).await?;
    }

    let inserted = sqlx::query_file!(
        "src/cycle/create_cycle.sql",
        new.claim_reference.trim(),
        new.tier_id,
        new.deceased_member_id,
        new.contribution.value_minor,
        new.contribution.currency.as_str(),
        new.duration_days,
        idempotency_key,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(created) = inserted else {
        // A concurrent request won the key or the claim; it has committed by now.
        if let Some(key) = idempotency_key {
            if let Some(existing) = replay(&mut tx, new, key).await? {
                pool.commit(tx).await?;
                return Ok(existing);
            }
        }
        let other = sqlx::query_scalar!(
            "SELECT id AS \"id: CycleId\" \
             FROM contribution_cycles WHERE claim_reference = $1 AND status <> 'Failed'",
            new.claim_reference.trim(),
        )
        .fetch_one(&mut *tx)
        .await?;
        return Err(CreateCycleError::ClaimHasCycle {
            claim_reference: new.claim_reference.trim().to_owned(),
            cycle_id: other,
        });
    };
    sqlx::query!(
        "UPDATE members SET status = 'deceased', updated_at = now() \
         WHERE id = $1 AND status <> 'deceased'",
        new.deceased_member_id,
    )
    .execute(&mut *tx)
    .await?;
    let (id, code, status) = (created.id, created.code, created.status);
    enqueue_one(&mut tx, &CycleJob { cycle_id: id }.to_job())
        .await
        .map_err(CreateCycleError::Enqueue)?;
    let data = serde_json::json!({
        "code": code,
        "claim_reference": new.claim_reference.trim(),
        "tier_id": new.tier_id,
        "deceased_member_id": new.deceased_member_id,
        "amount_minor": new.contribution.value_minor,
        "currency": new.contribution.currency.as_str(),
        "duration_days": new.duration_days,
        "idempotency_key": idempotency_key,
    });
    let event = Event::new(action::CYCLE_CREATED, subject::CYCLE, id, data);
    audit::record(&mut tx, actor, &event).await?;
    pool.commit(tx).await?;
    tracing::info!(cycle.id = %id, cycle.code = %code, tier.id = new.tier_id, "cycle created");
    Ok(CreatedCycle {
        id,
        code,
        status,
        created: true,
    })
}

/// The cycle an earlier request with `key` created, if it asked for the same thing.
async fn replay(
    conn: &mut PgConnection,
    new: &NewCycle,
    key: &str,
) -> Result<Option<CreatedCycle>, CreateCycleError> {
    let stored = sqlx::query_as!(
        StoredCycle,
        "SELECT id AS \"id: CycleId\", code, status AS \"status: CycleStatus\", tier_id, \
                deceased_member_id, claim_reference, amount_minor, currency, duration_days \
         FROM contribution_cycles WHERE idempotency_key = $1",
        key,
    )
    .fetch_optional(&mut *conn)
    .await?;
    match stored {
        None => Ok(None),
        Some(mut stored) if stored.matches(new) => {
            if stored.status == CycleStatus::Initializing
                && fail_if_abandoned(conn, stored.id).await?.is_some()
            {
                stored.status = CycleStatus::Failed;
            }
            Ok(Some(stored.into_created()))
        }
        Some(stored) => Err(CreateCycleError::IdempotencyKeyReused {
            key: key.to_owned(),
            cycle_id: stored.id,
        }),
    }
}

async fn check_tier_and_member(
    conn: &mut PgConnection,
    new: &NewCycle,
) -> Result<(), CreateCycleError> {
    let tier_currency =
        sqlx::query_scalar!("SELECT currency FROM tiers WHERE id = $1", new.tier_id)
            .fetch_optional(&mut *conn)
            .await?;
    let tier_currency = tier_currency.ok_or(CreateCycleError::TierNotFound {
        tier_id: new.tier_id,
    })?;
    if Currency::parse(&tier_currency) != Some(new.contribution.currency) {
        return Err(CreateCycleError::CurrencyMismatch {
            tier_id: new.tier_id,
            tier_currency,
            currency: new.contribution.currency.to_string(),
        });
    }
    let member_tier = sqlx::query_scalar!(
        "SELECT tier_id FROM members WHERE id = $1",
        new.deceased_member_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    match member_tier {
        None => Err(CreateCycleError::MemberNotFound {
            member_id: new.deceased_member_id,
        }),
        Some(actual) if actual != new.tier_id => Err(CreateCycleError::MemberNotInTier {
            member_id: new.deceased_member_id,
            tier_id: new.tier_id,
            actual_tier_id: actual,
        }),
        Some(_) => Ok(()),
    }
}
