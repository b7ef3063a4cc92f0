use std::time::Duration;

use poda_jobs::engine::JobState;
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::process::spawn_worker;
use crate::support::{count_state, enqueue_recorded_probes};

#[tokio::test]
async fn three_worker_processes_drain_20000_jobs_with_each_effect_exactly_once() {
    let db = TestDb::new().await;
    enqueue_recorded_probes(&db.pool, 20_000, 0).await;
    let workers: Vec<_> = (0..3)
        .map(|_| spawn_worker(&db.url, &["--concurrency", "16"]))
        .collect();
    wait_until(
        "20,000 jobs completed",
        Duration::from_secs(120),
        || count_state(&db.pool, JobState::Completed),
        |n| *n == 20_000,
    )
    .await;
    let (runs, distinct, owners): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT n), (SELECT count(DISTINCT attempt) FROM probe_runs) FROM probe_runs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (runs, distinct),
        (20_000, 20_000),
        "each job's effect happened exactly once"
    );
    // A run at a later attempt is allowed only when the earlier attempt is explained: a claim
    // whose answer was lost (the server committed it, the client saw an error) leaves its jobs
    // to the rescuer. Nothing else may spend an attempt here.
    let unexplained: Vec<(i64, i32, Option<String>)> = sqlx::query_as(
        "SELECT id, attempt, last_error FROM jobs \
         WHERE attempt > 1 AND coalesce(last_error, '') NOT LIKE 'lease expired%' LIMIT 5",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        unexplained.is_empty(),
        "attempts spent without a rescue: {unexplained:?}"
    );
    if owners > 1 {
        eprintln!(
            "note: some jobs ran at a later attempt after a rescue (a claim's answer was lost)"
        );
    }
    for w in &workers {
        w.sigterm();
    }
    for mut w in workers {
        assert!(w.wait_exit(Duration::from_secs(30)).await.success());
    }
}
