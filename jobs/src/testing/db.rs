//! `TestDb`: every test gets its own database, cloned from a template that is migrated once
//! per migration set (`CREATE DATABASE … TEMPLATE` takes milliseconds; migrating takes
//! longer). Tests in different processes share the template; an advisory lock serialises its
//! creation, and nobody stays connected to it. The clone is dropped `WITH (FORCE)` when the
//! `TestDb` is dropped, even after a panic.

use std::hash::{Hash, Hasher};

use crate::db::Db;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::engine::migrate::MIGRATOR;

/// The local server a machine set up for development runs (its `postgres` database).
pub const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server tests use, chosen once per test process by [`choose_server`] from
/// `POSTGRES_ADMIN_URL` or `DATABASE_URL` (the database part ignored), with
/// `PODA_PRIVATE_DB=1` forcing a private cluster.
pub fn admin_url() -> String {
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| {
            let given = std::env::var("POSTGRES_ADMIN_URL")
                .or_else(|_| std::env::var("DATABASE_URL"))
                .ok();
            let forced = std::env::var("PODA_PRIVATE_DB").is_ok_and(|v| v == "1" || v == "true");
            // Tests call this from inside their own runtime; the choice gets a runtime of its
            // own on a thread of its own.
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime to choose the test server")
                    .block_on(choose_server(given, forced))
            })
            .join()
            .expect("choosing the test server")
            .url
        })
        .clone()
}

/// A server chosen by [`choose_server`].
#[derive(Debug, Clone)]
pub struct ChosenServer {
    /// A URL on the server (its `postgres` database for the local or a private server).
    pub url: String,
    /// A private cluster of this process's own, stopped and removed once the process exits.
    pub private: bool,
}

/// Where the tests and the demo run:
/// - `given` (a `POSTGRES_ADMIN_URL` or `DATABASE_URL`), when set: that server and no other,
///   so a wrong URL fails rather than running somewhere else;
/// - else the local server (`postgres@127.0.0.1:5432`, trust auth) when it lets us in;
/// - else, or when `force_private`, a private cluster (`initdb` under the target directory, a
///   free loopback port), kept until this process exits. It says why on stderr.
pub async fn choose_server(given: Option<String>, force_private: bool) -> ChosenServer {
    let why = match given {
        _ if force_private => "a private server was asked for",
        Some(url) => {
            return ChosenServer {
                url,
                private: false,
            }
        }
        None if can_log_in(LOCAL_SERVER).await => {
            return ChosenServer {
                url: LOCAL_SERVER.to_owned(),
                private: false,
            }
        }
        None => {
            "no POSTGRES_ADMIN_URL or DATABASE_URL, and the local server at 127.0.0.1:5432 \
             does not let user postgres in"
        }
    };
    eprintln!("{why}: starting a private PostgreSQL cluster, removed when this process exits");
    let url = super::cluster::PrivateCluster::start_with(SHARED_CLUSTER_SETTINGS)
        .await
        .keep_until_process_exits();
    ChosenServer { url, private: true }
}

/// Settings of a private cluster that stands in for a shared server: it serves every test of
/// a process at once (parallel tests, each with pools and worker processes), or the demo.
pub const SHARED_CLUSTER_SETTINGS: &str = "max_connections = 400\nshared_buffers = 128MB";

/// Whether `url` accepts a login within a few seconds.
pub async fn can_log_in(url: &str) -> bool {
    let Ok(options) = url.parse::<PgConnectOptions>() else {
        return false;
    };
    let options = options.disable_statement_logging();
    let attempt = PgConnection::connect_with(&options);
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(conn)) => {
            conn.close().await.ok();
            true
        }
        _ => false,
    }
}

fn admin_options() -> PgConnectOptions {
    let options: PgConnectOptions = admin_url()
        .parse()
        .expect("POSTGRES_ADMIN_URL is a valid URL");
    options.database("postgres").disable_statement_logging()
}

/// Fails a test that cannot reach its server, naming the server (never its password) and
/// what chooses it.
fn cannot_connect(error: sqlx::Error) -> ! {
    let options = admin_options();
    panic!(
        "could not connect to the test server at {}:{}: {error}. POSTGRES_ADMIN_URL or \
         DATABASE_URL, when set, names the server the tests use; unset, they use the local \
         server or a private cluster of their own",
        options.get_host(),
        options.get_port()
    )
}

fn template_name() -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for m in MIGRATOR.iter() {
        m.version.hash(&mut hasher);
        m.checksum.hash(&mut hasher);
    }
    format!("poda_test_template_{:016x}", hasher.finish())
}

pub struct TestDb {
    pub name: String,
    pub pool: Db,
    pub url: String,
}

impl TestDb {
    /// A fresh, migrated database.
    pub async fn new() -> TestDb {
        let template = ensure_template().await;
        let name = format!("poda_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&admin_options())
            .await
            .unwrap_or_else(|e| cannot_connect(e));
        let create = format!("CREATE DATABASE {name} TEMPLATE {template}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .expect("clone the template database");
        admin.close().await.ok();
        let options = admin_options().database(&name);
        let url = database_url(&name);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        TestDb {
            name,
            pool: pool.into(),
            url,
        }
    }
}

/// The URL of database `name` on the test server, for child processes.
fn database_url(name: &str) -> String {
    let base = admin_url();
    match base.rfind('/') {
        Some(slash) if base[..slash].contains("://") && slash > base.find("://").unwrap() + 2 => {
            let (prefix, rest) = base.split_at(slash);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{prefix}/{name}{query}")
        }
        _ => format!("{base}/{name}"),
    }
}

/// Any 64-bit constant: serialises template creation across test processes. Bound as a
/// parameter: underscores in numeric literals need PostgreSQL 16.
const TEMPLATE_LOCK_KEY: i64 = 7_426_100_001;

async fn ensure_template() -> String {
    let template = template_name();
    let mut admin = PgConnection::connect_with(&admin_options())
        .await
        .unwrap_or_else(|e| cannot_connect(e));
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .expect("take the template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut admin)
            .await
            .expect("look up the template");
    if !exists {
        let building = format!("{template}_building");
        let drop = format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
            .expect("drop a half-built template");
        let create = format!("CREATE DATABASE {building}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .expect("create the template");
        {
            let mut conn = PgConnection::connect_with(&admin_options().database(&building))
                .await
                .expect("connect to the template");
            MIGRATOR.run(&mut conn).await.expect("migrate the template");
            conn.close().await.ok();
        }
        let rename = format!("ALTER DATABASE {building} RENAME TO {template}");
        sqlx::query(sqlx::AssertSqlSafe(rename))
            .execute(&mut admin)
            .await
            .expect("publish the template");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .expect("release the template lock");
    admin.close().await.ok();
    template
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping runs outside any runtime guarantee; a short thread with its own runtime
        // does the cleanup whatever state the test's runtime is in. The pool is not closed
        // from there: its connections belong to the test's runtime, which is blocked in this
        // drop, so closing them could wait forever. DROP … WITH (FORCE) ends them server-side.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect_with(&admin_options()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
