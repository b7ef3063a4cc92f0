//! A rate limit shared by every worker replica: one row per limit in Postgres, from which each
//! call reserves a slot in one atomic statement (GCRA: slots 1/rate apart, bursts up to
//! `burst`). Over the limit, the caller is given a slot in the future and waits for it without
//! asking again, so a long backlog does not poll the row.

use std::time::Duration;

use crate::db::Db;

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
    pool: Db,
    name: String,
    config: RateLimitConfig,
}

impl GlobalRateLimit {
    pub fn new(pool: Db, name: impl Into<String>, config: RateLimitConfig) -> Self {
        GlobalRateLimit {
            pool,
            name: name.into(),
            config,
        }
    }

    /// Reserves one call slot: `Ok(None)` to call now, `Ok(Some(wait))` when the slot starts
    /// after `wait` (the caller keeps it: it must not reserve again for that call).
    pub async fn reserve(&self) -> Result<Option<Duration>, sqlx::Error> {
        let per_second = self.config.per_second.max(1e-6);
        let wait_s = sqlx::query_file_scalar!(
            "src/transfer/reserve_rate_slot.sql",
            &self.name,
            1.0 / per_second,
            (self.config.burst - 1.0).max(0.0) / per_second,
        )
        .fetch_one(&self.pool)
        .await?;
        if wait_s <= 0.0 {
            return Ok(None);
        }
        metrics::counter!(RATE_LIMITED).increment(1);
        Ok(Some(Duration::from_secs_f64(wait_s.min(86_400.0))))
    }
}
