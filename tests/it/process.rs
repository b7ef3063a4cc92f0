//! The real `enqueuer` binary: killed with SIGKILL right after acknowledging, it has lost
//! nothing it acknowledged.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use poda_jobs::testing::{wait_until, TestDb};
use tokio::sync::{mpsc, oneshot};

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

/// Starts the enqueuer binary on port 0 (the system picks a free port as it binds) and
/// learns the port from its "enqueuer listening" log line.
async fn spawn_binary(db: &TestDb, envs: &[(&str, &str)]) -> Enqueuer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_enqueuer"));
    command
        .env("DATABASE_URL", &db.url)
        .env("ENQUEUER_ADDR", "127.0.0.1:0")
        .env("MONIME_WEBHOOK_SECRETS", SECRET)
        .env("ADMIN_TOKEN", "process-test-token")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,poda::enqueuer=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start the enqueuer binary");
    let port = listening_port(child.stderr.take().expect("stderr is piped"));
    let mut enqueuer = Enqueuer {
        child,
        base: String::new(),
    };
    let port = tokio::time::timeout(Duration::from_secs(20), port)
        .await
        .expect("the enqueuer reports its port within 20 s")
        .unwrap_or_else(|_| Err("the log reader stopped".into()))
        .unwrap_or_else(|stderr| panic!("the enqueuer exited before listening:\n{stderr}"));
    enqueuer.base = format!("http://127.0.0.1:{port}");
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

/// Reads the enqueuer's JSON log lines to their end (echoed with `TEST_LOG` set); resolves
/// with the port of its "enqueuer listening" line, or with what it read if the log ends
/// first.
fn listening_port(stderr: ChildStderr) -> oneshot::Receiver<Result<u16, String>> {
    let (tell, told) = oneshot::channel();
    let forward = std::env::var("TEST_LOG").is_ok();
    std::thread::spawn(move || {
        let mut tell = Some(tell);
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if forward {
                eprintln!("{line}");
            }
            let Some(pending) = tell.take() else { continue };
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match event["port"].as_u64() {
                Some(port) if event["message"] == "enqueuer listening" => {
                    let _ = pending.send(Ok(port as u16));
                }
                _ => {
                    seen.push_str(&line);
                    seen.push('\n');
                    tell = Some(pending);
                }
            }
        }
        if let Some(tell) = tell {
            let _ = tell.send(Err(seen));
        }
    });
    told
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
