//! `PrivateCluster`: a server of the test's own that can be stopped and started again
//! without touching the shared test server.

use std::path::PathBuf;

use poda_jobs::testing::PrivateCluster;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn a_private_cluster_keeps_its_data_across_a_stop_and_a_start() {
    let mut cluster = PrivateCluster::start().await;
    let url = cluster.create_database("kept").await;
    let port = cluster.port();

    let mut conn = PgConnection::connect(&url).await.unwrap();
    // This is the private cluster, not the shared server.
    let data_directory: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        PathBuf::from(data_directory).canonicalize().unwrap(),
        cluster.data_dir().canonicalize().unwrap()
    );
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES (1, 'written before the stop')")
        .execute(&mut conn)
        .await
        .unwrap();

    cluster.stop().await;
    let on_open_connection = sqlx::query("SELECT 1").execute(&mut conn).await;
    assert!(
        on_open_connection.is_err(),
        "a query succeeded on a stopped server"
    );
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "a stopped server accepted a connection"
    );

    cluster.start_again().await;
    assert_eq!(cluster.port(), port, "the URL handed out stays valid");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(body, "written before the stop");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_dropped_private_cluster_is_stopped_and_removed() {
    let cluster = PrivateCluster::start().await;
    let url = cluster.admin_url();
    let dir = cluster.data_dir().to_path_buf();
    PgConnection::connect(&url).await.unwrap();
    drop(cluster);
    assert!(!dir.exists(), "{dir:?} is left behind");
    assert!(PgConnection::connect(&url).await.is_err());
}
