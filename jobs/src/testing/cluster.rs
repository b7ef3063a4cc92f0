//! `PrivateCluster`: a PostgreSQL server of one test's own, for tests that stop, restart or
//! cut off the server. The shared test server (`TestDb`) is never stopped; such tests run
//! against a cluster made for them with `initdb` in a fresh directory under the cargo target
//! directory, listening only on 127.0.0.1, and removed when the `PrivateCluster` is dropped.
//!
//! The binaries come from `$PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian). initdb and the server refuse to run as root: when
//! the tests run as uid 0, every PostgreSQL program runs as the `postgres` OS user (through
//! `runuser`, or `setpriv` where there is no `runuser`), in a directory owned by that user.
//!
//! The port is one nobody listened on a moment ago; another test can take it before the
//! server binds it, so a start that fails because the address is in use is retried on
//! another port.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::{Connection, PgConnection};
use tokio::process::Command;

/// Settings appended to the cluster's `postgresql.conf`: TCP on loopback only (no Unix
/// socket, so nothing is shared with other servers through a socket directory), and no
/// durability, which a throwaway cluster does not need.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 50
";

/// Starts that fail because another process took the port, before giving up.
const PORT_ATTEMPTS: usize = 10;

const PG_CTL_TIMEOUT_S: &str = "60";

/// A running (or stopped) private PostgreSQL cluster; stopped and deleted when dropped.
pub struct PrivateCluster {
    bindir: PathBuf,
    /// Everything of this cluster: `data/` and `server.log`. Removed on drop.
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// The OS user PostgreSQL runs as when this process is root.
    run_as: Option<&'static str>,
    running: bool,
}

impl PrivateCluster {
    /// Creates a cluster in a fresh directory and starts it on a free loopback port.
    /// Panics (with the server's log) if that fails.
    pub async fn start() -> PrivateCluster {
        Self::start_with("").await
    }

    /// [`PrivateCluster::start`] with `settings` (postgresql.conf lines) added to the
    /// cluster's own.
    pub async fn start_with(settings: &str) -> PrivateCluster {
        let bindir = bindir();
        let (root, run_as) = make_root();
        let mut cluster = PrivateCluster {
            data: root.join("data"),
            log: root.join("server.log"),
            root,
            bindir,
            port: 0,
            run_as,
            running: false,
        };
        cluster.initdb(settings).await;
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            cluster.port = free_port();
            match cluster.pg_ctl_start().await {
                Ok(()) => {
                    cluster.running = true;
                    return cluster;
                }
                Err(failure) if failure.port_in_use => last_failure = failure.text,
                Err(failure) => panic!("starting the private cluster failed:\n{}", failure.text),
            }
        }
        panic!(
            "starting the private cluster failed: {PORT_ATTEMPTS} ports were taken by others; \
             last:\n{last_failure}"
        );
    }

    /// Stops the server with a fast shutdown (sessions are ended, data is kept). Queries
    /// and connections fail until [`PrivateCluster::start_again`].
    pub async fn stop(&mut self) {
        self.pg_ctl_stop("fast").await;
    }

    /// Crashes the server (an immediate shutdown: no checkpoint, sessions cut): what was
    /// committed durably survives in the WAL; an asynchronous commit whose WAL was not
    /// written yet is lost. Start it again with [`PrivateCluster::start_again`].
    pub async fn crash(&mut self) {
        self.pg_ctl_stop("immediate").await;
    }

    async fn pg_ctl_stop(&mut self, mode: &str) {
        assert!(self.running, "the private cluster is not running");
        let output = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT_S])
            .output()
            .await
            .expect("run pg_ctl stop");
        assert!(
            output.status.success(),
            "pg_ctl stop -m {mode} failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_since(0)
        );
        self.running = false;
    }

    /// Starts the stopped server again, on the same port and data (URLs handed out stay
    /// valid). Panics if that fails, also if another process took the port meanwhile.
    pub async fn start_again(&mut self) {
        assert!(!self.running, "the private cluster is already running");
        if let Err(failure) = self.pg_ctl_start().await {
            panic!(
                "starting the private cluster again on port {} failed:\n{}",
                self.port, failure.text
            );
        }
        self.running = true;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (what the server reports as `data_directory`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The `postgres` database, as superuser `postgres`.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Database `db`, as superuser `postgres` (trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut admin = PgConnection::connect(&self.admin_url())
            .await
            .expect("connect to the private cluster");
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .expect("create a database in the private cluster");
        admin.close().await.ok();
        self.url(name)
    }

    /// Keeps the cluster running for the rest of this process and returns its admin URL. For
    /// a server shared by every test of a process, which no `Drop` would stop: statics are
    /// never dropped.
    pub fn keep_until_process_exits(self) -> String {
        self.keep_until_exit_of(std::process::id())
    }

    /// Keeps the cluster running until process `pid` has exited and returns its admin URL: a
    /// watchdog (`sh`, in a process group of its own so a Ctrl-C of the caller does not kill
    /// it first) then stops the server and deletes its directory.
    pub fn keep_until_exit_of(self, pid: u32) -> String {
        use std::os::unix::process::CommandExt;
        let stop = self.std_command("pg_ctl");
        let mut argv = vec![stop.get_program().to_owned()];
        argv.extend(stop.get_args().map(ToOwned::to_owned));
        let spawned = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                r#"pid=$1; root=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" stop -D "$root/data" -m immediate -w >/dev/null 2>&1
rm -rf "$root""#,
            )
            .arg("sh")
            .arg(pid.to_string())
            .arg(&self.root)
            .args(argv)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if let Err(error) = spawned {
            panic!("could not start the watchdog of the private cluster: {error}");
        }
        let url = self.admin_url();
        // The watchdog owns the server from here on.
        std::mem::forget(self);
        url
    }

    /// A PostgreSQL program, run as the `postgres` OS user when this process is root.
    fn std_command(&self, program: &str) -> std::process::Command {
        let path = self.bindir.join(program);
        let mut command = match self.run_as {
            None => std::process::Command::new(path),
            Some(user) => {
                let mut command = std::process::Command::new(switch_user_program());
                command.args(switch_user_args(user)).arg(path);
                command
            }
        };
        // The caller's directory may be closed to the postgres user.
        command
            .current_dir(&self.root)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null());
        command
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::from(self.std_command(program));
        command.kill_on_drop(true);
        command
    }

    async fn initdb(&self, settings: &str) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .await
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(SETTINGS);
        text.push_str(settings);
        text.push('\n');
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }

    /// `pg_ctl start` on `self.port`, waiting until the server accepts connections.
    async fn pg_ctl_start(&self) -> Result<(), StartFailure> {
        let log_offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let output = self
            .command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", PG_CTL_TIMEOUT_S, "-o"])
            .arg(format!("-p {}", self.port))
            .output()
            .await
            .expect("run pg_ctl start");
        if output.status.success() {
            return Ok(());
        }
        let log = self.log_since(log_offset);
        Err(StartFailure {
            port_in_use: log.contains("Address already in use"),
            text: format!(
                "pg_ctl start on port {}: {}{}\nserver log:\n{log}",
                self.port,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }

    /// The server log from byte `offset` on.
    fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

struct StartFailure {
    port_in_use: bool,
    text: String,
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Also after a failed start: pg_ctl may have given up on a server that came up later.
        if self.running || self.data.join("postmaster.pid").exists() {
            // Drop cannot await: the same command, blocking. An immediate shutdown is enough
            // for data that is deleted next.
            let stopped = self
                .std_command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", PG_CTL_TIMEOUT_S])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                kill_postmaster(&self.data);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Last resort when `pg_ctl stop` failed: SIGKILL to the postmaster named in its pid file.
fn kill_postmaster(data: &Path) {
    let Ok(pid_file) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    if let Some(pid) = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Where the PostgreSQL programs are.
fn bindir() -> PathBuf {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        assert!(
            has_initdb(&dir),
            "PG_BINDIR={dir:?} has no initdb and pg_ctl"
        );
        return dir;
    }
    if let Ok(output) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return dir;
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let dir = entry.path().join("bin");
            has_initdb(&dir).then_some((version, dir))
        })
        .collect();
    debian.sort();
    debian.pop().map(|(_, dir)| dir).expect(
        "no PostgreSQL server programs (initdb, pg_ctl): set PG_BINDIR or put pg_config on PATH",
    )
}

/// Creates this cluster's directory and says which OS user runs PostgreSQL in it (`None`:
/// this process's user). Under the cargo target directory, unless the postgres user cannot
/// reach it (a target directory inside root's home): then under the system temp directory.
pub(crate) fn make_root() -> (PathBuf, Option<&'static str>) {
    let name = format!("poda-pg-{}", uuid::Uuid::new_v4().simple());
    let base = target_tmp_dir();
    std::fs::create_dir_all(&base).expect("create the directory for private clusters");
    let root = base.join(&name);
    std::fs::create_dir(&root).expect("create the private cluster's directory");
    let uid = std::fs::metadata(&root)
        .expect("read the private cluster's directory")
        .uid();
    if uid != 0 {
        return (root, None);
    }
    const USER: &str = "postgres";
    if hand_over(&root, USER) {
        return (root, Some(USER));
    }
    let _ = std::fs::remove_dir(&root);
    let root = std::env::temp_dir().join(&name);
    std::fs::create_dir(&root).expect("create the private cluster's directory");
    assert!(
        hand_over(&root, USER),
        "running as root, but the {USER} OS user cannot use {root:?}"
    );
    (root, Some(USER))
}

/// Gives `dir` to `user` and checks that `user` can write in it.
fn hand_over(dir: &Path, user: &str) -> bool {
    let chowned = std::process::Command::new("chown")
        .arg(format!("{user}:"))
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    chowned
        && std::process::Command::new(switch_user_program())
            .args(switch_user_args(user))
            .arg("test")
            .arg("-w")
            .arg(dir)
            .arg("-a")
            .arg("-x")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `$CARGO_TARGET_TMPDIR` if set, else `tmp/` of the target directory holding this test
/// executable (`<target>/<profile>/deps/<test>`), else the system temp directory.
fn target_tmp_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_TMPDIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().ok();
    let profile_dir = exe.as_deref().and_then(Path::parent).map(|dir| {
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        }
    });
    match profile_dir.and_then(Path::parent) {
        Some(target) => target.join("tmp"),
        None => std::env::temp_dir(),
    }
}

/// `runuser` (util-linux), else `setpriv`.
fn switch_user_program() -> &'static str {
    static PROGRAM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        let found = |name: &str| {
            std::process::Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if found("runuser") {
            "runuser"
        } else {
            "setpriv"
        }
    })
}

fn switch_user_args(user: &str) -> Vec<String> {
    if switch_user_program() == "runuser" {
        vec!["-u".into(), user.into(), "--".into()]
    } else {
        vec![
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".into(),
            "--".into(),
        ]
    }
}

/// A loopback port nobody listened on a moment ago (the caller retries if it is taken),
/// below Linux's ephemeral range (32768 and up by default): a port the kernel hands out to
/// outgoing connections could be taken by one while a stopped server waits to start again.
pub fn free_port() -> u16 {
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    for _ in 0..1_000 {
        let port = LOW + (uuid::Uuid::new_v4().as_u128() % u128::from(HIGH - LOW)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {HIGH}");
}
