//! The demo: Poda's whole flow on the local Postgres, with progress and a summary.
//!
//! It recreates the `poda_demo` database and seeds three transport companies, their routes, a
//! payment code with a usage limit and a mutual-aid tier. Then, in this process, it starts the
//! Monime sandbox (with latency and transient faults), the enqueuer and the workers, and:
//! sends signed `payment.completed` webhooks (with redeliveries) → tickets → commission
//! transfers at the sandbox; and creates a contribution cycle through the admin API, whose
//! fan-out creates one pending contribution per eligible member and notifies each agent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use poda_jobs::cycle::deadlines;
use poda_jobs::db::Db;
use poda_jobs::engine::Schedule;
use poda_jobs::events::{self, DelivererConfig, RelayConfig};
use poda_jobs::transfer::monime::{
    ApiToken, MonimeConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_VERSION,
};
use poda_jobs::{cycle, notification, ticket, transfer};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use poda::config::{DatabaseSettings, Secret};
use poda::enqueuer::{Enqueuer, EnqueuerSettings};
use poda::http::webhooks::signature::sign;
use poda::ops;
use poda::sandbox::{faults::FaultConfig, Sandbox, SandboxConfig};
use poda::worker::{run_workers, EventsOptions, TransferOptions, WorkerOptions};

use crate::receiver::Receiver;

pub const DEMO_DATABASE: &str = "poda_demo";
const DEMO_SECRET: &str = "whsec_demo_only";
const DEMO_ADMIN_TOKEN: &str = "demo-admin-token";
const DEMO_MONIME_TOKEN: &str = "demo-monime-token";
const DEMO_EVENTS_SECRET: &str = "whsec_events_demo_only";
/// The demo runs the contribution-deadlines schedule every two seconds, to see it fire.
const DEMO_DEADLINES_SCHEDULE: &str = "*/2 * * * * *";
const PLATFORM_ACCOUNT: &str = "fa-platform-demo";
/// The payment code half of the first company's payments use; its limit runs out first.
const DEMO_CODE: &str = "FREETOWN-BO";
const DEMO_CODE_LIMIT: i32 = 150;
const COMPANIES: usize = 3;
const AGENTS: i64 = 40;

/// The PostgreSQL server the demo runs on.
#[derive(Debug, Clone)]
pub struct DemoServer {
    /// Any database URL on the server; the demo works in its own `poda_demo` database.
    pub url: Secret,
    /// A private cluster of the demo's own, gone when the demo exits.
    pub private: bool,
}

/// Chooses the demo's server as the tests do ([`poda_jobs::testing::choose_server`]):
/// `--private-db` starts a private cluster; a `DATABASE_URL` (or `--database-url`) is used as
/// given, and a server that refuses fails the demo with its reason; with neither, the local
/// server when it lets the demo in, else a private cluster.
pub async fn choose_server(given: Option<Secret>, private_db: bool) -> anyhow::Result<DemoServer> {
    let chosen =
        poda_jobs::testing::choose_server(given.map(|url| url.expose().to_owned()), private_db)
            .await;
    Ok(DemoServer {
        url: Secret::new(chosen.url),
        private: chosen.private,
    })
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub server: DemoServer,
    /// Payments to send as webhooks (each becomes a ticket and a commission transfer).
    pub payments: usize,
    /// Members of the tier whose contribution cycle the demo runs.
    pub members: i64,
    /// Leave the enqueuer (and its console) running after the summary, until Ctrl-C.
    pub keep_running: bool,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    if options.payments == 0 || options.members < 2 {
        bail!("the demo needs at least 1 payment and 2 members");
    }
    let server = DatabaseSettings::new(options.server.url.clone(), 1);
    let database = DatabaseSettings::new(recreate_database(&server).await?, 40);
    let pool = database.connect().await?;
    ops::migrate(&pool).await?;
    let (tier, deceased) = seed(&pool, options.members).await?;
    println!(
        "▸ database {DEMO_DATABASE} on {} recreated, migrated and seeded: {COMPANIES} companies, \
         payment code {DEMO_CODE} (limit {DEMO_CODE_LIMIT}), a tier of {} members",
        server.target(),
        options.members
    );

    // The Monime sandbox: 20 ms per call, one transfer in ten meets a transient fault first.
    let sandbox = Sandbox::spawn(SandboxConfig {
        latency: Duration::from_millis(20),
        completion_delay: Duration::from_millis(40),
        faults: FaultConfig {
            transient_rate: 0.10,
            ..FaultConfig::default()
        },
        token: Some(DEMO_MONIME_TOKEN.into()),
        ..SandboxConfig::default()
    })
    .await?;
    println!(
        "▸ Monime sandbox on {} (20 ms latency, 10 % transient faults)",
        sandbox.base_url
    );

    let shutdown = CancellationToken::new();
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
    let mut settings =
        EnqueuerSettings::new(addr, database.clone(), vec![Secret::new(DEMO_SECRET)]);
    settings.admin_token = Secret::new(DEMO_ADMIN_TOKEN);
    let enqueuer = Enqueuer::build_with_pool(settings, pool.clone()).await?;
    let base = format!("http://127.0.0.1:{}", enqueuer.port());
    let server_task = tokio::spawn(enqueuer.run_until_stopped(shutdown.clone()));
    println!("▸ enqueuer on {base}; its console: {base}/admin (admin token: {DEMO_ADMIN_TOKEN})");

    // Poda's events go to a receiver of the demo's own, which checks every signature.
    let receiver = Receiver::spawn(DEMO_EVENTS_SECRET, shutdown.clone()).await?;
    println!("▸ events receiver on {}", receiver.url);

    let mut worker_options = WorkerOptions {
        transfers: Some(TransferOptions::new(
            MonimeConfig {
                base_url: sandbox.base_url.clone(),
                token: ApiToken::new(DEMO_MONIME_TOKEN),
                space_id: "spc-demo".into(),
                version: DEFAULT_VERSION.into(),
                timeout: Duration::from_secs(5),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            },
            PLATFORM_ACCOUNT.into(),
        )),
        ..WorkerOptions::for_queues(
            &[
                ticket::QUEUE,
                transfer::QUEUE,
                cycle::QUEUE,
                notification::QUEUE,
                events::QUEUE,
                deadlines::QUEUE,
            ],
            64,
        )
    };
    worker_options.events = EventsOptions {
        relay: RelayConfig {
            urls: vec![receiver.url.clone()],
            ..RelayConfig::default()
        },
        deliverer: DelivererConfig::default(),
        secret: Secret::new(DEMO_EVENTS_SECRET),
    };
    worker_options.engine.schedules = vec![Schedule::new(
        deadlines::SCHEDULE,
        DEMO_DEADLINES_SCHEDULE,
        "UTC",
        deadlines::QUEUE,
        deadlines::KIND,
        json!({}),
    )?];
    let engine_pool = database.connect_async_commit().await?;
    let stop_workers = CancellationToken::new();
    let workers = tokio::spawn(run_workers(
        pool.clone(),
        engine_pool,
        worker_options,
        stop_workers.clone(),
    ));
    let started = Instant::now();

    // 1. Signed webhooks, 32 at a time, with a redelivery of every tenth payment.
    let client = reqwest::Client::new();
    let (accepted, duplicates) = send_webhooks(&client, &base, options.payments).await?;
    println!(
        "▸ webhooks: {accepted} payments accepted (202 after COMMIT), {duplicates} redeliveries \
         answered with the first delivery's job (200)"
    );

    // 2. A contribution cycle through the admin API.
    let created: serde_json::Value = client
        .post(format!("{base}/contribution-cycles"))
        .bearer_auth(DEMO_ADMIN_TOKEN)
        .header("Idempotency-Key", "demo-cycle-1")
        .json(&json!({
            "tier_id": tier,
            "deceased_member_id": deceased,
            "claim_reference": "CLAIM-DEMO-1",
            "contribution": {"currency": "SLE", "value": 2_500},
            "duration_days": 14
        }))
        .send()
        .await
        .context("creating the contribution cycle")?
        .error_for_status()
        .context("the enqueuer refused the contribution cycle")?
        .json()
        .await?;
    let cycle_id = created["cycle_id"]
        .as_i64()
        .context("the answer carries a cycle_id")?;
    println!(
        "▸ contribution cycle {cycle_id} created ({}): progress at {}",
        created["status"], created["progress_url"]
    );

    // 3. Progress until every job has settled.
    let bars = Bars::new(accepted as u64, options.members as u64 - 1);
    let outcome = loop {
        let now = Progress::read(&pool, cycle_id).await?;
        bars.show(&now);
        if now.settled(accepted as i64) {
            break now;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the demo did not settle within 5 minutes: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bars.finish();
    let elapsed = started.elapsed();

    // Every event of what settled reaches the receiver, and the schedule has fired.
    let expected = |kind: &str| match kind {
        "ticket.issued" => outcome.tickets as usize,
        "transfer.completed" => outcome.transfers_completed as usize,
        _ => 1,
    };
    let kinds = ["ticket.issued", "transfer.completed", "cycle.activated"];
    let waited = Instant::now();
    let (events_seen, forged, slots) = loop {
        let (seen, forged) = receiver.counts();
        let slots: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'completed' \
             AND unique_key LIKE 'schedule:' || $2 || ':%'",
        )
        .bind(deadlines::QUEUE)
        .bind(deadlines::SCHEDULE)
        .fetch_one(&pool)
        .await?;
        let delivered = kinds
            .iter()
            .all(|k| seen.get(*k).copied().unwrap_or(0) >= expected(k));
        if delivered && slots > 0 {
            break (seen, forged, slots);
        }
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("events or the schedule did not arrive within a minute: {seen:?}, {slots} slots");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop_workers.cancel();
    workers.await.context("the worker task")??;

    // 4. Summary, read from Postgres and the sandbox.
    let executions = sandbox.counts.executions();
    let executed_once = executions.values().all(|n| *n == 1);
    println!("\n▸ everything settled in {:.1} s", elapsed.as_secs_f64());
    println!(
        "  tickets: {} issued, {} refused for good (payment code {DEMO_CODE} exhausted after {DEMO_CODE_LIMIT} uses)",
        outcome.tickets, outcome.tickets_failed
    );
    println!(
        "  commission transfers: {} completed at Monime, each executed exactly once: {} \
         ({} creates for {} transfers; {} transient faults met and retried durably)",
        outcome.transfers_completed,
        if executed_once && executions.len() as i64 == outcome.transfers_completed {
            "yes"
        } else {
            "NO"
        },
        sandbox.counts.create_requests(),
        executions.len(),
        sandbox.counts.faults()
    );
    println!(
        "  contribution cycle {cycle_id}: {} — {} pending contributions (the deceased and inactive \
         members excluded), {} agents notified",
        outcome.cycle_status, outcome.contributions, outcome.notifications
    );
    println!(
        "  events out: {} delivered to the receiver, each signature valid{} — {}",
        events_seen.values().sum::<usize>(),
        if forged == 0 { "" } else { " (SOME WERE NOT)" },
        events_seen
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  schedule {} ({DEMO_DEADLINES_SCHEDULE} in the demo): {slots} slots fired, one job each",
        deadlines::SCHEDULE
    );
    println!("\nSELECT * FROM commission_transfer_stats;");
    for (company, total, completed, amount) in sqlx::query_as::<_, (String, i64, i64, i64)>(
        "SELECT company_id, total, completed, amount_completed_minor FROM commission_transfer_stats ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?
    {
        println!("  {company}: {completed}/{total} completed, {amount} minor units of commission");
    }
    println!(
        "\nSELECT * FROM job_queue_stats;\n{}",
        ops::stats_table(&pool).await?
    );
    if let Some((id, error)) = sqlx::query_as::<_, (i64, String)>(
        "SELECT id, last_error FROM job_failures WHERE queue = $1 ORDER BY id LIMIT 1",
    )
    .bind(ticket::QUEUE)
    .fetch_optional(&pool)
    .await?
    {
        println!("\nSELECT id, last_error FROM job_failures LIMIT 1;\n  {id}  {error}");
    }
    if options.server.private {
        println!("\nThe private cluster stops and is removed as the demo exits.");
    } else {
        println!(
            "\nExplore it: psql {DEMO_DATABASE}, or DATABASE_URL=…/{DEMO_DATABASE} worker stats"
        );
    }
    if options.keep_running {
        println!(
            "\nThe enqueuer keeps running: open {base}/admin and log in with the admin token \
             {DEMO_ADMIN_TOKEN}. Ctrl-C stops it."
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    shutdown.cancel();
    server_task.await.context("the enqueuer task")??;
    sandbox.shutdown().await;
    if forged > 0 {
        bail!("the receiver got {forged} events whose signature did not match");
    }
    if !executed_once {
        bail!("a transfer was executed more than once at the sandbox");
    }
    Ok(())
}

/// Three companies with their Monime accounts and commission rates, two routes each, the
/// demo payment code, and a tier of `members` (one in fifty inactive) plus the deceased
/// member whose death opens the cycle. Returns the tier and the deceased member.
async fn seed(pool: &Db, members: i64) -> anyhow::Result<(i64, i64)> {
    sqlx::query(
        "INSERT INTO companies (id, name, monime_account_id, commission_bps, currency) VALUES \
         ('co-0', 'Freetown Express', 'fa-freetown-express', 250, 'SLE'), \
         ('co-1', 'Bo Coaches', 'fa-bo-coaches', 300, 'SLE'), \
         ('co-2', 'Kenema Lines', 'fa-kenema-lines', 500, 'SLE')",
    )
    .execute(pool)
    .await
    .context("seeding companies")?;
    sqlx::query(
        "INSERT INTO routes (id, company_id, origin, destination) \
         SELECT 'rt-' || c || '-' || r, 'co-' || c, 'Freetown', (ARRAY['Bo', 'Kenema'])[r + 1] \
         FROM generate_series(0, 2) c, generate_series(0, 1) r",
    )
    .execute(pool)
    .await
    .context("seeding routes")?;
    sqlx::query(
        "INSERT INTO payment_codes (code, company_id, usage_limit) VALUES ($1, 'co-0', $2)",
    )
    .bind(DEMO_CODE)
    .bind(DEMO_CODE_LIMIT)
    .execute(pool)
    .await
    .context("seeding the payment code")?;
    let tier: i64 = sqlx::query_scalar(
        "INSERT INTO tiers (name, currency) VALUES ('Gold', 'SLE') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .context("seeding the tier")?;
    let deceased: i64 = sqlx::query_scalar(
        "WITH m AS ( \
           INSERT INTO members (tier_id, status, agent_id, wallet_id) \
           SELECT $1, CASE WHEN g % 50 = 0 THEN 'inactive' ELSE 'active' END::member_status, \
                  'agent-' || (g % $3), 'wallet-' || g \
           FROM generate_series(1, $2) g \
           RETURNING id) \
         SELECT min(id) FROM m",
    )
    .bind(tier)
    .bind(members)
    .bind(AGENTS)
    .fetch_one(pool)
    .await
    .context("seeding members")?;
    Ok((tier, deceased))
}

/// A `payment.completed` envelope as Monime sends it, for demo payment `i`.
fn payment_body(i: usize) -> Vec<u8> {
    let company = i % COMPANIES;
    let payment = format!("pay-demo-{i:06}");
    let code = (company == 0 && i.is_multiple_of(2)).then_some(DEMO_CODE);
    serde_json::to_vec(&json!({
        "apiVersion": "caph.2025-08-23",
        "event": {"id": format!("evt-demo-{i:06}"), "name": "payment.completed",
                  "timestamp": chrono::Utc::now().to_rfc3339()},
        "object": {"id": payment, "type": "payment"},
        "data": {"id": payment, "status": "completed",
                 "amount": {"currency": "SLE", "value": 5_000 + 2_500 * (i % 7) as i64},
                 "financialTransactionReference": format!("txn-demo-{i:06}"),
                 "metadata": {"company_id": format!("co-{company}"),
                              "route_id": format!("rt-{company}-{}", i % 2),
                              "passenger_phone": format!("+23276{:06}", i % 1_000_000),
                              "payment_code": code}}
    }))
    .expect("a JSON body")
}

/// Sends every payment, plus a redelivery of every tenth; returns (202s, duplicate 200s).
async fn send_webhooks(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<(usize, usize)> {
    let url = format!("{base}/webhooks/monime");
    let deliveries = (0..n).chain((0..n).step_by(10));
    let statuses: Vec<anyhow::Result<u16>> = futures::stream::iter(deliveries)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body = payment_body(i);
                let signature = sign(DEMO_SECRET, chrono::Utc::now().timestamp(), &body);
                let response = client
                    .post(&url)
                    .header("Monime-Signature", signature)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .context("sending a webhook to the enqueuer")?;
                match response.status().as_u16() {
                    status @ (200 | 202) => Ok(status),
                    other => bail!(
                        "the enqueuer answered {other}: {}",
                        response.text().await.unwrap_or_default()
                    ),
                }
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut accepted = 0;
    let mut duplicates = 0;
    for status in statuses {
        match status? {
            202 => accepted += 1,
            _ => duplicates += 1,
        }
    }
    Ok((accepted, duplicates))
}

/// What the database shows at one moment.
#[derive(Debug, sqlx::FromRow)]
struct Progress {
    ticket_jobs_done: i64,
    tickets: i64,
    tickets_failed: i64,
    transfers_completed: i64,
    transfer_jobs_open: i64,
    cycle_status: String,
    contributions: i64,
    notifications: i64,
    notifications_open: i64,
}

impl Progress {
    async fn read(pool: &Db, cycle_id: i64) -> anyhow::Result<Progress> {
        Ok(sqlx::query_as(
            "SELECT \
               (SELECT count(*) FROM jobs WHERE queue = 'tickets' AND state IN ('completed', 'failed')) AS ticket_jobs_done, \
               (SELECT count(*) FROM tickets) AS tickets, \
               (SELECT count(*) FROM jobs WHERE queue = 'tickets' AND state = 'failed') AS tickets_failed, \
               (SELECT count(*) FROM commission_transfers WHERE status = 'completed') AS transfers_completed, \
               (SELECT count(*) FROM jobs WHERE queue = 'commission_transfers' AND state IN ('available', 'running')) AS transfer_jobs_open, \
               (SELECT status::text FROM contribution_cycles WHERE id = $1) AS cycle_status, \
               (SELECT processed FROM contribution_cycles WHERE id = $1) AS contributions, \
               (SELECT count(*) FROM jobs WHERE queue = 'notifications') AS notifications, \
               (SELECT count(*) FROM jobs WHERE queue = 'notifications' AND state IN ('available', 'running')) AS notifications_open",
        )
        .bind(cycle_id)
        .fetch_one(pool)
        .await?)
    }

    /// Every ticket job finished, every transfer and notification settled, the cycle final.
    fn settled(&self, payments: i64) -> bool {
        self.ticket_jobs_done == payments
            && self.transfer_jobs_open == 0
            && self.transfers_completed == self.tickets
            && matches!(self.cycle_status.as_str(), "Active" | "Failed")
            && self.notifications > 0
            && self.notifications_open == 0
    }
}

struct Bars {
    tickets: ProgressBar,
    transfers: ProgressBar,
    cycle: ProgressBar,
}

impl Bars {
    fn new(payments: u64, members: u64) -> Self {
        let all = MultiProgress::new();
        let style = ProgressStyle::with_template("  {prefix:<22} {bar:36} {pos}/{len} {msg}")
            .expect("a template");
        let bar = |prefix: &'static str, len: u64| {
            let bar = all.add(ProgressBar::new(len).with_style(style.clone()));
            bar.set_prefix(prefix);
            bar
        };
        Bars {
            tickets: bar("tickets", payments),
            transfers: bar("commission transfers", payments),
            cycle: bar("contributions", members),
        }
    }

    fn show(&self, p: &Progress) {
        self.tickets.set_position(p.ticket_jobs_done as u64);
        self.tickets.set_message(format!(
            "{} issued, {} refused",
            p.tickets, p.tickets_failed
        ));
        self.transfers.set_length(p.tickets.max(1) as u64);
        self.transfers.set_position(p.transfers_completed as u64);
        self.cycle.set_position(p.contributions as u64);
        self.cycle.set_message(p.cycle_status.clone());
    }

    fn finish(&self) {
        for bar in [&self.tickets, &self.transfers, &self.cycle] {
            bar.finish();
        }
    }
}

/// Drops and creates the demo database; returns its URL.
async fn recreate_database(server: &DatabaseSettings) -> anyhow::Result<Secret> {
    let options: PgConnectOptions = server.connect_options()?;
    let mut admin = PgConnection::connect_with(
        &options
            .clone()
            .database("postgres")
            .disable_statement_logging(),
    )
    .await
    .with_context(|| format!("connecting to Postgres at {}", server.target()))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .context("dropping the old demo database")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {DEMO_DATABASE}"
    )))
    .execute(&mut admin)
    .await
    .context("creating the demo database")?;
    admin.close().await.ok();
    Ok(Secret::new(crate::url_with_database(
        server.url.expose(),
        DEMO_DATABASE,
    )))
}
