//! Waiting on state instead of sleeping.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every 20 ms until `done(&value)` holds, and returns that value; panics after
/// `timeout` with the last value seen and `what`.
pub async fn wait_until<T, F, Fut, D>(what: &str, timeout: Duration, mut probe: F, done: D) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    D: Fn(&T) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {value:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
