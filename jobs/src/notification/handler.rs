//! Delivering an agent summary: one POST with a timeout; the engine retries durably.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;

use crate::engine::{JobError, JobMeta, Outcome};

use super::error::NotificationError;
use super::{AgentSummaryJob, DEFAULT_TIMEOUT};

/// Where and how summaries are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifierConfig {
    /// The receiver; `None`: summaries are logged and the jobs complete.
    pub url: Option<String>,
    pub timeout: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            url: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A delivery client, built once per process and shared by the handlers.
#[derive(Debug, Clone)]
pub struct Notifier {
    client: reqwest::Client,
    url: Option<String>,
}

impl Notifier {
    pub fn new(config: NotifierConfig) -> Result<Notifier, NotificationError> {
        let client =
            crate::http_client::with_timeout(config.timeout).map_err(NotificationError::Client)?;
        Ok(Notifier {
            client,
            url: config.url,
        })
    }

    async fn deliver(&self, url: &str, job: &AgentSummaryJob) -> Result<(), NotificationError> {
        let response = self
            .client
            .post(url)
            .header("Idempotency-Key", job.unique_key())
            .json(job)
            .send()
            .await
            .map_err(NotificationError::Transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(NotificationError::Rejected {
            status: status.as_u16(),
            retry_after,
        })
    }
}

/// Delivers one summary.
#[tracing::instrument(skip_all, fields(job.id = %meta.id, job.attempt = meta.attempt,
    cycle.id = %job.cycle_id, agent.id = %job.agent_id))]
pub async fn handle(
    notifier: &Notifier,
    meta: &JobMeta,
    job: AgentSummaryJob,
) -> Result<Outcome, JobError> {
    let Some(url) = notifier.url.as_deref() else {
        tracing::info!(
            members = job.members,
            total_minor = job.total.value_minor,
            "no NOTIFICATIONS_URL configured; summary not sent"
        );
        return Ok(Outcome::Done);
    };
    notifier.deliver(url, &job).await?;
    tracing::debug!("summary delivered");
    Ok(Outcome::Done)
}
