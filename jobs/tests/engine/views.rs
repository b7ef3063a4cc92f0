//! The operator views `job_queue_stats` and `job_failures`, on jobs put in each state
//! directly in SQL. Setup and reads share one transaction, so `now()` is one instant and
//! every count and age is exact.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use poda_jobs::engine::admin::QueueStats;
use poda_jobs::testing::TestDb;
use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, Transaction};

const QUEUE: &str = "views_main";
const OTHER: &str = "views_other";
const EMPTY: &str = "views_empty";

/// (label, queue, state, attempt, run_at - now(), last_error, now() - finished_at).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    i32,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Due: pending. The oldest waits since 90 s; run_at = now() is due too.
    ("pending-oldest", QUEUE, "available", 0, "-90 seconds", None, None),
    ("pending", QUEUE, "available", 0, "-30 seconds", None, None),
    ("pending-now", QUEUE, "available", 0, "0 seconds", None, None),
    // A retry whose run_at has come: pending, and retrying (it has failed before).
    ("retry-due", QUEUE, "available", 1, "-10 seconds", Some("first failure"), None),
    // Waiting for a future run_at without having failed: scheduled.
    ("scheduled-hour", QUEUE, "available", 0, "1 hour", None, None),
    ("scheduled-second", QUEUE, "available", 0, "1 second", None, None),
    // Failed before, waiting for another attempt: retrying.
    ("retry-wait", QUEUE, "available", 1, "5 minutes", Some("timeout"), None),
    ("retry-wait-2", QUEUE, "available", 2, "20 seconds", Some("HTTP 503"), None),
    // Running, one of them a retry: running only.
    ("running", QUEUE, "running", 1, "-5 seconds", None, None),
    ("running-retry", QUEUE, "running", 2, "-5 seconds", Some("earlier failure"), None),
    // Failed for good.
    ("failed", QUEUE, "failed", 5, "-1 hour", Some("insufficient funds"), Some("30 minutes")),
    // Completed within the last hour (one after a failed attempt), and one before it.
    ("done", QUEUE, "completed", 1, "-20 minutes", None, Some("10 minutes")),
    ("done-59m", QUEUE, "completed", 1, "-2 hours", None, Some("59 minutes")),
    ("done-after-retry", QUEUE, "completed", 2, "-20 minutes", Some("recovered"), Some("1 minute")),
    ("done-2h", QUEUE, "completed", 1, "-3 hours", None, Some("2 hours")),
    // Cancelled counts nowhere, even with an error.
    ("cancelled", QUEUE, "cancelled", 1, "-1 hour", Some("given up"), Some("5 minutes")),
    // Another queue: counted apart.
    ("other-pending", OTHER, "available", 0, "-1000 seconds", None, None),
    ("other-failed", OTHER, "failed", 3, "-1 hour", Some("bad input"), Some("1 minute")),
];

/// Inserts [`ROWS`] (max_attempts 5; errors hold the last error) and returns each label's id.
async fn insert_rows(conn: &mut PgConnection) -> HashMap<String, i64> {
    sqlx::query("INSERT INTO job_queues (name) VALUES ($1), ($2), ($3)")
        .bind(QUEUE)
        .bind(OTHER)
        .bind(EMPTY)
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut ids = HashMap::new();
    for &(label, queue, state, attempt, run_in, last_error, finished_ago) in ROWS {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (queue, kind, payload, state, attempt, max_attempts, \
                               backoff_base_ms, backoff_max_ms, run_at, lease_owner, \
                               lease_expires_at, last_error, errors, finished_at) \
             SELECT $1, 'view_test', jsonb_build_object('label', $2::text), $3::job_state, $4, 5, \
                    1000, 60000, now() + $5::interval, \
                    CASE WHEN $3 = 'running' THEN gen_random_uuid() END, \
                    CASE WHEN $3 = 'running' THEN now() + interval '30 seconds' END, \
                    $6::text, \
                    CASE WHEN $6::text IS NULL THEN '[]'::jsonb \
                         ELSE jsonb_build_array(jsonb_build_object('attempt', $4, 'error', $6::text)) END, \
                    now() - $7::interval \
             RETURNING id",
        )
        .bind(queue)
        .bind(label)
        .bind(state)
        .bind(attempt)
        .bind(run_in)
        .bind(last_error)
        .bind(finished_ago)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("insert {label}: {e}"));
        ids.insert(label.to_owned(), id);
    }
    ids
}

async fn setup() -> (TestDb, Transaction<'static, Postgres>, HashMap<String, i64>) {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let ids = insert_rows(&mut tx).await;
    (db, tx, ids)
}

async fn columns(conn: &mut PgConnection, view: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(view)
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn job_queue_stats_counts_each_state_of_each_queue() {
    let (_db, mut tx, _) = setup().await;
    assert_eq!(
        columns(&mut tx, "job_queue_stats").await,
        [
            "queue",
            "pending",
            "scheduled",
            "running",
            "retrying",
            "failed",
            "done_last_hour",
            "oldest_pending_age_s"
        ]
    );
    let stats: Vec<QueueStats> =
        sqlx::query_as("SELECT * FROM job_queue_stats WHERE queue = ANY($1) ORDER BY queue")
            .bind([QUEUE, OTHER, EMPTY])
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(
        stats,
        [
            QueueStats {
                queue: EMPTY.into(),
                pending: 0,
                scheduled: 0,
                running: 0,
                retrying: 0,
                failed: 0,
                done_last_hour: 0,
                oldest_pending_age_s: 0,
            },
            QueueStats {
                queue: QUEUE.into(),
                // pending-oldest, pending, pending-now, retry-due.
                pending: 4,
                scheduled: 2,
                running: 2,
                // retry-due, retry-wait, retry-wait-2.
                retrying: 3,
                failed: 1,
                // done, done-59m, done-after-retry.
                done_last_hour: 3,
                oldest_pending_age_s: 90,
            },
            QueueStats {
                queue: OTHER.into(),
                pending: 1,
                scheduled: 0,
                running: 0,
                retrying: 0,
                failed: 1,
                done_last_hour: 0,
                oldest_pending_age_s: 1000,
            },
        ]
    );
    // Every registered queue has its row, with no jobs too.
    let queues: i64 = sqlx::query_scalar("SELECT count(*) FROM job_queue_stats")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM job_queues")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(queues, registered);
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Failure {
    id: i64,
    queue: String,
    kind: String,
    state: String,
    attempts: i32,
    max_attempts: i32,
    last_error: Option<String>,
    errors: Value,
    run_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[tokio::test]
async fn job_failures_lists_failed_and_retrying_jobs_only() {
    let (_db, mut tx, ids) = setup().await;
    assert_eq!(
        columns(&mut tx, "job_failures").await,
        [
            "id",
            "queue",
            "kind",
            "state",
            "attempts",
            "max_attempts",
            "last_error",
            "errors",
            "run_at",
            "updated_at"
        ]
    );
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let failures: Vec<Failure> = sqlx::query_as(
        "SELECT id, queue, kind, state::text AS state, attempts, max_attempts, last_error, \
                errors, run_at, updated_at \
         FROM job_failures ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();

    // Failed for good (both queues) and waiting to retry, due or not. Not: pending,
    // scheduled or running jobs (also a running retry), completed ones (also one that
    // completed after an error), cancelled ones.
    let failure =
        |label: &str, queue: &str, state: &str, attempts: i32, error: &str, run_in| Failure {
            id: ids[label],
            queue: queue.into(),
            kind: "view_test".into(),
            state: state.into(),
            attempts,
            max_attempts: 5,
            last_error: Some(error.into()),
            errors: json!([{"attempt": attempts, "error": error}]),
            run_at: now + run_in,
            updated_at: now,
        };
    let expected = vec![
        failure(
            "retry-due",
            QUEUE,
            "available",
            1,
            "first failure",
            TimeDelta::seconds(-10),
        ),
        failure(
            "retry-wait",
            QUEUE,
            "available",
            1,
            "timeout",
            TimeDelta::minutes(5),
        ),
        failure(
            "retry-wait-2",
            QUEUE,
            "available",
            2,
            "HTTP 503",
            TimeDelta::seconds(20),
        ),
        failure(
            "failed",
            QUEUE,
            "failed",
            5,
            "insufficient funds",
            TimeDelta::hours(-1),
        ),
        failure(
            "other-failed",
            OTHER,
            "failed",
            3,
            "bad input",
            TimeDelta::hours(-1),
        ),
    ];
    assert_eq!(failures, expected);
}
