use std::collections::HashMap;

use poda_jobs::db::Db;
use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::complete::{complete_many, Completion};
use poda_jobs::engine::{enqueue_many_pooled, Action, JobId, NewJob};
use poda_jobs::testing::TestDb;
use uuid::Uuid;

use crate::support::{job, KIND, LEASE, QUEUE};

/// The heap page each of `ids` lives on now.
async fn pages_of(pool: &Db, ids: &[JobId]) -> HashMap<JobId, i64> {
    let rows: Vec<(JobId, i64)> =
        sqlx::query_as("SELECT id, (ctid::text::point)[0]::bigint FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

/// Vacuum leaves a little room on every page of finished history. If new jobs, or their
/// claims and completions, went there, every job of a batch would land on a different old
/// page, and a table of millions of finished jobs would be read and written at random
/// (docs/jobs-fillfactor.md). The table's fillfactor keeps new jobs and every later version of
/// them on pages past the history.
#[tokio::test]
async fn new_jobs_and_their_later_versions_stay_off_the_pages_of_finished_history() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO jobs (queue, kind, payload, state, attempt, max_attempts, backoff_base_ms, \
                           backoff_max_ms, attempted_at, finished_at) \
         SELECT $1, $2, jsonb_build_object('n', -g), 'completed', 1, 25, 1000, 3600000, \
                now(), now() \
         FROM generate_series(1, 20000) g",
    )
    .bind(QUEUE)
    .bind(KIND)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM jobs").execute(&db.pool).await.unwrap();
    // The history's last page is only partly filled: new jobs may start there.
    let history_end: i64 =
        sqlx::query_scalar("SELECT max((ctid::text::point)[0])::bigint - 1 FROM jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();

    let jobs: Vec<NewJob> = (1..=1000).map(job).collect();
    let ids: Vec<JobId> = enqueue_many_pooled(&db.pool, &jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_past_history(&db.pool, &ids, history_end, "enqueued").await;

    let claimed = claim_batch(&db.pool, QUEUE, 1000, Uuid::new_v4(), LEASE, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1000);
    assert_past_history(&db.pool, &ids, history_end, "claimed").await;

    let completions: Vec<Completion> = claimed
        .iter()
        .map(|c| Completion {
            id: c.id,
            token: c.token,
            action: Action::Complete,
        })
        .collect();
    assert_eq!(
        complete_many(&db.pool, &completions).await.unwrap().len(),
        1000
    );
    assert_past_history(&db.pool, &ids, history_end, "completed").await;
}

async fn assert_past_history(pool: &Db, ids: &[JobId], history_end: i64, step: &str) {
    let strays: Vec<(JobId, i64)> = pages_of(pool, ids)
        .await
        .into_iter()
        .filter(|&(_, page)| page <= history_end)
        .collect();
    assert!(
        strays.is_empty(),
        "{step}: {} of {} jobs are on pages of the history (pages 0..={history_end}), e.g. {:?}",
        strays.len(),
        ids.len(),
        &strays[..strays.len().min(5)]
    );
}
