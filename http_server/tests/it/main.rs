//! http_server's integration tests, in one binary: the server in-process
//! over real sockets (`server`), hostile clients against it in a child
//! process (`hostile`), and arbitrary bytes through one connection over an
//! in-memory stream (`properties`).

mod hostile;
mod properties;
mod server;

use std::time::{Duration, Instant};

/// Polls `done` until it holds; fails the test if `limit` passes first.
pub fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "never within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
