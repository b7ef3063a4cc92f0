//! Starting the real `worker` binary, and running its subcommands.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use sqlx::PgPool;

use super::process::base_command;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `worker <args>` on `url` to completion.
pub fn worker_command(url: &str, args: &[&str]) -> Output {
    base_command(url, args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the worker binary")
}

/// A worker process, stopped with SIGTERM (and waited for) when dropped.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn start(url: &str, args: &[&str]) -> WorkerProcess {
        let child = base_command(url, args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the worker binary");
        WorkerProcess { child }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}
