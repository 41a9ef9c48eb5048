//! Shutdown as the threads see it: one flag, set once, and sleeps that end
//! early when it is set, so that no backoff or poll interval delays an exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Whether shutdown has started.
pub fn stopping(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Acquire)
}

/// Sleeps for `total`, or less if shutdown starts meanwhile.
pub fn sleep_unless_stopping(total: Duration, flag: &AtomicBool) {
    let deadline = Instant::now() + total;
    while !stopping(flag) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(25)));
    }
}
