use std::borrow::Cow;

use poda_jobs::db::Db;
use poda_jobs::engine::migrate::{apply, MIGRATOR};
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

/// Closes `pool` and drops the database [`empty_database`] made.
async fn drop_database(db: &TestDb, name: &str, pool: Db) {
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
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
    drop_database(&db, &name, pool).await;
}

/// The migration that lays the jobs row out anew keeps every job as it was: ids, states,
/// payloads, priorities, the identity's next value, the indexes and the views over it.
#[tokio::test]
async fn the_row_layout_migration_keeps_every_job_and_the_identity() {
    const LAYOUT: i64 = 20261206000024;
    let db = TestDb::new().await;
    let (name, pool) = empty_database(&db).await;
    let all: Vec<Migration> = MIGRATOR.iter().cloned().collect();
    let before: Vec<Migration> = all.iter().filter(|m| m.version < LAYOUT).cloned().collect();
    assert!(before.len() < all.len(), "the layout migration is embedded");
    apply(&pool, &Migrator::with_migrations(before))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (queue, kind, payload, max_attempts, backoff_base_ms, backoff_max_ms, \
                           state, priority, unique_key, last_error, finished_at) \
         SELECT 'tickets', 'probe', jsonb_build_object('n', g), 25, 1000, 3600000, \
                CASE WHEN g % 3 = 0 THEN 'failed'::job_state ELSE 'available' END, g % 4, \
                CASE WHEN g % 5 = 0 THEN 'key-' || g END, \
                CASE WHEN g % 3 = 0 THEN 'boom' END, CASE WHEN g % 3 = 0 THEN now() END \
         FROM generate_series(1, 500) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    // A deleted job leaves a gap: the identity must go on from where it stood.
    sqlx::query("DELETE FROM jobs WHERE id = (SELECT max(id) FROM jobs)")
        .execute(&pool)
        .await
        .unwrap();
    // A running job keeps its lease and its claim token (the fence of its late outcome), and
    // a retrying one its errors and its run_at.
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempt = 2, claim_token = 7, \
                lease_owner = gen_random_uuid(), lease_expires_at = now() + interval '1 minute', \
                attempted_at = now(), concurrency_key = 'company-' || id \
         WHERE id % 7 = 1 AND state = 'available'",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE jobs SET errors = jsonb_build_array(jsonb_build_object('attempt', 1, 'error', 'x')), \
                last_error = 'x', run_at = now() + interval '1 hour' \
         WHERE id % 7 = 2 AND state = 'available'",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Every column of every row, by name (jsonb orders its keys whatever the column order).
    let snapshot = "SELECT string_agg(to_jsonb(j)::text, ',' ORDER BY id) FROM jobs j";
    let stats = "SELECT string_agg(concat_ws('|', queue, pending, failed), ',' ORDER BY queue) \
                 FROM job_queue_stats";
    let jobs_before: String = sqlx::query_scalar(snapshot).fetch_one(&pool).await.unwrap();
    let stats_before: String = sqlx::query_scalar(stats).fetch_one(&pool).await.unwrap();

    apply(&pool, &MIGRATOR).await.unwrap();

    let jobs_after: String = sqlx::query_scalar(snapshot).fetch_one(&pool).await.unwrap();
    let stats_after: String = sqlx::query_scalar(stats).fetch_one(&pool).await.unwrap();
    assert_eq!(jobs_after, jobs_before);
    assert_eq!(stats_after, stats_before);
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM job_failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    // 166 failed jobs and 48 retrying ones.
    assert_eq!(failures, 214);
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (queue, kind, payload, max_attempts, backoff_base_ms, backoff_max_ms) \
         VALUES ('tickets', 'probe', '{}', 1, 0, 0) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(next, 501, "the identity goes on after the deleted job's id");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'jobs' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "jobs_claim_idx",
            "jobs_failed_idx",
            "jobs_failed_or_cancelled_idx",
            "jobs_finished_idx",
            "jobs_pkey",
            "jobs_running_idx",
            "jobs_running_key_idx",
            "jobs_unique_key_idx",
        ]
    );
    // The first columns are the fixed-width ones that are always set.
    let first: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0 \
         AND NOT attisdropped ORDER BY attnum LIMIT 5",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(first, ["id", "run_at", "updated_at", "created_at", "state"]);
    drop_database(&db, &name, pool).await;
}

const CODE_USES: i64 = 20261206000028;

/// A database migrated up to the payment-code uses migration, with company `co-1`, codes
/// `A` (limit 5) and `B` (limit 3) and `C` (limit 2, never used), and tickets: three with
/// `A`, two with `B` (interleaved), one without a code; used_count as the worker kept it.
async fn before_code_uses(db: &TestDb) -> (String, Db) {
    let (name, pool) = empty_database(db).await;
    let before: Vec<Migration> = MIGRATOR
        .iter()
        .filter(|m| m.version < CODE_USES)
        .cloned()
        .collect();
    assert!(
        before.len() < MIGRATOR.iter().count(),
        "the migration is embedded"
    );
    apply(&pool, &Migrator::with_migrations(before))
        .await
        .unwrap();
    poda_jobs::testing::tickets::seed_one_company(&pool).await;
    for (code, limit) in [("A", 5), ("B", 3), ("C", 2)] {
        poda_jobs::testing::tickets::seed_payment_code(&pool, code, "co-1", limit).await;
    }
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, \
                              passenger_phone, amount_minor, commission_minor, currency) \
         SELECT 'pay-' || g, 'evt-' || g, 'co-1', 'rt-1', c, '+232', 1000, 25, 'SLE' \
         FROM unnest(ARRAY['A', 'B', 'A', NULL, 'B', 'A']) WITH ORDINALITY AS u(c, g)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE payment_codes c SET used_count = \
             (SELECT count(*) FROM tickets t WHERE t.payment_code = c.code)",
    )
    .execute(&pool)
    .await
    .unwrap();
    (name, pool)
}

#[tokio::test]
async fn the_code_uses_migration_numbers_each_codes_tickets_in_issue_order() {
    let db = TestDb::new().await;
    let (name, pool) = before_code_uses(&db).await;
    let tickets =
        "SELECT string_agg(concat_ws('|', id, payment_id, payment_code), ',' ORDER BY id) \
                   FROM tickets";
    let tickets_before: String = sqlx::query_scalar(tickets).fetch_one(&pool).await.unwrap();

    apply(&pool, &MIGRATOR).await.unwrap();

    let tickets_after: String = sqlx::query_scalar(tickets).fetch_one(&pool).await.unwrap();
    assert_eq!(
        tickets_after, tickets_before,
        "no ticket lost, added or changed"
    );
    let uses: Vec<(String, Option<String>, Option<i32>)> =
        sqlx::query_as("SELECT payment_id, payment_code, code_use FROM tickets ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected = [
        ("pay-1", Some("A"), Some(1)),
        ("pay-2", Some("B"), Some(1)),
        ("pay-3", Some("A"), Some(2)),
        ("pay-4", None, None),
        ("pay-5", Some("B"), Some(2)),
        ("pay-6", Some("A"), Some(3)),
    ];
    let expected: Vec<(String, Option<String>, Option<i32>)> = expected
        .iter()
        .map(|(p, c, u)| (p.to_string(), c.map(str::to_owned), *u))
        .collect();
    assert_eq!(uses, expected);
    let usage: Vec<(String, i32, i32)> =
        sqlx::query_as("SELECT code, used_count, remaining FROM payment_code_usage ORDER BY code")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        usage,
        [("A".into(), 3, 2), ("B".into(), 2, 1), ("C".into(), 0, 2)]
    );
    // A use number is taken once per code, and a use beyond the limit is refused.
    for (code_use, sqlstate) in [(2, "23505"), (4, "23514")] {
        let error = sqlx::query(
            "INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, \
                                  code_use, passenger_phone, amount_minor, commission_minor, \
                                  currency) \
             VALUES ('pay-new', 'evt-new', 'co-1', 'rt-1', 'B', $1, '+232', 1000, 25, 'SLE')",
        )
        .bind(code_use)
        .execute(&pool)
        .await
        .unwrap_err();
        let code = error.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some(sqlstate), "use {code_use}: {error}");
    }
    drop_database(&db, &name, pool).await;
}

#[tokio::test]
async fn the_code_uses_migration_stops_at_a_count_that_does_not_match_its_tickets() {
    let db = TestDb::new().await;
    let (name, pool) = before_code_uses(&db).await;
    sqlx::query("UPDATE payment_codes SET used_count = 2 WHERE code = 'C'")
        .execute(&pool)
        .await
        .unwrap();

    let error = apply(&pool, &MIGRATOR).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("payment code C has used_count 2 but 0 tickets"),
        "{message}"
    );
    // Nothing changed: the counter is still there and no ticket was numbered.
    let (used, numbered): (i32, bool) = sqlx::query_as(
        "SELECT (SELECT used_count FROM payment_codes WHERE code = 'C'), \
                EXISTS (SELECT 1 FROM information_schema.columns \
                        WHERE table_name = 'tickets' AND column_name = 'code_use')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((used, numbered), (2, false));
    drop_database(&db, &name, pool).await;
}
