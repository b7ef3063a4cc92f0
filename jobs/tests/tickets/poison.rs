use poda_jobs::db::Db;
use poda_jobs::testing::tickets::{seed_one_company, ticket_counts, ticket_job};
use poda_jobs::testing::TestDb;

use crate::support::{batches_of, enqueue_tickets, last_error_of, TicketWorker};
use poda_jobs::testing::wait_until;
use std::time::Duration;

/// Makes the database refuse the ticket of `payment_id` with SQLSTATE `errcode`, as a
/// constraint or a trigger the batch's validation does not know about would.
async fn refuse_ticket(pool: &Db, payment_id: &str, errcode: &str) {
    let function = format!(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.payment_id = '{payment_id}' THEN \
             RAISE EXCEPTION 'ticket for % refused by a test trigger', NEW.payment_id \
               USING ERRCODE = '{errcode}'; \
           END IF; \
           RETURN NEW; \
         END $$"
    );
    sqlx::query(sqlx::AssertSqlSafe(function))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON tickets \
         FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn job_state(pool: &Db, payment_id: &str) -> (String, i32) {
    sqlx::query_as(
        "SELECT state::text, attempt FROM jobs WHERE queue = 'tickets' AND payload->>'payment_id' = $1",
    )
    .bind(payment_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn completed(pool: &Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = 'tickets' AND state = 'completed'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn poison_ticket_fails_alone_and_the_rest_of_its_batch_is_issued() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    refuse_ticket(&db.pool, "pay-poison", "23514").await; // check_violation
    let mut tickets: Vec<_> = (0..28)
        .map(|n| ticket_job(&format!("pay-{n}"), "co-1", "rt-1", 10_000))
        .collect();
    tickets.push(ticket_job("pay-poison", "co-1", "rt-1", 10_000));
    tickets.push(ticket_job("pay-unknown", "co-x", "rt-1", 10_000));
    enqueue_tickets(&db.pool, &tickets).await;

    // All 30 in one batch: the validation leaves pay-unknown out, the database refuses
    // pay-poison and the batch's transaction fails; its tickets are then written one by one.
    let worker = TicketWorker::start(&db.pool, batches_of(30));
    wait_until(
        "28 tickets issued and the two bad jobs failed",
        Duration::from_secs(60),
        || async {
            (
                completed(&db.pool).await,
                job_state(&db.pool, "pay-poison").await,
                job_state(&db.pool, "pay-unknown").await,
            )
        },
        |(done, poison, unknown)| *done == 28 && poison.0 == "failed" && unknown.0 == "failed",
    )
    .await;
    worker.stop().await;

    let poison_error = last_error_of(&db.pool, "pay-poison").await.unwrap();
    assert!(
        poison_error.contains("payment pay-poison: the database refused the ticket")
            && poison_error.contains("refused by a test trigger"),
        "{poison_error}"
    );
    assert_eq!(job_state(&db.pool, "pay-poison").await.1, 1, "not retried");
    let counts = ticket_counts(&db.pool).await;
    assert_eq!((counts.tickets, counts.transfer_jobs), (28, 28));
    assert_eq!(counts.tickets_without_transfer, 0);
}

#[tokio::test]
async fn ticket_hit_by_an_unexpected_database_error_retries_alone() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    refuse_ticket(&db.pool, "pay-odd", "P0001").await; // raise_exception: not a data error
    let mut tickets: Vec<_> = (0..19)
        .map(|n| ticket_job(&format!("pay-{n}"), "co-1", "rt-1", 10_000))
        .collect();
    tickets.push(ticket_job("pay-odd", "co-1", "rt-1", 10_000));
    enqueue_tickets(&db.pool, &tickets).await;

    let worker = TicketWorker::start(&db.pool, batches_of(20));
    let (_, (state, _)) = wait_until(
        "19 tickets issued and pay-odd waiting to retry",
        Duration::from_secs(60),
        || async {
            (
                completed(&db.pool).await,
                job_state(&db.pool, "pay-odd").await,
            )
        },
        |(done, odd)| *done == 19 && odd.0 == "available" && odd.1 >= 1,
    )
    .await;
    worker.stop().await;
    assert_eq!(state, "available");
    assert!(last_error_of(&db.pool, "pay-odd")
        .await
        .unwrap()
        .contains("writing the ticket batch failed"));
    assert_eq!(ticket_counts(&db.pool).await.tickets, 19);
}
