use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use poda_jobs::engine::{Pruner, PrunerConfig};
use poda_jobs::testing::TestDb;

use crate::factory;

const RETENTION: Duration = Duration::from_secs(7 * 86_400);

fn pruner(db: &TestDb, batch: usize) -> Pruner {
    Pruner::new(
        PrunerConfig {
            retention: RETENTION,
            batch,
            ..PrunerConfig::default()
        },
        db.pool.clone(),
    )
}

#[tokio::test]
async fn prunes_finished_jobs_just_older_than_the_retention_and_keeps_just_newer_ones() {
    let db = TestDb::new().await;
    let now = Utc.with_ymd_and_hms(2031, 3, 1, 12, 0, 0).unwrap();
    let cutoff = now - TimeDelta::from_std(RETENTION).unwrap();
    let ids = factory::probes(&db.pool, "tickets", 8).await;
    let second = TimeDelta::seconds(1);
    // Pruned: finished just before the cutoff, in every finished state.
    factory::set_state(&db.pool, ids[0], "completed", Some(cutoff - second)).await;
    factory::set_state(&db.pool, ids[1], "failed", Some(cutoff - second)).await;
    factory::set_state(
        &db.pool,
        ids[2],
        "cancelled",
        Some(cutoff - TimeDelta::days(30)),
    )
    .await;
    // Kept: finished just after the cutoff.
    factory::set_state(&db.pool, ids[3], "completed", Some(cutoff + second)).await;
    factory::set_state(&db.pool, ids[4], "failed", Some(cutoff + second)).await;
    // Kept: not finished, however old.
    factory::set_state(&db.pool, ids[5], "running", None).await;
    sqlx::query("UPDATE jobs SET created_at = $2, run_at = $2 WHERE id = ANY($1)")
        .bind(vec![ids[5].0, ids[6].0, ids[7].0])
        .bind(cutoff - TimeDelta::days(365))
        .execute(&db.pool)
        .await
        .unwrap();

    let report = pruner(&db, 1_000).run_once(Some(now)).await.unwrap();

    assert_eq!(report.total(), 3);
    assert_eq!(report.deleted.get("tickets"), Some(&3));
    for (i, id) in ids.iter().enumerate() {
        let expected = i >= 3;
        assert_eq!(
            factory::exists(&db.pool, *id).await,
            expected,
            "job {i} should {} the prune",
            if expected { "survive" } else { "not survive" }
        );
    }
    // A second pass finds nothing.
    assert_eq!(
        pruner(&db, 1_000)
            .run_once(Some(now))
            .await
            .unwrap()
            .total(),
        0
    );
}

#[tokio::test]
async fn prunes_in_keyset_batches_until_nothing_old_is_left() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let ids = factory::probes(&db.pool, "notifications", 7).await;
    for (i, id) in ids.iter().enumerate() {
        // Several rows share a finished_at: the keyset runs on (finished_at, id).
        let at = now - TimeDelta::days(10) - TimeDelta::seconds((i / 2) as i64);
        factory::set_state(&db.pool, *id, "completed", Some(at)).await;
    }
    let report = pruner(&db, 2).run_once(Some(now)).await.unwrap();
    assert_eq!(report.total(), 7);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
