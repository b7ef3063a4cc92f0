//! Operator commands: shared by the `worker` subcommands (and the admin API).
//!
//! The actions among them are recorded in the audit trail as done by [`cli_actor`], the
//! operating-system user running the command.

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use poda_jobs::audit::Actor;
use poda_jobs::db::Db;
use poda_jobs::engine::schedule::{self, Schedule};
use poda_jobs::engine::{
    admin, enqueue_one_pooled, migrate, queue, Enqueued, JobId, JobSnapshot, NewJob, PruneReport,
    Pruner, PrunerConfig, QueueStatus,
};
use poda_jobs::transfer::admin::{retry_failed_transfer, RetriedTransfer};
use poda_jobs::transfer::monime::MonimeClient;
use poda_jobs::transfer::reconcile::{self, ReconcileConfig, ReconcileReport};
use poda_jobs::transfer::reconcile_job;

pub async fn migrate(pool: &Db) -> anyhow::Result<()> {
    migrate::run_migrations(pool)
        .await
        .context("applying migrations")?;
    Ok(())
}

/// Refuses an unmigrated database unless `apply` is set, in which case it migrates.
pub async fn ensure_schema(pool: &Db, apply: bool) -> anyhow::Result<()> {
    if apply {
        return migrate(pool).await;
    }
    migrate::ensure_migrated(pool).await?;
    Ok(())
}

/// The job_queue_stats view as a table.
pub async fn stats_table(pool: &Db) -> anyhow::Result<String> {
    let stats = admin::queue_stats(pool)
        .await
        .context("reading job_queue_stats")?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "queue",
        "pending",
        "scheduled",
        "running",
        "retrying",
        "failed",
        "done_last_hour",
        "oldest_pending_age_s",
    ]);
    for s in stats {
        table.add_row(vec![
            s.queue,
            s.pending.to_string(),
            s.scheduled.to_string(),
            s.running.to_string(),
            s.retrying.to_string(),
            s.failed.to_string(),
            s.done_last_hour.to_string(),
            s.oldest_pending_age_s.to_string(),
        ]);
    }
    Ok(table.to_string())
}

/// The last run of the `reconcile-transfers` schedule, one line for `worker stats`.
pub async fn last_reconcile_line(pool: &Db) -> anyhow::Result<String> {
    let run = reconcile_job::last_run(pool)
        .await
        .context("reading reconcile_runs")?;
    Ok(match run {
        None => "last transfer reconciliation: none yet".to_owned(),
        Some(run) => format!(
            "last transfer reconciliation: run {} finished {} ({} ms), {} transfers checked, {} findings{}",
            run.id,
            run.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (run.finished_at - run.started_at).num_milliseconds(),
            run.checked,
            run.findings,
            if run.findings > 0 { " → needs attention (worker reconcile)" } else { "" },
        ),
    })
}

/// The periodic jobs as a table: those the workers recorded in `job_schedules`, and those
/// `configured` here that no worker has recorded yet.
pub async fn schedules_table(pool: &Db, configured: &[Schedule]) -> anyhow::Result<String> {
    let rows = schedule::list(pool)
        .await
        .context("reading job_schedules")?;
    let slot = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into())
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "name",
        "expression",
        "time zone",
        "job (queue/kind)",
        "last slot",
        "next slot",
    ]);
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    for row in &rows {
        let job = configured
            .iter()
            .find(|s| s.name() == row.name)
            .map(|s| format!("{}/{}", s.queue(), s.kind()))
            .unwrap_or_else(|| "-".into());
        lines.push((
            row.name.clone(),
            vec![
                row.name.clone(),
                row.expression.clone(),
                row.time_zone.clone(),
                job,
                slot(row.last_slot),
                slot(row.next_slot),
            ],
        ));
    }
    let now = chrono::Utc::now();
    for s in configured {
        if rows.iter().any(|r| r.name == s.name()) {
            continue;
        }
        lines.push((
            s.name().to_owned(),
            vec![
                s.name().to_owned(),
                s.expression().to_owned(),
                s.time_zone().to_owned(),
                format!("{}/{}", s.queue(), s.kind()),
                "-".into(),
                slot(s.next_after(now)),
            ],
        ));
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, line) in lines {
        table.add_row(line);
    }
    Ok(table.to_string())
}

/// The operator at the command line: `cli:<user>`, the user from `$USER`, else `$LOGNAME`,
/// else the name of the process's user id, else `cli:uid<N>`.
pub fn cli_actor() -> Actor {
    let from_env = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|user| user.trim().to_owned())
        .find(|user| !user.is_empty());
    let user = from_env.unwrap_or_else(|| {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => format!("uid{uid}"),
        }
    });
    Actor::cli(user)
}

pub async fn retry(pool: &Db, id: JobId) -> anyhow::Result<JobSnapshot> {
    Ok(admin::retry_job(pool, id, &cli_actor()).await?)
}

/// Enqueues one job with the engine's enqueue; returns its id and whether it was created
/// (false: its unique key was taken, and the existing job's id is returned).
pub async fn enqueue(pool: &Db, job: &NewJob) -> anyhow::Result<Enqueued> {
    enqueue_one_pooled(pool, job)
        .await
        .with_context(|| format!("enqueueing a {} job in queue {}", job.kind, job.queue))
}

pub async fn cancel(pool: &Db, id: JobId) -> anyhow::Result<JobSnapshot> {
    Ok(admin::cancel_job(pool, id, &cli_actor()).await?)
}

/// Deletes finished jobs older than `older_than`, now.
pub async fn prune(pool: &Db, older_than: std::time::Duration) -> anyhow::Result<PruneReport> {
    let pruner = Pruner::new(
        PrunerConfig {
            retention: older_than,
            ..PrunerConfig::default()
        },
        pool.clone(),
    );
    pruner
        .run_once_by(&cli_actor())
        .await
        .context("pruning finished jobs")
}

pub async fn pause(pool: &Db, queue: &str) -> anyhow::Result<QueueStatus> {
    Ok(queue::pause_queue(pool, queue, &cli_actor()).await?)
}

pub async fn resume(pool: &Db, queue: &str) -> anyhow::Result<QueueStatus> {
    Ok(queue::resume_queue(pool, queue, &cli_actor()).await?)
}

/// Retries a failed commission transfer (see `transfer::admin::retry_failed_transfer`).
pub async fn retry_transfer(pool: &Db, ticket_id: i64) -> anyhow::Result<RetriedTransfer> {
    retry_failed_transfer(pool, ticket_id, &cli_actor())
        .await
        .with_context(|| format!("retrying the transfer of ticket {ticket_id}"))
}

/// Reconciles commission transfers with Monime; returns the report and its text for people.
pub async fn reconcile(
    pool: &Db,
    client: &MonimeClient,
    config: ReconcileConfig,
) -> anyhow::Result<(ReconcileReport, String)> {
    let report = reconcile::reconcile(pool, client, config)
        .await
        .context("reading commission transfers")?;
    let mut text = String::new();
    let mut section = |title: String, header: Vec<&str>, rows: Vec<Vec<String>>| {
        text.push_str(&title);
        text.push('\n');
        if !rows.is_empty() {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
            for row in rows {
                table.add_row(row);
            }
            text.push_str(&table.to_string());
            text.push('\n');
        }
    };
    section(
        format!(
            "tickets older than {}s without a completed transfer: {}",
            config.stuck_after.as_secs(),
            report.missing.len()
        ),
        vec!["ticket_id", "company_id", "transfer status", "last_error"],
        report
            .missing
            .iter()
            .map(|m| {
                vec![
                    m.ticket_id.to_string(),
                    m.company_id.clone(),
                    m.status.clone().unwrap_or_else(|| "(no transfer)".into()),
                    m.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
    section(
        format!(
            "transfers unfinished for longer than {}s: {}",
            config.stuck_after.as_secs(),
            report.stuck.len()
        ),
        vec!["ticket_id", "status", "for (s)", "last_error"],
        report
            .stuck
            .iter()
            .map(|s| {
                vec![
                    s.ticket_id.to_string(),
                    s.status.clone(),
                    s.stuck_for_s.to_string(),
                    s.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
    section(
        format!(
            "transfers checked against Monime: {}; disagreements: {}",
            report.checked,
            report.disagreements.len()
        ),
        vec!["ticket_id", "monime transfer", "ours", "monime"],
        report
            .disagreements
            .iter()
            .map(|d| {
                vec![
                    d.ticket_id.to_string(),
                    d.monime_transfer_id.clone(),
                    d.ours.clone(),
                    d.monime.clone(),
                ]
            })
            .collect(),
    );
    text.push_str(if report.needs_attention() {
        "→ needs attention"
    } else {
        "→ all transfers agree"
    });
    Ok((report, text))
}
