//! Clocks and polling for the tests.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall clock, milliseconds since the Unix epoch: what the daemons' log lines carry.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until `pred` holds, polling every 50 ms; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 50 ms until it holds or `limit` passed; whether it held (asked once more at
/// the end).
pub fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// [`wait_until`] for a condition that must be awaited (a p2p node's state), inside a runtime.
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !pred().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
