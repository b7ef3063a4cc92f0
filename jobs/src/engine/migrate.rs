//! Poda's migrations, embedded in every binary, and the check that refuses an unmigrated
//! database.

use sqlx::migrate::Migrator;

use crate::db::Db;

use super::error::EngineError;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration in one transaction, under a transaction-scoped advisory
/// lock, so two processes migrating at once apply each migration once and a failure applies
/// none. sqlx's own lock is a session lock, which a transaction pooler cannot hold; each
/// migration still runs in a transaction of its own (a savepoint inside this one).
pub async fn run_migrations(pool: &Db) -> Result<(), EngineError> {
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.set_locking(false);
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('poda migrations'))")
        .execute(&mut *tx)
        .await?;
    migrator.run(&mut *tx).await?;
    pool.commit(tx).await?;
    Ok(())
}

/// Fails with [`EngineError::NotMigrated`] unless every embedded migration has been applied.
pub async fn ensure_migrated(pool: &Db) -> Result<(), EngineError> {
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
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EngineError::NotMigrated {
            missing: missing.join(", "),
        })
    }
}
