//! Enqueueing from SQL (`poda_enqueue`, `poda_enqueue_many`) and from the shell
//! (`worker enqueue`), against a real database and worker processes.

use std::time::Duration;

use poda_jobs::engine::JobState;
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::process::{run_worker_command, spawn_worker_serving_metrics, worker_command};

async fn jobs_in(pool: &poda_jobs::db::Db, queue: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1")
        .bind(queue)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_enqueued_by_a_trigger_wakes_a_worker_and_runs() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE signups (id bigint PRIMARY KEY, email text NOT NULL);
         CREATE FUNCTION signups_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM poda_enqueue('poda_probe', 'probe',
                                  jsonb_build_object('n', NEW.id, 'record', true));
             RETURN NEW;
         END $$;
         CREATE TRIGGER signups_enqueue AFTER INSERT ON signups
             FOR EACH ROW EXECUTE FUNCTION signups_enqueue();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A poll interval of a minute: the job runs this soon only if the enqueue woke the worker.
    let (_worker, _) = spawn_worker_serving_metrics(|| {
        worker_command(
            &db.url,
            &["--queues", "poda_probe", "--poll-interval", "60s"],
        )
    })
    .await;
    sqlx::query("INSERT INTO signups VALUES (7, 'a@example.com')")
        .execute(&db.pool)
        .await
        .unwrap();
    let ran: Vec<(i64, i32)> = wait_until(
        "the trigger's job to run",
        Duration::from_secs(10),
        || async {
            sqlx::query_as("SELECT n, attempt FROM probe_runs")
                .fetch_all(&db.pool)
                .await
                .unwrap()
        },
        |runs: &Vec<(i64, i32)>| !runs.is_empty(),
    )
    .await;
    assert_eq!(ran, vec![(7, 1)]);
    wait_until(
        "the job to complete",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, JobState>("SELECT state FROM jobs WHERE queue = 'poda_probe'")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |s| *s == JobState::Completed,
    )
    .await;
    // The row is the engine's: its retry policy is the engine's default.
    let policy: (i32, i32, i32) = sqlx::query_as(
        "SELECT max_attempts, backoff_base_ms, backoff_max_ms FROM jobs WHERE queue = 'poda_probe'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let default = poda_jobs::RetryPolicy::default();
    assert_eq!(
        policy,
        (
            default.max_attempts,
            default.base.as_millis() as i32,
            default.max.as_millis() as i32
        )
    );
}

#[tokio::test]
async fn a_rolled_back_transaction_enqueues_nothing_and_a_new_queue_is_registered() {
    let db = TestDb::new().await;
    let mut tx = db.pool.pool().begin().await.unwrap();
    let id: i64 = sqlx::query_scalar("SELECT poda_enqueue('emails', 'welcome', '{}')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(id > 0);
    tx.rollback().await.unwrap();
    assert_eq!(jobs_in(&db.pool, "emails").await, 0);

    let id: i64 = sqlx::query_scalar(
        "SELECT poda_enqueue('emails', 'welcome', '{\"to\": 1}', now() + interval '1 hour', \
         '0', NULL, 3)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (kind, payload, attempts, later, registered): (String, serde_json::Value, i32, bool, bool) =
        sqlx::query_as(
            "SELECT kind, payload, max_attempts, run_at > now() + interval '50 minutes', \
             EXISTS (SELECT 1 FROM job_queues WHERE name = 'emails') FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (kind.as_str(), payload, attempts, later, registered),
        ("welcome", serde_json::json!({"to": 1}), 3, true, true)
    );
}

#[tokio::test]
async fn a_unique_key_already_taken_returns_the_existing_job() {
    let db = TestDb::new().await;
    let first: i64 = sqlx::query_scalar(
        "SELECT poda_enqueue('emails', 'welcome', '{\"v\": 1}', unique_key => 'user-1')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let second: i64 = sqlx::query_scalar(
        "SELECT poda_enqueue('emails', 'welcome', '{\"v\": 2}', unique_key => 'user-1')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(first, second);
    let payloads: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM jobs WHERE queue = 'emails'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(payloads, vec![serde_json::json!({"v": 1})]);
}

#[tokio::test]
async fn enqueue_many_returns_ids_in_input_order_with_duplicates_resolved() {
    let db = TestDb::new().await;
    let taken: i64 = sqlx::query_scalar(
        "SELECT poda_enqueue('emails', 'welcome', '{\"n\": 0}', unique_key => 'k0')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT poda_enqueue_many( \
           ARRAY['emails', 'emails', 'emails', 'sms', 'emails'], \
           ARRAY['welcome', 'welcome', 'welcome', 'code', 'welcome'], \
           ARRAY['{\"n\": 1}', '{\"n\": 2}', '{\"n\": 3}', '{\"n\": 4}', '{\"n\": 5}']::jsonb[], \
           unique_keys => ARRAY['k1', 'k0', NULL, 'k1', 'k1'])",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), 5);
    // Row 2 names a key taken before the call, row 5 one taken earlier in the call (same queue);
    // row 4 has the same key in another queue, which is another key.
    assert_eq!(ids[1], taken);
    assert_eq!(ids[4], ids[0]);
    assert_ne!(ids[3], ids[0]);
    let n_of = |id: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT (payload->>'n')::bigint FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let mut ns = Vec::new();
    for id in &ids {
        ns.push(n_of(*id).await);
    }
    assert_eq!(ns, vec![1, 0, 3, 4, 1]);
    assert_eq!(jobs_in(&db.pool, "emails").await, 3);
    assert_eq!(jobs_in(&db.pool, "sms").await, 1);
}

#[tokio::test]
async fn enqueue_many_takes_each_jobs_backoff_or_the_default() {
    let db = TestDb::new().await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT poda_enqueue_many(ARRAY['q', 'q'], ARRAY['k', 'k'], ARRAY['{}', '{}']::jsonb[], \
           backoff_base_ms => ARRAY[250, NULL], backoff_max_ms => ARRAY[60000, NULL])",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut backoffs = Vec::new();
    for id in ids {
        let backoff: (i32, i32) =
            sqlx::query_as("SELECT backoff_base_ms, backoff_max_ms FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        backoffs.push(backoff);
    }
    assert_eq!(backoffs, vec![(250, 60_000), (1_000, 3_600_000)]);
}

#[tokio::test]
async fn bad_arguments_are_refused_with_a_clear_error() {
    let db = TestDb::new().await;
    for (sql, expected) in [
        ("SELECT poda_enqueue('', 'k', '{}')", "empty queue"),
        ("SELECT poda_enqueue('q', '', '{}')", "empty kind"),
        (
            "SELECT poda_enqueue('q', 'k', '{}', max_attempts => 0)",
            "max_attempts 0",
        ),
        (
            "SELECT poda_enqueue('q', 'k', '{}', priority => '4')",
            "priority 4",
        ),
        (
            "SELECT poda_enqueue_many(ARRAY['q'], ARRAY['k', 'l'], ARRAY['{}']::jsonb[])",
            "one element per job",
        ),
        (
            "SELECT poda_enqueue_many(ARRAY['q'], ARRAY['k'], ARRAY['{}']::jsonb[], \
               backoff_base_ms => ARRAY[-1])",
            "backoff_base_ms -1",
        ),
        (
            "SELECT poda_enqueue_many(ARRAY['q'], ARRAY['k'], ARRAY['{}']::jsonb[], \
               backoff_base_ms => ARRAY[5000], backoff_max_ms => ARRAY[1000])",
            "backoff_max_ms 1000 below its backoff_base_ms 5000",
        ),
        (
            "SELECT poda_enqueue_many(ARRAY['q'], ARRAY['k'], ARRAY['{}']::jsonb[], \
               backoff_max_ms => ARRAY[1, 2])",
            "one element per job",
        ),
    ] {
        let error = sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&db.pool)
            .await
            .expect_err(sql);
        assert!(error.to_string().contains(expected), "{sql}: {error}");
    }
    assert_eq!(jobs_in(&db.pool, "q").await, 0);
}

#[tokio::test]
async fn worker_enqueue_prints_the_job_id_and_refuses_bad_json() {
    let db = TestDb::new().await;
    let (ok, out, err) = run_worker_command(
        &db.url,
        &[
            "enqueue",
            "emails",
            "welcome",
            r#"{"to": "a@example.com"}"#,
            "--run-at",
            "2030-01-01T08:00:00+01:00",
            "--unique-key",
            "welcome-a",
            "--max-attempts",
            "4",
            "--priority",
            "0",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let id: i64 = out.trim().parse().expect("the job id on stdout");
    let (kind, payload, attempts, run_at): (String, serde_json::Value, i32, String) =
        sqlx::query_as(
            "SELECT kind, payload, max_attempts, to_char(run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') \
             FROM jobs WHERE id = $1 AND queue = 'emails' AND unique_key = 'welcome-a'",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (kind.as_str(), payload, attempts, run_at.as_str()),
        (
            "welcome",
            serde_json::json!({"to": "a@example.com"}),
            4,
            "2030-01-01 07:00"
        )
    );

    // The same key again: the same id, nothing written.
    let (ok, again, _) = run_worker_command(
        &db.url,
        &[
            "enqueue",
            "emails",
            "welcome",
            "{}",
            "--unique-key",
            "welcome-a",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(again.trim(), id.to_string());

    for bad in [
        vec!["enqueue", "emails", "welcome", "{not json"],
        vec!["enqueue", "emails", "welcome", "{}", "--priority", "7"],
        vec!["enqueue", "emails", "welcome", "{}", "--max-attempts", "0"],
        vec!["enqueue", "emails", "welcome", "{}", "--run-at", "tomorrow"],
    ] {
        let (ok, out, err) = run_worker_command(&db.url, &bad).await;
        assert!(!ok, "{bad:?} succeeded: {out}");
        assert!(out.trim().is_empty(), "{bad:?} printed {out}");
        assert!(!err.trim().is_empty());
        if bad[3] == "{not json" {
            assert!(err.contains("not valid JSON"), "{err}");
        }
    }
    assert_eq!(jobs_in(&db.pool, "emails").await, 1);
}
