use std::time::Duration;

use sqlx::Connection;

use poda_jobs::engine::{enqueue_many_pooled, enqueue_one_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::RetryPolicy;

use crate::support::count_state;
use crate::support::process::{run_worker_command, spawn_worker, worker_command};

#[tokio::test]
async fn worker_refuses_an_unmigrated_database_and_migrate_fixes_it() {
    let db = TestDb::new().await;
    // An empty database next to the test one.
    let empty = format!("{}_empty", db.name);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {empty}")))
        .execute(&db.pool)
        .await
        .unwrap();
    let url = db.url.replace(&db.name, &empty);
    let (ok, _, err) = run_worker_command(&url, &["stats"]).await;
    assert!(!ok);
    assert!(
        err.contains("not migrated") && err.contains("worker migrate"),
        "{err}"
    );
    // Two replicas migrating at once apply each migration once, both successfully.
    let (first, second) = tokio::join!(
        run_worker_command(&url, &["migrate"]),
        run_worker_command(&url, &["migrate"])
    );
    for (ok, out, err) in [first, second] {
        assert!(ok, "{err}");
        assert!(out.contains("migrations applied"));
    }
    let migrated = db
        .pool
        .pool()
        .connect_options()
        .as_ref()
        .clone()
        .database(&empty);
    let mut conn = sqlx::PgConnection::connect_with(&migrated).await.unwrap();
    let applied: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT version) FILTER (WHERE success) FROM _sqlx_migrations",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let embedded = poda_jobs::engine::migrate::MIGRATOR.iter().count() as i64;
    assert_eq!(applied, (embedded, embedded));
    conn.close().await.unwrap();
    let (ok, out, _) = run_worker_command(&url, &["stats"]).await;
    assert!(ok);
    assert!(
        out.contains("tickets") && out.contains("oldest_pending_age_s"),
        "{out}"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {empty} WITH (FORCE)"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn retry_and_cancel_act_on_one_job_with_clear_errors() {
    let db = TestDb::new().await;
    let failing = ProbeJob {
        permanent: true,
        ..ProbeJob::new(1)
    }
    .to_job(RetryPolicy::default());
    let ids = enqueue_many_pooled(&db.pool, &[failing]).await.unwrap();
    let id = ids[0].id.to_string();
    let mut worker = spawn_worker(&db.url, &[]);
    wait_until(
        "the job to fail",
        Duration::from_secs(20),
        || count_state(&db.pool, JobState::Failed),
        |n| *n == 1,
    )
    .await;
    worker.sigterm();
    worker.wait_exit(Duration::from_secs(20)).await;

    let (ok, out, _) = run_worker_command(&db.url, &["stats"]).await;
    assert!(ok);
    let probe_row = out
        .lines()
        .find(|l| l.contains("poda_probe"))
        .expect("the probe queue is listed");
    let cells: Vec<&str> = probe_row
        .split('┆')
        .map(|c| c.trim_matches(|ch: char| ch == '│' || ch.is_whitespace()))
        .collect();
    assert_eq!(cells[5], "1", "one failed job: {probe_row}");

    let (ok, out, err) = run_worker_command(&db.url, &["retry", &id]).await;
    assert!(ok, "{err}");
    assert!(out.contains("available again"));
    assert_eq!(count_state(&db.pool, JobState::Available).await, 1);

    let (ok, out, _) = run_worker_command(&db.url, &["cancel", &id]).await;
    assert!(ok);
    assert!(out.contains("cancelled"));
    assert_eq!(count_state(&db.pool, JobState::Cancelled).await, 1);

    let (ok, _, err) = run_worker_command(&db.url, &["cancel", &id]).await;
    assert!(!ok);
    assert!(err.contains("already finished"), "{err}");

    let (ok, _, err) = run_worker_command(&db.url, &["retry", "987654321"]).await;
    assert!(!ok);
    assert!(err.contains("job 987654321 does not exist"), "{err}");

    let (ok, _, err) = run_worker_command(&db.url, &["retry", "not-a-number"]).await;
    assert!(!ok);
    assert!(err.contains("invalid value"), "{err}");

    let done = enqueue_one_pooled(&db.pool, &ProbeJob::new(2).to_job(RetryPolicy::default()))
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = $1")
        .bind(done.id)
        .execute(&db.pool)
        .await
        .unwrap();
    let (ok, _, err) = run_worker_command(&db.url, &["retry", &done.id.to_string()]).await;
    assert!(!ok);
    assert!(err.contains("already completed"), "{err}");

    // The retry and the cancel that went through are recorded as the operating-system user
    // who ran them; the refused ones left nothing.
    let trail: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, action, subject_id FROM audit_events ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let actor = poda::ops::cli_actor().name();
    assert!(actor.starts_with("cli:") && actor.len() > 4, "{actor}");
    let expected = [("job.retried", &id), ("job.cancelled", &id)]
        .map(|(action, subject)| (actor.clone(), action.to_owned(), subject.to_owned()));
    assert_eq!(trail, expected);

    // The user comes from the environment the command runs in.
    let out = worker_command(&db.url, &["pause", "poda_probe"])
        .env("USER", "night-operator")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let last: (String, String, String) =
        sqlx::query_as("SELECT actor, action, subject_id FROM audit_log LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        last,
        (
            "cli:night-operator".to_owned(),
            "queue.paused".to_owned(),
            "poda_probe".to_owned()
        )
    );
}

/// `--help` shows where a setting comes from, never its value when that can hold a secret.
#[test]
fn help_never_prints_secrets_from_the_environment() {
    let secret = "s3cret-in-env";
    for binary in [env!("CARGO_BIN_EXE_worker"), env!("CARGO_BIN_EXE_enqueuer")] {
        let output = std::process::Command::new(binary)
            .arg("--help")
            .env(
                "DATABASE_URL",
                format!("postgres://poda:{secret}@db.example/poda"),
            )
            .env("ADMIN_TOKEN", secret)
            .env("MONIME_WEBHOOK_SECRETS", secret)
            .env("MONIME_API_TOKEN", secret)
            .env(
                "MONIME_API_URL",
                format!("https://user:{secret}@monime.example"),
            )
            .env(
                "NOTIFICATIONS_URL",
                format!("https://user:{secret}@hooks.example"),
            )
            .output()
            .expect("running --help");
        assert!(output.status.success(), "{binary} --help failed");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("DATABASE_URL"), "{binary} --help: {text}");
        assert!(
            !text.contains(secret),
            "{binary} --help printed a secret: {text}"
        );
    }
}

/// A handler's session cannot hang: its statements, lock waits and idle transactions are
/// bounded, and the server probes the connection.
#[tokio::test]
async fn handler_sessions_are_bounded() {
    let db = TestDb::new().await;
    let settings =
        poda::config::DatabaseSettings::new(poda::config::Secret::new(db.url.clone()), 1);
    let pool = settings.connect_handlers().await.unwrap();
    let shown: (String, String, String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), \
                current_setting('idle_in_transaction_session_timeout'), \
                current_setting('tcp_keepalives_idle')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        shown,
        ("1min".into(), "30s".into(), "1min".into(), "30".into())
    );
}

/// An engine connection comes warmed: the claim and the completion are prepared on it, and
/// warming claimed and wrote nothing.
#[tokio::test]
async fn engine_connections_come_with_the_claim_and_the_completion_prepared() {
    let db = TestDb::new().await;
    let job = poda_jobs::engine::NewJob::new("probe", "probe", serde_json::json!({ "n": 1 }));
    enqueue_one_pooled(&db.pool, &job).await.unwrap();
    let settings =
        poda::config::DatabaseSettings::new(poda::config::Secret::new(db.url.clone()), 1);
    let pool = settings.connect_async_commit().await.unwrap();
    let prepared: Vec<String> = sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements WHERE statement NOT LIKE '%pg_prepared_statements%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for name in ["-- claim_batch:", "-- complete_many:"] {
        assert!(
            prepared.iter().any(|s| s.trim_start().starts_with(name)),
            "{name} is not prepared on a new engine connection: {prepared:?}"
        );
    }
    let states: Vec<String> = sqlx::query_scalar("SELECT state::text FROM jobs")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(states, ["available"]);
}
