use poda_jobs::testing::tickets::{
    seed_one_company, seed_payment_code, ticket_counts, ticket_job, TicketCounts,
};
use poda_jobs::testing::TestDb;

use crate::support::{batches_of, enqueue_tickets, wait_finished, TicketWorker};

#[tokio::test]
async fn batch_of_100_tickets_is_written_in_one_transaction_with_its_transfer_jobs() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    seed_payment_code(&db.pool, "TRIP-1", "co-1", 1_000).await;
    let tickets: Vec<_> = (0..100)
        .map(|n| {
            let mut t = ticket_job(&format!("pay-{n:03}"), "co-1", "rt-1", 50_000 + n);
            if n % 4 == 0 {
                t.payment_code = Some("TRIP-1".into());
            }
            t
        })
        .collect();
    enqueue_tickets(&db.pool, &tickets).await;

    // Batches of 100: the one claim of 100 jobs is one transaction.
    let worker = TicketWorker::start(&db.pool, batches_of(100));
    assert_eq!(wait_finished(&db.pool, 100).await, (100, 0));
    worker.stop().await;

    assert_eq!(
        ticket_counts(&db.pool).await,
        TicketCounts {
            tickets: 100,
            distinct_payments: 100,
            transfer_jobs: 100,
            tickets_without_transfer: 0,
            transfers_without_ticket: 0,
        }
    );
    // One transaction wrote every ticket and every transfer job: they all carry the same xmin.
    let transactions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT x FROM ( \
             SELECT xmin::text AS x FROM tickets \
             UNION ALL SELECT xmin::text FROM jobs WHERE queue = 'commission_transfers') w",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        transactions.len(),
        1,
        "written by transactions {transactions:?}"
    );
    // The code was locked, not rewritten: its row is still the version seeding wrote.
    let code_rewritten: bool = sqlx::query_scalar(
        "SELECT xmin::text = (SELECT xmin::text FROM tickets LIMIT 1) \
         FROM payment_codes WHERE code = 'TRIP-1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!code_rewritten);
    let used: i32 =
        sqlx::query_scalar("SELECT used_count FROM payment_code_usage WHERE code = 'TRIP-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(used, 25);
    // Each ticket keeps what its payment said.
    let (amount, commission, code, reference): (i64, i64, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT amount_minor, commission_minor, payment_code, financial_transaction_reference \
             FROM tickets WHERE payment_id = 'pay-004'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (amount, commission, code.as_deref(), reference.as_deref()),
        (50_004, 1_250, Some("TRIP-1"), Some("txn-pay-004"))
    );
}

#[tokio::test]
async fn jobs_claimed_together_are_issued_in_few_transactions_by_default() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    let tickets: Vec<_> = (0..1_000)
        .map(|n| ticket_job(&format!("pay-{n}"), "co-1", "rt-1", 10_000))
        .collect();
    enqueue_tickets(&db.pool, &tickets).await;
    let worker = TicketWorker::start(&db.pool, poda_jobs::ticket::batch_settings());
    assert_eq!(wait_finished(&db.pool, 1_000).await, (1_000, 0));
    worker.stop().await;
    let counts = ticket_counts(&db.pool).await;
    assert_eq!((counts.tickets, counts.transfer_jobs), (1_000, 1_000));
    assert_eq!(counts.tickets_without_transfer, 0);
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM tickets")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        transactions < 200,
        "1,000 tickets took {transactions} transactions: the worker did not batch"
    );
}
