//! The batch statements stay index lookups for large batches on a grown table, whatever the
//! statistics say (they were taken while the table was empty, as on a fresh deployment), and
//! whether the plan is made for each batch or once.

use poda_jobs::testing::plans::{array_literal, plan_of, seq_scanned, PreparedProbe};
use poda_jobs::testing::tickets::seed_one_company;
use poda_jobs::testing::TestDb;

#[tokio::test]
async fn the_batch_lookup_probes_the_payment_index_for_500_payments_among_100_000_tickets() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    sqlx::query("ANALYZE tickets")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         SELECT 'pay-' || i, 'evt-' || i, 'co-1', 'rt-1', '+23270000000', 1000, 25, 'SLE' \
         FROM generate_series(1, 100000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let payments = array_literal((0..500).map(|i| format!("new-{i}")));
    let companies = array_literal(vec!["co-1"; 500]);
    let routes = array_literal(vec!["rt-1"; 500]);
    let sql = include_str!("../../src/ticket/look_up_batch.sql");
    let plan = plan_of(&db.pool, sql, &[payments, companies, routes]).await;
    assert!(
        !seq_scanned(&plan).contains(&"tickets".to_owned()),
        "the lookup scans every ticket: {plan}"
    );
}

async fn grow_tickets(pool: &sqlx::PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         SELECT 'pay-' || i, 'evt-' || i, 'co-1', 'rt-1', '+23270000000', 1000, 25, 'SLE' \
         FROM generate_series(1, $1) i",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_batch_lookup_planned_once_on_an_empty_table_still_probes_the_index_when_it_grew() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    sqlx::query("ANALYZE tickets")
        .execute(&db.pool)
        .await
        .unwrap();
    let sql = include_str!("../../src/ticket/look_up_batch.sql");
    let one = vec![
        array_literal(["pay-x"]),
        array_literal(["co-1"]),
        array_literal(["rt-1"]),
    ];
    let mut probe =
        PreparedProbe::prepare(&db.pool, sql, &["text[]", "text[]", "text[]"], &one).await;
    grow_tickets(&db.pool, 100_000).await;

    let batch = vec![
        array_literal((0..500).map(|i| format!("new-{i}"))),
        array_literal(vec!["co-1"; 500]),
        array_literal(vec!["rt-1"; 500]),
    ];
    let plan = probe.plan(&batch).await;
    assert!(
        !seq_scanned(&plan).contains(&"tickets".to_owned()),
        "the lookup scans every ticket: {plan}"
    );
}
