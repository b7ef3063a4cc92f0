//! SIGINT/SIGTERM as cancellation tokens.

use tokio_util::sync::CancellationToken;

/// How a process is told to stop: `graceful` at the first signal (finish what runs, within
/// the grace), `immediate` at the second (release what can be released and exit now).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub graceful: CancellationToken,
    pub immediate: CancellationToken,
}

/// A token alone asks for a graceful stop only.
impl From<CancellationToken> for Shutdown {
    fn from(graceful: CancellationToken) -> Self {
        Shutdown {
            graceful,
            immediate: CancellationToken::new(),
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM, for processes with one way to stop
/// (the enqueuer drains its requests whatever follows).
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        Signals::new().next().await;
        tracing::info!("shutdown signal received");
        cancel.cancel();
    });
    token
}

/// Tokens cancelled on the first and on the second SIGINT or SIGTERM.
pub fn on_signals() -> Shutdown {
    let shutdown = Shutdown::default();
    let tokens = shutdown.clone();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        signals.next().await;
        tracing::info!("shutdown signal received; a second one stops at once");
        tokens.graceful.cancel();
        signals.next().await;
        tracing::warn!("second shutdown signal received; stopping now");
        tokens.immediate.cancel();
    });
    shutdown
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
