use poda_jobs::engine::BatchSettings;
use poda_jobs::engine::{enqueue_many_pooled, NewJob};
use poda_jobs::testing::tickets::{
    seed_one_company, seed_payment_code, ticket_counts, ticket_job, TicketCounts,
};
use poda_jobs::testing::TestDb;
use poda_jobs::ticket::{self, TicketJob};

use crate::support::{batches, wait_finished, TicketWorker};

fn small_batches() -> BatchSettings {
    batches(10, 4)
}

/// A ticket job without the payment-id unique key: what a redelivery after pruning, or a
/// second enqueuer path, would produce.
fn unkeyed(ticket: &TicketJob) -> NewJob {
    NewJob::new(
        ticket::QUEUE,
        ticket::KIND,
        serde_json::to_value(ticket).unwrap(),
    )
}

#[tokio::test]
async fn duplicate_payments_within_and_across_batches_and_workers_yield_one_ticket_each() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    seed_payment_code(&db.pool, "DUP", "co-1", 1_000).await;
    let payments: Vec<TicketJob> = (0..50)
        .map(|n| {
            let mut t = ticket_job(&format!("pay-{n:02}"), "co-1", "rt-1", 7_000);
            if n % 2 == 0 {
                t.payment_code = Some("DUP".into());
            }
            t
        })
        .collect();
    // Each payment twice in a row (same batch), then twice more later (other batches).
    let mut jobs = Vec::new();
    for t in &payments {
        jobs.push(unkeyed(t));
        jobs.push(unkeyed(t));
    }
    for _ in 0..2 {
        jobs.extend(payments.iter().map(unkeyed));
    }
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    // Two workers (two engines, each with its batch runners) race over the same jobs.
    let a = TicketWorker::start(&db.pool, small_batches());
    let b = TicketWorker::start(&db.pool, small_batches());
    assert_eq!(wait_finished(&db.pool, 200).await, (200, 0));
    a.stop().await;
    b.stop().await;

    let once = TicketCounts {
        tickets: 50,
        distinct_payments: 50,
        transfer_jobs: 50,
        tickets_without_transfer: 0,
        transfers_without_ticket: 0,
    };
    assert_eq!(ticket_counts(&db.pool).await, once);
    let used: i32 =
        sqlx::query_scalar("SELECT used_count FROM payment_code_usage WHERE code = 'DUP'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(used, 25, "a payment uses its code once");

    // Every job runs again (as after a crash between COMMIT and completion): nothing new.
    sqlx::query(
        "UPDATE jobs SET state = 'available', attempt = 0, finished_at = NULL, run_at = now() \
         WHERE queue = 'tickets'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let again = TicketWorker::start(&db.pool, small_batches());
    assert_eq!(wait_finished(&db.pool, 200).await, (200, 0));
    again.stop().await;
    assert_eq!(ticket_counts(&db.pool).await, once);
    let used: i32 =
        sqlx::query_scalar("SELECT used_count FROM payment_code_usage WHERE code = 'DUP'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(used, 25);
}
