//! Settings shared by the binaries: the database, logging, and secrets that never print.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use poda_jobs::db::{pooled_options, Db, Pooler, SessionSettings};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/poda";

/// A string that never appears in logs or debug output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL (or --database-url) is not a valid Postgres URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("could not connect to the database named by DATABASE_URL ({target}): {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the server at DATABASE_URL ({target}) refused Poda's session settings; if it is \
         PgBouncer in transaction mode, set DATABASE_POOLER=transaction: {source}"
    )]
    PoolerNotDeclared {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// How to reach Postgres. The URL is a secret: it may carry a password.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    /// `transaction` when `url` names PgBouncer (or another pooler) in transaction mode.
    pub pooler: Pooler,
}

impl DatabaseSettings {
    pub fn new(url: Secret, max_connections: u32) -> Self {
        DatabaseSettings {
            url,
            max_connections,
            pooler: Pooler::None,
        }
    }

    pub fn with_pooler(mut self, pooler: Pooler) -> Self {
        self.pooler = pooler;
        self
    }

    /// The URL's options, with logging; without session settings (see [`Self::connect`]).
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        let options =
            PgConnectOptions::from_str(self.url.expose()).map_err(ConfigError::DatabaseUrl)?;
        Ok(options
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
    }

    /// Host, port and database, for messages: never the password.
    pub fn target(&self) -> String {
        match self.connect_options() {
            Ok(o) => format!(
                "{}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("(default)")
            ),
            Err(_) => "an unparsable URL".to_owned(),
        }
    }

    /// A fully durable pool with Poda's [`SESSION`] settings: enqueue, business writes,
    /// operator commands.
    pub async fn connect(&self) -> Result<Db, ConfigError> {
        self.connect_with(PoolRole::Durable).await
    }

    /// A pool whose transactions commit without waiting for the WAL flush: for the engine's
    /// claims, completions and leases, which are safe to lose in a server crash (the job runs
    /// again; handlers are idempotent). Enqueue and business writes use [`Self::connect`].
    /// Each new connection is warmed before its first claim (`engine::warm`).
    pub async fn connect_async_commit(&self) -> Result<Db, ConfigError> {
        self.connect_with(PoolRole::Engine).await
    }

    /// A pool for job handlers, whose sessions cannot hang: a statement, a lock wait and an
    /// idle transaction are bounded, and the server probes the connection so that a client
    /// that vanished does not hold its locks (see [`HANDLER`]).
    pub async fn connect_handlers(&self) -> Result<Db, ConfigError> {
        self.connect_with(PoolRole::Handlers).await
    }

    /// Directly, the role's settings (and the TCP keepalives, if it has them) travel as startup
    /// options. Behind a transaction pooler the settings are `SET LOCAL` in every transaction
    /// (a pooler shares sessions between clients), keepalives are the pooler's own to set
    /// (`tcp_keepalive`), and the startup packet carries only what PgBouncer accepts. Each new
    /// direct engine connection runs the engine's statements once on no job (behind a pooler a
    /// session is not the client's to warm).
    async fn connect_with(&self, role: PoolRole) -> Result<Db, ConfigError> {
        let options = self.connect_options()?;
        let settings = role.settings();
        let (options, local) = match self.pooler {
            Pooler::None => (
                direct_options(options, settings, role.keepalives()),
                &[][..],
            ),
            Pooler::Transaction => (pooled_options(options, Pooler::Transaction), settings),
        };
        let mut pool_options = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if role == PoolRole::Engine && self.pooler == Pooler::None {
            pool_options = pool_options.after_connect(|conn, _| {
                Box::pin(async move {
                    poda_jobs::engine::warm::warm_up(conn).await;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await.map_err(|source| {
            let target = self.target();
            // PgBouncer refuses the startup parameters a direct connection sends.
            if self.pooler == Pooler::None
                && source.to_string().contains("unsupported startup parameter")
            {
                ConfigError::PoolerNotDeclared { target, source }
            } else {
                ConfigError::Connect { target, source }
            }
        })?;
        Ok(Db::new(pool, self.pooler, local))
    }
}

/// The settings every connection of a worker or enqueuer runs with.
///
/// Custom plans for every statement: Poda's statements take arrays whose length varies from
/// 1 to thousands, against tables that grow from empty. A cached generic plan (chosen after
/// five executions) is planned for whatever the first calls saw and is kept until the table's
/// statistics change: complete_many went from ~10 ms to seconds per batch, and the ticket
/// batch lookup hash-joined a seq scan of all tickets.
pub const SESSION: SessionSettings = &[("plan_cache_mode", "force_custom_plan")];

/// The engine's own writes commit without waiting for the WAL flush (see
/// [`DatabaseSettings::connect_async_commit`]). Its statements are bounded too: the engine's
/// loops also bound each call on the client side.
pub const ASYNC_COMMIT: SessionSettings =
    &[("synchronous_commit", "off"), ("statement_timeout", "30s")];

/// A handler's statement, lock wait or idle transaction cannot outlast these, whatever the
/// handler does (its run timeout bounds it on the client).
pub const HANDLER: SessionSettings = &[
    ("statement_timeout", "60s"),
    ("lock_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

/// What is answered as committed is on disk (§5.1), whatever `synchronous_commit` the server
/// or the database defaults to: an operator who turns it off server-wide for throughput must
/// not turn a webhook's 2xx into a promise a crash can break.
pub const DURABLE_COMMIT: SessionSettings = &[("synchronous_commit", "on")];

/// The durable pools' settings: [`SESSION`] and [`DURABLE_COMMIT`].
const DURABLE_SESSION: &[SessionSettings] = &[SESSION, DURABLE_COMMIT];

/// The engine pool's settings: [`SESSION`] and [`ASYNC_COMMIT`].
const ENGINE_SESSION: &[SessionSettings] = &[SESSION, ASYNC_COMMIT];

/// The handler pools' settings: [`SESSION`] and [`HANDLER`].
const HANDLER_SESSION: &[SessionSettings] = &[SESSION, HANDLER];

/// What a pool is for, which decides how its sessions are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolRole {
    /// Enqueue, business writes, operator commands: [`DURABLE_SESSION`].
    Durable,
    /// The engine's claims, completions and leases: [`ENGINE_SESSION`], keepalives, warmed.
    Engine,
    /// Job handlers: [`HANDLER_SESSION`], keepalives.
    Handlers,
}

impl PoolRole {
    fn settings(self) -> &'static [SessionSettings] {
        match self {
            PoolRole::Durable => DURABLE_SESSION,
            PoolRole::Engine => ENGINE_SESSION,
            PoolRole::Handlers => HANDLER_SESSION,
        }
    }

    /// Server-side TCP keepalives, for the sessions that hold locks and transactions on behalf
    /// of a process that may vanish.
    fn keepalives(self) -> bool {
        self != PoolRole::Durable
    }
}

/// TCP keepalives from the server: a session whose client vanished without closing its
/// connection (a half-open connection) ends within about a minute, with its locks.
const KEEPALIVES: SessionSettings = &[
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
];

/// `settings`, and the TCP keepalives if asked, as startup options of a direct connection.
fn direct_options(
    options: PgConnectOptions,
    settings: &[SessionSettings],
    keepalives: bool,
) -> PgConnectOptions {
    let keepalives: &[SessionSettings] = if keepalives { &[KEEPALIVES] } else { &[] };
    settings
        .iter()
        .chain(keepalives)
        .fold(options, |options, s| options.options(s.iter().copied()))
}

/// Directly connected options with the engine's settings, for benchmarks that build their
/// own pools: they measure what production runs.
pub fn async_commit_options(options: PgConnectOptions) -> PgConnectOptions {
    direct_options(options, ENGINE_SESSION, true)
}

/// Directly connected options with the handlers' settings (see [`async_commit_options`]).
pub fn handler_options(options: PgConnectOptions) -> PgConnectOptions {
    direct_options(options, HANDLER_SESSION, true)
}

/// Parses `30s`, `5m`, `7d`, `2h`, `250ms` or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m, 7d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("7 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn target_hides_the_password() {
        let db = DatabaseSettings::new(Secret::new("postgres://u:hunter2@db.example:6543/poda"), 1);
        assert_eq!(db.target(), "db.example:6543/poda");
    }
}
