//! Contribution cycles: the admin API, the fan-out in real worker processes (including kill -9
//! mid-fan-out), progress, and the agents' notifications delivered to a real HTTP receiver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use poda_jobs::audit::Actor;
use poda_jobs::cycle::create_cycle;
use poda_jobs::db::Db;
use poda_jobs::testing::{wait_until, TestDb};
use serde_json::{json, Value};

use crate::support::app::spawn_enqueuer;
use crate::support::cycles::{
    contribution_counts, cycle_request, cycle_status, new_cycle, seed_members, seed_tier,
    wait_active,
};
use crate::support::process::{run_worker_command, spawn_worker};

const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(120);

async fn cycle_row(pool: &Db, id: i64) -> (Option<i64>, i64, i32, Option<i64>) {
    sqlx::query_as(
        "SELECT total, processed, chunks, target_minor FROM contribution_cycles WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn processed(pool: &Db, id: i64) -> i64 {
    cycle_row(pool, id).await.1
}

/// Contributions of the cycle that should not exist: other tiers, not active, the deceased,
/// or members created after the cycle.
async fn ineligible_contributions(pool: &Db, id: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM member_contributions mc \
         JOIN contribution_cycles c ON c.id = mc.cycle_id \
         JOIN members m ON m.id = mc.member_id \
         WHERE mc.cycle_id = $1 \
           AND (m.tier_id <> c.tier_id OR m.status <> 'active' OR m.id = c.deceased_member_id \
                OR m.id > c.member_bound)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_creates_one_contribution_per_other_active_member_and_progress_only_goes_up() {
    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let other_tier = seed_tier(&pool, "silver", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 50_000, "active", 7).await;
    seed_members(&pool, tier, 300, "inactive", 7).await;
    seed_members(&pool, tier, 200, "suspended", 7).await;
    seed_members(&pool, other_tier, 1_000, "active", 7).await;
    let deceased = first + 123;

    let reply = app
        .post_cycle(&cycle_request(tier, deceased, "CLM-1"), None)
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "Initializing");
    let id = reply.body["cycle_id"].as_i64().unwrap();
    assert_eq!(
        reply.body["progress_url"],
        format!("/contribution-cycles/{id}/progress")
    );
    // Members who join after the cycle was created are not swept in.
    seed_members(&pool, tier, 100, "active", 7).await;

    let _worker = spawn_worker(
        &app.db.url,
        &[
            "--queues",
            "contribution_cycles",
            "--cycle-chunk-size",
            "2000",
        ],
    );
    let seen: Arc<Mutex<Vec<(i64, f64, String)>>> = Arc::default();
    let last = wait_until(
        "the cycle to settle while polling its progress",
        FAN_OUT_TIMEOUT,
        || {
            let seen = seen.clone();
            let app = &app;
            async move {
                let reply = app.cycle_progress(id).await;
                assert_eq!(reply.status, 200, "{reply:?}");
                let body = reply.body;
                seen.lock().unwrap().push((
                    body["processed"].as_i64().unwrap(),
                    body["percentage"].as_f64().unwrap(),
                    body["status"].as_str().unwrap().to_owned(),
                ));
                body
            }
        },
        |body| body["status"] != "Initializing",
    )
    .await;
    assert_eq!(last["status"], "Active", "{last}");
    assert_eq!(last["total"], 49_999);
    assert_eq!(last["processed"], 49_999);
    assert_eq!(last["percentage"], 100.0);
    assert_eq!(last["eta_seconds"], 0);
    let seen = seen.lock().unwrap().clone();
    for pair in seen.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 && pair[1].1 >= pair[0].1,
            "progress went down: {pair:?}"
        );
    }

    assert_eq!(contribution_counts(&pool, id).await, (49_999, 49_999));
    assert_eq!(ineligible_contributions(&pool, id).await, 0);
    let (total, processed, chunks, target) = cycle_row(&pool, id).await;
    assert_eq!((total, processed), (Some(49_999), 49_999));
    assert_eq!(chunks, 25, "49,999 members in chunks of 2,000");
    assert_eq!(target, Some(49_999 * 2_500));
    let (wrong,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM member_contributions mc JOIN contribution_cycles c ON c.id = mc.cycle_id \
         WHERE mc.cycle_id = $1 AND (mc.status <> 'Pending' OR mc.amount_minor <> 2500 \
               OR mc.currency <> 'SLE' OR mc.due_date <> (c.deadline AT TIME ZONE 'UTC')::date)",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    let status: String = sqlx::query_scalar("SELECT status::text FROM members WHERE id = $1")
        .bind(deceased)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "deceased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_resumes_after_kill_9_without_duplicates_or_gaps() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 50_000, "active", 5).await;
    seed_members(&pool, tier, 500, "inactive", 5).await;
    let other_tier = seed_tier(&pool, "silver", "SLE").await;
    seed_members(&pool, other_tier, 500, "active", 5).await;
    let id = create_cycle(
        &pool,
        &new_cycle(tier, first + 4_321, "CLM-crash"),
        None,
        &Actor::Console,
    )
    .await
    .unwrap()
    .id
    .0;

    // Chunks of 100: 500 chunks, so the kill lands in the middle.
    let args = [
        "--queues",
        "contribution_cycles",
        "--cycle-chunk-size",
        "100",
        "--lease",
        "2s",
        "--rescue-interval",
        "1s",
    ];
    let mut victim = spawn_worker(&db.url, &args);
    wait_until(
        "the fan-out to be under way",
        FAN_OUT_TIMEOUT,
        || processed(&pool, id),
        |n| *n >= 5_000,
    )
    .await;
    victim.sigkill();
    victim.wait_exit(Duration::from_secs(10)).await;
    let at_kill = processed(&pool, id).await;
    assert_eq!(cycle_status(&pool, id).await, "Initializing");
    assert!(
        at_kill < 49_999,
        "the kill came too late to interrupt ({at_kill})"
    );

    let _survivor = spawn_worker(&db.url, &args);
    wait_active(&pool, id, FAN_OUT_TIMEOUT).await;

    assert_eq!(contribution_counts(&pool, id).await, (49_999, 49_999));
    assert_eq!(ineligible_contributions(&pool, id).await, 0);
    let (total, processed, chunks, _) = cycle_row(&pool, id).await;
    assert_eq!((total, processed), (Some(49_999), 49_999));
    // Every committed chunk was kept: the survivor resumed at the cursor instead of
    // redoing chunks (499 full chunks and one of 99).
    assert_eq!(chunks, 500);
    let attempt: i32 = sqlx::query_scalar(
        "SELECT attempt FROM jobs WHERE queue = 'contribution_cycles' AND state = 'completed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempt, 2, "the killed run was rescued and run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cycles_of_one_tier_fan_out_at_once_each_exactly() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 20_000, "active", 4).await;
    let (x, y) = (first + 10, first + 19_000);
    let a = create_cycle(&pool, &new_cycle(tier, x, "CLM-a"), None, &Actor::Console)
        .await
        .unwrap()
        .id
        .0;
    let b = create_cycle(&pool, &new_cycle(tier, y, "CLM-b"), None, &Actor::Console)
        .await
        .unwrap()
        .id
        .0;

    let _worker = spawn_worker(
        &db.url,
        &[
            "--queues",
            "contribution_cycles",
            "--cycle-chunk-size",
            "1000",
        ],
    );
    wait_active(&pool, a, FAN_OUT_TIMEOUT).await;
    wait_active(&pool, b, FAN_OUT_TIMEOUT).await;
    // Both deceased members are out of both cycles (each was marked deceased when its cycle
    // was created, before either fan-out started).
    for id in [a, b] {
        assert_eq!(contribution_counts(&pool, id).await, (19_998, 19_998));
        assert_eq!(ineligible_contributions(&pool, id).await, 0);
        let (total, processed, _, _) = cycle_row(&pool, id).await;
        assert_eq!((total, processed), (Some(19_998), 19_998));
    }
    let with_deceased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM member_contributions WHERE member_id = ANY($1)")
            .bind(vec![x, y])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(with_deceased, 0);

    // `worker cycle <id>` follows a cycle to its end (plain lines when not on a terminal).
    let (ok, stdout, stderr) = run_worker_command(&db.url, &["cycle", &a.to_string()]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Active 19998/19998 100.00%"), "{stdout}");
    let (ok, _, stderr) = run_worker_command(&db.url, &["cycle", "999999"]).await;
    assert!(!ok);
    assert!(stderr.contains("cycle 999999 does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_returns_422_with_a_reason_and_writes_nothing_when_the_request_is_invalid() {
    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let usd_tier = seed_tier(&pool, "dollar", "USD").await;
    let (member, _) = seed_members(&pool, tier, 10, "active", 2).await;
    let (usd_member, _) = seed_members(&pool, usd_tier, 10, "active", 2).await;
    let valid = cycle_request(tier, member, "CLM-v");
    let with = |pointer: &str, value: Value| {
        let mut body = valid.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let cases = [
        (
            with("/tier_id", json!(999_999)),
            "tier 999999 does not exist",
        ),
        (
            with("/deceased_member_id", json!(999_999)),
            "member 999999 does not exist",
        ),
        (
            with("/deceased_member_id", json!(usd_member)),
            "belongs to tier",
        ),
        (with("/contribution/value", json!(0)), "positive"),
        (with("/contribution/value", json!(-5)), "positive"),
        (
            with("/contribution/value", json!(12.5)),
            "invalid contribution cycle",
        ),
        (
            with("/contribution/currency", json!("EUR")),
            "not supported",
        ),
        (with("/duration_days", json!(0)), "between 1 and 90"),
        (with("/duration_days", json!(91)), "between 1 and 90"),
        (with("/claim_reference", json!("")), "claim_reference"),
        (with("/contribution/currency", json!("USD")), "collects SLE"),
        (json!({"tier_id": tier}), "missing field"),
    ];
    for (body, reason) in cases {
        let reply = app.post_cycle(&body, Some("key-invalid")).await;
        assert_eq!(reply.status, 422, "{body} -> {reply:?}");
        let error = reply.body["error"].as_str().unwrap();
        assert!(error.contains(reason), "{body}: {error:?} lacks {reason:?}");
    }
    let malformed = app.post_cycle_raw(b"{not json".to_vec(), None).await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    let key_too_long = app.post_cycle(&valid, Some(&"k".repeat(65))).await;
    assert_eq!(key_too_long.status, 422, "{key_too_long:?}");
    let unauthorized = app
        .client
        .post(app.url("/contribution-cycles"))
        .json(&valid)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    let (cycles, jobs, deceased): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM contribution_cycles), (SELECT count(*) FROM jobs), \
                (SELECT count(*) FROM members WHERE status <> 'active')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((cycles, jobs, deceased), (0, 0, 0));
    let unknown = app.cycle_progress(424_242).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_a_used_idempotency_key_returns_the_same_cycle_and_refuses_a_different_body() {
    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 100, "active", 2).await;
    let body = cycle_request(tier, first, "CLM-idem");

    let one = app.post_cycle(&body, Some("key-1")).await;
    let two = app.post_cycle(&body, Some("key-1")).await;
    assert_eq!((one.status, two.status), (202, 202), "{one:?} {two:?}");
    assert_eq!(one.body["cycle_id"], two.body["cycle_id"]);

    let mut changed = body.clone();
    changed["contribution"]["value"] = json!(9_999);
    let reused = app.post_cycle(&changed, Some("key-1")).await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert!(reused.body["error"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key \"key-1\" was already used"));

    // The same claim under another key is a conflict, not a second cycle.
    let same_claim = app.post_cycle(&body, Some("key-2")).await;
    assert_eq!(same_claim.status, 409, "{same_claim:?}");
    assert!(same_claim.body["error"]
        .as_str()
        .unwrap()
        .contains("already has cycle"));

    // Racing repeats of a new request with one key all get the one cycle.
    let raced = cycle_request(tier, first + 1, "CLM-race");
    let replies =
        futures::future::join_all((0..8).map(|_| app.post_cycle(&raced, Some("key-race")))).await;
    let ids: std::collections::BTreeSet<i64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{r:?}");
            r.body["cycle_id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{replies:?}");

    let (cycles, jobs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM contribution_cycles), \
                (SELECT count(*) FROM jobs WHERE queue = 'contribution_cycles')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((cycles, jobs), (2, 2));
}

/// A cycle's audit events, oldest first: (actor, action).
async fn cycle_events(pool: &Db, id: i64) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT actor, action FROM audit_events \
         WHERE subject_type = 'cycle' AND subject_id = $1::text ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn events(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_created_through_the_api_and_activated_by_its_fan_out_is_in_the_audit_trail() {
    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 20, "active", 2).await;
    let body = cycle_request(tier, first, "CLM-audit");

    let created = app.post_cycle(&body, Some("key-audit")).await;
    assert_eq!(created.status, 202, "{created:?}");
    let id = created.body["cycle_id"].as_i64().unwrap();
    // A replay and a refused create record nothing.
    let replayed = app.post_cycle(&body, Some("key-audit")).await;
    assert_eq!(replayed.body["cycle_id"], id);
    let refused = app
        .post_cycle(&cycle_request(tier, first, "CLM-audit"), None)
        .await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(
        cycle_events(&pool, id).await,
        events(&[("api:admin", "cycle.created")])
    );
    let data: Value = sqlx::query_scalar(
        "SELECT data FROM audit_events WHERE action = 'cycle.created' AND subject_id = $1::text",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(data["claim_reference"], "CLM-audit");
    assert_eq!(data["idempotency_key"], "key-audit");
    assert_eq!(data["amount_minor"], 2_500);

    let _worker = spawn_worker(&app.db.url, &["--queues", "contribution_cycles"]);
    let status = wait_until(
        "the cycle to settle",
        FAN_OUT_TIMEOUT,
        || cycle_status(&pool, id),
        |s| s != "Initializing",
    )
    .await;
    assert_eq!(status, "Active");
    assert_eq!(
        cycle_events(&pool, id).await,
        events(&[
            ("api:admin", "cycle.created"),
            ("worker", "cycle.activated")
        ])
    );
    // Activation and its event are one transaction.
    let same: bool = sqlx::query_scalar(
        "SELECT c.xmin = a.xmin FROM contribution_cycles c JOIN audit_events a \
         ON a.subject_id = c.id::text AND a.action = 'cycle.activated' WHERE c.id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(same);
    // So is its outbox event, with the target as money.
    let (same, data): (bool, Value) = sqlx::query_as(
        "SELECT c.xmin = o.xmin, o.data->0 FROM contribution_cycles c JOIN outbox_events o \
         ON (o.data->0->>'cycle_id')::bigint = c.id AND o.type = 'cycle.activated' \
         WHERE c.id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(same);
    assert_eq!(data["cycle_id"], id);
    assert_eq!(data["target"]["currency"], "SLE");
    assert_eq!(
        data["target"]["value"].as_i64(),
        data["contributions"].as_i64().map(|n| n * 2_500)
    );
    assert!(data["contributions"].as_i64().unwrap() > 0);
}

/// A notification receiver: records every delivery, and answers 503 to the first one for
/// `agent-0` so that delivery is retried.
#[derive(Default)]
struct Receiver {
    deliveries: Mutex<Vec<(Option<String>, Value, u16)>>,
    failed_once: AtomicBool,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned());
    let status =
        if body["agent_id"] == "agent-0" && !receiver.failed_once.swap(true, Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
    receiver
        .deliveries
        .lock()
        .unwrap()
        .push((key, body, status.as_u16()));
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_notifies_each_agent_once_at_the_configured_url_with_retries() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let receiver = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 3_000, "active", 3).await;
    let id = create_cycle(
        &pool,
        &new_cycle(tier, first, "CLM-notify"),
        None,
        &Actor::Console,
    )
    .await
    .unwrap()
    .id
    .0;
    let expected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT agent_id, count(*) FROM members WHERE tier_id = $1 AND status = 'active' \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(tier)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 3);

    let url = format!("http://127.0.0.1:{port}/hook");
    let _worker = spawn_worker(
        &db.url,
        &[
            "--queues",
            "contribution_cycles,notifications",
            "--notifications-url",
            &url,
        ],
    );
    wait_active(&pool, id, FAN_OUT_TIMEOUT).await;
    wait_until(
        "every notification job to complete",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE queue = 'notifications' AND state = 'completed'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        },
        |n| *n == 3,
    )
    .await;

    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT unique_key FROM jobs WHERE queue = 'notifications' ORDER BY unique_key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected_keys: Vec<String> = expected
        .iter()
        .map(|(agent, _)| format!("cycle:{id}:agent:{agent}"))
        .collect();
    assert_eq!(keys, expected_keys);

    let deliveries = receiver.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 4, "3 agents, one retried: {deliveries:?}");
    let mut delivered: Vec<(String, i64, i64)> = deliveries
        .iter()
        .filter(|(_, _, status)| *status == 200)
        .map(|(key, body, _)| {
            let agent = body["agent_id"].as_str().unwrap().to_owned();
            assert_eq!(
                key.as_deref(),
                Some(format!("cycle:{id}:agent:{agent}").as_str())
            );
            assert_eq!(body["cycle_id"], id);
            assert_eq!(body["contribution"]["currency"], "SLE");
            assert_eq!(body["contribution"]["value_minor"], 2_500);
            (
                agent,
                body["members"].as_i64().unwrap(),
                body["total"]["value_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    delivered.sort();
    let wanted: Vec<(String, i64, i64)> = expected
        .iter()
        .map(|(agent, n)| (agent.clone(), *n, n * 2_500))
        .collect();
    assert_eq!(delivered, wanted);
    let retried: i32 = sqlx::query_scalar(
        "SELECT attempt FROM jobs WHERE queue = 'notifications' AND unique_key LIKE '%:agent-0'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(retried, 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_marks_the_cycle_failed_with_the_reason_when_an_error_is_permanent() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 3, "active", 1).await;
    // Two contributions of more than half of i64::MAX: the agent's total overflows bigint,
    // which no retry can fix.
    let mut new = new_cycle(tier, first, "CLM-overflow");
    new.contribution.value_minor = i64::MAX / 2 + 1;
    let id = create_cycle(&pool, &new, None, &Actor::Console)
        .await
        .unwrap()
        .id
        .0;

    let _worker = spawn_worker(&db.url, &["--queues", "contribution_cycles"]);
    let status = wait_until(
        "the cycle to settle",
        FAN_OUT_TIMEOUT,
        || cycle_status(&pool, id),
        |s| s != "Initializing",
    )
    .await;
    assert_eq!(status, "Failed");
    let (error, contributions): (Option<String>, i64) = sqlx::query_as(
        "SELECT error, (SELECT count(*) FROM member_contributions WHERE cycle_id = $1) \
         FROM contribution_cycles WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let error = error.expect("a Failed cycle keeps its reason");
    assert!(error.contains("out of range"), "{error}");
    assert_eq!(contributions, 0, "the failed chunk was rolled back");
    let job: (String, i32) = wait_until(
        "the fan-out job to fail for good",
        Duration::from_secs(30),
        || async {
            sqlx::query_as::<_, (String, i32)>(
                "SELECT state::text, attempt FROM jobs WHERE queue = 'contribution_cycles'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        },
        |(state, _)| state == "failed",
    )
    .await;
    assert_eq!(job.1, 1, "a permanent error is not retried");
    assert_eq!(
        cycle_events(&pool, id).await,
        events(&[
            ("console:admin", "cycle.created"),
            ("worker", "cycle.failed")
        ])
    );

    let (ok, stdout, _) = run_worker_command(&db.url, &["cycle", &id.to_string()]).await;
    assert!(!ok, "a Failed cycle exits non-zero");
    assert!(
        stdout.contains("Failed") && stdout.contains("out of range"),
        "{stdout}"
    );
}

/// The id of the cycle's fan-out job.
async fn fan_out_job(pool: &Db, cycle: i64) -> poda_jobs::engine::JobId {
    poda_jobs::engine::JobId(
        sqlx::query_scalar(
            "SELECT id FROM jobs WHERE queue = 'contribution_cycles' AND unique_key = $1",
        )
        .bind(format!("cycle:{cycle}"))
        .fetch_one(pool)
        .await
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_whose_fan_out_job_ended_without_settling_it_is_failed_and_frees_its_claim() {
    use poda_jobs::engine::complete::complete_many;
    use poda_jobs::engine::{admin, claim::claim_batch, Action, Completion};

    let app = spawn_enqueuer().await;
    let pool = app.db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 10, "active", 2).await;

    // The fan-out fails for good, and the cycle's own Failed update is lost (the database
    // went away between the two writes): the job is failed, the cycle still Initializing.
    let stuck = app
        .post_cycle(&cycle_request(tier, first, "CLM-stuck"), None)
        .await;
    assert_eq!(stuck.status, 202, "{stuck:?}");
    let stuck = stuck.body["cycle_id"].as_i64().unwrap();
    let owner = uuid::Uuid::new_v4();
    let claimed = claim_batch(
        &pool,
        "contribution_cycles",
        1,
        owner,
        Duration::from_secs(60),
        None,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    let reason = format!("cycle {stuck}: database error: connection reset by peer");
    complete_many(
        &pool,
        &[Completion {
            id: claimed[0].id,
            token: claimed[0].token,
            action: Action::Fail {
                error: reason.clone(),
            },
        }],
    )
    .await
    .unwrap();
    assert_eq!(cycle_status(&pool, stuck).await, "Initializing");

    // A new cycle for the claim is created: the stuck one no longer holds it.
    let again = app
        .post_cycle(&cycle_request(tier, first, "CLM-stuck"), None)
        .await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.body["status"], "Initializing");
    let replacement = again.body["cycle_id"].as_i64().unwrap();
    assert_ne!(replacement, stuck);
    // The stuck cycle is Failed, with its job's error as the reason.
    let progress = app.cycle_progress(stuck).await;
    assert_eq!(progress.status, 200, "{progress:?}");
    assert_eq!(progress.body["status"], "Failed", "{progress:?}");
    assert_eq!(progress.body["error"], reason.as_str());
    assert_eq!(progress.body["eta_seconds"], 0);
    // The repair is recorded as the system's, not as the operator's who happened to look.
    assert_eq!(
        cycle_events(&pool, stuck).await,
        events(&[("api:admin", "cycle.created"), ("system", "cycle.failed")])
    );
    // The replacement is live: it holds the claim now.
    let third = app
        .post_cycle(&cycle_request(tier, first, "CLM-stuck"), None)
        .await;
    assert_eq!(third.status, 409, "{third:?}");
    assert!(
        third.body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("already has cycle {replacement}")),
        "{third:?}"
    );

    // A cycle whose job an operator cancelled: its progress (and `worker cycle`) says Failed
    // at once, without waiting for a create.
    let cancelled = app
        .post_cycle(&cycle_request(tier, first + 1, "CLM-cancelled"), None)
        .await;
    assert_eq!(cancelled.status, 202, "{cancelled:?}");
    let cancelled = cancelled.body["cycle_id"].as_i64().unwrap();
    admin::cancel_job(&pool, fan_out_job(&pool, cancelled).await, &Actor::Console)
        .await
        .unwrap();
    let progress = app.cycle_progress(cancelled).await;
    assert_eq!(progress.body["status"], "Failed", "{progress:?}");
    assert!(
        progress.body["error"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{progress:?}"
    );
    assert_eq!(cycle_status(&pool, cancelled).await, "Failed");
    let (ok, stdout, _) = run_worker_command(&app.db.url, &["cycle", &cancelled.to_string()]).await;
    assert!(!ok, "a Failed cycle exits non-zero");
    assert!(stdout.contains("Failed"), "{stdout}");

    // A repeated create request answers with its cycle as it stands: Failed, once its job
    // has ended.
    let body = cycle_request(tier, first + 3, "CLM-replayed");
    let replayed = app.post_cycle(&body, Some("key-replayed")).await;
    assert_eq!(replayed.status, 202, "{replayed:?}");
    let replayed = replayed.body["cycle_id"].as_i64().unwrap();
    admin::cancel_job(&pool, fan_out_job(&pool, replayed).await, &Actor::Console)
        .await
        .unwrap();
    let again = app.post_cycle(&body, Some("key-replayed")).await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.body["cycle_id"], replayed);
    assert_eq!(again.body["status"], "Failed", "{again:?}");
    assert_eq!(cycle_status(&pool, replayed).await, "Failed");

    // A cycle whose job still waits to run is left alone and keeps its claim.
    let live = app
        .post_cycle(&cycle_request(tier, first + 2, "CLM-live"), None)
        .await;
    let live = live.body["cycle_id"].as_i64().unwrap();
    assert_eq!(
        app.cycle_progress(live).await.body["status"],
        "Initializing"
    );
    let refused = app
        .post_cycle(&cycle_request(tier, first + 2, "CLM-live"), None)
        .await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(cycle_status(&pool, live).await, "Initializing");
}
