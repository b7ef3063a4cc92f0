//! Monime's internal-transfer API: create (`POST /v1/internal-transfers`, idempotent by key)
//! and read (`GET /v1/internal-transfers/{id}`). One `reqwest::Client` per process, so
//! connections are reused; every call has a connect timeout and a total timeout.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_VERSION: &str = "caph.2025-08-23";
pub const CREATE_PATH: &str = "/v1/internal-transfers";
/// Monime's limit on `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

/// The API token: it never appears in `Debug` output or logs.
#[derive(Clone, Default)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(value: impl Into<String>) -> Self {
        ApiToken(value.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken([redacted])")
    }
}

/// An `Idempotency-Key`: at most 64 characters, derived from the ticket and the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of one transfer attempt chain: stable across retries, new only when an operator
    /// retries a transfer Monime marked failed (a new generation).
    pub fn for_ticket(ticket_id: i64, generation: i32) -> Self {
        IdempotencyKey(format!("poda-commission-{ticket_id}-g{generation}"))
    }

    pub fn parse(text: impl Into<String>) -> Result<Self, String> {
        let text = text.into();
        if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY_LEN || !text.is_ascii() {
            return Err(format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} ASCII characters, not {text:?}"
            ));
        }
        Ok(IdempotencyKey(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct MonimeConfig {
    /// `MONIME_API_URL`, without a trailing slash.
    pub base_url: String,
    pub token: ApiToken,
    pub space_id: String,
    pub version: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// The create request's body (DESIGN §7). Serialised once, stored, and resent byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTransfer {
    pub amount: Amount,
    pub source_financial_account: AccountRef,
    pub destination_financial_account: AccountRef,
    pub description: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub currency: String,
    /// Minor units.
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRef {
    pub id: String,
}

/// Monime's view of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalTransfer {
    pub id: String,
    pub status: TransferStatus,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub failure_detail: Option<FailureDetail>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Pending => "pending",
            TransferStatus::Processing => "processing",
            TransferStatus::Completed => "completed",
            TransferStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// Monime's response envelope: `{"success", "messages", "result"}`.
#[derive(Debug, Deserialize)]
struct Envelope {
    result: InternalTransfer,
}

#[derive(Debug, thiserror::Error)]
pub enum MonimeError {
    /// No answer: connection refused or reset, timeout, or the body was cut off.
    #[error("Monime could not be reached: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("Monime answered {status}: {body}")]
    Status {
        status: u16,
        /// From `Retry-After` (seconds), when given.
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("Monime's answer does not decode: {source}; body: {body}")]
    Decode {
        #[source]
        source: serde_json::Error,
        body: String,
    },
}

impl MonimeError {
    /// Whether the call may succeed if tried again: connection errors, timeouts, 429, 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            MonimeError::Transport(_) | MonimeError::Decode { .. } => true,
            MonimeError::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }
}

/// A Monime API client. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct MonimeClient {
    http: reqwest::Client,
    config: MonimeConfig,
}

impl MonimeClient {
    pub fn new(mut config: MonimeConfig) -> Result<Self, reqwest::Error> {
        while config.base_url.ends_with('/') {
            config.base_url.pop();
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        Ok(MonimeClient { http, config })
    }

    pub fn config(&self) -> &MonimeConfig {
        &self.config
    }

    /// Creates a transfer. `body` is sent exactly as given; Monime answers a repeated key with
    /// the same body by the original transfer, and with a different body by 409.
    pub async fn create_internal_transfer(
        &self,
        key: &IdempotencyKey,
        body: &str,
    ) -> Result<InternalTransfer, MonimeError> {
        let request = self
            .http
            .post(format!("{}{CREATE_PATH}", self.config.base_url))
            .header("Idempotency-Key", key.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        self.send(request).await
    }

    /// Reads a transfer's current state.
    pub async fn get_internal_transfer(&self, id: &str) -> Result<InternalTransfer, MonimeError> {
        let request = self
            .http
            .get(format!("{}{CREATE_PATH}/{id}", self.config.base_url));
        self.send(request).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<InternalTransfer, MonimeError> {
        let response = request
            .bearer_auth(self.config.token.expose())
            .header("Monime-Space-Id", &self.config.space_id)
            .header("Monime-Version", &self.config.version)
            .send()
            .await
            .map_err(MonimeError::Transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(MonimeError::Transport)?;
        if !status.is_success() {
            return Err(MonimeError::Status {
                status: status.as_u16(),
                retry_after,
                body: excerpt(&bytes),
            });
        }
        serde_json::from_slice::<Envelope>(&bytes)
            .map(|e| e.result)
            .map_err(|source| MonimeError::Decode {
                source,
                body: excerpt(&bytes),
            })
    }
}

/// The first 300 bytes of a body, for error messages.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
    text.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_fit_monime_limit_for_any_ticket() {
        let key = IdempotencyKey::for_ticket(i64::MAX, i32::MAX);
        assert!(key.as_str().len() <= MAX_IDEMPOTENCY_KEY_LEN);
        assert!(IdempotencyKey::parse(key.as_str()).is_ok());
        assert_ne!(
            IdempotencyKey::for_ticket(7, 1),
            IdempotencyKey::for_ticket(7, 2)
        );
        assert!(IdempotencyKey::parse("x".repeat(65)).is_err());
    }

    #[test]
    fn token_does_not_print() {
        let token = ApiToken::new("sk_live_secret");
        assert!(!format!("{token:?}").contains("sk_live_secret"));
    }

    #[test]
    fn create_body_has_monime_field_names() {
        let body = CreateTransfer {
            amount: Amount {
                currency: "SLE".into(),
                value: 1250,
            },
            source_financial_account: AccountRef { id: "fa-a".into() },
            destination_financial_account: AccountRef { id: "fa-b".into() },
            description: "d".into(),
            metadata: Default::default(),
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(
            text,
            r#"{"amount":{"currency":"SLE","value":1250},"sourceFinancialAccount":{"id":"fa-a"},"destinationFinancialAccount":{"id":"fa-b"},"description":"d","metadata":{}}"#
        );
    }
}
