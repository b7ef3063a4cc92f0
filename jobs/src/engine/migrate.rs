//! Poda's migrations, embedded in every binary, and the check that refuses an unmigrated
//! database.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use super::error::EngineError;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

pub async fn run_migrations(pool: &PgPool) -> Result<(), EngineError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Fails with [`EngineError::NotMigrated`] unless every embedded migration has been applied.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), EngineError> {
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
