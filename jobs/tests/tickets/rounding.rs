use poda_jobs::testing::tickets::{seed_company, seed_route, ticket_counts, ticket_job};
use poda_jobs::testing::TestDb;

use crate::support::{batches_of, enqueue_tickets, wait_finished, TicketWorker};

/// Commission = amount × bps / 10 000, rounded half up, in minor units. Expected values are
/// worked out by hand, not with the code under test.
const CASES: &[(i32, i64, i64)] = &[
    // (commission_bps, amount_minor, commission_minor)
    (0, 1, 0),
    (0, 999_999, 0),
    (1, 1, 0),          // 0.0001
    (1, 4_999, 0),      // 0.4999
    (1, 5_000, 1),      // 0.5 rounds up
    (1, 15_000, 2),     // 1.5 rounds up
    (4_999, 1, 0),      // 0.4999
    (5_000, 1, 1),      // 0.5: the smallest ticket pays one minor unit at 50 %
    (5_000, 3, 2),      // 1.5
    (5_000, 5, 3),      // 2.5: half up, not half to even
    (250, 19_999, 500), // 499.975
    (250, 20_019, 500), // 500.475
    (250, 20_020, 501), // 500.5
    (250, 50_000, 1_250),
    (10_000, 1, 1),
    (10_000, 123_456, 123_456),
];

#[tokio::test]
async fn commission_is_rounded_half_up_in_minor_units_at_the_boundaries() {
    let db = TestDb::new().await;
    let mut rates: Vec<i32> = CASES.iter().map(|c| c.0).collect();
    rates.sort_unstable();
    rates.dedup();
    for bps in &rates {
        seed_company(&db.pool, &format!("co-{bps}"), "SLE", *bps).await;
        seed_route(&db.pool, &format!("rt-{bps}"), &format!("co-{bps}")).await;
    }
    let tickets: Vec<_> = CASES
        .iter()
        .enumerate()
        .map(|(i, (bps, amount, _))| {
            ticket_job(
                &format!("pay-{i}"),
                &format!("co-{bps}"),
                &format!("rt-{bps}"),
                *amount,
            )
        })
        .collect();
    enqueue_tickets(&db.pool, &tickets).await;
    let worker = TicketWorker::start(&db.pool, batches_of(CASES.len()));
    assert_eq!(
        wait_finished(&db.pool, CASES.len() as i64).await,
        (CASES.len() as i64, 0)
    );
    worker.stop().await;
    assert_eq!(ticket_counts(&db.pool).await.tickets, CASES.len() as i64);

    for (i, (bps, amount, expected)) in CASES.iter().enumerate() {
        let (stored_amount, commission): (i64, i64) = sqlx::query_as(
            "SELECT amount_minor, commission_minor FROM tickets WHERE payment_id = $1",
        )
        .bind(format!("pay-{i}"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(stored_amount, *amount);
        assert_eq!(
            commission, *expected,
            "commission of {amount} minor units at {bps} bps"
        );
    }
}
