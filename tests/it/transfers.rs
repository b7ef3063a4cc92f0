//! Commission transfers against the Monime sandbox, run by real worker processes.

use std::time::{Duration, Instant};

use poda::sandbox::{FaultConfig, FaultKind, Sandbox, SandboxConfig};
use poda_jobs::audit::Actor;
use poda_jobs::db::Db;
use poda_jobs::engine::enqueue_many_pooled;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::transfer::monime::{
    ApiToken, IdempotencyKey, MonimeClient, MonimeConfig, MonimeError, TransferStatus,
    DEFAULT_VERSION,
};
use poda_jobs::transfer::{self, TransferJob};
use poda_jobs::RetryPolicy;
use tokio::process::Command;

use crate::support::process::{
    run_worker_command, spawn_worker_serving_metrics, spawn_worker_with, worker_command,
    WorkerProcess,
};

const TOKEN: &str = "sandbox-test-token";
const PLATFORM: &str = "fa-platform-test";

/// A short schedule so retries take milliseconds, not seconds.
const FAST_RETRY: RetryPolicy =
    RetryPolicy::new(6, Duration::from_millis(100), Duration::from_millis(500));

/// Inserts a company with `account`, a route and `n` tickets (commission 12.50 SLE each);
/// returns the ticket ids.
/// A transfer store on the test database (rows and answers both on `pool`), for tests that
/// drive the store without a worker.
struct TestStore {
    store: transfer::TransferStore,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestStore {
    fn start(pool: &Db) -> TestStore {
        let stop = tokio_util::sync::CancellationToken::new();
        let (store, tasks) = transfer::TransferStore::start(
            pool.clone(),
            pool.clone(),
            PLATFORM.into(),
            stop.clone(),
        );
        TestStore { store, stop, tasks }
    }

    /// Stops the store once what it holds is written.
    async fn stop(self) {
        self.stop.cancel();
        futures::future::join_all(self.tasks).await;
    }
}

impl std::ops::Deref for TestStore {
    type Target = transfer::TransferStore;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

async fn seed_tickets(pool: &Db, company: &str, account: &str, n: i64) -> Vec<i64> {
    sqlx::query(
        "INSERT INTO companies (id, name, monime_account_id, commission_bps, currency) \
         VALUES ($1, $1, $2, 250, 'SLE') ON CONFLICT DO NOTHING",
    )
    .bind(company)
    .bind(account)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO routes (id, company_id, origin, destination) \
         VALUES ($1 || '-route', $1, 'Freetown', 'Bo') ON CONFLICT DO NOTHING",
    )
    .bind(company)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency) \
         SELECT 'pay-' || $1 || '-' || g, 'evt-' || $1 || '-' || g, $1, $1 || '-route', \
                '+23276000000', 50000, 1250, 'SLE' \
         FROM generate_series(1, $2) g RETURNING id",
    )
    .bind(company)
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Enqueues the transfer jobs of `tickets` as ticket creation does: keyed by their company.
async fn enqueue_transfers(pool: &Db, tickets: &[i64], retry: RetryPolicy) {
    let companies: std::collections::HashMap<i64, String> =
        sqlx::query_as("SELECT id, company_id FROM tickets WHERE id = ANY($1)")
            .bind(tickets)
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let jobs: Vec<_> = tickets
        .iter()
        .map(|&ticket_id| {
            TransferJob { ticket_id }
                .to_job(&companies[&ticket_id])
                .with_retry(retry)
        })
        .collect();
    for chunk in jobs.chunks(1_000) {
        enqueue_many_pooled(pool, chunk).await.unwrap();
    }
}

/// A worker process working only the transfer queue against `sandbox`.
fn spawn_transfer_worker(db: &TestDb, sandbox: &Sandbox, args: &[&str]) -> WorkerProcess {
    spawn_worker_with(transfer_worker_command(db, sandbox, args))
}

fn transfer_worker_command(db: &TestDb, sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut all = vec!["--queues", transfer::QUEUE];
    all.extend_from_slice(args);
    let mut command = worker_command(&db.url, &all);
    command
        .env("MONIME_API_URL", &sandbox.base_url)
        .env("MONIME_API_TOKEN", TOKEN)
        .env("MONIME_SPACE_ID", "spc-test")
        .env("MONIME_PLATFORM_ACCOUNT_ID", PLATFORM);
    command
}

async fn sandbox(config: SandboxConfig) -> Sandbox {
    Sandbox::spawn(SandboxConfig {
        token: Some(TOKEN.into()),
        ..config
    })
    .await
    .expect("start the sandbox")
}

async fn count_transfers(pool: &Db, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM commission_transfers WHERE status::text = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count_jobs(pool: &Db, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1 AND state::text = $2")
        .bind(transfer::QUEUE)
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn key_of(pool: &Db, ticket_id: i64) -> String {
    sqlx::query_scalar("SELECT idempotency_key FROM commission_transfers WHERE ticket_id = $1")
        .bind(ticket_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn transfers_complete_exactly_once_when_a_fifth_of_calls_fail_transiently() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        latency: Duration::from_millis(2),
        completion_delay: Duration::from_millis(50),
        faults: FaultConfig {
            transient_rate: 0.2,
            max_per_key: 2,
            kinds: FaultKind::ALL.to_vec(),
            retry_after_s: 1,
            slow_for: Duration::from_millis(800),
            ..FaultConfig::default()
        },
        token: None,
        ..SandboxConfig::default()
    })
    .await;
    let tickets = seed_tickets(&db.pool, "co-busy", "fa-busy", 2_000).await;
    enqueue_transfers(&db.pool, &tickets, FAST_RETRY).await;
    let _worker = spawn_transfer_worker(
        &db,
        &sandbox,
        &[
            "--concurrency",
            "16",
            "--monime-timeout",
            "400ms",
            "--transfer-poll-initial",
            "50ms",
            "--poll-interval",
            "100ms",
        ],
    );
    wait_until(
        "2,000 transfers completed",
        Duration::from_secs(180),
        || count_transfers(&db.pool, "completed"),
        |n| *n == 2_000,
    )
    .await;
    wait_until(
        "every job completed",
        Duration::from_secs(30),
        || count_jobs(&db.pool, "completed"),
        |n| *n == 2_000,
    )
    .await;

    let counts = &sandbox.counts;
    assert!(
        counts.faults() >= 300,
        "faults injected: {}",
        counts.faults()
    );
    assert_eq!(counts.total_executions(), 2_000);
    let executions = counts.executions();
    assert_eq!(executions.len(), 2_000);
    assert!(executions.values().all(|n| *n == 1));
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM commission_transfers")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| executions.contains_key(k)));
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commission_transfers WHERE retry_count > 0")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(retried >= 300, "transfers retried: {retried}");
    let mismatched_ids: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM commission_transfers WHERE monime_transfer_id IS NULL OR completed_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(mismatched_ids, 0);
    let stats: (i64, i64, i64) = sqlx::query_as(
        "SELECT total, completed, amount_completed_minor FROM commission_transfer_stats WHERE company_id = 'co-busy'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stats, (2_000, 2_000, 2_000 * 1_250));
    // One transfer.completed outbox event per transfer, written by the completing statement
    // (one outbox row per statement, with the events of its batch).
    let (events, subjects, amounts): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT data->>'ticket_id'), \
                sum((data->'amount'->>'value')::bigint)::bigint \
         FROM outbox_event_list WHERE type = 'transfer.completed'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((events, subjects, amounts), (2_000, 2_000, 2_000 * 1_250));
}

#[tokio::test]
async fn permanent_errors_fail_with_their_reason_and_are_not_retried() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_millis(20),
        ..SandboxConfig::default()
    })
    .await;
    let broke = seed_tickets(&db.pool, "co-broke", "fa-insufficient-1", 1).await[0];
    let invalid = seed_tickets(&db.pool, "co-invalid", "fa-invalid-1", 1).await[0];
    let declined = seed_tickets(&db.pool, "co-declined", "fa-declined-1", 1).await[0];
    enqueue_transfers(&db.pool, &[broke, invalid, declined], FAST_RETRY).await;
    let worker = spawn_transfer_worker(&db, &sandbox, &["--transfer-poll-initial", "20ms"]);
    wait_until(
        "three jobs failed",
        Duration::from_secs(30),
        || count_jobs(&db.pool, "failed"),
        |n| *n == 3,
    )
    .await;

    let rows: Vec<(i64, String, Option<String>, String, i32)> = sqlx::query_as(
        "SELECT ticket_id, status::text, failure_code, last_error, retry_count \
         FROM commission_transfers ORDER BY ticket_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let row = |t: i64| rows.iter().find(|r| r.0 == t).unwrap().clone();
    let (_, status, code, error, retries) = row(broke);
    assert_eq!(
        (status.as_str(), code.as_deref(), retries),
        ("failed", Some("fund_insufficient"), 0)
    );
    assert!(error.contains("fund_insufficient"), "{error}");
    let (_, status, code, error, _) = row(invalid);
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("rejected"))
    );
    assert!(error.contains("400"), "{error}");
    let (_, _, code, _, _) = row(declined);
    assert_eq!(code.as_deref(), Some("transfer_declined"));
    // Each failure announced once in the outbox, with its code.
    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT data->>'ticket_id', data->>'failure_code' FROM outbox_event_list \
         WHERE type = 'transfer.failed' ORDER BY (data->>'ticket_id')::bigint",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected = vec![
        (broke.to_string(), "fund_insufficient".to_owned()),
        (invalid.to_string(), "rejected".to_owned()),
        (declined.to_string(), "transfer_declined".to_owned()),
    ];
    expected.sort_by_key(|(t, _)| t.parse::<i64>().unwrap());
    assert_eq!(failed, expected);

    // One attempt each, one create each: nothing was retried.
    let attempts: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT attempt, jsonb_array_length(errors)::bigint FROM jobs WHERE queue = $1",
    )
    .bind(transfer::QUEUE)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(attempts.iter().all(|a| *a == (1, 1)), "{attempts:?}");
    for ticket in [broke, invalid, declined] {
        assert_eq!(
            sandbox
                .counts
                .create_requests_for(&key_of(&db.pool, ticket).await),
            1
        );
    }

    // An operator retry: a new key only where Monime failed the transfer.
    drop(worker);
    let declined_key = key_of(&db.pool, declined).await;
    let retried = poda::ops::retry_transfer(&db.pool, declined).await.unwrap();
    assert!(retried.new_key);
    assert_eq!(retried.generation, 2);
    assert_ne!(retried.idempotency_key, declined_key);
    assert_eq!(key_of(&db.pool, declined).await, retried.idempotency_key);
    let retried = poda::ops::retry_transfer(&db.pool, invalid).await.unwrap();
    assert!(!retried.new_key, "Monime never accepted it: same key");
    assert!(poda::ops::retry_transfer(&db.pool, invalid).await.is_err());

    // Each transfer was created and failed by the worker; the operator's retries are the
    // operator's, with the generation they run under; the refused retry left nothing.
    let operator = poda::ops::cli_actor().name();
    let events = transfer_events(&db.pool).await;
    for ticket in [broke, invalid, declined] {
        let of_ticket: Vec<(String, String, i32)> = events
            .iter()
            .filter(|e| e.0 == ticket)
            .map(|e| (e.1.clone(), e.2.clone(), e.3))
            .collect();
        let mut expected = vec![
            ("worker".to_owned(), "transfer.created".to_owned(), 1),
            ("worker".to_owned(), "transfer.failed".to_owned(), 1),
        ];
        if ticket == declined {
            expected.push((operator.clone(), "transfer.retried".into(), 2));
        }
        if ticket == invalid {
            expected.push((operator.clone(), "transfer.retried".into(), 1));
        }
        assert_eq!(of_ticket, expected, "ticket {ticket}");
    }
    let failed: serde_json::Value = sqlx::query_scalar(
        "SELECT data FROM audit_events WHERE action = 'transfer.failed' AND subject_id = $1::text",
    )
    .bind(broke)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failed["failure_code"], "fund_insufficient");
}

#[tokio::test]
async fn a_429_is_retried_after_monime_retry_after_not_the_backoff() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        faults: FaultConfig {
            retry_after_s: 7,
            ..FaultConfig::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let ticket = seed_tickets(&db.pool, "co-throttled", "fa-throttle-1", 1).await[0];
    enqueue_transfers(&db.pool, &[ticket], transfer::RETRY_POLICY).await;
    let _worker = spawn_transfer_worker(&db, &sandbox, &[]);
    let (attempt, wait_s, error): (i32, f64, String) = wait_until(
        "the first attempt to be rate limited",
        Duration::from_secs(20),
        || async {
            sqlx::query_as::<_, (i32, f64, String)>(
                "SELECT attempt, extract(epoch FROM run_at - updated_at)::float8, last_error \
                 FROM jobs WHERE queue = $1 AND state = 'available' AND last_error IS NOT NULL",
            )
            .bind(transfer::QUEUE)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
        |r| r.is_some(),
    )
    .await
    .unwrap();
    assert_eq!(attempt, 1);
    assert!((6.9..=7.1).contains(&wait_s), "run_at is now + {wait_s}s");
    assert!(error.contains("429"), "{error}");
    let retries: i32 =
        sqlx::query_scalar("SELECT retry_count FROM commission_transfers WHERE ticket_id = $1")
            .bind(ticket)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(retries, 1);
}

/// Reads one unlabelled series from a Prometheus text endpoint.
async fn metric(addr: &str, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn circuit_opens_during_an_outage_and_held_back_jobs_complete_after_it() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_millis(20),
        ..SandboxConfig::default()
    })
    .await;
    sandbox.counts.set_outage(true);
    let tickets = seed_tickets(&db.pool, "co-outage", "fa-outage", 40).await;
    // Five attempts 100-200 ms apart: without the breaker the outage would exhaust them.
    let retry = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_millis(200));
    enqueue_transfers(&db.pool, &tickets, retry).await;
    let (_worker, metrics_addr) = spawn_worker_serving_metrics(|| {
        transfer_worker_command(
            &db,
            &sandbox,
            &[
                "--concurrency",
                "8",
                "--breaker-min-calls",
                "5",
                "--breaker-reset",
                "500ms",
                "--transfer-poll-initial",
                "20ms",
                "--poll-interval",
                "100ms",
            ],
        )
    })
    .await;
    let metrics_addr = metrics_addr.to_string();
    // Opened, probed after the reset, failed the probe and opened again.
    wait_until(
        "the circuit to open twice",
        Duration::from_secs(30),
        || metric(&metrics_addr, "poda_transfer_breaker_opened_total"),
        |n| *n >= 2.0,
    )
    .await;
    let creates_during_outage = sandbox.counts.create_requests();
    sandbox.counts.set_outage(false);
    wait_until(
        "every transfer completed",
        Duration::from_secs(60),
        || count_transfers(&db.pool, "completed"),
        |n| *n == 40,
    )
    .await;
    // Without the breaker, 40 jobs would have called 5 times each during the outage.
    assert!(
        creates_during_outage < 40,
        "{creates_during_outage} calls during the outage"
    );
    assert_eq!(count_jobs(&db.pool, "failed").await, 0);
    wait_until(
        "every job completed",
        Duration::from_secs(10),
        || count_jobs(&db.pool, "completed"),
        |n| *n == 40,
    )
    .await;
    // Held-back jobs spent no attempt: only the calls that reached Monime during the outage did.
    let spent: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(attempt - 1), 0)::bigint FROM jobs WHERE queue = $1",
    )
    .bind(transfer::QUEUE)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        spent <= creates_during_outage as i64,
        "{spent} attempts spent"
    );
    assert_eq!(sandbox.counts.total_executions(), 40);
}

#[tokio::test]
async fn kill_9_of_a_worker_mid_call_makes_no_second_transfer() {
    let db = TestDb::new().await;
    // Monime executes at once but answers after 30 s: the worker is killed while waiting.
    let sandbox = sandbox(SandboxConfig {
        latency: Duration::from_secs(30),
        completion_delay: Duration::from_millis(20),
        ..SandboxConfig::default()
    })
    .await;
    let tickets = seed_tickets(&db.pool, "co-crash", "fa-crash", 10).await;
    enqueue_transfers(&db.pool, &tickets, FAST_RETRY).await;
    let fast_rescue = [
        "--lease",
        "2s",
        "--rescue-interval",
        "1s",
        "--monime-timeout",
        "60s",
        "--transfer-poll-initial",
        "20ms",
    ];
    let victim = spawn_transfer_worker(&db, &sandbox, &fast_rescue);
    wait_until(
        "the victim to be waiting on Monime for every transfer",
        Duration::from_secs(30),
        || async { sandbox.counts.total_executions() },
        |n| *n == 10,
    )
    .await;
    victim.sigkill();
    sandbox.counts.set_latency(Duration::ZERO);
    let _survivor = spawn_transfer_worker(&db, &sandbox, &fast_rescue);
    wait_until(
        "every transfer completed",
        Duration::from_secs(60),
        || count_transfers(&db.pool, "completed"),
        |n| *n == 10,
    )
    .await;
    // The survivor sent the same keys again and got the original transfers back.
    assert!(sandbox.counts.create_requests() >= 20);
    assert_eq!(sandbox.counts.total_executions(), 10);
    assert_eq!(sandbox.counts.executions().len(), 10);
}

#[tokio::test]
async fn global_rate_limit_holds_across_two_worker_processes() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_millis(10),
        ..SandboxConfig::default()
    })
    .await;
    let tickets = seed_tickets(&db.pool, "co-paced", "fa-paced", 40).await;
    enqueue_transfers(&db.pool, &tickets, FAST_RETRY).await;
    // 600 a minute = 10 a second, burst 5, shared by both processes.
    let args = [
        "--concurrency",
        "8",
        "--transfer-rate-limit",
        "600",
        "--transfer-rate-burst",
        "5",
        "--transfer-poll-initial",
        "20ms",
        "--poll-interval",
        "100ms",
    ];
    let started = Instant::now();
    let _a = spawn_transfer_worker(&db, &sandbox, &args);
    let _b = spawn_transfer_worker(&db, &sandbox, &args);
    wait_until(
        "every transfer completed",
        Duration::from_secs(60),
        || count_transfers(&db.pool, "completed"),
        |n| *n == 40,
    )
    .await;
    let times = sandbox.counts.execution_times();
    assert_eq!(times.len(), 40);
    let span = times[39].duration_since(times[0]).as_secs_f64();
    // (40 − 5) / 10 = 3.5 s at the shared limit; a per-process limit would take half that.
    assert!(span >= 3.2, "40 transfers executed within {span:.2}s");
    // No one-second window holds more than the burst plus a second's worth.
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 16, "{in_window} executions within 1 s");
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn reconcile_finds_a_transfer_monime_disagrees_with() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_millis(10),
        ..SandboxConfig::default()
    })
    .await;
    let tickets = seed_tickets(&db.pool, "co-audit", "fa-audit", 3).await;
    enqueue_transfers(&db.pool, &tickets, FAST_RETRY).await;
    let worker = spawn_transfer_worker(&db, &sandbox, &["--transfer-poll-initial", "20ms"]);
    wait_until(
        "three transfers completed",
        Duration::from_secs(30),
        || count_transfers(&db.pool, "completed"),
        |n| *n == 3,
    )
    .await;
    drop(worker);

    let reconcile = |db_url: String, base_url: String| async move {
        let out = worker_command(&db_url, &["reconcile", "--stuck-after", "1h"])
            .env("MONIME_API_URL", base_url)
            .env("MONIME_API_TOKEN", TOKEN)
            .env("MONIME_SPACE_ID", "spc-test")
            .env("MONIME_PLATFORM_ACCOUNT_ID", PLATFORM)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = reconcile(db.url.clone(), sandbox.base_url.clone()).await;
    assert!(ok, "nothing to report yet: {text}");
    assert!(text.contains("disagreements: 0"), "{text}");

    // Plant a discrepancy: Monime now says the second transfer failed.
    let key = key_of(&db.pool, tickets[1]).await;
    assert!(sandbox.counts.force_status(&key, "failed"));
    let (ok, text) = reconcile(db.url.clone(), sandbox.base_url.clone()).await;
    assert!(!ok, "a disagreement needs attention: {text}");
    assert!(text.contains("disagreements: 1"), "{text}");
    assert!(text.contains(&tickets[1].to_string()), "{text}");
}

fn client_for(sandbox: &Sandbox, token: &str) -> MonimeClient {
    MonimeClient::new(MonimeConfig {
        base_url: sandbox.base_url.clone(),
        token: ApiToken::new(token),
        space_id: "spc-test".into(),
        version: DEFAULT_VERSION.into(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
    })
    .unwrap()
}

fn body(value: i64) -> String {
    format!(
        r#"{{"amount":{{"currency":"SLE","value":{value}}},"sourceFinancialAccount":{{"id":"fa-co"}},"destinationFinancialAccount":{{"id":"{PLATFORM}"}},"description":"d","metadata":{{}}}}"#
    )
}

#[tokio::test]
async fn sandbox_answers_a_repeated_key_with_the_original_transfer_and_another_body_with_409() {
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .await;
    let client = client_for(&sandbox, TOKEN);
    let key = IdempotencyKey::parse("poda-commission-1-g1").unwrap();
    let first = client
        .create_internal_transfer(&key, &body(1250))
        .await
        .unwrap();
    assert_eq!(first.status, TransferStatus::Pending);
    let again = client
        .create_internal_transfer(&key, &body(1250))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    match client.create_internal_transfer(&key, &body(9999)).await {
        Err(MonimeError::Status { status: 409, .. }) => {}
        other => panic!("expected 409, got {other:?}"),
    }
    let read = client.get_internal_transfer(&first.id).await.unwrap();
    assert_eq!(read.id, first.id);
    match client.get_internal_transfer("trf-unknown").await {
        Err(MonimeError::Status { status: 404, .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }
    match client_for(&sandbox, "wrong-token")
        .create_internal_transfer(&key, &body(1250))
        .await
    {
        Err(e @ MonimeError::Status { status: 401, .. }) => assert!(!e.is_transient()),
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(sandbox.counts.total_executions(), 1);
    let report: serde_json::Value =
        reqwest::get(format!("{}/_sandbox/executions", sandbox.base_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(report["total"], 1);
    assert_eq!(report["by_key"][key.as_str()], 1);
}

#[tokio::test]
async fn sandbox_faults_reach_the_client_as_transient_errors() {
    let sandbox = sandbox(SandboxConfig::default()).await;
    let client = client_for(&sandbox, TOKEN);
    for (kind, expect) in [
        (FaultKind::TooManyRequests, "429"),
        (FaultKind::ServerError, "500"),
        (FaultKind::AfterUnavailable, "503"),
        (FaultKind::AfterReset, "reached"),
    ] {
        sandbox.counts.set_faults(FaultConfig {
            transient_rate: 1.0,
            max_per_key: 1,
            kinds: vec![kind],
            ..FaultConfig::default()
        });
        let key = IdempotencyKey::parse(format!("fault-{kind:?}")).unwrap();
        let error = client
            .create_internal_transfer(&key, &body(100))
            .await
            .expect_err("a fault");
        assert!(error.is_transient(), "{kind:?}: {error}");
        assert!(format!("{error}").contains(expect), "{kind:?}: {error}");
        if let MonimeError::Status {
            status: 429,
            retry_after,
            ..
        } = error
        {
            assert_eq!(retry_after, Some(Duration::from_secs(1)));
        }
        // The second create of the key succeeds: with the original transfer if the fault
        // came after the execution.
        client
            .create_internal_transfer(&key, &body(100))
            .await
            .unwrap();
    }
    // Executed once per key, whether the fault came before or after.
    assert_eq!(sandbox.counts.total_executions(), 4);
    sandbox.counts.set_outage(true);
    let key = IdempotencyKey::parse("outage").unwrap();
    let error = client
        .create_internal_transfer(&key, &body(100))
        .await
        .expect_err("an outage");
    assert!(error.is_transient());
}

#[tokio::test]
async fn transient_errors_exhaust_the_retries_then_an_operator_retry_keeps_the_key() {
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_millis(10),
        ..SandboxConfig::default()
    })
    .await;
    sandbox.counts.set_outage(true);
    let ticket = seed_tickets(&db.pool, "co-down", "fa-down", 1).await[0];
    let retry = RetryPolicy::new(3, Duration::from_millis(50), Duration::from_millis(100));
    enqueue_transfers(&db.pool, &[ticket], retry).await;
    let _worker = spawn_transfer_worker(
        &db,
        &sandbox,
        &[
            "--breaker-min-calls",
            "1000",
            "--transfer-poll-initial",
            "20ms",
            "--poll-interval",
            "100ms",
        ],
    );
    wait_until(
        "the job to fail after its last attempt",
        Duration::from_secs(30),
        || count_jobs(&db.pool, "failed"),
        |n| *n == 1,
    )
    .await;
    let (status, code, retries, error): (String, Option<String>, i32, String) = sqlx::query_as(
        "SELECT status::text, failure_code, retry_count, last_error FROM commission_transfers",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), code.as_deref(), retries),
        ("failed", Some("retries_exhausted"), 3)
    );
    assert!(error.contains("503"), "{error}");
    let key = key_of(&db.pool, ticket).await;
    assert_eq!(sandbox.counts.create_requests_for(&key), 3);

    // Monime's outcome is unknown: the operator retry keeps the key, and completes it.
    sandbox.counts.set_outage(false);
    let retried = poda::ops::retry_transfer(&db.pool, ticket).await.unwrap();
    assert!(!retried.new_key);
    assert_eq!(retried.idempotency_key, key);
    wait_until(
        "the retried transfer completed",
        Duration::from_secs(30),
        || count_transfers(&db.pool, "completed"),
        |n| *n == 1,
    )
    .await;
    assert_eq!(sandbox.counts.total_executions(), 1);
}

#[tokio::test]
async fn the_store_reads_and_writes_the_rows_of_runs_batched_together() {
    use poda_jobs::transfer::monime::IdempotencyKey;
    use poda_jobs::transfer::store::{Answer, RowStatus};
    use poda_jobs::transfer::TransferError;

    let db = TestDb::new().await;
    let tickets = seed_tickets(&db.pool, "co-store", "fa-co-store", 3).await;
    let (written, unwritten, free) = (tickets[0], tickets[1], tickets[2]);
    sqlx::query("UPDATE tickets SET commission_minor = 0 WHERE id = $1")
        .bind(free)
        .execute(&db.pool)
        .await
        .unwrap();
    let store = TestStore::start(&db.pool);
    // One ticket's row is written by an earlier run.
    let earlier = store.load_or_create(written).await.unwrap().unwrap();

    // Runs at the same moment: that ticket again, a new one (twice), a zero commission and a
    // ticket that does not exist.
    let missing = tickets.iter().max().unwrap() + 1_000;
    let asked = [written, unwritten, unwritten, free, missing];
    let answers =
        futures::future::join_all(asked.iter().map(|&ticket| store.load_or_create(ticket))).await;
    let again = answers[0].as_ref().unwrap().as_ref().unwrap();
    assert_eq!((again.id, &again.key), (earlier.id, &earlier.key));
    let new = answers[1].as_ref().unwrap().as_ref().unwrap();
    assert_eq!(new.status, RowStatus::Pending);
    assert_eq!(new.key, IdempotencyKey::for_ticket(unwritten, 1));
    assert!(
        new.body
            .contains(&format!("Commission for ticket {unwritten}")),
        "{}",
        new.body
    );
    assert_eq!(answers[2].as_ref().unwrap().as_ref().unwrap().id, new.id);
    assert!(
        answers[3].as_ref().unwrap().is_none(),
        "a zero commission has no transfer"
    );
    assert!(matches!(
        answers[4],
        Err(TransferError::TicketNotFound { ticket_id }) if ticket_id == missing
    ));
    let stored: (i64, String, String) = sqlx::query_as(
        "SELECT count(*), min(request_body) FILTER (WHERE ticket_id = $1), \
                min(destination_account_id) FROM commission_transfers",
    )
    .bind(unwritten)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, (2, new.body.clone(), PLATFORM.to_owned()));

    // Answers: polls count up; a completion under another key is fenced off; a completed row
    // takes no poll.
    let answer =
        |row: &poda_jobs::transfer::store::TransferRow, key: IdempotencyKey, status: &str| Answer {
            row_id: row.id,
            key,
            monime_transfer_id: format!("tfr-{}", row.id),
            monime_status: status.into(),
        };
    for expected in [Some(1), Some(2)] {
        let polls = store
            .record_unfinished(written, answer(again, again.key.clone(), "processing"))
            .await
            .unwrap();
        assert_eq!(polls, expected);
    }
    let stale = IdempotencyKey::for_ticket(unwritten, 7);
    store
        .record_completed(unwritten, answer(new, stale, "completed"))
        .await
        .unwrap();
    assert_eq!(count_transfers(&db.pool, "completed").await, 0);
    store
        .record_completed(unwritten, answer(new, new.key.clone(), "completed"))
        .await
        .unwrap();
    assert_eq!(count_transfers(&db.pool, "completed").await, 1);
    assert_eq!(count_transfers(&db.pool, "processing").await, 1);
    let polls = store
        .record_unfinished(unwritten, answer(new, new.key.clone(), "processing"))
        .await
        .unwrap();
    assert_eq!(polls, None, "a completed row is not polled again");
    store
        .record_completed(unwritten, answer(new, new.key.clone(), "completed"))
        .await
        .unwrap();

    // Each row written has its `transfer.created`, the completed one its `transfer.completed`
    // (once, though recorded twice; the fenced-off answer left none), each written by the
    // statement that wrote the row.
    assert_eq!(
        transfer_events(&db.pool).await,
        [
            (written, "worker".into(), "transfer.created".into(), 1),
            (unwritten, "worker".into(), "transfer.created".into(), 1),
            (unwritten, "worker".into(), "transfer.completed".into(), 1),
        ]
    );
    let data: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM audit_events WHERE action = 'transfer.completed'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(data["monime_transfer_id"], format!("tfr-{}", new.id));
    assert_eq!(data["amount_minor"], 1_250);

    store.stop().await;
}

/// The transfers' audit events, oldest first: (ticket, actor, action, generation).
async fn transfer_events(pool: &Db) -> Vec<(i64, String, String, i32)> {
    sqlx::query_as(
        "SELECT subject_id::bigint, actor, action, (data->>'generation')::int FROM audit_events \
         WHERE subject_type = 'transfer' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_operator_retry_revives_an_unfinished_row_whose_job_ended_but_not_one_at_work() {
    use poda_jobs::transfer::admin::TransferAdminError;

    let db = TestDb::new().await;
    let tickets = seed_tickets(&db.pool, "co-stranded", "fa-stranded", 2).await;
    let (stranded, busy) = (tickets[0], tickets[1]);
    // Both rows are written and pending; one job ended failed (its last attempt met a
    // database error after the row was written), the other still waits to run.
    let store = TestStore::start(&db.pool);
    for ticket in [stranded, busy] {
        store.load_or_create(ticket).await.unwrap().unwrap();
    }
    store.stop().await;
    enqueue_transfers(&db.pool, &[stranded, busy], FAST_RETRY).await;
    sqlx::query(
        "UPDATE jobs SET state = 'failed', attempt = max_attempts, finished_at = now(), \
         last_error = 'database error' WHERE unique_key = $1",
    )
    .bind(format!("ticket:{stranded}"))
    .execute(&db.pool)
    .await
    .unwrap();
    let key = key_of(&db.pool, stranded).await;

    let retried = poda::ops::retry_transfer(&db.pool, stranded).await.unwrap();
    assert_eq!((retried.new_key, retried.idempotency_key), (false, key));
    let job: (String, i32) =
        sqlx::query_as("SELECT state::text, attempt FROM jobs WHERE unique_key = $1")
            .bind(format!("ticket:{stranded}"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(job, ("available".to_owned(), 0));

    let refused =
        poda_jobs::transfer::admin::retry_failed_transfer(&db.pool, busy, &Actor::Console).await;
    assert!(
        matches!(refused, Err(TransferAdminError::AtWork { ref job_state, .. }) if job_state == "available"),
        "{refused:?}"
    );
    assert_eq!(count_transfers(&db.pool, "pending").await, 2);
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_alone_and_its_batch_is_written() {
    let db = TestDb::new().await;
    let tickets = seed_tickets(&db.pool, "co-poison", "fa-poison", 3).await;
    let poison = tickets[1];
    // A constraint only this test has: the database refuses the row of one ticket.
    // The id is an integer from the database, so formatting it into the DDL is safe.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE commission_transfers ADD CONSTRAINT refuses_one CHECK (ticket_id <> {poison})"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let store = TestStore::start(&db.pool);
    let answers =
        futures::future::join_all(tickets.iter().map(|&ticket| store.load_or_create(ticket))).await;
    // Again, with the refused row the only one to write: the written row still loads.
    let again =
        futures::future::join_all([tickets[0], poison].map(|ticket| store.load_or_create(ticket)))
            .await;
    store.stop().await;

    assert!(
        again[0].as_ref().is_ok_and(|row| row.is_some()),
        "{:?}",
        again[0]
    );
    assert!(again[1].is_err());
    assert!(matches!(
        answers[1],
        Err(poda_jobs::transfer::TransferError::Database { ticket_id, .. }) if ticket_id == poison
    ));
    for i in [0, 2] {
        let row = answers[i].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(key_of(&db.pool, tickets[i]).await, row.key.as_str());
    }
    assert_eq!(count_transfers(&db.pool, "pending").await, 2);
}

/// One run of the transfer job as a worker runs it, driven step by step: claim the job, run
/// the handler, decide the outcome. The outcome is returned unwritten, so a test chooses when
/// it lands (with [`land`]).
async fn run_claimed(
    db: &TestDb,
    context: &transfer::TransferContext,
    owner: uuid::Uuid,
) -> poda_jobs::engine::Completion {
    use poda_jobs::engine::{claim::claim_batch, outcome::decide, JobMeta};

    // Claim as if it were later: a snoozed job is due at once.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut claimed = claim_batch(
        &db.pool,
        transfer::QUEUE,
        1,
        owner,
        Duration::from_secs(60),
        Some(later),
    )
    .await
    .unwrap();
    let job = claimed.pop().expect("a transfer job to claim");
    let meta = JobMeta {
        id: job.id,
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        attempt: job.attempt,
        claim_token: job.token,
        retry: job.retry,
        cancel: poda_jobs::engine::RunCancel::never(),
    };
    let payload: TransferJob = serde_json::from_value(job.payload.clone()).unwrap();
    let result = transfer::handle(context, &meta, payload).await;
    let action = decide(
        &meta,
        Ok(result.map_err(|e| Box::new(e) as poda_jobs::engine::retry::BoxError)),
    );
    poda_jobs::engine::Completion {
        id: job.id,
        token: job.token,
        action,
    }
}

/// Writes a run's outcome as the completer does (fenced by its claim token).
async fn land(db: &TestDb, outcome: poda_jobs::engine::Completion) {
    poda_jobs::engine::complete::complete_many(&db.pool, &[outcome])
        .await
        .unwrap();
}

async fn transfer_state(pool: &Db, ticket_id: i64) -> (String, i32, String, String, i32) {
    sqlx::query_as(
        "SELECT ct.status::text, ct.generation, ct.idempotency_key, j.state::text, j.attempt \
         FROM commission_transfers ct JOIN jobs j ON j.unique_key = 'ticket:' || ct.ticket_id \
         WHERE ct.ticket_id = $1",
    )
    .bind(ticket_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_operator_retry_of_a_transfer_whose_failing_run_has_not_ended_is_refused_until_it_has() {
    use poda_jobs::engine::Action;
    use poda_jobs::transfer::admin::{retry_failed_transfer, TransferAdminError};
    use poda_jobs::transfer::breaker::{Breaker, BreakerConfig};
    use poda_jobs::transfer::{TransferContext, TransferSettings};

    let db = TestDb::new().await;
    // Transfers stay pending at Monime until the test says otherwise (force_status).
    let sandbox = sandbox(SandboxConfig {
        completion_delay: Duration::from_secs(3_600),
        ..SandboxConfig::default()
    })
    .await;
    let ticket = seed_tickets(&db.pool, "co-race", "fa-race", 1).await[0];
    enqueue_transfers(&db.pool, &[ticket], FAST_RETRY).await;
    let store = TestStore::start(&db.pool);
    let context = TransferContext {
        pool: db.pool.clone(),
        status_pool: db.pool.clone(),
        store: store.store.clone(),
        client: client_for(&sandbox, TOKEN),
        breaker: Breaker::new(BreakerConfig::default()),
        rate_limit: None,
        settings: TransferSettings {
            platform_account_id: PLATFORM.into(),
            poll_initial: Duration::from_millis(1),
            poll_max: Duration::from_millis(1),
            poll_inline: Duration::ZERO,
        },
    };
    let owner = uuid::Uuid::new_v4();

    // Monime accepts the transfer, then fails it: the second run records the failure on the
    // row, and its own outcome (a permanent failure) is still on its way to the job.
    let accepted = run_claimed(&db, &context, owner).await;
    assert!(
        matches!(accepted.action, Action::Snooze { .. }),
        "{accepted:?}"
    );
    land(&db, accepted).await;
    let first_key = key_of(&db.pool, ticket).await;
    assert!(sandbox.counts.force_status(&first_key, "failed"));
    let failing = run_claimed(&db, &context, owner).await;
    assert!(matches!(failing.action, Action::Fail { .. }), "{failing:?}");
    let before = transfer_state(&db.pool, ticket).await;
    assert_eq!(
        (before.0.as_str(), before.1, before.3.as_str()),
        ("failed", 1, "running")
    );

    // The operator retries now: refused, with the reason, and nothing changes.
    let refused = retry_failed_transfer(&db.pool, ticket, &Actor::Console).await;
    assert!(
        matches!(
            &refused,
            Err(TransferAdminError::AtWork { status, job_state, .. })
                if status == "failed" && job_state == "running"
        ),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("running"), "{message}");
    assert_eq!(transfer_state(&db.pool, ticket).await, before);
    let (ok, _, stderr) =
        run_worker_command(&db.url, &["retry-transfer", &ticket.to_string()]).await;
    assert!(!ok, "a refused retry exits non-zero");
    assert!(
        stderr.contains("its job is running") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(transfer_state(&db.pool, ticket).await, before);

    // The run's outcome lands: the job fails for good, as the row says.
    land(&db, failing).await;
    let (status, _, _, job_state, _) = transfer_state(&db.pool, ticket).await;
    assert_eq!((status.as_str(), job_state.as_str()), ("failed", "failed"));

    // Now the retry goes through: a new key, and the job runs again with fresh attempts.
    let retried = retry_failed_transfer(&db.pool, ticket, &Actor::Console)
        .await
        .unwrap();
    assert!(retried.new_key);
    assert_eq!(retried.generation, 2);
    assert_eq!(
        transfer_state(&db.pool, ticket).await,
        (
            "pending".to_owned(),
            2,
            retried.idempotency_key.clone(),
            "available".to_owned(),
            0
        )
    );

    // And the job does run it: a create under the new key, then Monime completes it.
    let resent = run_claimed(&db, &context, owner).await;
    assert!(matches!(resent.action, Action::Snooze { .. }), "{resent:?}");
    land(&db, resent).await;
    assert_eq!(
        sandbox.counts.create_requests_for(&retried.idempotency_key),
        1
    );
    assert!(sandbox
        .counts
        .force_status(&retried.idempotency_key, "completed"));
    let done = run_claimed(&db, &context, owner).await;
    assert_eq!(done.action, Action::Complete);
    land(&db, done).await;
    let (status, _, _, job_state, _) = transfer_state(&db.pool, ticket).await;
    assert_eq!(
        (status.as_str(), job_state.as_str()),
        ("completed", "completed")
    );
    assert_eq!(sandbox.counts.total_executions(), 2);
    store.stop().await;
}

#[tokio::test]
async fn a_transfer_cancelled_while_monime_holds_its_create_is_still_recorded() {
    let db = TestDb::new().await;
    // Monime executes the transfer at once but answers after 4 s, past the engine's grace for
    // a cancelled run: the create and its recording must outlive the dropped handler.
    let sandbox = sandbox(SandboxConfig {
        latency: Duration::from_secs(4),
        completion_delay: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .await;
    let tickets = seed_tickets(&db.pool, "co-cancel", "fa-cancel", 1).await;
    enqueue_transfers(&db.pool, &tickets, FAST_RETRY).await;
    let _worker = spawn_transfer_worker(&db, &sandbox, &["--monime-timeout", "30s"]);
    wait_until(
        "Monime to hold the create",
        Duration::from_secs(30),
        || async { sandbox.counts.total_executions() },
        |n| *n == 1,
    )
    .await;
    let job: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE queue = $1")
        .bind(transfer::QUEUE)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (ok, out, err) = run_worker_command(&db.url, &["cancel", &job.to_string()]).await;
    assert!(ok, "worker cancel failed: {out} {err}");

    // Monime's answer is recorded after the cancel, and the job stays cancelled.
    let (status, monime_id): (String, Option<String>) = wait_until(
        "the accepted transfer to be recorded",
        Duration::from_secs(20),
        || async {
            sqlx::query_as(
                "SELECT status::text, monime_transfer_id FROM commission_transfers \
                 WHERE ticket_id = $1",
            )
            .bind(tickets[0])
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
        |(_, id): &(String, Option<String>)| id.is_some(),
    )
    .await;
    assert!(
        status == "processing" || status == "completed",
        "recorded as {status}"
    );
    assert!(monime_id.unwrap().starts_with("trf-"));
    assert_eq!(count_jobs(&db.pool, "cancelled").await, 1);
    assert_eq!(sandbox.counts.total_executions(), 1);
    assert_eq!(sandbox.counts.create_requests(), 1);
}

/// With `TRANSFER_MAX_IN_FLIGHT_PER_COMPANY`, three worker processes never run more than that
/// many transfers of one company at once, and a slow company's backlog, enqueued first, does
/// not hold the fast companies back.
#[tokio::test]
async fn at_most_the_limit_of_one_companys_transfers_run_and_a_slow_company_holds_no_other_back() {
    const LIMIT: i64 = 2;
    let db = TestDb::new().await;
    let sandbox = sandbox(SandboxConfig {
        latency: Duration::from_millis(2),
        completion_delay: Duration::from_millis(10),
        ..SandboxConfig::default()
    })
    .await;
    // Every create from the slow company's account takes a second: 12 transfers, 2 at a time,
    // need at least 6 s.
    sandbox
        .counts
        .set_account_latency("fa-slow", Duration::from_secs(1));
    let slow = seed_tickets(&db.pool, "co-slow", "fa-slow", 12).await;
    let fast_a = seed_tickets(&db.pool, "co-fast-a", "fa-fast-a", 30).await;
    let fast_b = seed_tickets(&db.pool, "co-fast-b", "fa-fast-b", 30).await;
    enqueue_transfers(&db.pool, &slow, FAST_RETRY).await;
    enqueue_transfers(&db.pool, &[fast_a, fast_b].concat(), FAST_RETRY).await;

    let args = [
        "--concurrency",
        "8",
        "--transfer-poll-inline",
        "30ms",
        "--transfer-poll-initial",
        "30ms",
        "--poll-interval",
        "100ms",
    ];
    let started = std::time::Instant::now();
    let _workers: Vec<_> = (0..3)
        .map(|_| {
            let mut command = transfer_worker_command(&db, &sandbox, &args);
            command.env("TRANSFER_MAX_IN_FLIGHT_PER_COMPANY", LIMIT.to_string());
            spawn_worker_with(command)
        })
        .collect();

    // The sampler reads the running transfer jobs per company from the tickets they move.
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let pool = db.pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut most: std::collections::HashMap<String, i64> = Default::default();
            while !stop.is_cancelled() {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT t.company_id, count(*) FROM jobs j \
                     JOIN tickets t ON t.id = (j.payload->>'ticket_id')::bigint \
                     WHERE j.queue = 'commission_transfers' AND j.state = 'running' \
                     GROUP BY t.company_id",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                for (company, n) in rows {
                    let m = most.entry(company).or_default();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };

    let completed_of = |company: &'static str| {
        let pool = db.pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM commission_transfers c JOIN tickets t ON t.id = c.ticket_id \
                     WHERE c.status = 'completed' AND t.company_id = $1",
                )
                .bind(company)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        }
    };
    wait_until(
        "the fast companies' 60 transfers completed",
        Duration::from_secs(60),
        {
            let a = completed_of("co-fast-a");
            let b = completed_of("co-fast-b");
            move || {
                let (a, b) = (a(), b());
                async move { a.await + b.await }
            }
        },
        |n| *n == 60,
    )
    .await;
    let fast_done = started.elapsed();
    let slow_when_fast_done = completed_of("co-slow")().await;
    wait_until(
        "the slow company's 12 transfers completed",
        Duration::from_secs(60),
        completed_of("co-slow"),
        |n| *n == 12,
    )
    .await;
    let slow_done = started.elapsed();
    stop.cancel();
    let most = sampler.await.unwrap();

    for (company, n) in &most {
        assert!(
            *n <= LIMIT,
            "{n} transfers of {company} ran at once (limit {LIMIT})"
        );
    }
    assert_eq!(
        most.get("co-slow"),
        Some(&LIMIT),
        "the slow company used its places: {most:?}"
    );
    assert!(
        slow_when_fast_done <= 8,
        "the slow company was throttled while the fast ones ran ({slow_when_fast_done} of 12 done)"
    );
    assert!(
        slow_done >= Duration::from_secs(6),
        "12 one-second creates, 2 at a time, took {slow_done:?}"
    );
    // 30 transfers per fast company, 2 at a time, each a few tens of milliseconds: their pace
    // does not follow the slow company's second per create.
    assert!(
        fast_done < Duration::from_secs(5) && fast_done * 2 < slow_done,
        "the fast companies took {fast_done:?} (the slow one {slow_done:?})"
    );
}
