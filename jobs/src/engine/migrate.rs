//! Poda's migrations, embedded in every binary, and the check that refuses an unmigrated
//! database.

use sqlx::migrate::Migrator;

use crate::db::Db;

use super::error::EngineError;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration, each in a transaction of its own taken under a
/// transaction-scoped advisory lock: two processes migrating at once apply each migration
/// once, and a migration sees the ones before it committed (an enum value one adds is usable
/// by the next). sqlx's own lock is a session lock, which a transaction pooler cannot hold,
/// and its migrator runs here inside the caller's transaction (each migration a savepoint).
pub async fn run_migrations(pool: &Db) -> Result<(), EngineError> {
    apply(pool, &MIGRATOR).await
}

/// [`run_migrations`] with the migrations of `migrator`. An up-to-date database costs one read.
pub async fn apply(pool: &Db, migrator: &Migrator) -> Result<(), EngineError> {
    let all: Vec<_> = migrator.iter().cloned().collect();
    let pending = pending(pool, migrator).await?;
    for (upto, _) in all
        .iter()
        .enumerate()
        .filter(|(_, m)| pending.contains(&m.version))
    {
        // The migrations up to this one: only this one can still be pending after the
        // transactions before (another process may have applied it meanwhile, which the
        // migrator sees under the lock); later ones already applied are ignored.
        let mut migrator = Migrator::with_migrations(all[..=upto].to_vec());
        migrator.set_locking(false).set_ignore_missing(true);
        let mut tx = pool.begin().await?;
        sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('poda migrations'))")
            .execute(&mut *tx)
            .await?;
        migrator.run(&mut *tx).await?;
        pool.commit(tx).await?;
    }
    Ok(())
}

/// Fails with [`EngineError::NotMigrated`] unless every embedded migration has been applied.
pub async fn ensure_migrated(pool: &Db) -> Result<(), EngineError> {
    let pending = pending(pool, &MIGRATOR).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| pending.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    Err(EngineError::NotMigrated {
        missing: missing.join(", "),
    })
}

/// The versions of `migrator`'s migrations that this database has not applied: all of them
/// when it has no migrations table yet.
async fn pending(pool: &Db, migrator: &Migrator) -> Result<Vec<i64>, EngineError> {
    let table_exists =
        sqlx::query_scalar!("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS \"exists!\"")
            .fetch_one(pool)
            .await?;
    let applied: Vec<i64> = if table_exists {
        sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| m.version)
        .collect())
}
