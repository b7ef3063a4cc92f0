use poda_jobs::audit::Actor;
use poda_jobs::engine::metrics::sample_queue_gauges;
use poda_jobs::engine::pause_queue;
use poda_jobs::testing::TestDb;

use crate::factory;

#[tokio::test]
async fn queue_gauges_count_runnable_jobs_per_queue() {
    let db = TestDb::new().await;
    let ids = factory::probes(&db.pool, "tickets", 4).await;
    factory::set_state(&db.pool, ids[0], "completed", Some(chrono::Utc::now())).await;
    factory::set_state(&db.pool, ids[1], "running", None).await;
    sqlx::query("UPDATE jobs SET run_at = now() - interval '90 seconds' WHERE id = $1")
        .bind(ids[2])
        .execute(&db.pool)
        .await
        .unwrap();
    pause_queue(&db.pool, "tickets", &Actor::Console)
        .await
        .unwrap();

    let rows = sample_queue_gauges(&db.pool).await.unwrap();
    let tickets = rows.iter().find(|(q, _, _)| q == "tickets").unwrap();
    assert_eq!(tickets.1, 2, "available and due only");
    assert!(tickets.2 >= 89.0, "oldest runnable age {}", tickets.2);
    let idle = rows.iter().find(|(q, _, _)| q == "notifications").unwrap();
    assert_eq!((idle.1, idle.2), (0, 0.0));
}
