//! A rate limit shared by every worker replica: a token bucket row in Postgres, refilled and
//! taken from in one atomic statement. Over the limit, the caller is told how long to wait.

use std::time::Duration;

use sqlx::PgPool;

/// The bucket that limits transfer creations at Monime.
pub const TRANSFER_BUCKET: &str = "monime_transfers";
pub const RATE_LIMITED: &str = "poda_transfer_rate_limited_total";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second.
    pub per_second: f64,
    /// Largest burst.
    pub burst: f64,
}

impl RateLimitConfig {
    /// `per_minute` transfers a minute, with a burst of `burst` (at least 1).
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        RateLimitConfig {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pool: PgPool,
    name: String,
    config: RateLimitConfig,
}

impl GlobalRateLimit {
    pub fn new(pool: PgPool, name: impl Into<String>, config: RateLimitConfig) -> Self {
        GlobalRateLimit {
            pool,
            name: name.into(),
            config,
        }
    }

    /// Takes one token: `Ok(None)` when granted, `Ok(Some(wait))` when over the limit.
    pub async fn take(&self) -> Result<Option<Duration>, sqlx::Error> {
        let (granted, tokens): (bool, f64) = sqlx::query_as(include_str!("take_rate_token.sql"))
            .bind(&self.name)
            .bind(self.config.per_second)
            .bind(self.config.burst)
            .fetch_one(&self.pool)
            .await?;
        if granted {
            return Ok(None);
        }
        metrics::counter!(RATE_LIMITED).increment(1);
        let missing = (1.0 - tokens).max(0.0);
        let wait = missing / self.config.per_second.max(1e-6);
        Ok(Some(Duration::from_secs_f64(wait.clamp(0.01, 3600.0))))
    }
}
