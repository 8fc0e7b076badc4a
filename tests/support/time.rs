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

/// [`wait_until`] inside a runtime, for a condition that may have to be awaited (a p2p node's
/// state): polls every 50 ms without holding the runtime's thread; returns how long it took.
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while !pred().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// [`wait_until_async`] for a plain condition, for up to a minute (a wait, not a measurement:
/// the time it took is printed).
pub async fn poll_until(what: &str, mut pred: impl FnMut() -> bool) {
    let took = wait_until_async(what, Duration::from_secs(60), || std::future::ready(pred())).await;
    eprintln!("{what}: after {took:?}");
}
