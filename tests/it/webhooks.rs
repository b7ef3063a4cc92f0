//! `POST /webhooks/monime`: signatures, parsing, errors that write nothing, duplicates and
//! group commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use poda_jobs::testing::plans::{array_literal, full_scans, PreparedProbe};
use poda_jobs::testing::{wakeups, TestDb};
use serde_json::json;

use crate::support::app::{spawn_enqueuer, spawn_enqueuer_with, Reply, TestApp};
use crate::support::monime::{self, payment_completed, signature, ROTATED_SECRET, SECRET};

const RECORD_WEBHOOKS: &str = include_str!("../../src/http/record_webhooks.sql");

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(
        app.counts().await,
        (0, 0),
        "no job and no event may be written"
    );
}

fn body(event: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(event).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_202_with_a_ticket_job_when_payment_completed() {
    let app = spawn_enqueuer().await;
    let reply = app.post_event(&payment_completed("evt-1", "pay-1")).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let job_id = reply.job_id();

    let (queue, kind, key, payload): (String, String, String, serde_json::Value) =
        sqlx::query_as("SELECT queue, kind, unique_key, payload FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (queue.as_str(), kind.as_str(), key.as_str()),
        ("tickets", "ticket", "pay-1")
    );
    let ticket: poda_jobs::ticket::TicketJob = serde_json::from_value(payload).unwrap();
    assert_eq!(ticket.amount.value_minor, 50_000);
    assert_eq!(ticket.event_id, "evt-1");
    assert_eq!(ticket.passenger_phone, "+23276123456");
    assert_eq!(ticket.payment_code.as_deref(), Some("PC-1"));

    let (event_job, name): (Option<i64>, String) =
        sqlx::query_as("SELECT job_id, event_name FROM webhook_events WHERE event_id = 'evt-1'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(event_job, Some(job_id));
    assert_eq!(name, "payment.completed");
}

/// The batch commits durably without a NOTIFY (which would hold the server's notify lock
/// through its WAL flush); the ticket workers are woken after it, from another session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ticket_job_wakes_the_ticket_workers_after_its_commit_from_another_session() {
    let app = spawn_enqueuer().await;
    let mut listener = wakeups::listen(&app.db.pool).await;
    let reply = app.post_event(&payment_completed("evt-1", "pay-1")).await;
    assert_eq!(reply.status, 202, "{reply:?}");

    let sender = wakeups::next_wakeup_of(&mut listener, &app.db.pool, "tickets").await;
    assert!(
        sender.starts_with("-- wake:"),
        "the wake-up came from the session that ran: {sender}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_200_with_the_first_job_id_when_event_is_redelivered() {
    let app = spawn_enqueuer().await;
    let event = payment_completed("evt-dup", "pay-dup");
    let first = app.post_event(&event).await;
    assert_eq!(first.status, 202);
    let second = app.post_event(&event).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.job_id(), first.job_id());
    assert_eq!(second.body["duplicate"], true);
    // Another event for the same payment finds the same job.
    let other = app
        .post_event(&payment_completed("evt-dup-2", "pay-dup"))
        .await;
    assert_eq!(other.job_id(), first.job_id());
    assert_eq!(app.counts().await, (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_its_job_was_pruned_answers_that_job_and_enqueues_nothing() {
    let app = spawn_enqueuer().await;
    let event = payment_completed("evt-old", "pay-old");
    let first = app.post_event(&event).await;
    assert_eq!(first.status, 202, "{first:?}");
    // The job ran and retention removed it: its unique key no longer holds the payment.
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(first.job_id())
        .execute(&app.db.pool)
        .await
        .unwrap();

    let again = app.post_event(&event).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.job_id(), first.job_id());
    assert_eq!(app.counts().await, (0, 1), "no job is enqueued again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_records_and_ignores_other_events() {
    let app = spawn_enqueuer().await;
    let event = json!({"apiVersion": "caph.2025-08-23",
        "event": {"id": "evt-failed", "name": "payment.failed", "timestamp": "2026-11-21T10:00:00Z"},
        "object": {"id": "pay-9", "type": "payment"}, "data": {"id": "pay-9", "status": "failed"}});
    let reply = app.post_event(&event).await;
    assert_eq!(
        (reply.status, reply.body.clone()),
        (200, json!({"ignored": true}))
    );
    let again = app.post_event(&event).await;
    assert_eq!((again.status, again.body), (200, json!({"ignored": true})));
    assert_eq!(app.counts().await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_accepts_a_signature_299s_old_and_rejects_301s() {
    let app = spawn_enqueuer().await;
    let old = body(&payment_completed("evt-old", "pay-old"));
    let stale = signature(SECRET, monime::now() - 301, &old);
    let reply = app.post_webhook_raw(old.clone(), Some(stale)).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("window"));
    let future = signature(SECRET, monime::now() + 301, &old);
    assert_eq!(
        app.post_webhook_raw(old.clone(), Some(future)).await.status,
        401
    );
    assert_nothing_written(&app).await;

    let recent = signature(SECRET, monime::now() - 299, &old);
    assert_eq!(app.post_webhook_raw(old, Some(recent)).await.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_401_when_signature_is_missing_wrong_or_for_another_body() {
    let app = spawn_enqueuer().await;
    let good = body(&payment_completed("evt-s", "pay-s"));
    let cases = [
        None,
        Some("garbage".to_owned()),
        Some(format!("t={},v1=not-base64!", monime::now())),
        Some(signature("whsec_someone_else", monime::now(), &good)),
        Some(signature(SECRET, monime::now(), b"{\"another\":\"body\"}")),
        // Right signature, but over a timestamp other than the one in the header.
        Some(signature(SECRET, monime::now(), &good).replacen("t=", "t=1", 1)),
    ];
    for header in cases {
        let reply = app.post_webhook_raw(good.clone(), header.clone()).await;
        assert_eq!(reply.status, 401, "{header:?}: {reply:?}");
        assert!(reply.body["error"].is_string());
    }
    // Signature checked before parsing: a bad signature on garbage is 401, not 400.
    assert_eq!(
        app.post_webhook_raw(b"{not json".to_vec(), None)
            .await
            .status,
        401
    );
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_accepts_every_configured_secret_during_rotation() {
    let app = spawn_enqueuer().await;
    let a = body(&payment_completed("evt-a", "pay-a"));
    let b = body(&payment_completed("evt-b", "pay-b"));
    let sig_a = signature(SECRET, monime::now(), &a);
    let sig_b = signature(ROTATED_SECRET, monime::now(), &b);
    assert_eq!(app.post_webhook_raw(a, Some(sig_a)).await.status, 202);
    assert_eq!(app.post_webhook_raw(b, Some(sig_b)).await.status, 202);

    // After the rotation the old secret no longer works.
    let rotated = spawn_enqueuer_with(|s| {
        s.webhook_secrets = vec![poda::config::Secret::new(ROTATED_SECRET)];
    })
    .await;
    let c = body(&payment_completed("evt-c", "pay-c"));
    let old = signature(SECRET, monime::now(), &c);
    assert_eq!(
        rotated.post_webhook_raw(c.clone(), Some(old)).await.status,
        401
    );
    // A header may carry several v1 signatures; one valid is enough.
    let both = format!(
        "{},v1={}",
        signature(SECRET, monime::now(), &c),
        signature(ROTATED_SECRET, monime::now(), &c)
            .split("v1=")
            .nth(1)
            .unwrap()
    );
    assert_eq!(rotated.post_webhook_raw(c, Some(both)).await.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_400_when_json_is_malformed() {
    let app = spawn_enqueuer().await;
    for raw in [
        &b"{\"event\": "[..],
        b"not json",
        b"",
        b"{\"event\":{\"id\":\"e\",}}",
    ] {
        let reply = app.post_signed(raw.to_vec()).await;
        assert_eq!(
            reply.status,
            400,
            "{:?}: {reply:?}",
            String::from_utf8_lossy(raw)
        );
        assert!(reply.body["error"].as_str().unwrap().contains("JSON"));
    }
    assert_nothing_written(&app).await;
}

type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_422_when_fields_are_missing_or_invalid() {
    let app = spawn_enqueuer().await;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "no event",
            Box::new(|e| {
                e.as_object_mut().unwrap().remove("event");
            }),
        ),
        (
            "no event id",
            Box::new(|e| {
                e["event"].as_object_mut().unwrap().remove("id");
            }),
        ),
        (
            "no data",
            Box::new(|e| {
                e.as_object_mut().unwrap().remove("data");
            }),
        ),
        (
            "no company",
            Box::new(|e| {
                e["data"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("company_id");
            }),
        ),
        (
            "no route",
            Box::new(|e| {
                e["data"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("route_id");
            }),
        ),
        (
            "no phone",
            Box::new(|e| {
                e["data"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("passenger_phone");
            }),
        ),
        (
            "bad phone",
            Box::new(|e| e["data"]["metadata"]["passenger_phone"] = json!("call me")),
        ),
        (
            "bad company",
            Box::new(|e| e["data"]["metadata"]["company_id"] = json!("co 1; drop")),
        ),
        (
            "euro",
            Box::new(|e| e["data"]["amount"]["currency"] = json!("EUR")),
        ),
        (
            "zero",
            Box::new(|e| e["data"]["amount"]["value"] = json!(0)),
        ),
        (
            "negative",
            Box::new(|e| e["data"]["amount"]["value"] = json!(-5)),
        ),
        (
            "float",
            Box::new(|e| e["data"]["amount"]["value"] = json!(500.5)),
        ),
        (
            "string amount",
            Box::new(|e| e["data"]["amount"]["value"] = json!("500")),
        ),
        (
            "company as number",
            Box::new(|e| e["data"]["metadata"]["company_id"] = json!(7)),
        ),
    ];
    for (what, mutate) in mutations {
        let mut event = payment_completed("evt-422", "pay-422");
        mutate(&mut event);
        let reply = app.post_event(&event).await;
        assert_eq!(reply.status, 422, "{what}: {reply:?}");
        assert!(reply.body["error"].is_string(), "{what}");
    }
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_413_when_body_is_over_the_limit() {
    let app = spawn_enqueuer().await;
    let mut event = payment_completed("evt-big", "pay-big");
    event["padding"] = json!("x".repeat(64 * 1024));
    let reply = app.post_event(&event).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("65536"));
    assert_nothing_written(&app).await;

    let small = spawn_enqueuer_with(|s| s.body_limit = 100).await;
    let reply = small.post_event(&payment_completed("evt-x", "pay-x")).await;
    assert_eq!(reply.status, 413);
    assert_nothing_written(&small).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_404_and_405_for_wrong_paths_and_methods() {
    let app = spawn_enqueuer().await;
    let (status, text) = app.get("/webhooks/monime").await;
    assert_eq!(status, 405);
    assert!(text.contains("error"));
    let reply = app
        .client
        .post(app.url("/webhooks/stripe"))
        .body(body(&payment_completed("evt-404", "pay-404")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 404);
    let json: serde_json::Value = reply.json().await.unwrap();
    assert!(json["error"].is_string());
    assert_nothing_written(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_429_with_retry_after_when_a_client_exceeds_its_rate() {
    let app = spawn_enqueuer_with(|s| {
        s.rate_limit.per_second = 1;
        s.rate_limit.burst = 2;
    })
    .await;
    assert_eq!(
        app.post_event(&payment_completed("evt-r1", "pay-r1"))
            .await
            .status,
        202
    );
    assert_eq!(
        app.post_event(&payment_completed("evt-r2", "pay-r2"))
            .await
            .status,
        202
    );
    let limited = app.post_event(&payment_completed("evt-r3", "pay-r3")).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert!(limited.retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(app.counts().await, (2, 2));
    // Other routes are not limited.
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_returns_503_and_writes_nothing_when_its_batch_fails() {
    let app = spawn_enqueuer().await;
    sqlx::query("ALTER TABLE webhook_events RENAME TO webhook_events_away")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let reply = app.post_event(&payment_completed("evt-f", "pay-f")).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    sqlx::query("ALTER TABLE webhook_events_away RENAME TO webhook_events")
        .execute(&app.db.pool)
        .await
        .unwrap();
    // The next batch is not affected, and Monime's retry of the failed one succeeds.
    let retried = app.post_event(&payment_completed("evt-f", "pay-f")).await;
    assert_eq!(retried.status, 202, "{retried:?}");
    assert_eq!(app.counts().await, (1, 1));
}

/// 1,000 concurrent deliveries of 500 payments (each twice: half redeliver the same event,
/// half come as a new event) → exactly 500 jobs, one job id per payment, in shared commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_creates_one_job_per_payment_under_1000_concurrent_deliveries() {
    crate::support::raise_fd_limit();
    let app = Arc::new(spawn_enqueuer().await);
    let mut deliveries = Vec::new();
    for i in 0..500 {
        let payment = format!("pay-c{i}");
        let first = format!("evt-c{i}");
        let second = if i % 2 == 0 {
            first.clone()
        } else {
            format!("evt-c{i}-again")
        };
        deliveries.push((payment.clone(), first));
        deliveries.push((payment, second));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(deliveries.len()));
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|(payment, event)| {
            let app = app.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let event_body = body(&payment_completed(&event, &payment));
                let header = signature(SECRET, monime::now(), &event_body);
                barrier.wait().await;
                (
                    payment,
                    app.post_webhook_raw(event_body, Some(header)).await,
                )
            })
        })
        .collect();
    let mut job_of_payment: HashMap<String, HashSet<i64>> = HashMap::new();
    let mut accepted = 0;
    for task in tasks {
        let (payment, reply): (String, Reply) = task.await.unwrap();
        assert!(reply.status == 202 || reply.status == 200, "{reply:?}");
        if reply.status == 202 {
            accepted += 1;
        }
        job_of_payment
            .entry(payment)
            .or_default()
            .insert(reply.job_id());
    }
    assert_eq!(job_of_payment.len(), 500);
    assert!(
        job_of_payment.values().all(|ids| ids.len() == 1),
        "one job id per payment"
    );
    // 250 payments came as two distinct events, 250 as one event delivered twice.
    assert_eq!(accepted, 750);
    let (jobs, events) = app.counts().await;
    assert_eq!((jobs, events), (500, 750));
    let distinct_keys: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT unique_key) FROM jobs WHERE queue = 'tickets'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(distinct_keys, 500);
    // Every event row holds its payment's job.
    let wrong_job: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events w LEFT JOIN jobs j ON j.id = w.job_id \
         WHERE j.id IS NULL OR j.unique_key IS DISTINCT FROM w.payment_id",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(wrong_job, 0);
    // Group commit: the 500 jobs were written by far fewer transactions.
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(
        transactions < 250,
        "{transactions} transactions for 500 jobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueuer_answers_in_flight_webhooks_before_it_stops() {
    let app = Arc::new(spawn_enqueuer().await);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.try_post_event(&payment_completed(
                    &format!("evt-g{i}"),
                    &format!("pay-g{i}"),
                ))
                .await
            })
        })
        .collect();
    // Stop once the first request has been committed, with the rest still arriving.
    poda_jobs::testing::wait_until(
        "a first job",
        std::time::Duration::from_secs(10),
        || app.counts(),
        |(jobs, _)| *jobs > 0,
    )
    .await;
    app.shutdown.cancel();
    let mut acknowledged = Vec::new();
    for task in tasks {
        let sent = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("in-flight requests are answered");
        match sent {
            // A task that panicked fails the test with its panic.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("a delivery task did not finish: {error}"),
            // Requests that were not accepted before the listener closed get no answer
            // (refused or reset); every one that was accepted is answered, and acknowledged.
            Ok(Err(error)) => assert!(error.is_connect() || error.is_request(), "{error:?}"),
            Ok(Ok(reply)) => {
                assert_eq!(reply.status, 202, "{reply:?}");
                acknowledged.push(reply.job_id());
            }
        }
    }
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
        .bind(&acknowledged)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(found as usize, acknowledged.len());
    assert!(!acknowledged.is_empty());
}

/// A delivery whose bytes the database cannot store (a lone surrogate escape or a number
/// beyond numeric's range, in fields the parser skips) fails alone with a 4xx; the deliveries
/// that share its group-commit batch are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_database_cannot_store_fails_alone_not_its_batch() {
    // A long batch window, so every delivery below shares one batch.
    let app = spawn_enqueuer_with(|s| {
        s.group_commit.max_delay = std::time::Duration::from_millis(300);
    })
    .await;
    let poisoned = |event_id: &str, payment_id: &str, raw_value: &str| {
        let text = String::from_utf8(body(&payment_completed(event_id, payment_id))).unwrap();
        text.replacen('{', &format!("{{\"note\": {raw_value}, "), 1)
            .into_bytes()
    };
    let app = Arc::new(app);
    let mut sends = Vec::new();
    for i in 0..10 {
        let app = app.clone();
        sends.push(tokio::spawn(async move {
            app.post_event(&payment_completed(
                &format!("evt-ok-{i}"),
                &format!("pay-ok-{i}"),
            ))
            .await
        }));
    }
    let bad = [
        poisoned("evt-bad-1", "pay-bad-1", r#""\ud800""#),
        poisoned("evt-bad-2", "pay-bad-2", "1e1000000"),
    ];
    let mut bad_sends = Vec::new();
    for body in bad {
        let app = app.clone();
        bad_sends.push(tokio::spawn(async move { app.post_signed(body).await }));
    }
    for send in sends {
        let reply = send.await.unwrap();
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    for send in bad_sends {
        let reply = send.await.unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
    }
    assert_eq!(
        app.counts().await,
        (10, 10),
        "every good delivery is recorded, no bad one"
    );
}

/// The group commit's statement, with `n` new events of ticket jobs: its parameters as
/// literals (JSON `1` stands for each body and job payload).
fn record_webhooks_params(n: usize) -> Vec<String> {
    let events: Vec<String> = (0..n).map(|i| format!("evt-new-{i:04}")).collect();
    let payments: Vec<String> = (0..n).map(|i| format!("pay-new-{i:04}")).collect();
    vec![
        array_literal(&events),
        array_literal(std::iter::repeat_n("payment.completed", n)),
        array_literal(&payments),
        array_literal(std::iter::repeat_n(1, n)),
        array_literal(std::iter::repeat_n(1, n)),
        array_literal(&payments),
        "tickets".into(),
        "ticket".into(),
        "25".into(),
        "1".into(),
        "1000".into(),
        "3600000".into(),
    ]
}

#[tokio::test]
async fn the_batch_statement_planned_on_empty_tables_still_probes_its_indexes_once_they_grew() {
    let db = TestDb::new().await;
    let types = [
        "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text", "text", "int",
        "smallint", "int", "int",
    ];
    // Planned once, as the group commit's connections plan it (INDEX_PLANS), while every
    // table is empty and analyzed so: a new deployment's first webhook. The plan is kept
    // until the tables are analyzed again, however much they grow meanwhile.
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
    let mut probe = PreparedProbe::prepare(
        &db.pool,
        RECORD_WEBHOOKS,
        &types,
        &record_webhooks_params(1),
    )
    .await;
    sqlx::raw_sql(
        "INSERT INTO webhook_events (event_id, event_name, payment_id, payload, job_id) \
           SELECT 'evt-' || g, 'payment.completed', 'pay-' || g, '{}', g \
           FROM generate_series(1, 100000) g; \
         INSERT INTO jobs (queue, kind, payload, unique_key, run_at, max_attempts, \
                           backoff_base_ms, backoff_max_ms, priority) \
           SELECT 'tickets', 'ticket', '{}', 'pay-' || g, now(), 25, 1000, 3600000, 1 \
           FROM generate_series(1, 100000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let plan = probe.plan(&record_webhooks_params(500)).await;
    assert_eq!(full_scans(&plan), Vec::<String>::new(), "{plan}");
}
