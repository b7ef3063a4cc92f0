//! What every handler can reach: cheap, cloneable handles.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use poda_jobs::db::Db;

use super::group_commit::GroupCommitHandle;
use super::webhooks::signature::WebhookSecrets;
use crate::config::Secret;
use crate::console::session::ConsoleKeys;

#[derive(Clone)]
pub struct AppState {
    pub pool: Db,
    pub group_commit: GroupCommitHandle,
    pub secrets: Arc<WebhookSecrets>,
    pub admin_token: Arc<Secret>,
    /// The console's cookie and CSRF keys, derived from the admin token.
    pub console: Arc<ConsoleKeys>,
    /// Opens `GET /payments/{payment_id}` only; empty: disabled.
    pub status_token: Arc<Secret>,
    /// `None` when another metrics recorder owns the process (then `/metrics` answers 503).
    pub metrics: Option<PrometheusHandle>,
    /// Largest accepted webhook body, for the 413 message.
    pub body_limit: usize,
}

impl AppState {
    pub fn new(
        pool: Db,
        group_commit: GroupCommitHandle,
        secrets: WebhookSecrets,
        admin_token: Secret,
        status_token: Secret,
        metrics: Option<PrometheusHandle>,
        body_limit: usize,
    ) -> Self {
        AppState {
            pool,
            group_commit,
            secrets: Arc::new(secrets),
            console: Arc::new(ConsoleKeys::derive(&admin_token)),
            admin_token: Arc::new(admin_token),
            status_token: Arc::new(status_token),
            metrics,
            body_limit,
        }
    }
}
