use std::time::Duration;

use poda_jobs::audit::Actor;
use poda_jobs::db::Db;
use poda_jobs::engine::admin::retry_job;
use poda_jobs::engine::{JobState, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::{
    enqueue_probes, fast_retry, state_of, wait_for_attempt, wait_for_state, ProbeWorker,
};

/// Seconds between the recorded failure and the run_at it scheduled.
async fn scheduled_delay(pool: &Db, id: poda_jobs::JobId) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - (errors->-1->>'at')::timestamptz)::float8 FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_retryable_failure_schedules_run_at_by_the_backoff_and_keeps_the_error() {
    let db = TestDb::new().await;
    let policy = RetryPolicy::new(5, Duration::from_secs(2), Duration::from_secs(60));
    let ids = enqueue_probes(
        &db.pool,
        &[ProbeJob {
            fail_times: 2,
            record: true,
            ..ProbeJob::new(1)
        }],
        policy,
    )
    .await;
    let worker = ProbeWorker::start(&db.pool, 2);
    wait_for_attempt(&db.pool, ids[0], JobState::Available, 1).await;
    let delay = scheduled_delay(&db.pool, ids[0]).await;
    assert!(
        (1.6..=2.4).contains(&delay),
        "attempt 1 waits 2 s ± 20 %, got {delay}"
    );
    // The second failure doubles the wait.
    wait_for_attempt(&db.pool, ids[0], JobState::Available, 2).await;
    let delay = scheduled_delay(&db.pool, ids[0]).await;
    assert!(
        (3.2..=4.8).contains(&delay),
        "attempt 2 waits 4 s ± 20 %, got {delay}"
    );
    wait_for_state(&db.pool, ids[0], JobState::Completed).await;
    worker.stop().await;
    // No run started before its scheduled time.
    let early: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_runs r JOIN jobs j ON j.id = r.job_id, \
         jsonb_array_elements(j.errors) WITH ORDINALITY e(err, i) \
         WHERE r.attempt = e.i + 1 AND r.started_at < (e.err->>'at')::timestamptz + interval '1.5 s'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(early, 0);
    let errors: i64 =
        sqlx::query_scalar("SELECT jsonb_array_length(errors)::bigint FROM jobs WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(errors, 2);
}

#[tokio::test]
async fn a_handler_can_ask_for_its_own_retry_delay() {
    let db = TestDb::new().await;
    let policy = RetryPolicy::new(5, Duration::from_secs(600), Duration::from_secs(600));
    let probe = ProbeJob {
        fail_times: 1,
        retry_after_ms: Some(1_500),
        ..ProbeJob::new(1)
    };
    let ids = enqueue_probes(&db.pool, &[probe], policy).await;
    let worker = ProbeWorker::start(&db.pool, 2);
    wait_for_attempt(&db.pool, ids[0], JobState::Available, 1).await;
    let delay = scheduled_delay(&db.pool, ids[0]).await;
    assert!(
        (1.4..=1.7).contains(&delay),
        "Retry-After of 1.5 s, not the 600 s schedule: {delay}"
    );
    wait_for_state(&db.pool, ids[0], JobState::Completed).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_permanent_error_fails_at_once_and_an_operator_retry_runs_it_again() {
    let db = TestDb::new().await;
    let ids = enqueue_probes(
        &db.pool,
        &[ProbeJob {
            permanent: true,
            record: true,
            ..ProbeJob::new(1)
        }],
        fast_retry(5),
    )
    .await;
    let worker = ProbeWorker::start(&db.pool, 2);
    wait_for_state(&db.pool, ids[0], JobState::Failed).await;
    assert_eq!(
        state_of(&db.pool, ids[0]).await,
        (JobState::Failed, 1),
        "no retries"
    );
    let job = retry_job(&db.pool, ids[0], &Actor::Console).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Available, 0));
    wait_until(
        "the second run",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM probe_runs")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |n| *n == 2,
    )
    .await;
    wait_for_state(&db.pool, ids[0], JobState::Failed).await;
    worker.stop().await;
    let (errors, last): (i64, String) = sqlx::query_as(
        "SELECT jsonb_array_length(errors)::bigint, last_error FROM jobs WHERE id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(errors, 2, "the history of both runs is kept");
    assert!(last.contains("fails for good"), "{last}");
}

#[tokio::test]
async fn running_out_of_attempts_fails_the_job_and_a_panic_counts_as_a_failure() {
    let db = TestDb::new().await;
    let probes = [
        ProbeJob {
            fail_times: 10,
            ..ProbeJob::new(1)
        },
        ProbeJob {
            panic: true,
            ..ProbeJob::new(2)
        },
    ];
    let ids = enqueue_probes(&db.pool, &probes, fast_retry(3)).await;
    let worker = ProbeWorker::start(&db.pool, 2);
    wait_for_state(&db.pool, ids[0], JobState::Failed).await;
    wait_for_state(&db.pool, ids[1], JobState::Failed).await;
    worker.stop().await;
    for id in &ids {
        assert_eq!(state_of(&db.pool, *id).await, (JobState::Failed, 3));
    }
    let last: String = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(ids[1])
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        last.contains("panicked") && last.contains("no attempts left"),
        "{last}"
    );
}

#[tokio::test]
async fn a_snooze_reschedules_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let ids = enqueue_probes(
        &db.pool,
        &[ProbeJob {
            snooze_ms: Some(300),
            ..ProbeJob::new(1)
        }],
        fast_retry(1),
    )
    .await;
    let worker = ProbeWorker::start(&db.pool, 2);
    wait_for_state(&db.pool, ids[0], JobState::Completed).await;
    worker.stop().await;
    // One attempt allowed, two runs made: the snooze gave its attempt back.
    assert_eq!(state_of(&db.pool, ids[0]).await, (JobState::Completed, 1));
}
