//! The real `enqueuer` binary: killed with SIGKILL right after acknowledging, it has lost
//! nothing it acknowledged.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use poda_jobs::testing::{wait_until, TestDb};
use tokio::sync::mpsc;

use crate::support::monime::{self, payment_completed, signature, SECRET};

struct Enqueuer {
    child: Child,
    base: String,
}

impl Drop for Enqueuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_binary(db: &TestDb, envs: &[(&str, &str)]) -> Enqueuer {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_enqueuer"));
    command
        .env("DATABASE_URL", &db.url)
        .env("ENQUEUER_ADDR", format!("127.0.0.1:{port}"))
        .env("MONIME_WEBHOOK_SECRETS", SECRET)
        .env("ADMIN_TOKEN", "process-test-token")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in envs {
        command.env(k, v);
    }
    let child = command.spawn().expect("start the enqueuer binary");
    let enqueuer = Enqueuer {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let url = format!("{}/readyz", enqueuer.base);
    wait_until(
        "the enqueuer to be ready",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .ok()
            }
        },
        |status| *status == Some(200),
    )
    .await;
    enqueuer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueuer_binary_keeps_every_acknowledged_job_after_kill_9() {
    let db = TestDb::new().await;
    let enqueuer = spawn_binary(&db, &[]).await;
    let client = reqwest::Client::new();
    let base = Arc::new(enqueuer.base.clone());
    let (acks, mut acked) = mpsc::unbounded_channel::<i64>();
    let senders: Vec<_> = (0..400)
        .map(|i| {
            let client = client.clone();
            let base = base.clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                let body = serde_json::to_vec(&payment_completed(
                    &format!("evt-k{i}"),
                    &format!("pay-k{i}"),
                ))
                .unwrap();
                let header = signature(SECRET, monime::now(), &body);
                let Ok(response) = client
                    .post(format!("{base}/webhooks/monime"))
                    .header("Monime-Signature", header)
                    .body(body)
                    .send()
                    .await
                else {
                    return;
                };
                if response.status().as_u16() != 202 {
                    return;
                }
                if let Ok(json) = response.json::<serde_json::Value>().await {
                    let _ = acks.send(json["job_id"].as_i64().unwrap());
                }
            })
        })
        .collect();
    drop(acks);

    // Kill as soon as some deliveries are acknowledged, with the rest still in flight.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 50 {
        acknowledged.push(
            acked
                .recv()
                .await
                .expect("the enqueuer acknowledges deliveries"),
        );
    }
    kill(Pid::from_raw(enqueuer.child.id() as i32), Signal::SIGKILL).unwrap();
    for sender in senders {
        let _ = sender.await;
    }
    while let Ok(job) = acked.try_recv() {
        acknowledged.push(job);
    }

    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
        .bind(&acknowledged)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        found as usize,
        acknowledged.len(),
        "every acknowledged job survives"
    );
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE job_id = ANY($1)")
            .bind(&acknowledged)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded as usize, acknowledged.len());
    drop(enqueuer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueuer_binary_exits_0_on_sigterm() {
    let db = TestDb::new().await;
    let mut enqueuer = spawn_binary(&db, &[]).await;
    kill(Pid::from_raw(enqueuer.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_until(
        "the enqueuer to exit",
        Duration::from_secs(10),
        || std::future::ready(enqueuer.child.try_wait().unwrap()),
        |status| status.is_some(),
    )
    .await;
    assert!(status.unwrap().success());
}
