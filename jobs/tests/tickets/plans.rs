//! The batch statements stay index lookups for large batches on a grown table, whatever the
//! statistics say (they were taken while the table was empty, as on a fresh deployment), and
//! whether the plan is made for each batch or once.

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
