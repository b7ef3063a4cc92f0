//! The real `worker` binary as a child process.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// Starts a prepared `worker` command whose logs (stderr) the test reads with
/// [`WorkerLogs::wait_for`]; killed when dropped. With `TEST_LOG` set they are echoed too.
pub fn spawn_worker_logging(mut command: Command) -> (WorkerProcess, WorkerLogs) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker binary");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    let echo = std::env::var("TEST_LOG").is_ok();
    // Read to the end, so the worker never blocks on a full pipe.
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if echo {
                eprintln!("{line}");
            }
            let _ = lines_tx.send(line);
        }
    });
    (WorkerProcess { child }, WorkerLogs { lines })
}

/// The log lines of a worker started by [`spawn_worker_logging`].
pub struct WorkerLogs {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl WorkerLogs {
    /// Waits for a line that contains `text`; panics after `timeout` or when the worker's
    /// logs end first.
    pub async fn wait_for(&mut self, text: &str, timeout: Duration) {
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(text) {
                    return true;
                }
            }
            false
        })
        .await;
        match found {
            Ok(true) => {}
            Ok(false) => panic!("the worker's logs ended without {text:?}"),
            Err(_) => panic!("the worker did not log {text:?} within {timeout:?}"),
        }
    }
}

/// Starts the worker `make()` prepares, serving its metrics and health endpoint on a port it
/// picks itself (`--metrics-addr 127.0.0.1:0`), and returns it with that address once it is
/// ready (`--announce-ready` prints `metrics ADDR`, then `ready`); killed when dropped.
pub async fn spawn_worker_serving_metrics(
    make: impl Fn() -> Command,
) -> (WorkerProcess, SocketAddr) {
    let mut command = make();
    command
        .args(["--metrics-addr", "127.0.0.1:0", "--announce-ready"])
        .stdout(Stdio::piped())
        .stderr(if std::env::var("TEST_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the worker binary");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let announced = tokio::time::timeout(Duration::from_secs(30), async {
        let mut addr = None;
        while let Some(line) = lines.next_line().await.expect("read the worker's stdout") {
            if let Some(text) = line.strip_prefix("metrics ") {
                addr = Some(text.parse::<SocketAddr>().expect("an address"));
            }
            if line == "ready" {
                return addr;
            }
        }
        panic!("the worker exited before it was ready");
    })
    .await
    .expect("the worker is ready within 30 s");
    let addr = announced.expect("the worker announces its endpoint's address");
    (WorkerProcess { child }, addr)
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
        // Built-in schedules fire on the wall clock (every 15 minutes, every hour), which a
        // test must not depend on; the tests of schedules turn them on.
        .env("SCHEDULE_CONTRIBUTION_DEADLINES", "off")
        .env("SCHEDULE_RECONCILE_TRANSFERS", "off")
        .env_remove("WORKER_QUEUES")
        .env_remove("WORKER_CPU_POLICY")
        .env_remove("DATABASE_POOLER")
        .env_remove("DATABASE_LISTEN_URL");
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
    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.child.id().expect("the worker is running")
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("the worker is running") as i32)
    }

    pub fn sigterm(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("send SIGTERM");
    }

    pub fn sigkill(&self) {
        kill(self.pid(), Signal::SIGKILL).expect("send SIGKILL");
    }

    /// Pauses the process (SIGSTOP) until [`WorkerProcess::resume`].
    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("send SIGSTOP");
    }

    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("send SIGCONT");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("the worker exits in time")
            .expect("wait for the worker")
    }
}
