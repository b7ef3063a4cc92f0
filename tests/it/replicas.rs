//! Several worker replicas on one database: duties that run on one replica at a time.

use std::time::{Duration, Instant};

use poda_jobs::testing::{wait_until, TestDb};
use sqlx::PgPool;

use crate::support::process::{spawn_worker, WorkerProcess};

/// The maintenance leader's OS process id and whether its lease is live, from `job_leaders`.
async fn maintenance_leader(pool: &PgPool) -> Option<(u32, bool)> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT holder_name, expires_at > now() FROM job_leaders WHERE duty = 'maintenance'",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    row.map(|(name, live)| {
        let pid = name.rsplit(':').next().unwrap().parse().unwrap();
        (pid, live)
    })
}

#[tokio::test]
async fn a_killed_maintenance_leader_is_replaced_by_another_replica_within_its_lease() {
    let db = TestDb::new().await;
    // A lease of 2 s: leadership is renewed every 0.67 s and tried for as often.
    let args = ["--concurrency", "2", "--lease", "2s"];
    let mut replicas: Vec<WorkerProcess> = (0..3).map(|_| spawn_worker(&db.url, &args)).collect();
    let (leader, _) = wait_until(
        "a replica to lead maintenance",
        Duration::from_secs(30),
        || maintenance_leader(&db.pool),
        |leader| matches!(leader, Some((_, true))),
    )
    .await
    .unwrap();
    let index = replicas
        .iter()
        .position(|r| r.id() == leader)
        .expect("the leader is one of the replicas");
    let mut killed = replicas.remove(index);
    killed.sigkill();
    killed.wait_exit(Duration::from_secs(10)).await;
    let killed_at = Instant::now();

    let (successor, _) = wait_until(
        "another replica to take maintenance over",
        Duration::from_secs(30),
        || maintenance_leader(&db.pool),
        |now| matches!(now, Some((pid, true)) if *pid != leader),
    )
    .await
    .unwrap();
    let took = killed_at.elapsed();
    assert!(
        replicas.iter().any(|r| r.id() == successor),
        "the successor {successor} is a live replica"
    );
    // The lease (2 s) runs out, then a replica tries within a third of it; 4 s of slack for
    // a loaded machine.
    assert!(
        took < Duration::from_secs(7),
        "maintenance was taken over {took:?} after its leader died"
    );
}
