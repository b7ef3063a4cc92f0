//! The tickets queue in real `worker` processes: duplicates raced by two processes, and a
//! `kill -9` while batches are being written, and SIGTERM while another queue drains.

use std::time::Duration;

use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, NewJob};
use poda_jobs::probe::{self, ProbeJob};
use poda_jobs::testing::tickets::{
    seed_one_company, seed_payment_code, ticket_counts, ticket_job, ticket_job_states, TicketCounts,
};
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::ticket::{self, TicketJob};
use poda_jobs::RetryPolicy;

use crate::support::process::spawn_worker;

/// How long the probe of the SIGTERM test runs.
const PROBE_SLEEP_MS: u64 = 4_000;

const TICKETS_FAST_RESCUE: &[&str] = &[
    "--queues",
    "tickets",
    "--lease",
    "2s",
    "--rescue-interval",
    "1s",
];

/// `n` payments of company co-1; every third uses one of the codes CODE-0..CODE-2.
fn payments(n: usize) -> Vec<TicketJob> {
    (0..n)
        .map(|i| {
            let mut t = ticket_job(&format!("pay-{i:06}"), "co-1", "rt-1", 10_000 + i as i64);
            if i % 3 == 0 {
                t.payment_code = Some(format!("CODE-{}", i % 9 / 3));
            }
            t
        })
        .collect()
}

async fn seed(pool: &Db) {
    seed_one_company(pool).await;
    for code in 0..3 {
        seed_payment_code(pool, &format!("CODE-{code}"), "co-1", 1_000_000).await;
    }
}

/// Codes whose usage differs from the number of tickets issued with them (must be 0).
async fn miscounted_codes(pool: &Db) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM payment_code_usage c \
         WHERE c.used_count <> (SELECT count(*) FROM tickets t WHERE t.payment_code = c.code)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_all_completed(pool: &Db, n: i64, timeout: Duration) {
    wait_until(
        &format!("{n} ticket jobs completed"),
        timeout,
        || ticket_job_states(pool),
        |(completed, _, _)| *completed == n,
    )
    .await;
}

#[tokio::test]
async fn tickets_duplicate_payments_raced_by_two_worker_processes_yield_one_ticket_each() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    let payments = payments(1_000);
    // Each payment three times, as jobs without the unique key (redeliveries the key did not
    // catch), so both processes get copies of the same payment.
    let jobs: Vec<NewJob> = (0..3)
        .flat_map(|_| payments.iter())
        .map(|t| {
            NewJob::new(
                ticket::QUEUE,
                ticket::KIND,
                serde_json::to_value(t).unwrap(),
            )
        })
        .collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let a = spawn_worker(&db.url, &["--queues", "tickets"]);
    let b = spawn_worker(&db.url, &["--queues", "tickets"]);
    wait_all_completed(&db.pool, 3_000, Duration::from_secs(120)).await;
    drop((a, b));

    assert_eq!(
        ticket_counts(&db.pool).await,
        TicketCounts {
            tickets: 1_000,
            distinct_payments: 1_000,
            transfer_jobs: 1_000,
            tickets_without_transfer: 0,
            transfers_without_ticket: 0,
        }
    );
    assert_eq!(miscounted_codes(&db.pool).await, 0);
    let code_uses: i64 = sqlx::query_scalar("SELECT sum(used_count) FROM payment_code_usage")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(code_uses, 334, "each payment with a code used it once");
}

#[tokio::test]
async fn tickets_kill_9_mid_batch_leaves_no_half_written_batch_and_a_survivor_finishes() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    const N: i64 = 10_000;
    let jobs: Vec<NewJob> = payments(N as usize).iter().map(TicketJob::to_job).collect();
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let victim = spawn_worker(&db.url, TICKETS_FAST_RESCUE);
    // Kill it while it is writing batches.
    wait_until(
        "the victim to be issuing tickets",
        Duration::from_secs(60),
        || ticket_counts(&db.pool),
        |c| c.tickets >= 500,
    )
    .await;
    victim.sigkill();
    // What it committed is whole: every ticket has its transfer job and its code use.
    let at_kill = ticket_counts(&db.pool).await;
    assert!(
        at_kill.tickets < N,
        "the victim was killed before it finished"
    );
    assert_eq!(at_kill.tickets_without_transfer, 0);
    assert_eq!(at_kill.transfers_without_ticket, 0);
    assert_eq!(at_kill.tickets, at_kill.transfer_jobs);
    assert_eq!(miscounted_codes(&db.pool).await, 0);

    let survivor = spawn_worker(&db.url, TICKETS_FAST_RESCUE);
    wait_all_completed(&db.pool, N, Duration::from_secs(120)).await;
    drop(survivor);

    assert_eq!(
        ticket_counts(&db.pool).await,
        TicketCounts {
            tickets: N,
            distinct_payments: N,
            transfer_jobs: N,
            tickets_without_transfer: 0,
            transfers_without_ticket: 0,
        }
    );
    assert_eq!(miscounted_codes(&db.pool).await, 0);
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE queue = 'tickets' AND state <> 'completed'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failed, 0);
    // The victim's batches in flight rolled back with its connections: their jobs ran again
    // without having spent an attempt, so every job finished on its first.
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT attempt FROM jobs WHERE queue = 'tickets'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, vec![1]);
}

#[tokio::test]
async fn tickets_sigterm_stops_ticket_claims_at_once_while_other_queues_drain() {
    let db = TestDb::new().await;
    seed(&db.pool).await;
    const N: i64 = 50_000;
    let mut jobs: Vec<NewJob> = payments(N as usize).iter().map(TicketJob::to_job).collect();
    // A probe job that is still running when SIGTERM arrives keeps the process draining.
    jobs.push(
        ProbeJob {
            record: true,
            sleep_ms: PROBE_SLEEP_MS,
            ..ProbeJob::new(1)
        }
        .to_job(RetryPolicy::default()),
    );
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let queues = format!("{},{}", ticket::QUEUE, probe::QUEUE);
    let mut worker = spawn_worker(&db.url, &["--queues", &queues, "--shutdown-grace", "20s"]);
    wait_until(
        "the probe to be running and tickets to be issued",
        Duration::from_secs(60),
        || async {
            // Runs of the probe, its state, and how long ago its run began (ms).
            let probe: (i64, String, Option<f64>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM probe_runs), \
                        (SELECT state::text FROM jobs WHERE queue = $1), \
                        (SELECT extract(epoch FROM clock_timestamp() - max(started_at)) * 1000 \
                         FROM probe_runs)::float8",
            )
            .bind(probe::QUEUE)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (probe, ticket_counts(&db.pool).await.tickets)
        },
        // With a second or more of its sleep left, so that it still runs at the signal.
        |((runs, state, age_ms), tickets)| {
            *runs == 1
                && state == "running"
                && age_ms.is_some_and(|age| age < (PROBE_SLEEP_MS - 1_000) as f64)
                && *tickets >= 1_000
        },
    )
    .await;
    let before_signal: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    worker.sigterm();
    let at_signal = ticket_counts(&db.pool).await.tickets;
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");

    // Only the batches in flight at the signal were finished (3 of 200 by default); the
    // probe's 4 s of draining claimed no more tickets.
    let at_exit = ticket_counts(&db.pool).await;
    assert!(
        at_exit.tickets - at_signal
            <= (ticket::DEFAULT_BATCH_SIZE * ticket::DEFAULT_BATCHES_IN_FLIGHT) as i64,
        "{} tickets issued after SIGTERM",
        at_exit.tickets - at_signal
    );
    assert!(at_exit.tickets < N);
    assert_eq!(at_exit.tickets_without_transfer, 0);
    // The probe was still running when the signal came (its run began before it, its
    // completion was written after it), and the drain let it finish: one run, first attempt.
    let (probe_state, attempt, runs, started_at, finished_at): (
        String,
        i32,
        i64,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT j.state::text, j.attempt, \
                (SELECT count(*) FROM probe_runs r WHERE r.job_id = j.id), \
                (SELECT min(r.started_at) FROM probe_runs r WHERE r.job_id = j.id), \
                j.finished_at \
         FROM jobs j WHERE j.queue = $1",
    )
    .bind(probe::QUEUE)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (probe_state.as_str(), attempt, runs),
        ("completed", 1, 1),
        "the running probe finished"
    );
    let sleep_ended = started_at + chrono::TimeDelta::milliseconds(PROBE_SLEEP_MS as i64);
    assert!(
        started_at < before_signal && sleep_ended > before_signal,
        "the probe ran from {started_at} to at least {sleep_ended}, not across the signal \
         (just after {before_signal}): the drain was not tested"
    );
    assert!(
        finished_at.is_some_and(|f| f > before_signal),
        "the probe's completion was written at {finished_at:?}, before the signal"
    );
}
