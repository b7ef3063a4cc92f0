use poda_jobs::testing::tickets::{
    seed_company, seed_payment_code, seed_route, ticket_counts, ticket_job,
};
use poda_jobs::testing::TestDb;
use poda_jobs::ticket::Currency;

use crate::support::{batches_of, enqueue_tickets, last_error_of, wait_finished, TicketWorker};

#[tokio::test]
async fn payments_that_cannot_become_tickets_fail_for_good_and_leave_the_batch_intact() {
    let db = TestDb::new().await;
    seed_company(&db.pool, "co-1", "SLE", 250).await;
    seed_route(&db.pool, "rt-1", "co-1").await;
    seed_company(&db.pool, "co-2", "SLE", 300).await;
    seed_route(&db.pool, "rt-2", "co-2").await;
    seed_payment_code(&db.pool, "OK", "co-1", 10).await;
    seed_payment_code(&db.pool, "OTHER-CO", "co-2", 10).await;
    seed_payment_code(&db.pool, "OFF", "co-1", 10).await;
    seed_payment_code(&db.pool, "OLD", "co-1", 10).await;
    seed_payment_code(&db.pool, "USED-UP", "co-1", 1).await;
    sqlx::query("UPDATE payment_codes SET status = 'disabled' WHERE code = 'OFF'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE payment_codes SET expires_at = now() - interval '1 minute' WHERE code = 'OLD'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE payment_codes SET status = 'exhausted' WHERE code = 'USED-UP'")
        .execute(&db.pool)
        .await
        .unwrap();

    let with_code = |payment: &str, code: &str| {
        let mut t = ticket_job(payment, "co-1", "rt-1", 10_000);
        t.payment_code = Some(code.into());
        t
    };
    let mut usd = ticket_job("pay-usd", "co-1", "rt-1", 10_000);
    usd.amount.currency = Currency::Usd;
    let bad = vec![
        (
            ticket_job("pay-no-company", "co-x", "rt-1", 10_000),
            "company co-x does not exist",
        ),
        (
            ticket_job("pay-no-route", "co-1", "rt-x", 10_000),
            "route rt-x does not exist",
        ),
        (
            ticket_job("pay-foreign-route", "co-1", "rt-2", 10_000),
            "route rt-2 belongs to company co-2, not co-1",
        ),
        (usd, "paid in USD but company co-1 sells in SLE"),
        (
            ticket_job("pay-zero", "co-1", "rt-1", 0),
            "amount 0 is not a positive number",
        ),
        (
            with_code("pay-no-code", "NOPE"),
            "payment code NOPE does not exist",
        ),
        (
            with_code("pay-other-co-code", "OTHER-CO"),
            "payment code OTHER-CO is not valid for company co-1",
        ),
        (
            with_code("pay-disabled", "OFF"),
            "payment code OFF is disabled",
        ),
        (
            with_code("pay-expired", "OLD"),
            "payment code OLD has expired",
        ),
        (
            with_code("pay-exhausted", "USED-UP"),
            "payment code USED-UP is exhausted",
        ),
    ];
    let good: Vec<_> = (0..10)
        .map(|n| with_code(&format!("pay-good-{n}"), "OK"))
        .collect();
    let mut all: Vec<_> = bad.iter().map(|(t, _)| t.clone()).collect();
    all.extend(good.iter().cloned());
    enqueue_tickets(&db.pool, &all).await;

    // All 20 in one batch.
    let worker = TicketWorker::start(&db.pool, batches_of(20));
    assert_eq!(wait_finished(&db.pool, 20).await, (10, 10));
    worker.stop().await;

    for (ticket, reason) in &bad {
        let error = last_error_of(&db.pool, &ticket.payment_id)
            .await
            .unwrap_or_default();
        assert!(
            error.contains(reason) && error.contains(&ticket.payment_id),
            "{}: kept error {error:?} does not say {reason:?}",
            ticket.payment_id
        );
        // Failed for good on the first attempt: not retried.
        let attempts: i32 = sqlx::query_scalar(
            "SELECT attempt FROM jobs WHERE queue = 'tickets' AND payload->>'payment_id' = $1 AND state = 'failed'",
        )
        .bind(&ticket.payment_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(attempts, 1);
    }
    // Nothing partial: only the good payments have tickets, transfer jobs and code uses.
    let counts = ticket_counts(&db.pool).await;
    assert_eq!((counts.tickets, counts.transfer_jobs), (10, 10));
    assert_eq!(counts.tickets_without_transfer, 0);
    let uses: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT code, used_count, status::text FROM payment_code_usage ORDER BY code",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let uses: Vec<(&str, i32, &str)> = uses
        .iter()
        .map(|(c, n, s)| (c.as_str(), *n, s.as_str()))
        .collect();
    assert_eq!(
        uses,
        vec![
            ("OFF", 0, "disabled"),
            ("OK", 10, "exhausted"),
            ("OLD", 0, "active"),
            ("OTHER-CO", 0, "active"),
            ("USED-UP", 0, "exhausted"),
        ]
    );
}
