//! Logging: `RUST_LOG` picks what, `LOG_FORMAT` picks how (pretty for people, JSON for
//! machines). Logs go to stderr so stdout stays for command output.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The engine logs every failed run once, with its job fields and whether it will retry;
/// apalis' trace layer would log the same failure again at ERROR, so its failure line is off.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,apalis::layers::tracing::on_failure=off";

/// For the demo, whose planned failures are part of the show: only real errors.
pub const QUIET_FILTER: &str = "error,apalis=off,poda_jobs::engine::ack=off";

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    init_with_writer(format, std::io::stderr, DEFAULT_FILTER);
}

/// As [`init`], with `default_filter` when RUST_LOG is not set.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    init_with_writer(format, std::io::stderr, default_filter);
}

pub fn init_with_writer<W>(format: LogFormat, writer: W, default_filter: &str)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
