//! Periodic jobs, run by real worker processes: one job per slot however many replicas run,
//! a slot missed during downtime runs once, `worker schedules`, bad schedules refused, and the
//! two built-in schedules (contribution deadlines, transfer reconciliation).

use std::time::Duration;

use chrono::{DateTime, Utc};
use poda::sandbox::{Sandbox, SandboxConfig};
use poda_jobs::audit::Actor;
use poda_jobs::cycle::{create_cycle, deadlines};
use poda_jobs::db::Db;
use poda_jobs::testing::{wait_until, TestDb};
use tokio::process::Command;

use crate::support::cycles::{new_cycle, seed_members, seed_tier, wait_active};
use crate::support::process::{
    run_worker_command, spawn_worker_serving_metrics, spawn_worker_with, worker_command,
};

const TOKEN: &str = "sandbox-test-token";

/// A worker of the probe queue only, with `schedules` as WORKER_SCHEDULES and the built-in
/// schedules off.
fn scheduling_worker(db: &TestDb, schedules: &str) -> Command {
    let mut command = worker_command(&db.url, &["--queues", poda_jobs::probe::QUEUE]);
    command
        .env("WORKER_SCHEDULES", schedules)
        .env("SCHEDULE_CONTRIBUTION_DEADLINES", "off")
        .env("SCHEDULE_RECONCILE_TRANSFERS", "off");
    command
}

/// The slots enqueued for schedule `name` (from the unique keys), with the jobs per slot.
async fn slots_of(pool: &Db, name: &str) -> Vec<(DateTime<Utc>, i64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT unique_key, count(*) FROM jobs WHERE unique_key LIKE 'schedule:' || $1 || ':%' \
         GROUP BY unique_key ORDER BY unique_key",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(key, n)| {
            let slot = key
                .strip_prefix(&format!("schedule:{name}:"))
                .expect("the schedule's prefix");
            let slot = DateTime::parse_from_rfc3339(slot).expect("an RFC 3339 slot");
            (slot.with_timezone(&Utc), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_enqueue_each_slot_of_an_every_second_schedule_exactly_once() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let schedules = r#"tick=* * * * * *|ticks|tick|{"from":"test"}"#;
    let workers: Vec<_> = (0..3)
        .map(|_| spawn_worker_with(scheduling_worker(&db, schedules)))
        .collect();
    wait_until(
        "ten slots to be enqueued",
        Duration::from_secs(60),
        || slots_of(&pool, "tick"),
        |slots| slots.len() >= 10,
    )
    .await;
    drop(workers);

    let slots = slots_of(&pool, "tick").await;
    for (slot, jobs) in &slots {
        assert_eq!(*jobs, 1, "slot {slot} has {jobs} jobs");
    }
    // Consecutive seconds: no slot between the first and the last is missing.
    for pair in slots.windows(2) {
        assert_eq!(
            (pair[1].0 - pair[0].0).num_seconds(),
            1,
            "a slot is missing between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
    let (queue, kind, payload): (String, String, serde_json::Value) = sqlx::query_as(
        "SELECT queue, kind, payload FROM jobs WHERE unique_key LIKE 'schedule:tick:%' LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((queue.as_str(), kind.as_str()), ("ticks", "tick"));
    assert_eq!(payload, serde_json::json!({"from": "test"}));
    let last: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_slot FROM job_schedules WHERE name = 'tick'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        last >= slots.last().map(|s| s.0),
        "last_slot follows the enqueues"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_missed_during_downtime_run_once_and_worker_schedules_lists_them() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // Hourly; the last slot enqueued three days ago: 72 slots were missed.
    let schedules = "hourly=0 0 * * * *|ticks|tick";
    sqlx::query(
        "INSERT INTO job_schedules (name, expression, time_zone, last_slot, next_slot) \
         VALUES ('hourly', '0 0 * * * *', 'UTC', date_trunc('hour', now()) - interval '3 days', \
                 date_trunc('hour', now()) - interval '3 days' + interval '1 hour')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let worker = spawn_worker_with(scheduling_worker(&db, schedules));
    let slots = wait_until(
        "the missed slot to be enqueued",
        Duration::from_secs(30),
        || slots_of(&pool, "hourly"),
        |slots| !slots.is_empty(),
    )
    .await;
    // Give a second replica the chance to enqueue the others, were it going to.
    let _second = spawn_worker_with(scheduling_worker(&db, schedules));
    let (last, next): (DateTime<Utc>, DateTime<Utc>) = wait_until(
        "last_slot to move",
        Duration::from_secs(30),
        || async {
            sqlx::query_as::<_, (DateTime<Utc>, DateTime<Utc>)>(
                "SELECT last_slot, next_slot FROM job_schedules WHERE name = 'hourly'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        },
        |(last, _)| *last > Utc::now() - chrono::Duration::hours(2),
    )
    .await;
    drop(worker);
    let now = Utc::now();
    let slots_after = slots_of(&pool, "hourly").await;
    assert_eq!(slots_after, slots, "only one of the missed slots ran");
    assert_eq!(slots.len(), 1, "{slots:?}");
    let (slot, jobs) = slots[0];
    assert_eq!(jobs, 1);
    assert_eq!(slot, last, "the most recent missed slot ran");
    assert!(slot <= now && now - slot < chrono::Duration::hours(1));
    assert_eq!(next - last, chrono::Duration::hours(1));

    // `worker schedules` lists it with its last and next slot.
    let mut command = worker_command(&db.url, &["schedules"]);
    command
        .env("WORKER_SCHEDULES", schedules)
        .env(
            "SCHEDULE_CONTRIBUTION_DEADLINES",
            deadlines::DEFAULT_EXPRESSION,
        )
        .env("SCHEDULE_RECONCILE_TRANSFERS", "off");
    let out = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let line = stdout
        .lines()
        .find(|l| l.contains("hourly"))
        .unwrap_or_else(|| panic!("no hourly line in {stdout}"));
    for part in ["0 0 * * * *", "UTC", "ticks/tick", &fmt(last), &fmt(next)] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    // A built-in not yet recorded by any worker is listed with its next slot.
    let line = stdout
        .lines()
        .find(|l| l.contains(deadlines::SCHEDULE))
        .unwrap_or_else(|| panic!("no contribution-deadlines line in {stdout}"));
    assert!(line.contains(deadlines::DEFAULT_EXPRESSION), "{line}");
}

#[tokio::test]
async fn a_bad_schedule_is_refused_with_a_message_naming_it() {
    let db = TestDb::new().await;
    let mut command = scheduling_worker(&db, "good=0 * * * * *|q|k; broken=0 61 * * * *|q|k");
    let out = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the worker started: {stderr}");
    assert!(
        stderr.contains("WORKER_SCHEDULES") && stderr.contains("broken=0 61 * * * *|q|k"),
        "{stderr}"
    );
    let mut command = worker_command(&db.url, &["schedules"]);
    command.env("SCHEDULE_CONTRIBUTION_DEADLINES", "*/15 * * * *");
    let out = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("SCHEDULE_CONTRIBUTION_DEADLINES") && stderr.contains("5 fields"),
        "{stderr}"
    );
    let mut command = scheduling_worker(&db, "");
    command.env("SCHEDULE_TIMEZONE", "Atlantis/Capital");
    command.env("SCHEDULE_CONTRIBUTION_DEADLINES", "0 */15 * * * *");
    let out = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Atlantis/Capital"), "{stderr}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_schedules")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

/// (pending, overdue) counters of a cycle, and its contributions counted by status.
async fn counters(pool: &Db, id: i64) -> ((i64, i64), (i64, i64)) {
    sqlx::query_as::<_, (i64, i64, i64, i64)>(
        "SELECT c.pending, c.overdue, \
                (SELECT count(*) FROM member_contributions WHERE cycle_id = c.id AND status = 'Pending'), \
                (SELECT count(*) FROM member_contributions WHERE cycle_id = c.id AND status = 'Overdue') \
         FROM contribution_cycles c WHERE c.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .map(|(p, o, cp, co)| ((p, o), (cp, co)))
    .unwrap()
}

/// Moves a cycle's deadline (and its contributions' due date) `days` into the past.
async fn make_past_due(pool: &Db, id: i64, days: i32) {
    sqlx::query(
        "UPDATE contribution_cycles SET deadline = now() - make_interval(days => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(days)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE member_contributions SET due_date = current_date - $2 WHERE cycle_id = $1")
        .bind(id)
        .bind(days)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contributions_past_due_become_overdue_and_the_counters_follow() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 2_500, "active", 3).await;
    let mut cycles = Vec::new();
    for claim in ["CLM-due-1", "CLM-due-2", "CLM-later"] {
        let created = create_cycle(&pool, &new_cycle(tier, first, claim), None, &Actor::Console)
            .await
            .unwrap();
        cycles.push(created.id.0);
    }
    let fan_out = spawn_worker_with(worker_command(
        &db.url,
        &[
            "--queues",
            "contribution_cycles",
            "--cycle-chunk-size",
            "700",
        ],
    ));
    for id in &cycles {
        wait_active(&pool, *id, Duration::from_secs(60)).await;
        // The fan-out counts every contribution it creates as pending.
        assert_eq!(counters(&pool, *id).await, ((2_499, 0), (2_499, 0)));
    }
    drop(fan_out);

    // Cycle 1 is past due: the job's work, in chunks of 1,000 rows.
    make_past_due(&pool, cycles[0], 2).await;
    let today = Utc::now().date_naive();
    let report = deadlines::mark_overdue(&pool, today, 1_000).await.unwrap();
    assert_eq!((report.cycles, report.overdue), (1, 2_499));
    assert!(report.chunks >= 3, "{report:?}");
    assert_eq!(counters(&pool, cycles[0]).await, ((0, 2_499), (0, 2_499)));
    assert_eq!(counters(&pool, cycles[2]).await, ((2_499, 0), (2_499, 0)));
    let again = deadlines::mark_overdue(&pool, today, 1_000).await.unwrap();
    assert_eq!(again.overdue, 0, "a second run changes nothing");
    assert_eq!(counters(&pool, cycles[0]).await, ((0, 2_499), (0, 2_499)));

    // Cycle 2 is past due too: the built-in schedule's job does it, in a worker process.
    make_past_due(&pool, cycles[1], 1).await;
    let mut command = worker_command(&db.url, &["--queues", deadlines::QUEUE]);
    command.env("SCHEDULE_CONTRIBUTION_DEADLINES", "* * * * * *");
    let _worker = spawn_worker_with(command);
    wait_until(
        "cycle 2's contributions to be overdue",
        Duration::from_secs(60),
        || counters(&pool, cycles[1]),
        |c| c.0 .1 == 2_499,
    )
    .await;
    assert_eq!(counters(&pool, cycles[1]).await, ((0, 2_499), (0, 2_499)));
    assert_eq!(counters(&pool, cycles[2]).await, ((2_499, 0), (2_499, 0)));
    wait_until(
        "a completed contribution-deadlines job",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'completed' \
                   AND unique_key LIKE 'schedule:contribution-deadlines:%'",
            )
            .bind(deadlines::QUEUE)
            .fetch_one(&pool)
            .await
            .unwrap()
        },
        |done| *done >= 1,
    )
    .await;
}

/// A metric's value on the worker's `/metrics`, if it is there.
async fn gauge(addr: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_schedule_records_a_run_against_the_sandbox_and_stats_show_it() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let sandbox = Sandbox::spawn(SandboxConfig {
        token: Some(TOKEN.into()),
        ..SandboxConfig::default()
    })
    .await
    .expect("start the sandbox");
    // Two issued tickets an hour old without a transfer: two findings.
    sqlx::query(
        "INSERT INTO companies (id, name, monime_account_id, commission_bps, currency) \
         VALUES ('co-r', 'co-r', 'fa-co-r', 250, 'SLE')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO routes (id, company_id, origin, destination) VALUES ('co-r-route', 'co-r', 'Freetown', 'Bo')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tickets (payment_id, event_id, company_id, route_id, passenger_phone, \
                              amount_minor, commission_minor, currency, created_at) \
         SELECT 'pay-r-' || g, 'evt-r-' || g, 'co-r', 'co-r-route', '+23276000000', 50000, 1250, \
                'SLE', now() - interval '1 hour' \
         FROM generate_series(1, 2) g",
    )
    .execute(&pool)
    .await
    .unwrap();

    let (worker, metrics_addr) = spawn_worker_serving_metrics(|| {
        let mut command = worker_command(&db.url, &["--queues", "transfer_reconcile"]);
        command
            .env("SCHEDULE_RECONCILE_TRANSFERS", "* * * * * *")
            .env("SCHEDULE_CONTRIBUTION_DEADLINES", "off")
            .env("MONIME_API_URL", &sandbox.base_url)
            .env("MONIME_API_TOKEN", TOKEN)
            .env("MONIME_SPACE_ID", "spc-test")
            .env("MONIME_PLATFORM_ACCOUNT_ID", "fa-platform-test");
        command
    })
    .await;
    let (findings, report): (i32, serde_json::Value) = wait_until(
        "a reconcile run",
        Duration::from_secs(60),
        || async {
            sqlx::query_as::<_, (i32, serde_json::Value)>(
                "SELECT findings, report FROM reconcile_runs ORDER BY id LIMIT 1",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
        |run| run.is_some(),
    )
    .await
    .unwrap();
    let metrics_addr = metrics_addr.to_string();
    let gauge = wait_until(
        "the findings gauge",
        Duration::from_secs(10),
        || gauge(&metrics_addr, "poda_reconcile_findings"),
        |g| *g == Some(2.0),
    )
    .await;
    drop(worker);
    assert_eq!(gauge, Some(2.0));
    assert_eq!(findings, 2);
    assert_eq!(
        report["missing"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );

    let (ok, stdout, stderr) = run_worker_command(&db.url, &["stats"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("last transfer reconciliation: run") && stdout.contains("2 findings"),
        "{stdout}"
    );
}
