//! The Monime sandbox: a real HTTP server (axum) that implements
//! `POST/GET /v1/internal-transfers` with Monime's idempotency rules, asynchronous completion,
//! configurable latency and injected faults, and reports at `GET /_sandbox/executions` how many
//! transfers it executed per idempotency key, so tests can prove exactly-once.
//!
//! Tests, the benchmarks and the demo start it in-process with [`Sandbox::spawn`]; [`serve`]
//! runs it standalone. It listens on loopback addresses only.

pub mod faults;
pub mod transfers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultConfig, FaultKind};
use transfers::Store;

use crate::http::listen::listen;

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Added before every answer.
    pub latency: Duration,
    /// A transfer is pending, then processing, and final after this long.
    pub completion_delay: Duration,
    pub faults: FaultConfig,
    /// The accepted API token; `None` accepts any non-empty bearer token.
    pub token: Option<String>,
    /// Transfers to make room for at start. A store that grows past its room doubles it under
    /// its lock, and at a million transfers that stalls every call for seconds: a run that
    /// knows its size asks for it.
    pub capacity: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            latency: Duration::ZERO,
            completion_delay: Duration::from_millis(100),
            faults: FaultConfig::default(),
            token: None,
            capacity: 0,
        }
    }
}

/// What may change while the sandbox runs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub latency: Duration,
    pub completion_delay: Duration,
    pub faults: FaultConfig,
    /// Added to the answer of a create whose source is this financial account (a slow
    /// company), on top of `latency`.
    pub account_latency: std::collections::HashMap<String, Duration>,
    /// Every request answers 503 (nothing executed).
    pub outage: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub creates: AtomicU64,
    pub reads: AtomicU64,
    pub executions: AtomicU64,
    pub faults: AtomicU64,
}

pub struct SandboxState {
    settings: Mutex<Settings>,
    token: Option<String>,
    pub(crate) store: Mutex<Store>,
    pub(crate) counters: Counters,
}

impl SandboxState {
    fn new(config: SandboxConfig) -> Self {
        SandboxState {
            settings: Mutex::new(Settings {
                latency: config.latency,
                completion_delay: config.completion_delay,
                faults: config.faults,
                account_latency: Default::default(),
                outage: false,
            }),
            token: config.token,
            store: Mutex::new(Store::with_capacity(config.capacity)),
            counters: Counters::default(),
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Settings)) {
        change(&mut self.settings.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    /// `http://127.0.0.1:<port>`: the `MONIME_API_URL` to give the workers.
    pub base_url: String,
    pub addr: SocketAddr,
    /// Reads the counts and changes the behaviour while it runs.
    pub counts: SandboxHandle,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Counts and runtime switches of a sandbox. Cheap to clone.
#[derive(Clone)]
pub struct SandboxHandle {
    state: Arc<SandboxState>,
}

impl Sandbox {
    /// Starts the sandbox on a random loopback port.
    pub async fn spawn(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let listener = listen(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))
            .context("binding the sandbox to a loopback port")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SandboxState::new(config));
        let stop = CancellationToken::new();
        let app = transfers::router().with_state(state.clone());
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the sandbox stopped");
            }
        });
        Ok(Sandbox {
            base_url: format!("http://{addr}"),
            addr,
            counts: SandboxHandle { state },
            stop,
            task: Some(task),
        })
    }

    /// Stops the server and waits for it (open slow requests are cut off).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs the sandbox on `addr` (a loopback address) until SIGINT or SIGTERM.
pub async fn serve(addr: SocketAddr, config: SandboxConfig) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("the sandbox listens on loopback addresses only, not {addr}");
    }
    let listener = listen(addr).with_context(|| format!("binding the sandbox to {addr}"))?;
    let state = Arc::new(SandboxState::new(config));
    let app = transfers::router().with_state(state);
    let stop = crate::shutdown::on_signal();
    tracing::info!(%addr, "Monime sandbox listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("serving the sandbox")
}

impl SandboxHandle {
    /// Transfers executed per idempotency key (each executed key counts 1: a key never
    /// executes twice, so more transfers than tickets means a key was not stable).
    pub fn executions(&self) -> BTreeMap<String, u64> {
        let store = self.store();
        store.by_key.keys().map(|k| (k.clone(), 1)).collect()
    }

    /// Transfers executed in all.
    pub fn total_executions(&self) -> u64 {
        self.state.counters.executions.load(Ordering::Relaxed)
    }

    /// Create requests received (including refused and faulted ones).
    pub fn create_requests(&self) -> u64 {
        self.state.counters.creates.load(Ordering::Relaxed)
    }

    /// Create requests received for one key.
    pub fn create_requests_for(&self, key: &str) -> u32 {
        self.store().creates_per_key.get(key).copied().unwrap_or(0)
    }

    pub fn read_requests(&self) -> u64 {
        self.state.counters.reads.load(Ordering::Relaxed)
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.state.counters.faults.load(Ordering::Relaxed)
    }

    /// When each transfer was executed, in order.
    pub fn execution_times(&self) -> Vec<Instant> {
        self.store().executed_at.clone()
    }

    /// Monime's transfer id for a key, if it executed.
    pub fn transfer_id(&self, key: &str) -> Option<String> {
        self.store().by_key.get(key).map(|t| t.id.clone())
    }

    /// Every request answers 503 while on.
    pub fn set_outage(&self, on: bool) {
        self.state.update(|s| s.outage = on);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state.update(|s| s.latency = latency);
    }

    /// Answers creates from `account` (the source financial account) `extra` later than the
    /// others: one slow company beside fast ones.
    pub fn set_account_latency(&self, account: &str, extra: Duration) {
        self.state.update(|s| {
            s.account_latency.insert(account.to_owned(), extra);
        });
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        self.state.update(|s| s.faults = faults);
    }

    /// Makes the transfer of `key` report `status` from now on (to plant a disagreement).
    pub fn force_status(&self, key: &str, status: &'static str) -> bool {
        let mut store = self.store();
        match store.by_key.get_mut(key) {
            Some(t) => {
                t.forced_status = Some(status);
                true
            }
            None => false,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}
