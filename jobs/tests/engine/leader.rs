use std::sync::atomic::Ordering;
use std::time::Duration;

use poda_jobs::engine::{Maintainer, MaintainerConfig, PrunerConfig};
use poda_jobs::testing::{wait_until, TestDb};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn config() -> MaintainerConfig {
    MaintainerConfig {
        prune: PrunerConfig {
            interval: Duration::from_millis(50),
            ..PrunerConfig::default()
        },
        leadership_lease: Duration::from_secs(2),
        leadership_retry: Duration::from_millis(50),
    }
}

fn maintainer(db: &TestDb) -> Maintainer {
    Maintainer::new(config(), db.pool.clone(), Uuid::new_v4())
}

/// Live leases of the maintenance duty (0 or 1: the duty is the row's key).
async fn live_leases(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_leaders WHERE expires_at > now()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn only_one_of_two_maintainers_leads_and_the_other_takes_over_when_it_stops() {
    let db = TestDb::new().await;
    let a = maintainer(&db);
    let b = maintainer(&db);
    let (a_leads, b_leads) = (a.leading(), b.leading());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let probe = maintainer(&db);
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
    // Both keep trying every 50 ms, across several renewals; still exactly one leader.
    assert!(
        probe.try_lead().await.unwrap().is_none(),
        "leadership is free while someone leads"
    );
    // (Absence of a second leader is watched over a few renewals; nothing waits on it.)
    let watch_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < watch_until {
        assert!(a_leads.load(Ordering::SeqCst) ^ b_leads.load(Ordering::SeqCst));
        assert!(probe.try_lead().await.unwrap().is_none());
        assert_eq!(live_leases(&db).await, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    assert_eq!(live_leases(&db).await, 1);

    stop_a.cancel();
    stop_b.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_eq!(
        live_leases(&db).await,
        0,
        "a stopped leader gives its lease up"
    );
}

#[tokio::test]
async fn a_leader_that_stops_renewing_is_replaced_once_its_lease_expires() {
    let db = TestDb::new().await;
    // A leader that vanished without a word (its process was killed): it took the row and
    // never renews it.
    let vanished = maintainer(&db).try_lead().await.unwrap();
    assert!(vanished.is_some());
    std::mem::forget(vanished);
    let taken_at = std::time::Instant::now();
    let successor = maintainer(&db);
    let leads = successor.leading();
    let stop = CancellationToken::new();
    let run = tokio::spawn(successor.run(stop.clone()));
    wait_until(
        "the successor to lead",
        Duration::from_secs(10),
        || async { leads.load(Ordering::SeqCst) },
        |leads| *leads,
    )
    .await;
    let waited = taken_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1_900),
        "the successor led before the vanished leader's lease of 2 s expired ({waited:?})"
    );
    stop.cancel();
    run.await.unwrap();
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
    let run = tokio::spawn(maintainer(&db).run(stop.clone()));
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
