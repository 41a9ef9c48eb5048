//! Clients that stop reading: they lose their connection after the write
//! timeout instead of holding the workers and shutdown.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{self, start};

/// Pipelines `requests` pages of 10,000 changes on one connection, more than
/// the socket buffers hold, and returns the connection, never to be read.
fn stall(addr: SocketAddr, requests: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let pipeline: String = (0..requests)
        .map(|i| {
            format!(
                "GET /users/changes?since={}&limit=10000 HTTP/1.1\r\nHost: source\r\n\r\n",
                i * 10_000
            )
        })
        .collect();
    stream.write_all(pipeline.as_bytes()).unwrap();
    stream
}

#[test]
fn a_client_that_never_reads_does_not_hold_the_workers_or_shutdown() {
    let app = start(|c| {
        c.preload = 60_000;
        c.threads = 2;
        c.write_timeout = Duration::from_millis(300);
    });
    let addr = app.running.as_ref().unwrap().addr;
    let stalled = stall(addr, 6);
    // Let both workers take one of its requests and block on the socket.
    std::thread::sleep(Duration::from_millis(100));

    let agent = common::agent_with_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let reply = common::get(&agent, &app.url("/healthz"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!({"status": "ok"}));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Shutdown with another stalled client still connected.
    let stalled_again = stall(addr, 6);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    app.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop((stalled, stalled_again));
}
