//! `PgBouncer`: a PgBouncer of one test's (or benchmark's) own in transaction pooling mode,
//! in front of the server a URL names, on a free loopback port; stopped when dropped.
//!
//! The program is `$PGBOUNCER`, else `pgbouncer` on the `PATH`, else Debian's
//! `/usr/sbin/pgbouncer`. It refuses to run as root: as uid 0 it is told to switch to the
//! `postgres` OS user (`-u`), in a directory handed to that user.

use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::process::{Child, Command};

use super::cluster::{free_port, make_root};

/// How long PgBouncer has to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running PgBouncer; killed, and its directory removed, when dropped.
pub struct PgBouncer {
    child: Child,
    root: PathBuf,
    port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode in front of the server of `server_url` (any
    /// database on it), with at most `pool_size` server connections per database and user.
    /// Panics, with its log, if it does not answer.
    pub async fn start(server_url: &str, pool_size: u32) -> PgBouncer {
        let server = PgConnectOptions::from_str(server_url).expect("a Postgres URL");
        let (root, run_as) = make_root();
        let port = free_port();
        let user = server.get_username().to_owned();
        let users = root.join("users.txt");
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).expect("write users.txt");
        let config = root.join("pgbouncer.ini");
        let log = root.join("pgbouncer.log");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 * = host={host} port={server_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 max_client_conn = 2000\n\
                 default_pool_size = {pool_size}\n\
                 logfile = {log}\n",
                host = server.get_host(),
                server_port = server.get_port(),
                users = users.display(),
                log = log.display(),
            ),
        )
        .expect("write pgbouncer.ini");
        let mut command = Command::new(program());
        if let Some(user) = run_as {
            command.args(["-u", user]);
        }
        let child = command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start pgbouncer (install it: apt-get install pgbouncer)");
        let bouncer = PgBouncer { child, root, port };
        bouncer.wait_ready(server).await;
        bouncer
    }

    /// `url` (a server's URL, as handed to this PgBouncer) routed through it: same user and
    /// database, this PgBouncer's address.
    pub fn route(&self, url: &str) -> String {
        let options = PgConnectOptions::from_str(url).expect("a Postgres URL");
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            options.get_username(),
            self.port,
            options.get_database().unwrap_or("postgres")
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("pgbouncer.log")).unwrap_or_default()
    }

    async fn wait_ready(&self, server: PgConnectOptions) {
        let options = server
            .host("127.0.0.1")
            .port(self.port)
            .extra_float_digits(None)
            .disable_statement_logging();
        let started = Instant::now();
        loop {
            let answered = async {
                let mut conn = options.connect().await?;
                conn.execute("SELECT 1").await?;
                conn.close().await
            }
            .await;
            match answered {
                Ok(()) => return,
                Err(error) if started.elapsed() > READY_TIMEOUT => panic!(
                    "pgbouncer on port {} did not answer within {READY_TIMEOUT:?}: {error}\n{}",
                    self.port,
                    self.log()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn program() -> PathBuf {
    if let Some(path) = std::env::var_os("PGBOUNCER") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    let on_path = std::process::Command::new("pgbouncer")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !on_path && debian.is_file() {
        debian
    } else {
        PathBuf::from("pgbouncer")
    }
}
