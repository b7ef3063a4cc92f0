use poda_jobs::probe;
use poda_jobs::testing::{wait_until, TestDb};

use crate::support::enqueue_recorded_probes;
use crate::support::process::{spawn_worker_serving_metrics, worker_command};
use crate::support::{count, TIMEOUT};

#[tokio::test]
async fn the_metrics_endpoint_shows_per_queue_counters_and_gauges() {
    let db = TestDb::new().await;
    let concurrency = format!("{}=4", probe::QUEUE);
    let (_worker, addr) = spawn_worker_serving_metrics(|| {
        worker_command(
            &db.url,
            &[
                "--queues",
                probe::QUEUE,
                "--queue-concurrency",
                &concurrency,
            ],
        )
    })
    .await;
    enqueue_recorded_probes(&db.pool, 25, 0).await;
    wait_until(
        "the probes to complete",
        TIMEOUT,
        || async {
            count(
                &db.pool,
                "SELECT count(*) FROM jobs WHERE state = 'completed'",
            )
            .await
        },
        |n| *n == 25,
    )
    .await;

    let url = format!("http://{addr}/metrics");
    let client = reqwest::Client::new();
    let completed = format!("poda_jobs_completed_total{{queue=\"{}\"}} 25", probe::QUEUE);
    let body = wait_until(
        "the completed counter and the queue gauges on /metrics",
        TIMEOUT,
        || async {
            match client.get(&url).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(error) => format!("unreachable: {error}"),
            }
        },
        |body| body.contains(&completed) && body.contains("poda_queue_depth{"),
    )
    .await;
    assert!(
        body.contains(&format!(
            "poda_jobs_claimed_total{{queue=\"{}\"}} 25",
            probe::QUEUE
        )),
        "{body}"
    );
    assert!(body.contains("poda_job_handler_seconds"), "{body}");
    assert!(
        body.contains("poda_queue_oldest_runnable_age_seconds{"),
        "{body}"
    );
}
