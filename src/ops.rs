//! Operator commands: shared by the `worker` subcommands (and the admin API).

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use poda_jobs::engine::{
    admin, migrate, queue, JobId, JobSnapshot, PruneReport, Pruner, PrunerConfig, QueueStatus,
};
use sqlx::PgPool;

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    migrate::run_migrations(pool)
        .await
        .context("applying migrations")?;
    Ok(())
}

/// Refuses an unmigrated database unless `apply` is set, in which case it migrates.
pub async fn ensure_schema(pool: &PgPool, apply: bool) -> anyhow::Result<()> {
    if apply {
        return migrate(pool).await;
    }
    migrate::ensure_migrated(pool).await?;
    Ok(())
}

/// The job_queue_stats view as a table.
pub async fn stats_table(pool: &PgPool) -> anyhow::Result<String> {
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

pub async fn retry(pool: &PgPool, id: JobId) -> anyhow::Result<JobSnapshot> {
    Ok(admin::retry_job(pool, id).await?)
}

pub async fn cancel(pool: &PgPool, id: JobId) -> anyhow::Result<JobSnapshot> {
    Ok(admin::cancel_job(pool, id).await?)
}

/// Deletes finished jobs older than `older_than`, now.
pub async fn prune(pool: &PgPool, older_than: std::time::Duration) -> anyhow::Result<PruneReport> {
    let pruner = Pruner::new(
        PrunerConfig {
            retention: older_than,
            ..PrunerConfig::default()
        },
        pool.clone(),
    );
    pruner.run_once(None).await.context("pruning finished jobs")
}

pub async fn pause(pool: &PgPool, queue: &str) -> anyhow::Result<QueueStatus> {
    Ok(queue::pause_queue(pool, queue).await?)
}

pub async fn resume(pool: &PgPool, queue: &str) -> anyhow::Result<QueueStatus> {
    Ok(queue::resume_queue(pool, queue).await?)
}
