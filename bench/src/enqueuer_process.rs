//! An `enqueuer` process of the build under test, for scenarios that measure it as it runs in
//! production: a process of its own, beside the workers', not a task sharing their runtime.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// How long the enqueuer may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct EnqueuerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
}

impl EnqueuerProcess {
    /// Starts `bin` on `database_url` with `settings` (its environment variables, e.g.
    /// `MONIME_WEBHOOK_SECRETS`) on a free local port, and waits until `/readyz` answers 200.
    pub async fn start(
        bin: &Path,
        database_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<EnqueuerProcess> {
        let addr = free_local_port()?;
        let mut command = Command::new(bin);
        command
            .env("DATABASE_URL", database_url)
            .env("ENQUEUER_ADDR", addr.to_string())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in settings {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut enqueuer = EnqueuerProcess {
            child,
            base_url: format!("http://{addr}"),
        };
        enqueuer.wait_ready().await?;
        Ok(enqueuer)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.base_url);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the enqueuer exited with {status} before it was ready");
            }
            let answer = client.get(&url).send().await;
            if matches!(&answer, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the enqueuer did not answer {url} within {READY_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERMs the enqueuer and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the enqueuer did not exit within 60 s of SIGTERM")??;
        if !status.success() {
            bail!("the enqueuer exited with {status}");
        }
        Ok(())
    }
}

/// A local port free at the time of asking (the enqueuer binds it a moment later).
fn free_local_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}
