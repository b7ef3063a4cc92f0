use std::collections::HashMap;
use std::time::Duration;

use poda_jobs::engine::{enqueue_many_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};
use poda_jobs::RetryPolicy;
use uuid::Uuid;

use crate::support::count_state;
use crate::support::enqueue_recorded_probes;
use crate::support::process::{spawn_worker, with_application_name};

const VICTIM: &str = "poda-crash-victim";

/// A job running under the victim's lease when it was killed.
#[derive(Debug, sqlx::FromRow)]
struct Held {
    id: i64,
    attempt: i32,
    lease_owner: Uuid,
    /// The victim's run of this attempt had begun (a claimed job may still wait for a slot).
    started: bool,
}

const FAST_RESCUE: &[&str] = &[
    "--concurrency",
    "8",
    "--lease",
    "2s",
    "--rescue-interval",
    "1s",
];

#[tokio::test]
async fn kill_9_of_a_worker_mid_batch_loses_no_job_and_reruns_none_after_completion() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 400, 20).await;
    // The victim's sessions carry their own application_name, to see when they are gone.
    let victim_url = with_application_name(&db.url, VICTIM);
    let victim = spawn_worker(&victim_url, FAST_RESCUE);
    // Kill it while it is running jobs: claimed rows whose run at the current attempt began.
    wait_until(
        "the victim to be running jobs",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs j WHERE j.state = 'running' AND EXISTS \
                   (SELECT 1 FROM probe_runs r WHERE r.job_id = j.id AND r.attempt = j.attempt)",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
        |n| *n >= 4,
    )
    .await;
    victim.sigkill();
    // Once the server has ended the victim's sessions, no statement of it can still change a
    // row: what is running now is what the victim held when it died.
    wait_until(
        "the victim's sessions to end",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
            )
            .bind(VICTIM)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
        |n| *n == 0,
    )
    .await;
    let held: Vec<Held> = sqlx::query_as(
        "SELECT j.id, j.attempt, j.lease_owner, \
                EXISTS (SELECT 1 FROM probe_runs r WHERE r.job_id = j.id AND r.attempt = j.attempt) \
                  AS started \
         FROM jobs j WHERE j.state = 'running' ORDER BY j.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        !held.is_empty(),
        "the victim held no job when it was killed"
    );
    assert!(
        held.iter().any(|h| h.started),
        "the victim had started none of the jobs it held: {held:?}"
    );

    let survivor = spawn_worker(&db.url, FAST_RESCUE);
    wait_until(
        "every job completed",
        Duration::from_secs(60),
        || count_state(&db.pool, JobState::Completed),
        |n| *n == 400,
    )
    .await;

    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT n) FROM probe_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(distinct, 400);
    // Every job the victim held was rescued and ran again, at the next attempt...
    let ids: Vec<i64> = held.iter().map(|h| h.id).collect();
    let after: HashMap<i64, (i32, bool)> = sqlx::query_as::<_, (i64, i32, bool)>(
        "SELECT j.id, j.attempt, \
                EXISTS (SELECT 1 FROM probe_runs r WHERE r.job_id = j.id AND r.attempt = j.attempt) \
         FROM jobs j WHERE j.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, attempt, ran)| (id, (attempt, ran)))
    .collect();
    for h in &held {
        assert_eq!(
            after[&h.id],
            (h.attempt + 1, true),
            "job {} held by the victim (lease owner {}) at attempt {}: (attempt, ran at it) \
             afterwards",
            h.id,
            h.lease_owner,
            h.attempt
        );
    }
    // ...but no job ran after it had completed, and none completed twice.
    let after_completion: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_runs r JOIN jobs j ON j.id = r.job_id WHERE r.started_at > j.finished_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(after_completion, 0);
    let twice_at_same_attempt: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id, attempt FROM probe_runs GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(twice_at_same_attempt, 0);
    drop(survivor);
}

#[tokio::test]
async fn durable_backoff_survives_a_worker_restart() {
    let db = TestDb::new().await;
    let policy = RetryPolicy::new(3, Duration::from_secs(4), Duration::from_secs(4));
    let job = ProbeJob {
        record: true,
        fail_times: 1,
        ..ProbeJob::new(7)
    }
    .to_job(policy);
    let id = enqueue_many_pooled(&db.pool, &[job]).await.unwrap()[0].id;
    let mut first = spawn_worker(&db.url, &[]);
    let scheduled: chrono::DateTime<chrono::Utc> = wait_until(
        "the first attempt to fail",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT run_at FROM jobs WHERE id = $1 AND state = 'available' AND attempt = 1",
            )
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
        |r| r.is_some(),
    )
    .await
    .unwrap();
    first.sigterm();
    assert!(first.wait_exit(Duration::from_secs(20)).await.success());
    // The schedule is in the database, untouched by the restart.
    let still: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT run_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(still, scheduled);
    let _second = spawn_worker(&db.url, &[]);
    wait_until(
        "the retry to complete",
        Duration::from_secs(30),
        || count_state(&db.pool, JobState::Completed),
        |n| *n == 1,
    )
    .await;
    let second_start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM probe_runs WHERE job_id = $1 AND attempt = 2")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(second_start >= scheduled, "the retry waited for its run_at");
}
