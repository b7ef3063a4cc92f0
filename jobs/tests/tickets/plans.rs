//! The batch statements, and the check of the commission transfers' references, stay index
//! lookups for large batches on a grown table, whatever the statistics say (they were taken
//! while the table was empty, as on a fresh deployment), and whether the plan is made for each
//! batch or once.

use poda_jobs::db::Db;
use poda_jobs::testing::plans::{array_literal, full_scans, plan_of, PreparedProbe};
use poda_jobs::testing::tickets::{seed_one_company, seed_payment_code};
use poda_jobs::testing::TestDb;

const LOOK_UP_BATCH: &str = include_str!("../../src/ticket/look_up_batch.sql");

/// A database with one company, route and payment code, and statistics taken while `tickets`
/// was empty.
async fn fresh_deployment() -> TestDb {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    seed_payment_code(&db.pool, "CODE-1", "co-1", 1_000_000).await;
    sqlx::query("ANALYZE tickets")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

/// `n` tickets, every seventh with code `CODE-1`.
async fn grow_tickets(pool: &Db, n: i64) {
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, \
                              code_use, passenger_phone, amount_minor, commission_minor, \
                              currency) \
         SELECT 'pay-' || i, 'evt-' || i, 'co-1', 'rt-1', \
                CASE WHEN i % 7 = 0 THEN 'CODE-1' END, CASE WHEN i % 7 = 0 THEN i / 7 END, \
                '+23270000000', 1000, 25, 'SLE' \
         FROM generate_series(1, $1) i",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// look_up_batch's parameters for `n` new payments, every other one with code `CODE-1`.
fn new_payments(n: usize) -> Vec<String> {
    vec![
        array_literal((0..n).map(|i| format!("new-{i}"))),
        array_literal(vec!["co-1"; n]),
        array_literal(vec!["rt-1"; n]),
        array_literal((0..n).map(|i| if i % 2 == 0 { "CODE-1" } else { "NULL" })),
    ]
}

fn assert_no_ticket_scan(plan: serde_json::Value) {
    assert!(
        !full_scans(&plan).contains(&"tickets".to_owned()),
        "the lookup scans every ticket: {plan}"
    );
}

#[tokio::test]
async fn the_batch_lookup_probes_the_payment_index_for_500_payments_among_100_000_tickets() {
    let db = fresh_deployment().await;
    grow_tickets(&db.pool, 100_000).await;
    assert_no_ticket_scan(plan_of(&db.pool, LOOK_UP_BATCH, &new_payments(500)).await);
}

#[tokio::test]
async fn the_batch_lookup_planned_once_on_an_empty_table_still_probes_the_index_when_it_grew() {
    let db = fresh_deployment().await;
    let types = ["text[]", "text[]", "text[]", "text[]"];
    let mut probe = PreparedProbe::prepare(&db.pool, LOOK_UP_BATCH, &types, &new_payments(1)).await;
    grow_tickets(&db.pool, 100_000).await;
    assert_no_ticket_scan(probe.plan(&new_payments(500)).await);
}

/// Inserts one commission transfer per ticket of `tickets`, in one statement on `conn`.
async fn insert_transfers(conn: &mut sqlx::PgConnection, tickets: &[i64]) {
    sqlx::query(
        "INSERT INTO commission_transfers (ticket_id, company_id, source_account_id, \
                                           destination_account_id, amount_minor, currency, \
                                           idempotency_key, request_body) \
         SELECT t, 'co-1', 'fa-src', 'fa-dst', 25, 'SLE', 'key-' || t, '{}' \
         FROM unnest($1::bigint[]) t",
    )
    .bind(tickets)
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_transfer_reference_check_planned_on_small_tables_still_probes_tickets_once_they_grew()
{
    let db = fresh_deployment().await;
    sqlx::query("ANALYZE commission_transfers")
        .execute(&db.pool)
        .await
        .unwrap();
    // The check's plan is cached by the session that first runs it: here while there are
    // two tickets.
    let mut conn = db.pool.pool().acquire().await.unwrap();
    grow_tickets(&db.pool, 2).await;
    insert_transfers(&mut conn, &[1]).await;
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         SELECT 'later-' || i, 'evt-later-' || i, 'co-1', 'rt-1', '+23270000000', 1000, 25, \
                'SLE' \
         FROM generate_series(1, 100000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let newest: Vec<i64> = sqlx::query_scalar("SELECT id FROM tickets ORDER BY id DESC LIMIT 500")
        .fetch_all(&db.pool)
        .await
        .unwrap();

    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    insert_transfers(&mut tx, &newest).await;
    // This transaction's own scans, not yet reported to the statistics.
    let whole_scans: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(seq_scan), 0)::bigint FROM pg_stat_xact_user_tables \
         WHERE relname IN ('tickets', 'companies')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(whole_scans, 0, "the reference check read whole tables");
}

#[tokio::test]
async fn the_ticket_checks_planned_on_small_tables_still_probe_payment_codes_once_they_grew() {
    let db = fresh_deployment().await;
    // The checks' plans are cached by the session that first runs them: here while there is
    // one payment code.
    let mut conn = db.pool.pool().acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, \
                              code_use, passenger_phone, amount_minor, commission_minor, \
                              currency) \
         VALUES ('first', 'evt-first', 'co-1', 'rt-1', 'CODE-1', 1, '+23270000000', 1000, 25, \
                 'SLE')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO payment_codes (code, company_id, usage_limit) \
         SELECT 'GROWN-' || i, 'co-1', 10 FROM generate_series(1, 100000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, \
                              code_use, passenger_phone, amount_minor, commission_minor, \
                              currency) \
         SELECT 'pay-' || i, 'evt-' || i, 'co-1', 'rt-1', 'GROWN-' || i, 1, '+23270000000', \
                1000, 25, 'SLE' \
         FROM generate_series(1, 500) i",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let whole_scans: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(seq_scan), 0)::bigint FROM pg_stat_xact_user_tables \
         WHERE relname IN ('payment_codes', 'companies', 'routes')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(whole_scans, 0, "the ticket checks read whole tables");
}
