//! Scratch databases for benchmark runs: each run gets a fresh `bench_poda_<scenario>_<uuid>`
//! database on the server, dropped afterwards whatever the run did.

use std::future::Future;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// Creates a scratch database on the server of `server_url` (its database part is ignored),
/// runs `run` with the options to connect to it and the database's name, and drops it.
pub async fn with_scratch_database<T, F, Fut>(
    server_url: &str,
    scenario: &str,
    run: F,
) -> anyhow::Result<T>
where
    F: FnOnce(PgConnectOptions, String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let server: PgConnectOptions = server_url
        .parse()
        .context("parsing the Postgres server URL")?;
    let server = server.database("postgres").disable_statement_logging();
    let name = format!("bench_poda_{scenario}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&server)
        .await
        .context("connecting to Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    let outcome = run(server.clone().database(&name), name.clone()).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .with_context(|| format!("dropping database {name}"))?;
    admin.close().await.ok();
    outcome
}
