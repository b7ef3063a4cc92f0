//! The real `worker` binary as a child process.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub struct WorkerProcess {
    pub child: Child,
}

/// Starts `worker` on `database_url` with `args`; killed when dropped.
pub fn spawn_worker(database_url: &str, args: &[&str]) -> WorkerProcess {
    spawn_worker_with(worker_command(database_url, args))
}

/// Starts a prepared `worker` command (extra environment, say); killed when dropped. Its
/// logs reach the test output with `TEST_LOG` set.
pub fn spawn_worker_with(mut command: Command) -> WorkerProcess {
    let child = command
        .stdout(Stdio::null())
        .stderr(if std::env::var("TEST_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker binary");
    WorkerProcess { child }
}

/// Starts the worker `make()` prepares (with `--metrics-addr` added) and returns it with the
/// address of its metrics endpoint once it serves it; killed when dropped.
///
/// The worker binds the address it is given and cannot report a port the system chose, so
/// the port is one that was free a moment ago. Another process can take it before the
/// worker binds it: then the worker exits saying the address is in use, and is started
/// again on another port.
pub async fn spawn_worker_serving_metrics(
    make: impl Fn() -> Command,
) -> (WorkerProcess, SocketAddr) {
    const ATTEMPTS: usize = 10;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut command = make();
        command
            .arg("--metrics-addr")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start the worker binary");
        let serving = watch_stderr(&mut child, "serving metrics");
        match tokio::time::timeout(Duration::from_secs(30), serving).await {
            Ok(Ok(())) => return (WorkerProcess { child }, addr),
            Ok(Err(stderr)) if stderr.contains("Address already in use") => {
                let _ = child.wait().await;
                last = stderr;
            }
            Ok(Err(stderr)) => panic!("the worker exited before serving metrics:\n{stderr}"),
            Err(_) => panic!("the worker did not serve metrics on {addr} within 30 s"),
        }
    }
    panic!("the metrics port was taken {ATTEMPTS} times; last:\n{last}");
}

/// Reads `child`'s stderr to its end (forwarded to the test output with `TEST_LOG` set);
/// resolves when a line contains `ready`, or fails with what was read if it ends first.
fn watch_stderr(
    child: &mut Child,
    ready: &'static str,
) -> impl std::future::Future<Output = Result<(), String>> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tell, told) = oneshot::channel();
    let forward = std::env::var("TEST_LOG").is_ok();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tell = Some(tell);
        let mut seen = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if forward {
                eprintln!("{line}");
            }
            if tell.is_some() {
                if line.contains(ready) {
                    let _ = tell.take().unwrap().send(Ok(()));
                } else {
                    seen.push_str(&line);
                    seen.push('\n');
                }
            }
        }
        if let Some(tell) = tell {
            let _ = tell.send(Err(seen));
        }
    });
    async move {
        told.await
            .unwrap_or_else(|_| Err("stderr reader stopped".into()))
    }
}

/// A loopback port nobody listened on a moment ago (see [`spawn_worker_serving_metrics`]).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free loopback port")
        .port()
}

/// The `worker` binary on `database_url` with `args`. Its pools are sized for a server that
/// parallel tests share (flags in `args` override these).
pub fn base_command(database_url: &str, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_worker"));
    command
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info,sqlx=warn")
        .env("WORKER_HANDLER_CONNECTIONS", "4")
        .env("WORKER_ENGINE_CONNECTIONS", "6")
        .env_remove("WORKER_QUEUES");
    command
}

/// `url` with `application_name` set, so a process's sessions can be told apart in
/// `pg_stat_activity`.
pub fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

pub fn worker_command(database_url: &str, args: &[&str]) -> Command {
    Command::from(base_command(database_url, args))
}

/// Runs `worker <args>` to the end; returns (success, stdout, stderr).
pub async fn run_worker_command(database_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = worker_command(database_url, args)
        .output()
        .await
        .expect("run the worker binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl WorkerProcess {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("the worker is running") as i32)
    }

    pub fn sigterm(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("send SIGTERM");
    }

    pub fn sigkill(&self) {
        kill(self.pid(), Signal::SIGKILL).expect("send SIGKILL");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("the worker exits in time")
            .expect("wait for the worker")
    }
}
