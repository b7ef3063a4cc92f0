use std::time::Duration;

use poda_jobs::engine::JobState;
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::process::{spawn_worker, spawn_worker_serving_metrics, worker_command};
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

/// The scheduling policy of each thread of process `pid`, from field 41 of its `stat`
/// (0 SCHED_OTHER, 3 SCHED_BATCH).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the worker's threads");
    tasks
        .map(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
            // The thread's name, in parentheses, may hold spaces: fields are counted after it.
            let (head, fields) = stat.rsplit_once(')').unwrap();
            let name = head.split_once('(').unwrap().1.to_owned();
            let policy = fields.split_whitespace().nth(38).unwrap().parse().unwrap();
            (name, policy)
        })
        .collect()
}

#[tokio::test]
async fn every_thread_of_a_worker_runs_under_the_batch_policy_unless_told_otherwise() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let db = TestDb::new().await;
    for (args, expected) in [
        (&[][..], SCHED_BATCH),
        (&["--cpu-policy", "normal"][..], SCHED_OTHER),
    ] {
        let (worker, _) = spawn_worker_serving_metrics(|| worker_command(&db.url, args)).await;
        let policies = thread_policies(worker.child.id().expect("the worker runs"));
        assert!(
            policies
                .iter()
                .filter(|(name, _)| name.starts_with("tokio"))
                .count()
                >= 2,
            "the runtime's threads are there: {policies:?}"
        );
        assert!(
            policies.iter().all(|(_, policy)| *policy == expected),
            "with {args:?} every thread is under policy {expected}: {policies:?}"
        );
    }
}
