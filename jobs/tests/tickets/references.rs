//! Tickets' references to companies, routes and payment codes, and commission transfers'
//! references to tickets and companies, are checked per statement, and the rows they refer to
//! cannot be removed.

use poda_jobs::db::Db;
use poda_jobs::testing::tickets::{seed_one_company, seed_payment_code};
use poda_jobs::testing::TestDb;

async fn insert_ticket(
    pool: &Db,
    payment_id: &str,
    route_id: &str,
    code: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, payment_code, \
                              code_use, passenger_phone, amount_minor, commission_minor, currency) \
         VALUES ($1, 'evt', 'co-1', $2, $3, $4, '+23276123456', 10000, 250, 'SLE')",
    )
    .bind(payment_id)
    .bind(route_id)
    .bind(code)
    .bind(code.map(|_| 1))
    .execute(pool)
    .await
    .map(|_| ())
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

async fn count(pool: &Db, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_ticket_with_a_missing_reference_is_refused_like_a_foreign_key() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    seed_payment_code(&db.pool, "CODE-1", "co-1", 10).await;

    insert_ticket(&db.pool, "pay-ok", "rt-1", Some("CODE-1"))
        .await
        .expect("a ticket with valid references is written");

    let unknown_route = insert_ticket(&db.pool, "pay-route", "rt-nope", None)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&unknown_route).as_deref(), Some("23503"));
    assert!(
        unknown_route.to_string().contains("pay-route"),
        "{unknown_route}"
    );

    let unknown_code = insert_ticket(&db.pool, "pay-code", "rt-1", Some("CODE-NOPE"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&unknown_code).as_deref(), Some("23503"));

    // One bad row refuses its whole statement.
    let mixed = sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         VALUES ('pay-a', 'evt', 'co-1', 'rt-1', '+232', 100, 1, 'SLE'), \
                ('pay-b', 'evt', 'co-nope', 'rt-1', '+232', 100, 1, 'SLE')",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&mixed).as_deref(), Some("23503"));

    let moved = sqlx::query("UPDATE tickets SET route_id = 'rt-nope' WHERE payment_id = 'pay-ok'")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&moved).as_deref(), Some("23503"));
    assert_eq!(count(&db.pool, "tickets").await, 1);
}

#[tokio::test]
async fn companies_routes_and_codes_cannot_be_deleted_or_rekeyed() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    seed_payment_code(&db.pool, "CODE-1", "co-1", 10).await;
    insert_ticket(&db.pool, "pay-ok", "rt-1", Some("CODE-1"))
        .await
        .unwrap();

    for statement in [
        "DELETE FROM payment_codes WHERE code = 'CODE-1'",
        "DELETE FROM routes WHERE id = 'rt-1'",
        "UPDATE routes SET id = 'rt-2' WHERE id = 'rt-1'",
        "UPDATE companies SET id = 'co-2' WHERE id = 'co-1'",
        "UPDATE payment_codes SET code = 'CODE-2' WHERE code = 'CODE-1'",
        "TRUNCATE payment_codes",
        "TRUNCATE companies, routes, payment_codes CASCADE",
    ] {
        let error = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("23503"),
            "{statement}: {error}"
        );
    }
    // Deactivating is how they are retired.
    sqlx::query("UPDATE routes SET active = false WHERE id = 'rt-1'")
        .execute(&db.pool)
        .await
        .unwrap();
    let kept: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM companies), (SELECT count(*) FROM routes), \
                (SELECT count(*) FROM payment_codes)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, (1, 1, 1));
}

async fn insert_transfer(pool: &Db, values: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO commission_transfers (ticket_id, company_id, source_account_id, \
                                           destination_account_id, amount_minor, currency, \
                                           idempotency_key, request_body) \
         VALUES {values}"
    )))
    .execute(pool)
    .await
    .map(|_| ())
}

#[tokio::test]
async fn a_transfer_with_a_missing_ticket_or_company_is_refused_and_its_ticket_is_kept() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    insert_ticket(&db.pool, "pay-ok", "rt-1", None)
        .await
        .unwrap();
    insert_ticket(&db.pool, "pay-free", "rt-1", None)
        .await
        .unwrap();
    let (ticket, free): (i64, i64) = sqlx::query_as("SELECT min(id), max(id) FROM tickets")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let row = |ticket: i64, company: &str, key: &str| {
        format!("({ticket}, '{company}', 'fa-src', 'fa-dst', 250, 'SLE', '{key}', '{{}}')")
    };

    insert_transfer(&db.pool, &row(ticket, "co-1", "k-ok"))
        .await
        .expect("a transfer with valid references is written");
    for (values, what) in [
        (
            row(free + 1_000, "co-1", "k-1"),
            "a ticket that does not exist",
        ),
        (row(free, "co-nope", "k-2"), "a company that does not exist"),
        (
            format!(
                "{}, {}",
                row(free, "co-1", "k-3"),
                row(free + 1_000, "co-1", "k-4")
            ),
            "a statement with one bad row",
        ),
    ] {
        let error = insert_transfer(&db.pool, &values).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("23503"),
            "{what}: {error}"
        );
    }

    for statement in [
        "UPDATE commission_transfers SET ticket_id = ticket_id + 1",
        "UPDATE commission_transfers SET company_id = 'co-2'",
        "DELETE FROM tickets",
        "UPDATE tickets SET id = DEFAULT",
        "TRUNCATE tickets CASCADE",
        "TRUNCATE commission_transfers, tickets",
    ] {
        let error = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("23503"),
            "{statement}: {error}"
        );
    }
    // Setting a transfer's ticket to the one it has changes nothing and is let through.
    sqlx::query("UPDATE commission_transfers SET ticket_id = ticket_id, status = 'processing'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(count(&db.pool, "tickets").await, 2);
    assert_eq!(count(&db.pool, "commission_transfers").await, 1);
}
