use std::sync::atomic::Ordering;
use std::time::Duration;

use poda_jobs::engine::{Maintainer, MaintainerConfig, PrunerConfig};
use poda_jobs::testing::{wait_until, TestDb};
use tokio_util::sync::CancellationToken;

fn config() -> MaintainerConfig {
    MaintainerConfig {
        prune: PrunerConfig {
            interval: Duration::from_millis(50),
            ..PrunerConfig::default()
        },
        leadership_retry: Duration::from_millis(50),
        ..MaintainerConfig::default()
    }
}

async fn advisory_locks_held(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn only_one_of_two_maintainers_leads_and_the_other_takes_over_when_it_stops() {
    let db = TestDb::new().await;
    let a = Maintainer::new(config(), db.pool.clone());
    let b = Maintainer::new(config(), db.pool.clone());
    let (a_leads, b_leads) = (a.leading(), b.leading());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let probe = Maintainer::new(config(), db.pool.clone());
    let run_a = tokio::spawn(a.run(stop_a.clone()));
    let run_b = tokio::spawn(b.run(stop_b.clone()));

    let leaders = wait_until(
        "one maintainer to lead",
        Duration::from_secs(10),
        || async {
            (
                a_leads.load(Ordering::SeqCst),
                b_leads.load(Ordering::SeqCst),
            )
        },
        |(a, b)| *a || *b,
    )
    .await;
    assert!(!(leaders.0 && leaders.1), "both maintainers lead");
    // Both keep trying every 50 ms; still exactly one leader and one lock.
    assert!(
        probe.try_lead().await.unwrap().is_none(),
        "the lock is free while someone leads"
    );
    assert!(a_leads.load(Ordering::SeqCst) ^ b_leads.load(Ordering::SeqCst));
    assert_eq!(advisory_locks_held(&db).await, 1);

    // Stop the leader: the other one takes over.
    let (stop_leader, other_leads) = if leaders.0 {
        (stop_a.clone(), b_leads.clone())
    } else {
        (stop_b.clone(), a_leads.clone())
    };
    stop_leader.cancel();
    wait_until(
        "the other maintainer to take over",
        Duration::from_secs(10),
        || async { other_leads.load(Ordering::SeqCst) },
        |leads| *leads,
    )
    .await;
    assert_eq!(advisory_locks_held(&db).await, 1);

    stop_a.cancel();
    stop_b.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_eq!(advisory_locks_held(&db).await, 0);
}

#[tokio::test]
async fn a_leader_prunes_on_its_own() {
    let db = TestDb::new().await;
    let ids = crate::factory::probes(&db.pool, "tickets", 3).await;
    for id in &ids {
        crate::factory::set_state(
            &db.pool,
            *id,
            "completed",
            Some(chrono::Utc::now() - chrono::TimeDelta::days(8)),
        )
        .await;
    }
    let stop = CancellationToken::new();
    let run = tokio::spawn(Maintainer::new(config(), db.pool.clone()).run(stop.clone()));
    wait_until(
        "the leader to prune old jobs",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs")
                .fetch_one(&db.pool)
                .await
                .unwrap()
        },
        |left| *left == 0,
    )
    .await;
    stop.cancel();
    run.await.unwrap();
}
