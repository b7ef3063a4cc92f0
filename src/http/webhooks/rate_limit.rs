//! Per-client (peer IP) rate limit of the webhook route, with governor's GCRA limiter.
//! Over the limit: 429 with `Retry-After`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::enqueuer::RateLimitSettings;
use crate::http::error::ApiError;

/// Forget idle clients once this many are tracked.
const MAX_TRACKED_CLIENTS: usize = 100_000;

#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl RateLimit {
    /// `None` when the limit is disabled (`per_second == 0`).
    pub fn new(settings: RateLimitSettings) -> Option<RateLimit> {
        let per_second = NonZeroU32::new(settings.per_second)?;
        let burst = NonZeroU32::new(settings.burst).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Some(RateLimit {
            limiter: Arc::new(RateLimiter::keyed(quota)),
        })
    }
}

pub async fn enforce(State(limit): State<RateLimit>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(not_until) = limit.limiter.check_key(&client) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        metrics::counter!("enqueuer_rate_limited_total").increment(1);
        return ApiError::TooManyRequests {
            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response();
    }
    if limit.limiter.len() > MAX_TRACKED_CLIENTS {
        limit.limiter.retain_recent();
    }
    next.run(request).await
}
