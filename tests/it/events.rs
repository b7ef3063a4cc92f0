//! Events out through the transactional outbox, delivered by real `worker` processes to a real
//! HTTP receiver that fails some deliveries: every event arrives, signed, under a stable id;
//! a refusal is final; a rolled-back change never announces itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use poda::config::Secret;
use poda::http::webhooks::signature::WebhookSecrets;
use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, NewJob};
use poda_jobs::events::{self, event_type};
use poda_jobs::testing::tickets::{seed_one_company, ticket_counts, ticket_job};
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::ticket;

use crate::support::process::{spawn_worker_with, worker_command};

const SECRET: &str = "events-test-secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    body: Bytes,
    signature_valid: bool,
    /// What the receiver did: an HTTP status, or 0 for a dropped connection.
    answer: u16,
}

/// How the receiver answers the n-th request (1-based) carrying event `id`.
type Policy = Arc<dyn Fn(u64, &str) -> Answer + Send + Sync>;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    Drop,
}

#[derive(Clone)]
struct Receiver {
    requests: Arc<Mutex<Vec<Received>>>,
    seen: Arc<std::sync::atomic::AtomicU64>,
    policy: Policy,
    secrets: Arc<WebhookSecrets>,
}

impl Receiver {
    async fn start(policy: Policy) -> (Receiver, SocketAddr) {
        let receiver = Receiver {
            requests: Arc::default(),
            seen: Arc::default(),
            policy,
            secrets: Arc::new(WebhookSecrets::new(vec![Secret::new(SECRET)]).unwrap()),
        };
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Event ids answered 2xx.
    fn accepted(&self) -> BTreeSet<String> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answer))
            .map(|r| r.id)
            .collect()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = receiver
        .seen
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = parsed["id"].as_str().unwrap_or_default().to_owned();
    let header = headers
        .get(events::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    let signature_valid = receiver.secrets.verify(header, &body, now).is_ok();
    let answer = (receiver.policy)(n, &id);
    receiver.requests.lock().unwrap().push(Received {
        id,
        body,
        signature_valid,
        answer: match answer {
            Answer::Status(s) => s,
            Answer::Drop => 0,
        },
    });
    match answer {
        Answer::Status(status) => StatusCode::from_u16(status).unwrap(),
        // Unwinding out of the handler ends the connection's task: the socket is closed
        // without an answer. `resume_unwind` skips the panic hook, so nothing is printed.
        Answer::Drop => std::panic::resume_unwind(Box::new("drop the connection")),
    }
}

fn spawn_events_worker(
    db: &TestDb,
    addr: SocketAddr,
    queues: &str,
) -> crate::support::process::WorkerProcess {
    let url = format!("http://{addr}/events");
    let mut command = worker_command(
        &db.url,
        &[
            "--queues",
            queues,
            "--events-webhook-urls",
            &url,
            "--events-webhook-timeout",
            "2s",
            "--events-retry-base",
            "100ms",
        ],
    );
    command.env("EVENTS_WEBHOOK_SECRET", SECRET);
    spawn_worker_with(command)
}

async fn outbox_ids(pool: &Db, kind: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("SELECT event_id FROM outbox_event_list WHERE type = $1")
        .bind(kind)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Publishes `n` `cycle.activated` events in one committed transaction; their row ids.
async fn publish_cycle_events(pool: &Db, n: i64) -> Vec<i64> {
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let data = serde_json::json!({"cycle_id": i});
        ids.push(
            events::publish(&mut tx, event_type::CYCLE_ACTIVATED, &data)
                .await
                .unwrap(),
        );
    }
    pool.commit(tx).await.unwrap();
    ids
}

async fn delivery_job_states(pool: &Db) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT state::text, count(*) FROM jobs WHERE queue = 'events' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn events_reach_a_failing_receiver_each_at_least_once_signed_under_a_stable_id() {
    let db = TestDb::new().await;
    seed_one_company(&db.pool).await;

    // A ticket written and rolled back: its event must never leave.
    let mut tx = db.pool.begin().await.unwrap();
    let issued = ticket::issue_many(
        &mut tx,
        &[ticket_job("pay-rolled-back", "co-1", "rt-1", 5_000)],
    )
    .await;
    assert!(issued[0].as_ref().unwrap().created);
    let in_tx: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(in_tx, 1, "the ticket's event is written in its transaction");
    tx.rollback().await.unwrap();

    const N: usize = 300;
    let jobs: Vec<NewJob> = (0..N)
        .map(|i| ticket_job(&format!("pay-{i:04}"), "co-1", "rt-1", 10_000 + i as i64).to_job())
        .collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    // One request in five answers 500, one in seven loses its connection.
    let (receiver, addr) = Receiver::start(Arc::new(|n, _| {
        if n % 5 == 0 {
            Answer::Status(500)
        } else if n % 7 == 0 {
            Answer::Drop
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let _worker = spawn_events_worker(&db, addr, "tickets,events");

    wait_until(
        &format!("{N} tickets issued"),
        Duration::from_secs(60),
        || ticket_counts(&db.pool),
        |c| c.tickets == N as i64,
    )
    .await;
    let expected = outbox_ids(&db.pool, event_type::TICKET_ISSUED).await;
    assert_eq!(expected.len(), N, "one ticket.issued event per ticket");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE type = 'ticket.issued'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        rows < N as i64,
        "a ticket batch's events share one outbox row ({rows} rows)"
    );
    wait_until(
        "every event accepted and every delivery job completed",
        Duration::from_secs(90),
        || async { (receiver.accepted(), delivery_job_states(&db.pool).await) },
        |(accepted, states)| {
            *accepted == expected && states.len() == 1 && states.contains_key("completed")
        },
    )
    .await;

    let requests = receiver.requests();
    assert!(
        requests.iter().all(|r| r.signature_valid),
        "every request is signed with the secret"
    );
    let failed = requests.iter().filter(|r| r.answer == 500).count();
    let dropped = requests.iter().filter(|r| r.answer == 0).count();
    assert!(
        failed > 0 && dropped > 0,
        "the receiver failed some deliveries ({failed} 500s, {dropped} drops)"
    );
    assert!(requests.len() >= N + failed + dropped - 1);
    // Every delivery of one event carries the same id and the same bytes.
    let mut bodies: BTreeMap<&str, &Bytes> = BTreeMap::new();
    for r in &requests {
        let first = *bodies.entry(r.id.as_str()).or_insert(&r.body);
        assert_eq!(first, &r.body, "event {} changed between deliveries", r.id);
    }
    let retried = requests.len() - receiver.accepted().len();
    assert!(
        retried > 0,
        "some events were delivered more than once or retried"
    );
    // Nothing of the rolled-back ticket.
    assert!(requests
        .iter()
        .all(|r| !String::from_utf8_lossy(&r.body).contains("pay-rolled-back")));
    // The envelope and money shape.
    let one: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(one["type"], "ticket.issued");
    assert!(one["created_at"].is_string());
    assert_eq!(one["data"]["amount"]["currency"], "SLE");
    assert!(one["data"]["amount"]["value"].as_i64().unwrap() >= 10_000);
    assert!(one["data"]["commission"]["value"].is_i64());
}

#[tokio::test]
async fn events_refused_with_a_client_error_fail_for_review_without_a_retry() {
    let db = TestDb::new().await;
    let ids = publish_cycle_events(&db.pool, 3).await;
    // A published event in a rolled-back transaction is not there to deliver.
    let mut tx = db.pool.begin().await.unwrap();
    events::publish(&mut tx, event_type::CYCLE_ACTIVATED, &serde_json::json!({}))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let refused = events::public_id(ids[1], 0);
    let refused_by_policy = refused.clone();
    let late = events::public_id(ids[2], 0);
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 422 for the middle event; 408 once for the last one (retried, then accepted).
    let (receiver, addr) = Receiver::start(Arc::new(move |_, id| {
        if id == refused_by_policy {
            Answer::Status(422)
        } else if id == late && !timed_out.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(408)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let _worker = spawn_events_worker(&db, addr, "events");

    let states = wait_until(
        "the delivery job failed",
        Duration::from_secs(60),
        || delivery_job_states(&db.pool),
        |s| s.contains_key("failed"),
    )
    .await;
    assert_eq!(states.len(), 1, "one delivery job: {states:?}");
    let accepted = receiver.accepted();
    let others: BTreeSet<String> = [ids[0], ids[2]]
        .into_iter()
        .map(|id| events::public_id(id, 0))
        .collect();
    assert_eq!(accepted, others, "the other events are delivered");
    let refused_requests = receiver
        .requests()
        .iter()
        .filter(|r| r.id == refused)
        .count();
    assert_eq!(refused_requests, 1, "a refusal is not retried");
    let (state, status): (String, i16) = sqlx::query_as(
        "SELECT state, status FROM outbox_deliveries WHERE event_id = $1 AND seq = 0",
    )
    .bind(ids[1])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), status), ("failed", 422));
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM jobs WHERE queue = 'events'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(last_error.contains("refused"), "{last_error}");
    assert_eq!(
        receiver.requests().len(),
        4,
        "three events, one answered 408 and sent again; nothing of the rolled-back one"
    );
}

#[tokio::test]
async fn events_past_the_retention_are_pruned_with_their_deliveries_oldest_first() {
    let db = TestDb::new().await;
    let ids = publish_cycle_events(&db.pool, 5).await;
    // The first three were relayed two hours ago (one refused by its receiver), the fourth
    // just now; the fifth is not relayed yet.
    sqlx::query(
        "UPDATE outbox_events SET relayed_at = now() - interval '2 hours' WHERE id = ANY($1)",
    )
    .bind(&ids[..3])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox_events SET relayed_at = now() WHERE id = $1")
        .bind(ids[3])
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox_deliveries (event_id, seq, url, state, status) \
         VALUES ($1, 0, 'http://receiver.test/', 'failed', 422)",
    )
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();

    // Batches of two: the pass crosses a batch that is part old, part young.
    let deleted = events::prune_once(&db.pool, Duration::from_secs(3600), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox_events ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ids[3..].to_vec(), "the young and the unrelayed stay");
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        deliveries, 0,
        "the pruned event's delivery record goes with it"
    );
    // Nothing is past the retention any more.
    let again = events::prune_once(&db.pool, Duration::from_secs(3600), 2)
        .await
        .unwrap();
    assert_eq!(again, 0);
}
