//! `GET /payments/{payment_id}`: a payment followed from its signed webhook through its ticket
//! to its commission transfer, and who may read it.

use std::time::Duration;

use poda::sandbox::{Sandbox, SandboxConfig};
use poda_jobs::testing::plans::{full_scans, plan_of};
use poda_jobs::testing::tickets::seed_one_company;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::{ticket, transfer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::{spawn_enqueuer_with, Reply, TestApp, ADMIN_TOKEN};
use crate::support::monime;
use crate::support::process::{spawn_worker_with, worker_command};

const STATUS_TOKEN: &str = "test-status-token";
const SANDBOX_TOKEN: &str = "sandbox-payments-token";
const PAYMENT_STATUS: &str = include_str!("../../src/payment_status.sql");

async fn spawn_app() -> TestApp {
    spawn_enqueuer_with(|s| s.status_token = poda::config::Secret::new(STATUS_TOKEN)).await
}

/// A signed `payment.completed` of 500.00 SLE for route `rt-1` of `co-1` (2.5 % commission).
fn payment(event_id: &str, payment_id: &str) -> Value {
    let mut event = monime::payment_completed(event_id, payment_id);
    event["data"]["metadata"] = json!({
        "company_id": "co-1",
        "route_id": "rt-1",
        "passenger_phone": "+23276123456",
    });
    event
}

async fn status(app: &TestApp, payment_id: &str, token: Option<&str>) -> Reply {
    app.admin(Method::GET, &format!("/payments/{payment_id}"), token)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_status_follows_a_payment_from_webhook_to_ticket_and_transfer() {
    let app = spawn_app().await;
    seed_one_company(&app.db.pool).await;

    let first = app.post_event(&payment("evt-ps-1", "pay-ps-1")).await;
    assert_eq!(first.status, 202, "{first:?}");
    let job_id = first.job_id();
    // Monime delivers the same payment again under another event id: one job still.
    let again = app.post_event(&payment("evt-ps-2", "pay-ps-1")).await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.job_id(), job_id);

    let received = status(&app, "pay-ps-1", Some(ADMIN_TOKEN)).await;
    assert_eq!(received.status, 200, "{received:?}");
    let body = &received.body;
    assert_eq!(body["payment_id"], "pay-ps-1");
    assert!(body["received_at"].is_string(), "{body}");
    let events = body["events"].as_array().expect("events");
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["evt-ps-1", "evt-ps-2"], "{body}");
    assert!(events
        .iter()
        .all(|e| e["name"] == "payment.completed" && e["received_at"].is_string()));
    assert_eq!(body["received_at"], events[0]["received_at"]);
    assert_eq!(
        body["job"],
        json!({"id": job_id, "state": "available", "attempts": 0, "last_error": null})
    );
    assert_eq!(body["ticket"], Value::Null);
    assert_eq!(body["transfer"], Value::Null);

    // A worker issues the ticket and pays the commission at the sandbox.
    let sandbox = Sandbox::spawn(SandboxConfig {
        token: Some(SANDBOX_TOKEN.into()),
        ..SandboxConfig::default()
    })
    .await
    .expect("start the sandbox");
    let queues = format!("{},{}", ticket::QUEUE, transfer::QUEUE);
    let mut command = worker_command(
        &app.db.url,
        &[
            "--queues",
            queues.as_str(),
            "--poll-interval",
            "200ms",
            "--transfer-poll-initial",
            "20ms",
        ],
    );
    command
        .env("MONIME_API_URL", &sandbox.base_url)
        .env("MONIME_API_TOKEN", SANDBOX_TOKEN)
        .env("MONIME_SPACE_ID", "spc-test")
        .env("MONIME_PLATFORM_ACCOUNT_ID", "fa-platform-test");
    let _worker = spawn_worker_with(command);

    let done = wait_until(
        "the payment's transfer to complete",
        Duration::from_secs(60),
        || async { status(&app, "pay-ps-1", Some(STATUS_TOKEN)).await },
        |reply| reply.status == 200 && reply.body["transfer"]["status"] == "completed",
    )
    .await;
    let body = &done.body;
    assert_eq!(body["job"]["id"], job_id);
    assert_eq!(body["job"]["state"], "completed");
    assert_eq!(body["job"]["attempts"], 1);
    let ticket = &body["ticket"];
    assert!(ticket["id"].is_i64(), "{body}");
    assert_eq!(ticket["company_id"], "co-1");
    assert_eq!(ticket["route_id"], "rt-1");
    assert_eq!(ticket["amount"], json!({"currency": "SLE", "value": 50000}));
    assert_eq!(ticket["commission_minor"], 1250);
    assert!(ticket["issued_at"].is_string());
    let transfer = &body["transfer"];
    assert_eq!(
        transfer["amount"],
        json!({"currency": "SLE", "value": 1250})
    );
    assert!(
        transfer["idempotency_key"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{body}"
    );
    assert!(transfer["monime_transfer_id"].is_string(), "{body}");
    assert_eq!(transfer["failure_code"], Value::Null);
    assert!(transfer["updated_at"].is_string());

    // The recorded row agrees with what the API says.
    let (ticket_id, key): (i64, String) = sqlx::query_as(
        "SELECT t.id, c.idempotency_key FROM tickets t \
         JOIN commission_transfers c ON c.ticket_id = t.id WHERE t.payment_id = 'pay-ps-1'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(ticket["id"], ticket_id);
    assert_eq!(transfer["idempotency_key"], key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_status_is_404_for_a_payment_never_received() {
    let app = spawn_app().await;
    // An event without a payment is not a payment.
    let ignored = app
        .post_event(&json!({
            "apiVersion": "caph.2025-08-23",
            "event": {"id": "evt-other", "name": "payout.completed", "timestamp": "2026-11-21T10:00:00Z"},
            "object": {"id": "pay-nope", "type": "payout"},
            "data": {"id": "pay-nope"}
        }))
        .await;
    assert_eq!(ignored.status, 200, "{ignored:?}");
    for token in [ADMIN_TOKEN, STATUS_TOKEN] {
        for id in ["pay-nope", "pay-never-seen"] {
            let reply = status(&app, id, Some(token)).await;
            assert_eq!(reply.status, 404, "{id}: {reply:?}");
            assert!(reply.body["error"].is_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_status_needs_the_admin_or_the_status_token() {
    let app = spawn_app().await;
    let job = app
        .post_event(&payment("evt-ps-auth", "pay-ps-auth"))
        .await
        .job_id();
    for token in [None, Some("wrong-token"), Some("")] {
        let reply = status(&app, "pay-ps-auth", token).await;
        assert_eq!(reply.status, 401, "{token:?}: {reply:?}");
        assert!(reply.body["error"].is_string());
    }
    for token in [ADMIN_TOKEN, STATUS_TOKEN] {
        let reply = status(&app, "pay-ps-auth", Some(token)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["job"]["id"], job);
    }

    // The status token opens nothing else.
    for (method, path) in [
        (Method::GET, format!("/jobs/{job}")),
        (Method::POST, format!("/jobs/{job}/retry")),
        (Method::POST, format!("/jobs/{job}/cancel")),
        (Method::GET, "/queues".to_owned()),
    ] {
        let reply = app.admin(method.clone(), &path, Some(STATUS_TOKEN)).await;
        assert_eq!(reply.status, 401, "{method} {path}: {reply:?}");
    }
    let admin = app
        .admin(Method::GET, &format!("/jobs/{job}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(admin.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_status_is_closed_to_an_empty_status_token() {
    // No STATUS_TOKEN configured: an empty bearer token does not match it.
    let app = spawn_enqueuer_with(|_| {}).await;
    app.post_event(&payment("evt-ps-empty", "pay-ps-empty"))
        .await
        .job_id();
    let reply = app
        .client
        .get(app.url("/payments/pay-ps-empty"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401);
    let admin = status(&app, "pay-ps-empty", Some(ADMIN_TOKEN)).await;
    assert_eq!(admin.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_status_probes_indexes_only_among_many_jobs_events_tickets_and_transfers() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;
    // Statistics taken while the tables were empty, as on a fresh deployment.
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
    for sql in [
        "INSERT INTO jobs (queue, kind, payload, state, max_attempts, backoff_base_ms, \
                           backoff_max_ms, unique_key, finished_at) \
         SELECT q, 'k', '{}', 'completed', 5, 100, 1000, q || '-' || i, now() \
         FROM generate_series(1, 100000) i, unnest(ARRAY['tickets', 'commission_transfers']) q",
        "INSERT INTO webhook_events (event_id, event_name, payment_id, payload) \
         SELECT 'evt-' || i, 'payment.completed', 'tickets-' || i, '{}' \
         FROM generate_series(1, 50000) i",
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         SELECT 'tickets-' || i, 'evt-' || i, 'co-1', 'rt-1', '+23270000000', 50000, 1250, 'SLE' \
         FROM generate_series(1, 50000) i",
        "INSERT INTO commission_transfers (ticket_id, company_id, source_account_id, \
                 destination_account_id, amount_minor, currency, idempotency_key, request_body) \
         SELECT id, 'co-1', 'fa-co', 'fa-platform', 1250, 'SLE', 'key-' || id, '{}' FROM tickets",
    ] {
        sqlx::query(sql).execute(&db.pool).await.expect(sql);
    }
    for (payment, grown_stats) in [("tickets-4242", false), ("tickets-4243", true)] {
        if grown_stats {
            sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
        }
        let plan = plan_of(
            &db.pool,
            PAYMENT_STATUS,
            &[payment.to_owned(), ticket::QUEUE.to_owned()],
        )
        .await;
        assert_eq!(full_scans(&plan), Vec::<String>::new(), "{plan}");
        let status = poda::payment_status::fetch(&db.pool, payment)
            .await
            .unwrap()
            .expect("the payment was received");
        assert!(status.job.is_some() && status.ticket.is_some() && status.transfer.is_some());
    }
}
