//! A ticket batch writes one `ticket.issued` event per ticket it issues, in its own
//! transaction, and none for a payment it does not issue.

use poda_jobs::testing::tickets::{seed_one_company, ticket_job};
use poda_jobs::testing::TestDb;

use crate::support::{batches_of, enqueue_tickets, wait_finished, TicketWorker};

#[tokio::test]
async fn a_batch_writes_one_issued_event_per_ticket_with_the_tickets() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    let mut tickets: Vec<_> = (0..50)
        .map(|n| ticket_job(&format!("pay-{n:02}"), "co-1", "rt-1", 10_000 + n))
        .collect();
    // A payment that cannot become a ticket.
    tickets.push(ticket_job("pay-bad", "co-x", "rt-1", 10_000));
    enqueue_tickets(&db.pool, &tickets).await;

    let worker = TicketWorker::start(&db.pool, batches_of(100));
    assert_eq!(wait_finished(&db.pool, 51).await, (50, 1));
    worker.stop().await;

    // Each ticket has exactly one event, and both were written by the same transaction.
    let rows: Vec<(i64, String, String, String, serde_json::Value, bool)> = sqlx::query_as(
        "SELECT t.id, a.actor, a.action, a.subject_type, a.data, t.xmin = a.xmin \
         FROM tickets t JOIN audit_events a ON a.subject_id = t.id::text \
         ORDER BY t.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 50);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 50, "no event for the refused payment");
    for (_, actor, action, subject_type, _, same_transaction) in &rows {
        assert_eq!(
            (actor.as_str(), action.as_str(), subject_type.as_str()),
            ("worker", "ticket.issued", "ticket")
        );
        assert!(same_transaction);
    }
    let (id, ..) = &rows[0];
    let expected: (String, String, i64, String, i64) = sqlx::query_as(
        "SELECT payment_id, company_id, amount_minor, currency, commission_minor \
         FROM tickets WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows[0].4,
        serde_json::json!({
            "payment_id": expected.0,
            "company_id": expected.1,
            "amount_minor": expected.2,
            "currency": expected.3,
            "commission_minor": expected.4,
        })
    );
}
