use poda_jobs::engine::{
    enqueue_many_pooled, enqueue_one, enqueue_one_pooled, insert_new_jobs, JobState,
};
use poda_jobs::testing::TestDb;
use poda_jobs::EngineError;

use crate::support::{count_in_state, job, QUEUE};

#[tokio::test]
async fn enqueue_in_a_rolled_back_transaction_leaves_no_job() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("CREATE TABLE business (id int)")
        .execute(&mut *tx)
        .await
        .unwrap();
    enqueue_one(&mut tx, &job(1)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count_in_state(&db.pool, JobState::Available).await, 0);

    let mut tx = db.pool.begin().await.unwrap();
    let enqueued = enqueue_one(&mut tx, &job(2)).await.unwrap();
    // Not visible to others before COMMIT...
    assert_eq!(count_in_state(&db.pool, JobState::Available).await, 0);
    tx.commit().await.unwrap();
    // ...and there after it.
    let n: i64 = sqlx::query_scalar("SELECT (payload->>'n')::bigint FROM jobs WHERE id = $1")
        .bind(enqueued.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn enqueue_many_returns_ids_in_input_order() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..500).map(job).collect();
    let enqueued = enqueue_many_pooled(&db.pool, &jobs).await.unwrap();
    assert_eq!(enqueued.len(), 500);
    assert!(enqueued.iter().all(|e| e.created));
    for (i, e) in enqueued.iter().enumerate() {
        let n: i64 = sqlx::query_scalar("SELECT (payload->>'n')::bigint FROM jobs WHERE id = $1")
            .bind(e.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, i as i64);
    }
    let registered: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM job_queues WHERE name = $1)")
            .bind(QUEUE)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        registered,
        "enqueue registers the queue for the operator views"
    );
}

#[tokio::test]
async fn concurrent_enqueues_each_get_their_ids_in_input_order() {
    // Sessions enqueueing at once draw interleaved ids from the one sequence; each call must
    // still hand every job its own id, in the order given.
    let db = TestDb::new().await;
    let calls = (0..4i64).map(|call| {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let jobs: Vec<_> = (0..2_000).map(|i| job(call * 10_000 + i)).collect();
            let enqueued = enqueue_many_pooled(&pool, &jobs).await.unwrap();
            (call, enqueued)
        })
    });
    for call in calls {
        let (call, enqueued) = call.await.unwrap();
        let ids: Vec<i64> = enqueued.iter().map(|e| e.id.0).collect();
        let ns: Vec<i64> = sqlx::query_scalar(
            "SELECT (j.payload->>'n')::bigint FROM unnest($1::bigint[]) WITH ORDINALITY AS i(id, ord) \
             JOIN jobs j ON j.id = i.id ORDER BY i.ord",
        )
        .bind(&ids)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let expected: Vec<i64> = (0..2_000).map(|i| call * 10_000 + i).collect();
        assert_eq!(ns, expected, "call {call}");
    }
}

#[tokio::test]
async fn enqueue_of_an_existing_unique_key_returns_the_existing_id_and_writes_nothing() {
    let db = TestDb::new().await;
    let first = enqueue_one_pooled(&db.pool, &job(1).with_unique_key("pay-1"))
        .await
        .unwrap();
    assert!(first.created);
    let again = enqueue_one_pooled(&db.pool, &job(99).with_unique_key("pay-1"))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert!(!again.created);
    // A batch mixing new keys, an existing key, a repeated key and no key.
    let batch = vec![
        job(2).with_unique_key("pay-2"),
        job(3).with_unique_key("pay-1"),
        job(4).with_unique_key("pay-2"),
        job(5),
    ];
    let out = enqueue_many_pooled(&db.pool, &batch).await.unwrap();
    assert!(out[0].created);
    assert_eq!((out[1].id, out[1].created), (first.id, false));
    assert_eq!((out[2].id, out[2].created), (out[0].id, false));
    assert!(out[3].created);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 3);
    let payload_n: i64 =
        sqlx::query_scalar("SELECT (payload->>'n')::bigint FROM jobs WHERE id = $1")
            .bind(first.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(payload_n, 1, "the existing job is not overwritten");
}

#[tokio::test]
async fn unique_key_holds_under_concurrent_enqueue() {
    let db = TestDb::new().await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            // Half enqueue inside a transaction that commits a little later.
            if i % 2 == 0 {
                let mut tx = pool.begin().await.unwrap();
                let e = enqueue_one(&mut tx, &job(i).with_unique_key("same"))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                e
            } else {
                enqueue_one_pooled(&pool, &job(i).with_unique_key("same"))
                    .await
                    .unwrap()
            }
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let e = t.await.unwrap();
        ids.push(e.id);
        created += e.created as i32;
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller got the one job's id");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 1);
}

#[tokio::test]
async fn enqueue_rejects_a_bad_retry_policy_and_writes_nothing() {
    let db = TestDb::new().await;
    let bad = job(1).with_retry(poda_jobs::RetryPolicy::new(
        0,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    ));
    let err = enqueue_many_pooled(&db.pool, &[job(0), bad])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 0);
}

#[tokio::test]
async fn insert_new_jobs_writes_every_job_and_refuses_a_key_that_exists() {
    let db = TestDb::new().await;
    let keyed = |n: i64| job(n).with_unique_key(format!("key-{n}"));
    let mut conn = db.pool.pool().acquire().await.unwrap();
    let jobs: Vec<_> = (0..50).map(keyed).collect();
    assert_eq!(insert_new_jobs(&mut conn, &jobs).await.unwrap(), 50);
    let (rows, payloads): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT payload->>'n') FROM jobs \
         WHERE queue = $1 AND state = 'available' AND unique_key LIKE 'key-%'",
    )
    .bind(QUEUE)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((rows, payloads), (50, 50));

    // A key that exists fails the whole statement: nothing of it is written.
    let again = [keyed(100), keyed(7)];
    let error = insert_new_jobs(&mut conn, &again).await.unwrap_err();
    assert!(
        matches!(&error, EngineError::UniqueConflict { constraint, .. } if constraint == "jobs_unique_key_idx"),
        "{error:?}"
    );
    assert_eq!(count_in_state(&db.pool, JobState::Available).await, 50);
}
