//! Cancelling a running job: its handler, in a worker process, learns it within a second (by
//! NOTIFY, or by the poll of held runs without LISTEN) and stops; the job stays cancelled.

use std::time::Duration;

use poda_jobs::engine::{enqueue_one_pooled, JobState};
use poda_jobs::probe::ProbeJob;
use poda_jobs::testing::wait_until;
use poda_jobs::RetryPolicy;
use reqwest::Method;

use crate::support::app::{spawn_enqueuer, ADMIN_TOKEN};
use crate::support::process::spawn_worker;

async fn cancel_a_sleeping_probe_through_the_api(worker_args: &[&str]) {
    let app = spawn_enqueuer().await;
    let pool = &app.db.pool;
    let long = ProbeJob {
        record: true,
        sleep_ms: 120_000,
        ..ProbeJob::new(1)
    }
    .to_job(RetryPolicy::default());
    let id = enqueue_one_pooled(pool, &long).await.unwrap().id;
    let mut args = vec!["--queues", poda_jobs::probe::QUEUE, "--concurrency", "1"];
    args.extend_from_slice(worker_args);
    let _worker = spawn_worker(&app.db.url, &args);
    wait_until(
        "the probe to be running in the worker",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM probe_runs WHERE job_id = $1")
                .bind(id.0)
                .fetch_one(pool)
                .await
                .unwrap()
        },
        |n| *n == 1,
    )
    .await;

    let cancelled = app
        .admin(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(
        (cancelled.status, cancelled.body["state"].as_str()),
        (200, Some("cancelled"))
    );

    // The handler itself saw the signal, within a second of the cancel's commit.
    let after_s: f64 = wait_until(
        "the handler to observe the cancellation",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, Option<f64>>(
                "SELECT extract(epoch FROM r.cancel_observed_at - j.finished_at)::float8 \
                 FROM probe_runs r JOIN jobs j ON j.id = r.job_id WHERE r.job_id = $1",
            )
            .bind(id.0)
            .fetch_one(pool)
            .await
            .unwrap()
        },
        |seen| seen.is_some(),
    )
    .await
    .unwrap();
    eprintln!(
        "the handler learnt of the cancel {:.0} ms after it",
        after_s * 1000.0
    );
    assert!(
        after_s < 1.0,
        "the handler learnt of it after {after_s:.3} s"
    );

    // The handler stopped: its only slot runs the next job at once (not in two minutes).
    let next = enqueue_one_pooled(pool, &ProbeJob::new(2).to_job(RetryPolicy::default()))
        .await
        .unwrap()
        .id;
    wait_until(
        "the next job to run in the freed slot",
        Duration::from_secs(15),
        || async {
            poda_jobs::engine::admin::fetch_job(pool, next)
                .await
                .unwrap()
                .state
        },
        |state| *state == JobState::Completed,
    )
    .await;
    // The cancelled run's outcome (written before the slot was freed) left the job cancelled.
    let job = poda_jobs::engine::admin::fetch_job(pool, id).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.attempts, 1);
    assert!(job.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_through_the_api_stops_within_a_second_by_notify() {
    // Lease renewal (which also finds lost runs) runs every 5 s: only the notification is
    // this fast.
    cancel_a_sleeping_probe_through_the_api(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_through_the_api_stops_within_a_second_without_listen() {
    // The default poll interval (1 s): held runs are checked every half of it.
    cancel_a_sleeping_probe_through_the_api(&["--poll-only"]).await;
}
