//! The tickets queue in real `worker` processes: duplicates raced by two processes, and a
//! `kill -9` while batches are being written, and SIGTERM while another queue drains.

use std::time::Duration;

use poda_jobs::engine::{enqueue_many_pooled, NewJob};
use poda_jobs::probe::{self, ProbeJob};
use poda_jobs::testing::tickets::{
    seed_one_company, seed_payment_code, ticket_counts, ticket_job, ticket_job_states, TicketCounts,
};
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::ticket::{self, TicketJob};
use poda_jobs::RetryPolicy;
use sqlx::PgPool;

use crate::support::process::spawn_worker;

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

async fn seed(pool: &PgPool) {
    seed_one_company(pool).await;
    for code in 0..3 {
        seed_payment_code(pool, &format!("CODE-{code}"), "co-1", 1_000_000).await;
    }
}

/// Codes whose used_count differs from the number of tickets issued with them (must be 0).
async fn miscounted_codes(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM payment_codes c \
         WHERE c.used_count <> (SELECT count(*) FROM tickets t WHERE t.payment_code = c.code)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_all_completed(pool: &PgPool, n: i64, timeout: Duration) {
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
    let code_uses: i64 = sqlx::query_scalar("SELECT sum(used_count) FROM payment_codes")
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
            sleep_ms: 4_000,
            ..ProbeJob::new(1)
        }
        .to_job(RetryPolicy::default()),
    );
    enqueue_many_pooled(&db.pool, &jobs).await.unwrap();

    let queues = format!("{},{}", ticket::QUEUE, probe::QUEUE);
    let mut worker = spawn_worker(&db.url, &["--queues", &queues, "--shutdown-grace", "20s"]);
    wait_until(
        "the probe to run and tickets to be issued",
        Duration::from_secs(60),
        || async {
            let probes: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_runs")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            (probes, ticket_counts(&db.pool).await.tickets)
        },
        |(probes, tickets)| *probes == 1 && *tickets >= 1_000,
    )
    .await;
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
    let probe_state: String = sqlx::query_scalar("SELECT state::text FROM jobs WHERE queue = $1")
        .bind(probe::QUEUE)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(probe_state, "completed", "the running probe finished");
}
