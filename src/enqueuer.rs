//! The HTTP enqueuer: settings, startup and graceful shutdown.
//!
//! ```ignore
//! let enqueuer = Enqueuer::build(settings).await?; // binds (port 0 allowed), connects lazily
//! println!("listening on {}", enqueuer.port());
//! enqueuer.run_until_stopped(shutdown_token).await?; // drains in-flight requests and batches
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use poda_jobs::db::Db;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{CommonArgs, EnqueuerArgs};
use crate::config::{ConfigError, DatabaseSettings, Secret};
use crate::http::group_commit::{GroupCommit, GroupCommitConfig};
use crate::http::state::AppState;
use crate::http::webhooks::signature::WebhookSecrets;

pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// Per client IP; Monime's delivery rate is far below this, so it only stops floods.
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 20_000;
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 20_000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the enqueuer needs to run.
#[derive(Debug, Clone)]
pub struct EnqueuerSettings {
    pub addr: SocketAddr,
    pub database: DatabaseSettings,
    pub admin_token: Secret,
    /// Bearer token that opens `GET /payments/{payment_id}` and nothing else; empty: disabled.
    pub status_token: Secret,
    pub webhook_secrets: Vec<Secret>,
    pub body_limit: usize,
    pub rate_limit: RateLimitSettings,
    pub group_commit: GroupCommitConfig,
    pub request_timeout: Duration,
    /// Apply pending migrations at start; otherwise refuse an unmigrated database.
    pub migrate: bool,
}

/// Per-client rate limit of the webhook route. `per_second == 0` disables it.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    pub per_second: u32,
    pub burst: u32,
}

impl EnqueuerSettings {
    /// Settings with the defaults, for tests and benchmarks.
    pub fn new(addr: SocketAddr, database: DatabaseSettings, webhook_secrets: Vec<Secret>) -> Self {
        EnqueuerSettings {
            addr,
            database,
            admin_token: Secret::default(),
            status_token: Secret::default(),
            webhook_secrets,
            body_limit: DEFAULT_BODY_LIMIT,
            rate_limit: RateLimitSettings {
                per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
                burst: DEFAULT_RATE_LIMIT_BURST,
            },
            group_commit: GroupCommitConfig::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            migrate: false,
        }
    }

    pub fn from_args(common: &CommonArgs, args: &EnqueuerArgs) -> Result<Self, ConfigError> {
        let secrets: Vec<Secret> = args
            .monime_webhook_secrets
            .iter()
            .map(|s| Secret::new(s.expose().trim()))
            .filter(|s| !s.expose().is_empty())
            .collect();
        if secrets.is_empty() {
            return Err(ConfigError::Invalid {
                name: "MONIME_WEBHOOK_SECRETS",
                reason: "at least one webhook signing secret is required".into(),
            });
        }
        if args.batch_size == 0 || args.batches_in_flight == 0 {
            return Err(ConfigError::Invalid {
                name: "ENQUEUER_BATCH_SIZE / ENQUEUER_BATCHES_IN_FLIGHT",
                reason: "must be at least 1".into(),
            });
        }
        Ok(EnqueuerSettings {
            addr: args.addr,
            database: common.database(args.db_connections),
            admin_token: args.admin_token.clone(),
            status_token: args.status_token.clone(),
            webhook_secrets: secrets,
            body_limit: args.body_limit,
            rate_limit: RateLimitSettings {
                per_second: args.rate_limit,
                burst: args.rate_burst.max(1),
            },
            group_commit: GroupCommitConfig {
                max_batch: args.batch_size,
                max_delay: args.batch_delay,
                max_in_flight: args.batches_in_flight,
            },
            request_timeout: args.request_timeout,
            migrate: args.migrate,
        })
    }
}

/// A bound, ready-to-run enqueuer.
pub struct Enqueuer {
    listener: TcpListener,
    port: u16,
    state: AppState,
    group_commit: GroupCommit,
    settings: EnqueuerSettings,
}

impl Enqueuer {
    /// Connects to the database (and checks or applies migrations), binds the listener and
    /// starts the group-commit writer.
    pub async fn build(settings: EnqueuerSettings) -> anyhow::Result<Enqueuer> {
        let pool = settings.database.connect().await?;
        crate::ops::ensure_schema(&pool, settings.migrate).await?;
        Self::build_with_pool(settings, pool).await
    }

    /// As [`Enqueuer::build`], on an existing pool (tests, benchmarks).
    pub async fn build_with_pool(settings: EnqueuerSettings, pool: Db) -> anyhow::Result<Enqueuer> {
        let secrets = WebhookSecrets::new(settings.webhook_secrets.clone())
            .context("MONIME_WEBHOOK_SECRETS")?;
        let listener = crate::http::listen::listen(settings.addr)
            .with_context(|| format!("binding the enqueuer to {}", settings.addr))?;
        let port = listener
            .local_addr()
            .context("reading the bound address")?
            .port();
        let group_commit = GroupCommit::start(&pool, settings.group_commit.clone());
        let state = AppState::new(
            pool,
            group_commit.handle(),
            secrets,
            settings.admin_token.clone(),
            settings.status_token.clone(),
            crate::http::metrics::install_recorder(),
            settings.body_limit,
        );
        Ok(Enqueuer {
            listener,
            port,
            state,
            group_commit,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &Db {
        &self.state.pool
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections, lets in-flight
    /// requests finish (each waits for its batch's COMMIT) and stops the writer.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Enqueuer {
            listener,
            port,
            state,
            group_commit,
            settings,
        } = self;
        let app = crate::http::router(state, &settings);
        let local = listener
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        tracing::info!(addr = %local, port, "enqueuer listening");
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
        group_commit.stop().await;
        tracing::info!("enqueuer stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::EnqueuerCli;

    #[test]
    fn status_token_comes_from_its_flag_and_never_prints() {
        let cli = EnqueuerCli::try_parse_from([
            "enqueuer",
            "--monime-webhook-secrets",
            "whsec_unit",
            "--admin-token",
            "admin-unit-token",
            "--status-token",
            "status-unit-token",
        ])
        .unwrap();
        let settings = EnqueuerSettings::from_args(&cli.common, &cli.run).unwrap();
        assert_eq!(settings.status_token.expose(), "status-unit-token");
        let printed = format!("{cli:?} {settings:?}");
        assert!(!printed.contains("status-unit-token"), "{printed}");
        assert!(!printed.contains("admin-unit-token"), "{printed}");
    }
}
