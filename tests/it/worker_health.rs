//! The worker's `/healthz`, and what a worker does when one of its loops dies.

use std::time::Duration;

use poda_jobs::testing::TestDb;

use crate::support::process::{spawn_worker_serving_metrics, worker_command, WorkerProcess};

/// A worker serving its endpoint on a port it picked, and that endpoint's address.
async fn spawn_announcing(
    database_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (WorkerProcess, String) {
    let (worker, addr) = spawn_worker_serving_metrics(|| {
        let mut command = worker_command(database_url, args);
        for (key, value) in env {
            command.env(key, value);
        }
        command
    })
    .await;
    (worker, addr.to_string())
}

async fn health(addr: &str) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("http://{addr}/healthz")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[tokio::test]
async fn healthz_is_ok_while_every_loop_runs() {
    let db = TestDb::new().await;
    let (mut worker, addr) = spawn_announcing(&db.url, &[], &[]).await;
    let (status, body) = health(&addr).await.expect("healthz answers");
    assert_eq!(status, 200, "{body}");
    let loops = body["loops"].as_array().unwrap();
    for expected in [
        "engine:completer",
        "engine:heartbeat",
        "engine:rescuer",
        "engine:listener",
    ] {
        assert!(loops.iter().any(|l| l == expected), "{expected} in {body}");
    }
    assert!(
        loops
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("batch:tickets:")),
        "{body}"
    );
    worker.sigterm();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
}

// Needs the fail points compiled in: `cargo test --all-features`.
#[cfg(feature = "failpoints")]
mod loop_death {
    use std::time::Duration;

    use poda_jobs::engine::JobState;
    use poda_jobs::testing::{wait_until, TestDb};

    use super::{health, spawn_announcing};
    use crate::support::count_state;
    use crate::support::enqueue_recorded_probes;

    /// The lease renewer panics (a fail point): the process must not go on half alive. Its
    /// health check names the dead loop, it stops claiming, lets its running job finish, and
    /// exits non-zero.
    #[tokio::test]
    async fn a_worker_whose_loop_dies_reports_it_and_exits_non_zero() {
        let db = TestDb::new().await;
        enqueue_recorded_probes(&db.pool, 3, 4_000).await;
        // The heartbeat ticks every second; its second tick panics.
        let (mut worker, addr) = spawn_announcing(
            &db.url,
            &[
                "--concurrency",
                "1",
                "--lease",
                "3s",
                "--shutdown-grace",
                "20s",
            ],
            &[("FAILPOINTS", "engine-heartbeat=1*off->panic")],
        )
        .await;
        wait_until(
            "healthz to name the dead loop",
            Duration::from_secs(20),
            || health(&addr),
            |h| matches!(h, Some((503, body)) if body["dead"][0] == "engine:heartbeat"),
        )
        .await;
        let status = worker.wait_exit(Duration::from_secs(30)).await;
        assert!(
            !status.success(),
            "a worker with a dead loop exits non-zero"
        );
        // It stopped claiming at once: the job it was running finished, the others never started.
        assert_eq!(count_state(&db.pool, JobState::Completed).await, 1);
        assert_eq!(count_state(&db.pool, JobState::Available).await, 2);
    }
}
