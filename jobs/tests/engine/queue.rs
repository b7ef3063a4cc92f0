use std::time::Duration;

use poda_jobs::audit::Actor;
use poda_jobs::engine::claim::claim_batch;
use poda_jobs::engine::{pause_queue, resume_queue};
use poda_jobs::testing::TestDb;
use poda_jobs::EngineError;
use uuid::Uuid;

use crate::factory;

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_paused_queue_hands_out_nothing_and_resume_makes_its_jobs_claimable() {
    let db = TestDb::new().await;
    factory::probes(&db.pool, "tickets", 5).await;
    factory::probes(&db.pool, "notifications", 2).await;

    let paused = pause_queue(&db.pool, "tickets", &Actor::Console)
        .await
        .unwrap();
    assert!(paused.paused_at.is_some());
    let owner = Uuid::new_v4();
    let claimed = claim_batch(&db.pool, "tickets", 10, owner, LEASE, None)
        .await
        .unwrap();
    assert!(
        claimed.is_empty(),
        "a paused queue's jobs must not be claimed"
    );
    // Other queues are not affected.
    let other = claim_batch(&db.pool, "notifications", 10, owner, LEASE, None)
        .await
        .unwrap();
    assert_eq!(other.len(), 2);

    let resumed = resume_queue(&db.pool, "tickets", &Actor::Console)
        .await
        .unwrap();
    assert_eq!(resumed.paused_at, None);
    let claimed = claim_batch(&db.pool, "tickets", 10, owner, LEASE, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
}

#[tokio::test]
async fn pausing_twice_keeps_the_first_pause_time() {
    let db = TestDb::new().await;
    let first = pause_queue(&db.pool, "tickets", &Actor::Console)
        .await
        .unwrap();
    let second = pause_queue(&db.pool, "tickets", &Actor::Console)
        .await
        .unwrap();
    assert_eq!(first.paused_at, second.paused_at);
}

#[tokio::test]
async fn pausing_or_resuming_an_unknown_queue_is_a_clear_error() {
    let db = TestDb::new().await;
    let error = pause_queue(&db.pool, "no_such_queue", &Actor::Console)
        .await
        .unwrap_err();
    assert!(matches!(&error, EngineError::UnknownQueue { queue } if queue == "no_such_queue"));
    assert!(error.to_string().contains("no_such_queue"));
    let error = resume_queue(&db.pool, "no_such_queue", &Actor::Console)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::UnknownQueue { .. }));
}
