//! An `enqueuer` process of the build under test, for scenarios that measure it as it runs in
//! production: a process of its own, beside the workers', not a task sharing their runtime.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use poda_jobs::testing::free_port;
use tokio::process::{Child, Command};

use crate::{child_log_filter, exit_of, sigterm};

/// How long the enqueuer may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct EnqueuerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
}

impl EnqueuerProcess {
    /// Starts `bin` on `database_url` with `settings` (its environment variables, e.g.
    /// `MONIME_WEBHOOK_SECRETS`) on a free loopback port, and waits until `/readyz` answers
    /// 200.
    pub async fn start(
        bin: &Path,
        database_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<EnqueuerProcess> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut command = Command::new(bin);
        command
            .env("DATABASE_URL", database_url)
            .env("ENQUEUER_ADDR", addr.to_string())
            .env("RUST_LOG", child_log_filter())
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
        sigterm(&self.child);
        exit_of(&mut self.child, "the enqueuer").await
    }
}
