//! Poda behind PgBouncer in transaction pooling mode: the operator commands, the enqueuer and
//! four worker replicas all reach Postgres only through a PgBouncer of the test's own (whose
//! sessions are shared between clients), and the platform's flows run exactly once through it.

use std::time::Duration;

use futures::StreamExt;
use poda::config::{DatabaseSettings, Secret};
use poda::sandbox::{FaultConfig, FaultKind, Sandbox, SandboxConfig};
use poda_jobs::db::{Db, Pooler};
use poda_jobs::testing::tickets::{seed_one_company, ticket_counts, TicketCounts};
use poda_jobs::testing::{wait_until, PgBouncer, TestDb};
use poda_jobs::{cycle, ticket, transfer};
use serde_json::json;
use tokio::process::Command;

use crate::support::app::{spawn_enqueuer_connecting, test_settings};
use crate::support::cycles::{
    contribution_counts, cycle_request, cycle_status, seed_members, seed_tier,
};
use crate::support::monime;
use crate::support::process::{spawn_worker_with, worker_command, WorkerProcess};

const TOKEN: &str = "sandbox-pgbouncer-token";
const PAYMENTS: usize = 600;
const MEMBERS: i64 = 2_000;

/// `worker <args>` with every connection through the pooler at `url`.
fn through_pooler(url: &str, args: &[&str]) -> Command {
    let mut command = worker_command(url, args);
    command.env("DATABASE_POOLER", "transaction");
    command
}

/// A signed `payment.completed` for a ticket on route `rt-1` of `co-1`.
fn payment(n: usize) -> serde_json::Value {
    let mut event = monime::payment_completed(&format!("evt-pgb-{n}"), &format!("pay-pgb-{n}"));
    event["data"]["metadata"] = json!({
        "company_id": "co-1",
        "route_id": "rt-1",
        "passenger_phone": "+23276123456",
    });
    event
}

async fn count(pool: &Db, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_tickets_transfers_and_a_cycle_run_exactly_once_through_pgbouncer() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // Fewer server connections than the processes open between them: sessions are shared.
    let bouncer = PgBouncer::start(&db.url, 12).await;
    let url = bouncer.route(&db.url);

    // Pointed at PgBouncer without saying so, a binary stops at once and names the setting.
    let undeclared = worker_command(&url, &["stats"]).output().await.unwrap();
    assert!(!undeclared.status.success());
    assert!(
        String::from_utf8_lossy(&undeclared.stderr).contains("DATABASE_POOLER=transaction"),
        "{}",
        String::from_utf8_lossy(&undeclared.stderr)
    );
    for args in [["migrate"], ["stats"]] {
        let out = through_pooler(&url, &args).output().await.unwrap();
        assert!(
            out.status.success(),
            "worker {args:?} through PgBouncer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    seed_one_company(&pool).await;
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, MEMBERS, "active", 5).await;
    let sandbox = Sandbox::spawn(SandboxConfig {
        latency: Duration::from_millis(2),
        completion_delay: Duration::from_millis(20),
        faults: FaultConfig {
            transient_rate: 0.1,
            max_per_key: 1,
            kinds: FaultKind::ALL.to_vec(),
            retry_after_s: 1,
            slow_for: Duration::from_millis(600),
            ..FaultConfig::default()
        },
        token: Some(TOKEN.into()),
        ..SandboxConfig::default()
    })
    .await
    .expect("start the sandbox");

    let mut settings = test_settings(&db);
    settings.database =
        DatabaseSettings::new(Secret::new(url.clone()), 6).with_pooler(Pooler::Transaction);
    let app = spawn_enqueuer_connecting(db, settings).await;

    let queues = format!("{},{},{}", ticket::QUEUE, transfer::QUEUE, cycle::QUEUE);
    let args = [
        "--queues",
        queues.as_str(),
        "--concurrency",
        "8",
        "--handler-connections",
        "3",
        "--engine-connections",
        "3",
        "--lease",
        "3s",
        "--rescue-interval",
        "1s",
        "--poll-interval",
        "200ms",
        "--cycle-chunk-size",
        "250",
        "--monime-timeout",
        "400ms",
        "--transfer-poll-initial",
        "50ms",
    ];
    let mut replicas: Vec<WorkerProcess> = (0..4)
        .map(|n| {
            let mut command = through_pooler(&url, &args);
            command
                .env("MONIME_API_URL", &sandbox.base_url)
                .env("MONIME_API_TOKEN", TOKEN)
                .env("MONIME_SPACE_ID", "spc-test")
                .env("MONIME_PLATFORM_ACCOUNT_ID", "fa-platform-test");
            // Two replicas LISTEN on a direct session of their own; two poll only.
            if n < 2 {
                command.env("DATABASE_LISTEN_URL", &app.db.url);
            }
            spawn_worker_with(command)
        })
        .collect();

    // Every payment is delivered twice, concurrently.
    let deliveries = (0..PAYMENTS).flat_map(|n| [n, n]);
    let answers: Vec<u16> = futures::stream::iter(deliveries)
        .map(|n| {
            let app = &app;
            async move { app.post_event(&payment(n)).await.status }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        answers.iter().all(|s| *s == 200 || *s == 202),
        "webhook answers: {:?}",
        answers
            .iter()
            .filter(|s| **s != 200 && **s != 202)
            .collect::<Vec<_>>()
    );

    // One replica dies without a word while tickets and transfers are under way.
    wait_until(
        "a third of the tickets",
        Duration::from_secs(60),
        || count(&pool, "SELECT count(*) FROM tickets"),
        |n| *n >= PAYMENTS as i64 / 3,
    )
    .await;
    let mut killed = replicas.pop().unwrap();
    killed.sigkill();
    killed.wait_exit(Duration::from_secs(10)).await;

    let reply = app
        .post_cycle(&cycle_request(tier, first, "CLM-pgbouncer"), None)
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let cycle_id = reply.body["cycle_id"].as_i64().unwrap();

    let n = PAYMENTS as i64;
    wait_until(
        "every commission transfer completed",
        Duration::from_secs(120),
        || {
            count(
                &pool,
                "SELECT count(*) FROM commission_transfers WHERE status = 'completed'",
            )
        },
        |done| *done == n,
    )
    .await;
    wait_until(
        "the cycle to settle",
        Duration::from_secs(60),
        || cycle_status(&pool, cycle_id),
        |status| status != "Initializing",
    )
    .await;

    assert_eq!(
        ticket_counts(&pool).await,
        TicketCounts {
            tickets: n,
            distinct_payments: n,
            transfer_jobs: n,
            tickets_without_transfer: 0,
            transfers_without_ticket: 0,
        }
    );
    assert_eq!(cycle_status(&pool, cycle_id).await, "Active");
    assert_eq!(
        contribution_counts(&pool, cycle_id).await,
        (MEMBERS - 1, MEMBERS - 1)
    );
    // Monime executed each transfer once, whatever was retried, rescued or faulted.
    let executions = sandbox.counts.executions();
    assert_eq!(executions.len(), PAYMENTS);
    assert!(executions.values().all(|runs| *runs == 1));
    assert!(sandbox.counts.faults() > 0, "the sandbox injected faults");
    let not_done = count(
        &pool,
        "SELECT count(*) FROM jobs WHERE queue <> 'notifications' AND state <> 'completed'",
    )
    .await;
    assert_eq!(not_done, 0, "every job of the three queues completed");

    // The operator commands work through the pooler too, and do what they say.
    let paused = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT paused_at IS NOT NULL FROM job_queues WHERE name = 'notifications'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let cycle_arg = cycle_id.to_string();
    for (args, then_paused) in [
        (vec!["pause", "notifications"], true),
        (vec!["resume", "notifications"], false),
        (vec!["cycle", cycle_arg.as_str()], false),
        (vec!["prune", "--older-than", "1d"], false),
    ] {
        let out = through_pooler(&url, &args).output().await.unwrap();
        assert!(
            out.status.success(),
            "worker {args:?} through PgBouncer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(paused().await, then_paused, "after worker {args:?}");
    }

    for replica in &replicas {
        replica.sigterm();
    }
    for replica in &mut replicas {
        assert!(replica.wait_exit(Duration::from_secs(30)).await.success());
    }
    assert!(
        !bouncer.log().contains("prepared statement"),
        "PgBouncer saw a prepared-statement error:\n{}",
        bouncer.log()
    );
}
