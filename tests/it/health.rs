//! Liveness, readiness and metrics.

use crate::support::app::spawn_enqueuer;
use crate::support::monime::payment_completed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_return_200_on_a_migrated_database() {
    let app = spawn_enqueuer().await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_returns_503_when_a_migration_is_missing() {
    let app = spawn_enqueuer().await;
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("migrat"), "{body}");
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_and_batch_sizes() {
    let app = spawn_enqueuer().await;
    assert_eq!(
        app.post_event(&payment_completed("evt-m", "pay-m"))
            .await
            .status,
        202
    );
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("route=\"/webhooks/monime\"")
            && l.contains("status=\"202\"")),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("enqueuer_group_commit_batch_size_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueuer_stops_cleanly_when_shutdown_is_requested() {
    let app = spawn_enqueuer().await;
    assert_eq!(
        app.post_event(&payment_completed("evt-s", "pay-s"))
            .await
            .status,
        202
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), app.stop())
        .await
        .expect("stops within 10 s")
        .expect("stops without error");
}
