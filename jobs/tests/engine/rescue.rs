use std::time::Duration;

use chrono::Utc;
use poda_jobs::db::Db;
use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::maintenance::Rescuer;
use poda_jobs::engine::notify::Signals;
use poda_jobs::engine::{enqueue_one_pooled, JobId, JobState, RescuerConfig};
use poda_jobs::testing::{wait_until, TestDb};
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{fast_retry, job, rescuer, state_of, QUEUE};

#[tokio::test]
async fn rescue_takes_back_only_jobs_whose_lease_has_expired() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let lease = Duration::from_secs(10);
    claim_batch(&db.pool, QUEUE, 1, Uuid::new_v4(), lease, None)
        .await
        .unwrap();
    let rescuer = rescuer(&db.pool);

    // Just before the lease ends: won't be rescued.
    let before = Utc::now() + chrono::Duration::seconds(8);
    assert_eq!(rescuer.run_once(Some(before)).await.unwrap().total(), 0);
    assert_eq!(state_of(&db.pool, id).await, (JobState::Running, 1));

    // Just after: rescued, runnable at once, the attempt spent and the reason kept.
    let after = Utc::now() + chrono::Duration::seconds(11);
    let report = rescuer.run_once(Some(after)).await.unwrap();
    assert_eq!(report.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, id).await, (JobState::Available, 1));
    let error: String = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.contains("lease expired"), "{error}");
}

#[tokio::test]
async fn rescue_fails_a_job_whose_last_attempt_was_lost() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1).with_retry(fast_retry(1)))
        .await
        .unwrap()
        .id;
    claim_batch(
        &db.pool,
        QUEUE,
        1,
        Uuid::new_v4(),
        Duration::from_secs(1),
        None,
    )
    .await
    .unwrap();
    let report = rescuer(&db.pool)
        .run_once(Some(Utc::now() + chrono::Duration::seconds(5)))
        .await
        .unwrap();
    assert_eq!(report.failed.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, id).await, (JobState::Failed, 1));
}

#[tokio::test]
async fn a_windowed_pass_reads_only_recent_expiries_and_a_full_pass_reads_them_all() {
    let db = TestDb::new().await;
    let old = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let recent = enqueue_one_pooled(&db.pool, &job(2)).await.unwrap().id;
    claim_batch(
        &db.pool,
        QUEUE,
        2,
        Uuid::new_v4(),
        Duration::from_secs(10),
        None,
    )
    .await
    .unwrap();
    // One lease ran out an hour ago (written already expired), the other a second ago.
    sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() - CASE id WHEN $1 THEN interval '1 hour' \
                                                         ELSE interval '1 second' END \
         WHERE id IN ($1, $2)",
    )
    .bind(old)
    .bind(recent)
    .execute(&db.pool)
    .await
    .unwrap();
    let rescuer = rescuer(&db.pool);

    let window = rescuer
        .pass(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(window.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, recent).await, (JobState::Available, 1));
    assert_eq!(state_of(&db.pool, old).await, (JobState::Running, 1));

    let full = rescuer.pass(None, None).await.unwrap();
    assert_eq!(full.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, old).await, (JobState::Available, 1));
}

#[tokio::test]
async fn a_bounded_full_pass_is_stopped_by_the_server_and_leaves_nothing_running() {
    let db = TestDb::new().await;
    let id = claimed_job(&db.pool, Duration::from_millis(1)).await;
    let rescuer = rescuer(&db.pool);

    // A pass that cannot finish: `jobs` is locked by another session for as long as it likes.
    let holder = lock_jobs(&db.pool).await;
    let pass = rescuer.pass_within(None, None, Some(Duration::from_millis(300)));
    let error = tokio::time::timeout(Duration::from_secs(20), pass)
        .await
        .expect("the server ends the pass at its bound")
        .expect_err("the pass cannot finish while jobs is locked");
    assert!(
        error
            .sqlx()
            .is_some_and(poda_jobs::sqlstate::is_query_canceled),
        "{error}"
    );
    // Nothing of the pass is left waiting on the server.
    assert_eq!(waiting_on_a_lock(&db.pool).await, 0);

    holder.rollback().await.unwrap();
    let report = rescuer
        .pass_within(None, None, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(report.requeued.get(QUEUE), Some(&1));
    assert_eq!(state_of(&db.pool, id).await, (JobState::Available, 1));
}

/// A full pass that the server cancels (it outlasts its bound behind a lock) is given up, not
/// taken for an outage: the next pass, a window, rescues at once instead of waiting out the
/// grace again.
#[tokio::test]
async fn a_full_pass_cancelled_by_the_server_is_given_up_and_the_next_window_rescues_at_once() {
    let db = TestDb::new().await;
    // Its lease runs out before the first full pass, inside the windows that follow it.
    let id = claimed_job(&db.pool, Duration::from_secs(2)).await;
    // Every pass waits behind this lock; the probes before the grace do not read `jobs`.
    let holder = lock_jobs(&db.pool).await;
    let grace = Duration::from_secs(4);
    let config = RescuerConfig {
        interval: Duration::from_secs(2),
        grace,
    };
    let stop = CancellationToken::new();
    let task =
        tokio::spawn(Rescuer::new(config, db.pool.clone()).run(Signals::default(), stop.clone()));

    let waiting_on_the_lock = || waiting_on_a_lock(&db.pool);
    wait_until(
        "the first full pass to wait on the lock",
        Duration::from_secs(20),
        waiting_on_the_lock,
        |n| *n == 1,
    )
    .await;
    // The server cancels it at four fifths of the interval; the next tick comes at the interval.
    wait_until(
        "the server to cancel the full pass",
        Duration::from_secs(5),
        waiting_on_the_lock,
        |n| *n == 0,
    )
    .await;
    holder.rollback().await.unwrap();

    // The next pass comes within an interval and rescues; had the cancellation counted as an
    // outage, nothing would be rescued before a whole grace from now.
    wait_until(
        "the next pass to rescue the job",
        grace - Duration::from_millis(500),
        || state_of(&db.pool, id),
        |state| *state == (JobState::Available, 1),
    )
    .await;
    stop.cancel();
    task.await.unwrap();
}

/// A job claimed with `lease`, by a worker that never renews it.
async fn claimed_job(pool: &Db, lease: Duration) -> JobId {
    let id = enqueue_one_pooled(pool, &job(1)).await.unwrap().id;
    claim_batch(pool, QUEUE, 1, Uuid::new_v4(), lease, None)
        .await
        .unwrap();
    id
}

/// A transaction holding `jobs` locked until it ends: every statement that reads the table
/// waits behind it.
async fn lock_jobs(pool: &Db) -> Transaction<'static, Postgres> {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Sessions of this database waiting for a lock.
async fn waiting_on_a_lock(pool: &Db) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}
