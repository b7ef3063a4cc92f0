//! Admin endpoints: bearer auth, job status and operator actions, queue numbers.

use reqwest::Method;

use crate::support::app::{spawn_enqueuer, ADMIN_TOKEN};
use crate::support::monime::payment_completed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_return_401_without_the_right_bearer_token() {
    let app = spawn_enqueuer().await;
    let job = app
        .post_event(&payment_completed("evt-a1", "pay-a1"))
        .await
        .job_id();
    for (method, path) in [
        (Method::GET, format!("/jobs/{job}")),
        (Method::POST, format!("/jobs/{job}/retry")),
        (Method::POST, format!("/jobs/{job}/cancel")),
        (Method::GET, "/queues".to_owned()),
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let reply = app.admin(method.clone(), &path, token).await;
            assert_eq!(reply.status, 401, "{method} {path} {token:?}");
            assert!(reply.body["error"].is_string());
        }
    }
    // Nothing changed: the job is still waiting.
    let state: String = sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shows_cancels_and_retries_a_job() {
    let app = spawn_enqueuer().await;
    let job = app
        .post_event(&payment_completed("evt-a2", "pay-a2"))
        .await
        .job_id();
    let token = Some(ADMIN_TOKEN);

    let shown = app.admin(Method::GET, &format!("/jobs/{job}"), token).await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["queue"], "tickets");
    assert_eq!(shown.body["state"], "available");
    assert_eq!(shown.body["attempts"], 0);
    assert!(shown.body["max_attempts"].as_i64().unwrap() > 0);
    assert!(shown.body["run_at"].is_string());

    // Retrying a job that is waiting anyway is allowed; retrying a finished one is not.
    let cancelled = app
        .admin(Method::POST, &format!("/jobs/{job}/cancel"), token)
        .await;
    assert_eq!(
        (cancelled.status, cancelled.body["state"].as_str()),
        (200, Some("cancelled"))
    );
    let again = app
        .admin(Method::POST, &format!("/jobs/{job}/cancel"), token)
        .await;
    assert_eq!(again.status, 409, "{again:?}");
    assert!(again.body["error"].as_str().unwrap().contains("cancelled"));

    let retried = app
        .admin(Method::POST, &format!("/jobs/{job}/retry"), token)
        .await;
    assert_eq!(
        (retried.status, retried.body["state"].as_str()),
        (200, Some("available"))
    );

    sqlx::query("UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = $1")
        .bind(job)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let conflict = app
        .admin(Method::POST, &format!("/jobs/{job}/retry"), token)
        .await;
    assert_eq!(conflict.status, 409);

    // The two actions that went through are in the audit trail as the API's; the refused
    // ones left nothing.
    let trail: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor, action, data->>'was' FROM audit_events \
         WHERE subject_type = 'job' AND subject_id = $1::text ORDER BY id",
    )
    .bind(job)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let expected = [
        ("api:admin", "job.cancelled", "available"),
        ("api:admin", "job.retried", "cancelled"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(trail, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_returns_404_for_an_unknown_job() {
    let app = spawn_enqueuer().await;
    for path in [
        "/jobs/424242",
        "/jobs/not-a-number",
        "/jobs/424242/retry",
        "/jobs/424242/cancel",
    ] {
        let method = if path.ends_with("retry") || path.ends_with("cancel") {
            Method::POST
        } else {
            Method::GET
        };
        let reply = app.admin(method, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert!(reply.body["error"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_queue_numbers() {
    let app = spawn_enqueuer().await;
    for i in 0..3 {
        let reply = app
            .post_event(&payment_completed(
                &format!("evt-q{i}"),
                &format!("pay-q{i}"),
            ))
            .await;
        assert_eq!(reply.status, 202);
    }
    let reply = app.admin(Method::GET, "/queues", Some(ADMIN_TOKEN)).await;
    assert_eq!(reply.status, 200);
    let tickets = reply.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "tickets")
        .cloned()
        .expect("a tickets row");
    assert_eq!(tickets["pending"], 3);
    assert_eq!(tickets["running"], 0);
    assert_eq!(tickets["failed"], 0);
}
