use std::time::Duration;

use poda_jobs::audit::Actor;
use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::complete::{complete_many, Completion};
use poda_jobs::engine::Action;
use poda_jobs::engine::{enqueue_one_pooled, JobState};
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{job, rescuer, state_of, LEASE, QUEUE};

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_cannot_overwrite_the_new_attempt() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let old_owner = Uuid::new_v4();
    let first = claim_batch(&db.pool, QUEUE, 1, old_owner, Duration::from_secs(1), None)
        .await
        .unwrap();
    assert_eq!(first[0].attempt, 1);

    // The lease lapses (the clock moves past it) and the rescuer takes the job back.
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    let report = rescuer(&db.pool).run_once(Some(later)).await.unwrap();
    assert_eq!(report.total(), 1);
    let new_owner = Uuid::new_v4();
    let second = claim_batch(&db.pool, QUEUE, 1, new_owner, LEASE, Some(later))
        .await
        .unwrap();
    assert_eq!((second[0].id, second[0].attempt), (id, 2));

    // The old worker reports late: completion and failure are both ignored.
    for action in [
        Action::Complete,
        Action::Fail {
            error: "late".into(),
        },
    ] {
        let changed = complete_many(
            &db.pool,
            &[Completion {
                id,
                token: first[0].token,
                action,
            }],
        )
        .await
        .unwrap();
        assert!(changed.is_empty());
    }
    assert_eq!(state_of(&db.pool, id).await, (JobState::Running, 2));

    // The new claim completes.
    let changed = complete_many(
        &db.pool,
        &[Completion {
            id,
            token: second[0].token,
            action: Action::Complete,
        }],
    )
    .await
    .unwrap();
    assert_eq!(changed, vec![id]);
    assert_eq!(state_of(&db.pool, id).await, (JobState::Completed, 2));
}

/// The case attempt numbers cannot fence: a run looks stuck, an operator cancels and retries
/// its job, and the same process claims it again at the same attempt number. The first run's
/// late outcome changes nothing, and only the new claim's lease is renewed.
#[tokio::test]
async fn a_cancelled_and_retried_job_claimed_again_by_the_same_process_fences_the_first_run() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let owner = Uuid::new_v4();
    let first = claim_batch(&db.pool, QUEUE, 1, owner, LEASE, None)
        .await
        .unwrap();
    poda_jobs::engine::admin::cancel_job(&db.pool, id, &Actor::Console)
        .await
        .unwrap();
    poda_jobs::engine::admin::retry_job(&db.pool, id, &Actor::Console)
        .await
        .unwrap();
    let second = claim_batch(&db.pool, QUEUE, 1, owner, LEASE, None)
        .await
        .unwrap();
    assert_eq!(
        (first[0].attempt, second[0].attempt),
        (1, 1),
        "same attempt number"
    );
    assert!(
        second[0].token > first[0].token,
        "a claim token never repeats"
    );

    // The first run ends late, with a failure: nothing changes.
    let changed = complete_many(
        &db.pool,
        &[Completion {
            id,
            token: first[0].token,
            action: Action::Fail {
                error: "late".into(),
            },
        }],
    )
    .await
    .unwrap();
    assert!(changed.is_empty());
    assert_eq!(state_of(&db.pool, id).await, (JobState::Running, 1));

    // Renewing the first run's lease renews nothing and names it lost; renewing the second's
    // renews it.
    use poda_jobs::engine::lease::extend_leases;
    let renewal = extend_leases(&db.pool, &[(id, first[0].token)], Duration::from_secs(600))
        .await
        .unwrap();
    assert!(renewal.renewed.is_empty());
    assert_eq!(renewal.lost, vec![(id, first[0].token)]);
    let renewal = extend_leases(&db.pool, &[(id, second[0].token)], Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(renewal.renewed.len(), 1);
    assert!(renewal.lost.is_empty());
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_expires_at - now())::float8 FROM jobs WHERE id = $1",
    )
    .bind(id.0)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(left > 500.0, "the second claim's lease was renewed: {left}");

    let changed = complete_many(
        &db.pool,
        &[Completion {
            id,
            token: second[0].token,
            action: Action::Complete,
        }],
    )
    .await
    .unwrap();
    assert_eq!(changed, vec![id]);
    assert_eq!(state_of(&db.pool, id).await, (JobState::Completed, 1));
}

#[tokio::test]
async fn outcomes_of_one_batch_each_land_in_their_own_state() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(enqueue_one_pooled(&db.pool, &job(n)).await.unwrap().id);
    }
    let owner = Uuid::new_v4();
    let claimed = claim_batch(&db.pool, QUEUE, 5, owner, LEASE, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    let actions = [
        Action::Complete,
        Action::Retry {
            delay: Duration::from_secs(60),
            error: "boom".into(),
        },
        Action::Fail {
            error: "bad input".into(),
        },
        Action::Snooze {
            delay: Duration::from_secs(30),
        },
        Action::Release,
    ];
    let batch: Vec<Completion> = claimed
        .iter()
        .zip(actions)
        .map(|(c, action)| Completion {
            id: c.id,
            token: c.token,
            action,
        })
        .collect();
    let changed = complete_many(&db.pool, &batch).await.unwrap();
    assert_eq!(changed.len(), 5);

    let rows: Vec<(JobState, i32, Option<String>, f64, bool, i64)> = sqlx::query_as(
        "SELECT state, attempt, last_error, extract(epoch FROM run_at - now())::float8, \
                finished_at IS NOT NULL, jsonb_array_length(errors)::bigint \
         FROM jobs ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows[0].0, rows[0].1, rows[0].4),
        (JobState::Completed, 1, true)
    );
    assert_eq!(
        (rows[1].0, rows[1].1, rows[1].2.as_deref()),
        (JobState::Available, 1, Some("boom"))
    );
    assert!(
        rows[1].3 > 55.0 && rows[1].3 <= 60.5,
        "retry at +60 s, got {}",
        rows[1].3
    );
    assert_eq!(rows[1].5, 1);
    assert_eq!(
        (rows[2].0, rows[2].2.as_deref(), rows[2].4),
        (JobState::Failed, Some("bad input"), true)
    );
    // A snooze gives the attempt back and records no error.
    assert_eq!(
        (rows[3].0, rows[3].1, rows[3].2.as_deref(), rows[3].5),
        (JobState::Available, 0, None, 0)
    );
    assert!(rows[3].3 > 25.0 && rows[3].3 <= 30.5);
    // A release gives the attempt back and is runnable at once.
    assert_eq!((rows[4].0, rows[4].1), (JobState::Available, 0));
    assert!(rows[4].3 <= 0.0);
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(leases, 0);
}

#[tokio::test]
async fn a_late_outcome_that_waits_behind_a_takeover_is_fenced_by_the_committed_row() {
    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let old_owner = Uuid::new_v4();
    claim_batch(&db.pool, QUEUE, 1, old_owner, LEASE, None)
        .await
        .unwrap();

    // Another worker takes the job over in a transaction that has not committed yet, so the
    // old worker's late outcome has to wait for its row lock.
    let new_owner = Uuid::new_v4();
    let mut takeover = db.pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE jobs SET lease_owner = $2, attempt = attempt + 1, claim_token = claim_token + 1 \
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(new_owner)
    .execute(&mut *takeover)
    .await
    .unwrap();
    let pool = db.pool.clone();
    let late = tokio::spawn(async move {
        complete_many(
            &pool,
            &[Completion {
                id,
                token: 1,
                action: Action::Complete,
            }],
        )
        .await
    });
    poda_jobs::testing::wait_until(
        "the late outcome waits for the takeover's row lock",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE '%complete_many%')",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
        |waiting| *waiting,
    )
    .await;
    takeover.commit().await.unwrap();

    // Re-checked against the row the takeover committed: not this claim.
    let changed = late.await.unwrap().unwrap();
    assert!(changed.is_empty());
    assert_eq!(state_of(&db.pool, id).await, (JobState::Running, 2));
}

#[tokio::test]
async fn a_running_job_cancelled_by_an_operator_is_announced_and_its_late_outcome_changes_nothing()
{
    use poda_jobs::engine::lease::extend_leases;
    use poda_jobs::engine::notify::{parse_cancel, CANCEL_CHANNEL};

    let db = TestDb::new().await;
    let id = enqueue_one_pooled(&db.pool, &job(1)).await.unwrap().id;
    let claimed = claim_batch(&db.pool, QUEUE, 1, Uuid::new_v4(), LEASE, None)
        .await
        .unwrap();
    let token = claimed[0].token;
    let mut listener = sqlx::postgres::PgListener::connect_with(db.pool.pool())
        .await
        .unwrap();
    listener.listen(CANCEL_CHANNEL).await.unwrap();

    poda_jobs::engine::admin::cancel_job(&db.pool, id, &Actor::Console)
        .await
        .unwrap();
    let told = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a cancellation is notified")
        .unwrap();
    assert_eq!(parse_cancel(told.payload()), Some((id.0, token)));

    // The run's lease renewal names it lost; none of its late outcomes lands.
    let renewal = extend_leases(&db.pool, &[(id, token)], LEASE)
        .await
        .unwrap();
    assert_eq!((renewal.renewed, renewal.lost), (vec![], vec![(id, token)]));
    for action in [
        Action::Complete,
        Action::Retry {
            delay: Duration::ZERO,
            error: "late".into(),
        },
        Action::Fail {
            error: "late".into(),
        },
        Action::Cancelled,
    ] {
        let changed = complete_many(&db.pool, &[Completion { id, token, action }])
            .await
            .unwrap();
        assert!(changed.is_empty());
    }
    assert_eq!(state_of(&db.pool, id).await, (JobState::Cancelled, 1));

    // Cancelling a job that waits notifies nobody: no run holds it.
    let waiting = enqueue_one_pooled(&db.pool, &job(2)).await.unwrap().id;
    poda_jobs::engine::admin::cancel_job(&db.pool, waiting, &Actor::Console)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "a waiting job's cancel sent a notification"
    );
}
