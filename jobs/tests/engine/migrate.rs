use std::borrow::Cow;

use poda_jobs::db::Db;
use poda_jobs::engine::migrate::apply;
use poda_jobs::testing::TestDb;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::SqlSafeStr;

fn migration(version: i64, sql: &'static str) -> Migration {
    Migration::new(
        version,
        Cow::Owned(format!("step {version}")),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )
}

/// An empty database next to the test's own, and a pool on it.
async fn empty_database(db: &TestDb) -> (String, Db) {
    let name = format!("{}_migrate", db.name);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&db.pool)
        .await
        .unwrap();
    let options = db
        .pool
        .pool()
        .connect_options()
        .as_ref()
        .clone()
        .database(&name);
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    (name, Db::from(pool))
}

#[tokio::test]
async fn each_migration_commits_before_the_next_so_an_added_enum_value_is_usable() {
    let db = TestDb::new().await;
    let (name, pool) = empty_database(&db).await;
    // Postgres refuses a new enum value in the transaction that added it ("unsafe use of new
    // value"): the third step fails if the steps share one transaction.
    let migrator = Migrator::with_migrations(vec![
        migration(1, "CREATE TYPE colour AS ENUM ('red')"),
        migration(2, "ALTER TYPE colour ADD VALUE 'green'"),
        migration(3, "CREATE TABLE paint (c colour NOT NULL DEFAULT 'green')"),
    ]);
    apply(&pool, &migrator).await.unwrap();
    // Applying again changes nothing.
    apply(&pool, &migrator).await.unwrap();
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(applied, vec![1, 2, 3]);
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
}
