//! The batch statements stay index lookups for large batches on a grown table, whatever the
//! statistics say (they were taken while the table was empty, as on a fresh deployment).

use poda_jobs::testing::plans::{array_literal, plan_of, seq_scanned};
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
