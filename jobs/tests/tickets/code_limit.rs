use poda_jobs::testing::tickets::{seed_one_company, seed_payment_code, ticket_counts, ticket_job};
use poda_jobs::testing::TestDb;

use crate::support::{batches, enqueue_tickets, wait_finished, TicketWorker};

#[tokio::test]
async fn payment_code_is_used_exactly_up_to_its_limit_under_concurrency() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    seed_payment_code(&db.pool, "LIMIT-50", "co-1", 50).await;
    let tickets: Vec<_> = (0..80)
        .map(|n| {
            let mut t = ticket_job(&format!("pay-{n:02}"), "co-1", "rt-1", 12_345);
            t.payment_code = Some("LIMIT-50".into());
            t
        })
        .collect();
    enqueue_tickets(&db.pool, &tickets).await;

    // Two workers, each with several small batches in flight: many transactions compete
    // for the same code.
    let a = TicketWorker::start(&db.pool, batches(8, 4));
    let b = TicketWorker::start(&db.pool, batches(8, 4));
    assert_eq!(wait_finished(&db.pool, 80).await, (50, 30));
    a.stop().await;
    b.stop().await;

    let counts = ticket_counts(&db.pool).await;
    assert_eq!((counts.tickets, counts.transfer_jobs), (50, 50));
    assert_eq!(counts.tickets_without_transfer, 0);
    let (used, status): (i32, String) = sqlx::query_as(
        "SELECT used_count, status::text FROM payment_code_usage WHERE code = 'LIMIT-50'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((used, status.as_str()), (50, "exhausted"));
    let with_code: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tickets WHERE payment_code = 'LIMIT-50'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(with_code, 50);
    // The 30 others failed for good, saying why, on their first attempt.
    let exhausted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE queue = 'tickets' AND state = 'failed' AND attempt = 1 \
         AND last_error LIKE '%payment code LIMIT-50 is exhausted%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(exhausted, 30);
}
