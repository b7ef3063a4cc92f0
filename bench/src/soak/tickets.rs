//! The tickets soak: signed `payment.completed` webhooks at `rate` per second into an
//! `enqueuer` process, a `worker` process for the tickets and commission-transfer queues, and
//! the Monime sandbox (20 ms a call, no faults) in this process with the sender. The load is
//! open: payment `i` is due at `i / rate` s and
//! its webhook's latency counts from then, so a slow answer never slows the offered rate.
//!
//! Per phase, by when each payment was due or received: the webhook's latency, and from the
//! webhook's commit (`webhook_events.received_at`) to its ticket (`tickets.created_at`) and
//! to its transfer completed at Monime (`commission_transfers.completed_at`). A payment whose
//! ticket or transfer never came counts as infinitely late.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use poda::http::webhooks::signature::sign;
use poda::sandbox::{Sandbox, SandboxConfig};
use poda::tally::now_us;
use poda_jobs::db::Db;
use poda_jobs::{ticket, transfer};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{ratio_result, run_phases, server_settings, with_fields, PhaseRecord, SoakOptions};
use crate::enqueuer_process::EnqueuerProcess;
use crate::{
    binary_beside_bench, percentile, print_result, round2, worker_binary, BenchDb, Workers,
};

const SECRET: &str = "whsec_soak";
const MONIME_TOKEN: &str = "soak-sandbox-token";
const PLATFORM_ACCOUNT: &str = "fa-platform-soak";
/// Webhooks on their way at once; past it a due webhook waits, and its latency shows it.
const IN_FLIGHT: usize = 1_024;
/// Handler slots of the transfers queue, sized as an operator would: a transfer holds its
/// slot for ~0.35 s at the median (the create, the worker's inline status read 250 ms later,
/// the writes) and longer while the server is busy, so 2,000 transfers/s keep 700 to 1,000
/// slots busy. 1,024 left no headroom (170 s into a run, all were taken and 813 transfers
/// waited for one); twice that keeps the slots out of what the soak measures.
const TRANSFER_SLOTS: usize = 2_048;
/// How long the workers get after the load stops to finish what it left.
const SETTLE: Duration = Duration::from_secs(120);

/// One webhook as the sender saw it: when it was due (µs since the Unix epoch), how long its
/// answer took, and whether it was accepted.
#[derive(Debug, Clone, Copy)]
struct Sent {
    due_us: i64,
    latency_ms: f64,
    accepted: bool,
}

/// Runs the tickets soak on `db` and prints one `RESULT` per phase and one for the ratio.
pub async fn run_tickets(db: &BenchDb, options: &SoakOptions) -> anyhow::Result<Vec<Value>> {
    let settings = server_settings(db).await?;
    crate::tickets::seed(&db.pool).await?;
    db.analyze().await?;

    let sandbox = Sandbox::spawn(SandboxConfig {
        latency: Duration::from_millis(20),
        completion_delay: Duration::from_millis(40),
        token: Some(MONIME_TOKEN.into()),
        // Every payment of the run, and a tenth more: the store never grows under its lock.
        capacity: (options.rate as f64 * (options.free + options.held).as_secs_f64() * 1.1)
            as usize,
        ..SandboxConfig::default()
    })
    .await?;

    // The enqueuer and the workers run as the production binaries, each a process of its
    // own: in one runtime with the sender and the sandbox, a webhook's answer would wait
    // behind a thousand ready transfer tasks, which no deployment does.
    let enqueuer = EnqueuerProcess::start(
        &binary_beside_bench("enqueuer")?,
        &db.url,
        &[
            ("MONIME_WEBHOOK_SECRETS", SECRET),
            // One client sends everything: the per-client limit would measure itself.
            ("ENQUEUER_RATE_LIMIT", "0"),
        ],
    )
    .await?;
    let url = format!("{}/webhooks/monime", enqueuer.base_url);
    let transfer_slots = format!("{}={TRANSFER_SLOTS}", transfer::QUEUE);
    let worker_flags: Vec<std::ffi::OsString> = [
        "--queues",
        &format!("{},{}", ticket::QUEUE, transfer::QUEUE),
        "--queue-concurrency",
        &transfer_slots,
        "--handler-connections",
        "32",
        "--engine-connections",
        "32",
        "--shutdown-grace",
        "10s",
        "--monime-api-url",
        &sandbox.base_url,
        "--monime-space-id",
        "spc-soak",
        "--monime-platform-account-id",
        PLATFORM_ACCOUNT,
        "--monime-timeout",
        "5s",
    ]
    .iter()
    .map(Into::into)
    .collect();
    // The token goes by environment, as an operator passes a secret, not on the command line.
    let workers = Workers::launch(
        &worker_binary(None)?,
        &db.url,
        None,
        vec![worker_flags],
        &[("MONIME_API_TOKEN", MONIME_TOKEN)],
    )
    .await?;

    let stop_sending = CancellationToken::new();
    let sender = on_a_thread_of_its_own(send_webhooks(url, options.rate, stop_sending.clone()))?;
    let phases = run_phases(db, options).await;
    stop_sending.cancel();
    let sent = sender.await.context("the webhook sender panicked")??;
    let phases = phases?;
    let settled = settle(&db.pool, &sent).await;
    workers.stop().await.context("stopping the workers")?;
    enqueuer.stop().await.context("stopping the enqueuer")?;
    let executions = sandbox.counts.executions();
    sandbox.shutdown().await;
    settled?;

    let delays = delays(&db.pool).await?;
    let transfers_once = executions.values().all(|n| *n == 1);
    let mut results: Vec<Value> = phases
        .iter()
        .map(|record| phase_result(record, &sent, &delays, options, &settings))
        .collect();
    results.extend(ratio_result("tickets", &results, &settings));
    for result in &mut results {
        result["transfers_executed_once"] = json!(transfers_once);
    }
    for result in &results {
        print_result(result);
    }
    Ok(results)
}

/// Runs `task` on a thread and a single-threaded runtime of its own. The sender runs there:
/// in this process's runtime an answer would wait behind the sandbox's ready tasks before the
/// sender saw it, a wait of the load generator's, not of the enqueuer's.
fn on_a_thread_of_its_own<T: Send + 'static>(
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<T>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the sender's runtime")?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("soak-sender".into())
        .spawn(move || {
            let _ = done.send(runtime.block_on(task));
        })
        .context("starting the sender's thread")?;
    Ok(result)
}

/// Sends payment `i`'s webhook at `i / rate` s until stopped; returns every webhook sent.
async fn send_webhooks(
    url: String,
    rate: u32,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sent>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()?;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let epoch_us = now_us();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut next: usize = 0;
    while !stop.is_cancelled() {
        ticker.tick().await;
        // Payment i is due at i / rate: every payment whose time has come goes now (counting
        // only those past a whole period would send each one a period late).
        let due_now = (started.elapsed().as_secs_f64() * f64::from(rate)).floor() as usize + 1;
        while next < due_now {
            let i = next;
            next += 1;
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            let due_us = epoch_us + (i as f64 * 1e6 / f64::from(rate)) as i64;
            let slot = slots.clone().acquire_owned().await?;
            let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
            tokio::spawn(async move {
                let body = webhook_body(i);
                let signature = sign(SECRET, chrono::Utc::now().timestamp(), &body);
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("Monime-Signature", signature)
                    .body(body)
                    .send()
                    .await;
                let accepted = matches!(&answer, Ok(r) if r.status().as_u16() == 202);
                let latency_ms = due.elapsed().as_secs_f64() * 1e3;
                sent.lock().expect("sent lock").push(Sent {
                    due_us,
                    latency_ms,
                    accepted,
                });
                drop(slot);
            });
        }
    }
    // Every webhook under way is answered before the figures are read.
    let _all = slots.acquire_many(IN_FLIGHT as u32).await?;
    let sent = std::mem::take(&mut *sent.lock().expect("sent lock"));
    Ok(sent)
}

/// Payment `i` as Monime's `payment.completed` webhook, for the seeded companies and routes.
fn webhook_body(i: usize) -> Vec<u8> {
    let p = crate::tickets::payment(i);
    serde_json::to_vec(&json!({
        "apiVersion": "caph.2025-08-23",
        "event": {"id": p.event_id, "name": "payment.completed",
                  "timestamp": chrono::Utc::now().to_rfc3339()},
        "object": {"id": p.payment_id, "type": "payment"},
        "data": {"id": p.payment_id, "status": "completed",
                 "amount": {"currency": p.amount.currency.as_str(), "value": p.amount.value_minor},
                 "financialTransactionReference": p.financial_transaction_reference,
                 "metadata": {"company_id": p.company_id, "route_id": p.route_id,
                              "passenger_phone": p.passenger_phone,
                              "payment_code": p.payment_code}}
    }))
    .expect("a JSON body")
}

/// Waits until every accepted payment has its ticket and its transfer completed, or
/// [`SETTLE`] has passed.
async fn settle(pool: &Db, sent: &[Sent]) -> anyhow::Result<()> {
    let accepted = sent.iter().filter(|s| s.accepted).count() as i64;
    let deadline = Instant::now() + SETTLE;
    loop {
        let (tickets, completed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM tickets), \
                    (SELECT count(*) FROM commission_transfers WHERE status = 'completed')",
        )
        .fetch_one(pool)
        .await?;
        if tickets >= accepted && completed >= accepted {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!(
                "soak: {tickets} tickets and {completed} transfers completed of {accepted} \
                 payments {} s after the load stopped",
                SETTLE.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Per payment received: when (µs since the Unix epoch), and the ms from then to its ticket
/// and to its transfer completed (`None`: never).
type Delays = Vec<(i64, Option<f64>, Option<f64>)>;

async fn delays(pool: &Db) -> anyhow::Result<Delays> {
    let mut rows: Delays = sqlx::query_as(
        "SELECT (extract(epoch FROM e.received_at) * 1e6)::bigint, \
                (extract(epoch FROM t.created_at - e.received_at) * 1e3)::float8, \
                (extract(epoch FROM ct.completed_at - e.received_at) * 1e3)::float8 \
         FROM webhook_events e \
         LEFT JOIN tickets t ON t.payment_id = e.payment_id \
         LEFT JOIN commission_transfers ct ON ct.ticket_id = t.id AND ct.status = 'completed'",
    )
    .fetch_all(pool)
    .await
    .context("reading the payments' tickets and transfers")?;
    rows.sort_unstable_by_key(|r| r.0);
    Ok(rows)
}

/// Percentile `p` of `values`, with `None` as infinitely late; JSON null when it falls on one
/// that never came.
fn percentile_or_null(values: impl Iterator<Item = Option<f64>>, p: f64) -> Value {
    let mut all: Vec<f64> = values.map(|v| v.unwrap_or(f64::INFINITY)).collect();
    all.sort_by(f64::total_cmp);
    let value = percentile(&all, p);
    if value.is_finite() {
        json!(round2(value))
    } else {
        Value::Null
    }
}

/// The p99 of each minute of `phase` (its last part counting as one), of values stamped in
/// µs since the Unix epoch; `None` counts as infinitely late. A minute whose p99 falls on one,
/// or that holds none (the phase's last few milliseconds), is JSON null.
fn by_minute(phase: &super::Phase, values: impl Iterator<Item = (i64, Option<f64>)>) -> Vec<Value> {
    const MINUTE_US: i64 = 60_000_000;
    let minutes = ((phase.to_us - phase.from_us + MINUTE_US - 1) / MINUTE_US).max(1) as usize;
    let mut each: Vec<Vec<Option<f64>>> = vec![Vec::new(); minutes];
    for (at_us, value) in values {
        let minute = ((at_us - phase.from_us).max(0) / MINUTE_US) as usize;
        each[minute.min(minutes - 1)].push(value);
    }
    each.into_iter()
        .map(|values| percentile_or_null(values.into_iter(), 99.0))
        .collect()
}

fn phase_result(
    record: &PhaseRecord,
    sent: &[Sent],
    delays: &Delays,
    options: &SoakOptions,
    settings: &Value,
) -> Value {
    let phase = &record.phase;
    let due: Vec<&Sent> = sent
        .iter()
        .filter(|s| (phase.from_us..phase.to_us).contains(&s.due_us))
        .collect();
    let mut webhook_ms: Vec<f64> = due.iter().map(|s| s.latency_ms).collect();
    webhook_ms.sort_by(f64::total_cmp);
    let lo = delays.partition_point(|r| r.0 < phase.from_us);
    let hi = delays.partition_point(|r| r.0 < phase.to_us);
    let received = &delays[lo..hi.max(lo)];
    let tickets = received.iter().filter(|r| r.1.is_some()).count();
    // Payments received by the phase's end whose ticket had not been issued by then.
    let backlog_end = delays[..hi]
        .iter()
        .filter(|r| r.1.is_none_or(|ms| r.0 + (ms * 1e3) as i64 > phase.to_us))
        .count();
    let transfers = received.iter().filter(|r| r.2.is_some()).count();
    let result = json!({
        "scenario": "soak", "workload": "tickets", "phase": phase.name,
        "seconds": round2(phase.seconds()),
        "offered_per_s": (due.len() as f64 / phase.seconds()).round() as u64,
        "per_s": (transfers as f64 / phase.seconds()).round() as u64,
        "rate": options.rate,
        "webhooks_refused": due.iter().filter(|s| !s.accepted).count(),
        "webhook_p50_ms": round2(percentile(&webhook_ms, 50.0)),
        "webhook_p99_ms": round2(percentile(&webhook_ms, 99.0)),
        "payments": received.len(),
        "tickets": tickets,
        "transfers_completed": transfers,
        "ticket_p50_ms": percentile_or_null(received.iter().map(|r| r.1), 50.0),
        "ticket_p99_ms": percentile_or_null(received.iter().map(|r| r.1), 99.0),
        // The tickets queue's wait, runnable to issued: the payment's ticket.
        "lag_p99_ms": percentile_or_null(received.iter().map(|r| r.1), 99.0),
        "backlog_end": backlog_end,
        "transfer_p50_ms": percentile_or_null(received.iter().map(|r| r.2), 50.0),
        "transfer_p99_ms": percentile_or_null(received.iter().map(|r| r.2), 99.0),
        // Whether a tail is steady or grows with the run, and when.
        "webhook_p99_ms_by_minute": by_minute(phase, due.iter().map(|s| (s.due_us, Some(s.latency_ms)))),
        "transfer_p99_ms_by_minute": by_minute(phase, received.iter().map(|r| (r.0, r.2))),
        "server": settings,
    });
    with_fields(result, record.tables_json())
}
