//! Several worker replicas on one database: duties that run on one replica at a time.

use std::time::{Duration, Instant};

use poda_jobs::audit::Actor;
use poda_jobs::cycle::create_cycle;
use poda_jobs::db::Db;
use poda_jobs::engine::{enqueue_many_pooled, NewJob};
use poda_jobs::testing::tickets::{seed_one_company, ticket_counts, ticket_job};
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::cycles::{
    contribution_counts, new_cycle, seed_members, seed_tier, wait_active,
};
use crate::support::enqueue_recorded_probes;
use crate::support::process::{spawn_worker, WorkerProcess};

/// The maintenance leader's OS process id and whether its lease is live, from `job_leaders`.
async fn maintenance_leader(pool: &Db) -> Option<(u32, bool)> {
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

/// (queue, state, jobs) of every job that has not completed.
async fn unfinished(pool: &Db) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT queue, state::text, count(*) FROM jobs WHERE state <> 'completed' GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_replicas_on_small_pools_drain_every_queue_with_one_maintenance_leader() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // Three queues at once: 6,000 no-op jobs, 1,500 ticket payments and a cycle of 3,000.
    enqueue_recorded_probes(&pool, 6_000, 0).await;
    seed_one_company(&pool).await;
    let payments: Vec<NewJob> = (0..1_500)
        .map(|n| ticket_job(&format!("pay-{n}"), "co-1", "rt-1", 10_000).to_job())
        .collect();
    enqueue_many_pooled(&pool, &payments).await.unwrap();
    let tier = seed_tier(&pool, "gold", "SLE").await;
    let (first, _) = seed_members(&pool, tier, 3_001, "active", 4).await;
    let cycle = create_cycle(
        &pool,
        &new_cycle(tier, first, "CLM-replicas"),
        None,
        &Actor::Console,
    )
    .await
    .unwrap()
    .id
    .0;

    // Eight replicas with 2 handler and 3 engine connections each: 40 connections in all.
    let queues = format!(
        "{},{},{}",
        poda_jobs::probe::QUEUE,
        poda_jobs::ticket::QUEUE,
        poda_jobs::cycle::QUEUE
    );
    let args = [
        "--queues",
        queues.as_str(),
        "--concurrency",
        "4",
        "--handler-connections",
        "2",
        "--engine-connections",
        "3",
        "--cycle-chunk-size",
        "100",
    ];
    let replicas: Vec<WorkerProcess> = (0..8).map(|_| spawn_worker(&db.url, &args)).collect();

    // While they drain, every replica tries for maintenance leadership every few seconds:
    // leadership must stay with one of them (no flapping) once taken.
    let total = 6_000 + 1_500 + 1;
    let leaders = std::sync::Mutex::new(std::collections::BTreeSet::new());
    wait_until(
        "every queue to drain",
        Duration::from_secs(180),
        || async {
            let completed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'completed'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if let Some((pid, true)) = maintenance_leader(&pool).await {
                leaders.lock().unwrap().insert(pid);
            }
            completed
        },
        |completed| *completed >= total,
    )
    .await;
    let leaders = leaders.into_inner().unwrap();
    assert_eq!(leaders.len(), 1, "maintenance leaders seen: {leaders:?}");
    assert!(replicas.iter().any(|r| leaders.contains(&r.id())));
    // Jobs of the queues these replicas do not run: a commission transfer per ticket and a
    // notification per agent of the activated cycle. Nothing failed, nothing is left running.
    let mut left = unfinished(&pool).await;
    left.sort();
    assert_eq!(
        left,
        vec![
            (
                "commission_transfers".to_owned(),
                "available".to_owned(),
                1_500
            ),
            ("notifications".to_owned(), "available".to_owned(), 4),
        ]
    );
    let (runs, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT n) FROM probe_runs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((runs, distinct), (6_000, 6_000));
    let counts = ticket_counts(&pool).await;
    assert_eq!((counts.tickets, counts.distinct_payments), (1_500, 1_500));
    wait_active(&pool, cycle, Duration::from_secs(30)).await;
    assert_eq!(contribution_counts(&pool, cycle).await, (3_000, 3_000));

    for replica in &replicas {
        replica.sigterm();
    }
    for mut replica in replicas {
        let status = replica.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "a replica exits 0 after SIGTERM: {status:?}"
        );
    }
}
