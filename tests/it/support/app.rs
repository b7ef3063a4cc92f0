//! `spawn_enqueuer`: the enqueuer in-process on port 0 against a fresh `TestDb`.

use std::net::SocketAddr;
use std::sync::LazyLock;

use poda::config::{DatabaseSettings, Secret};
use poda::enqueuer::{Enqueuer, EnqueuerSettings};
use poda_jobs::testing::TestDb;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::monime;

pub const ADMIN_TOKEN: &str = "test-admin-token";

static TELEMETRY: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        poda::telemetry::init(poda::telemetry::LogFormat::Pretty);
    }
});

pub struct TestApp {
    pub db: TestDb,
    pub base: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings for a test: both secrets, the admin token, defaults otherwise.
pub fn test_settings(db: &TestDb) -> EnqueuerSettings {
    let mut settings = EnqueuerSettings::new(
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        DatabaseSettings::new(Secret::new(db.url.clone()), 10),
        vec![
            Secret::new(monime::SECRET),
            Secret::new(monime::ROTATED_SECRET),
        ],
    );
    settings.admin_token = Secret::new(ADMIN_TOKEN);
    settings
}

pub async fn spawn_enqueuer() -> TestApp {
    spawn_enqueuer_with(|_| {}).await
}

pub async fn spawn_enqueuer_with(adjust: impl FnOnce(&mut EnqueuerSettings)) -> TestApp {
    LazyLock::force(&TELEMETRY);
    let db = TestDb::new().await;
    let mut settings = test_settings(&db);
    adjust(&mut settings);
    let enqueuer = Enqueuer::build_with_pool(settings, db.pool.clone())
        .await
        .expect("build the enqueuer");
    serve(db, enqueuer)
}

/// The enqueuer in-process on `db`, connecting as `settings` say (through a pooler, say).
pub async fn spawn_enqueuer_connecting(db: TestDb, settings: EnqueuerSettings) -> TestApp {
    LazyLock::force(&TELEMETRY);
    let enqueuer = Enqueuer::build(settings).await.expect("build the enqueuer");
    serve(db, enqueuer)
}

fn serve(db: TestDb, enqueuer: Enqueuer) -> TestApp {
    let base = format!("http://127.0.0.1:{}", enqueuer.port());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(enqueuer.run_until_stopped(shutdown.clone()));
    TestApp {
        db,
        base,
        client: reqwest::Client::new(),
        shutdown,
        server: Some(server),
    }
}

/// A response's status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            retry_after,
        }
    }

    pub fn job_id(&self) -> i64 {
        self.body["job_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no job_id in {self:?}"))
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` to the webhook with the given signature header (or none).
    pub async fn post_webhook_raw(&self, body: Vec<u8>, signature: Option<String>) -> Reply {
        self.try_post_webhook_raw(body, signature)
            .await
            .expect("send the webhook")
    }

    /// As [`TestApp::post_webhook_raw`], with the transport error (no answer) as an error.
    pub async fn try_post_webhook_raw(
        &self,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> reqwest::Result<Reply> {
        let mut request = self
            .client
            .post(self.url("/webhooks/monime"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("Monime-Signature", signature);
        }
        Ok(Reply::from(request.send().await?).await)
    }

    /// POSTs `body`, signed now with the primary secret.
    pub async fn post_signed(&self, body: Vec<u8>) -> Reply {
        let signature = monime::signature(monime::SECRET, monime::now(), &body);
        self.post_webhook_raw(body, Some(signature)).await
    }

    pub async fn post_event(&self, event: &Value) -> Reply {
        self.post_signed(serde_json::to_vec(event).unwrap()).await
    }

    /// As [`TestApp::post_event`], with the transport error (no answer) as an error.
    pub async fn try_post_event(&self, event: &Value) -> reqwest::Result<Reply> {
        let body = serde_json::to_vec(event).unwrap();
        let signature = monime::signature(monime::SECRET, monime::now(), &body);
        self.try_post_webhook_raw(body, Some(signature)).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// (jobs, webhook_events) rows in the database.
    pub async fn counts(&self) -> (i64, i64) {
        sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM webhook_events)")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.take().unwrap().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
