//! The outgoing HTTP client of the job kinds that POST to a receiver (events, notifications).

use std::time::Duration;

/// A client whose every request, connecting included, is bounded by `timeout`.
pub fn with_timeout(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
}
