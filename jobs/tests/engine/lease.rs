//! Lease renewal writes only the leases that are about to need it.

use std::time::Duration;

use poda_jobs::engine::{EngineConfig, JobState, RetryPolicy};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::TestDb;

use crate::support::{enqueue_probes, wait_for_state, ProbeWorker};

/// Every write of a running job's lease after its claim, by job.
async fn record_lease_renewals(db: &TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE lease_renewals (job_id bigint NOT NULL);
         CREATE FUNCTION record_lease_renewal() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO lease_renewals VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER lease_renewed AFTER UPDATE OF lease_expires_at ON jobs FOR EACH ROW
         WHEN (OLD.state = 'running' AND NEW.state = 'running'
               AND OLD.claim_token = NEW.claim_token)
         EXECUTE FUNCTION record_lease_renewal();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// A 3 s lease renewed every second: a lease is due once it is half a second old. One slot
/// runs a 2.5 s job, the other twenty 300 ms jobs one after another for 6 s, so a heartbeat
/// fires while one of them is held at each of its beats: the long run's lease is renewed,
/// no short run's ever is.
#[tokio::test]
async fn runs_shorter_than_half_a_heartbeat_never_write_their_lease_and_long_ones_do() {
    let db = TestDb::new().await;
    record_lease_renewals(&db).await;
    let mut probes = vec![ProbeJob {
        sleep_ms: 2_500,
        ..ProbeJob::new(0)
    }];
    probes.extend((1..=20).map(|n| ProbeJob {
        sleep_ms: 300,
        ..ProbeJob::new(n)
    }));
    let ids = enqueue_probes(&db.pool, &probes, RetryPolicy::default()).await;
    let worker = ProbeWorker::start_with(
        &db.pool,
        2,
        EngineConfig::default().with_lease(Duration::from_secs(3)),
    );
    for id in &ids {
        wait_for_state(&db.pool, *id, JobState::Completed).await;
    }
    worker.stop().await;

    let renewals: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FROM lease_renewals GROUP BY job_id ORDER BY job_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        matches!(renewals.as_slice(), [(id, n)] if *id == ids[0].0 && *n >= 1),
        "only the long run's lease is renewed: {renewals:?} (long run {})",
        ids[0]
    );
}
