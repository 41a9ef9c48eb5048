//! Many clients at once: the log is never torn, duplicated or reordered, and
//! sequence numbers stay unique and gapless (SPEC §2, last paragraph).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;

use crate::common::{self, get, start};
use serde_json::Value;

/// What one client saw: for each sequence number from 1 up, the change.
type Seen = Vec<String>;

#[test]
fn thirty_two_clients_paging_with_since_see_one_consistent_log() {
    const CLIENTS: usize = 32;
    const PRELOAD: u64 = 20_000;
    const TARGET: u64 = 26_000;
    let app = Arc::new(start(|c| {
        c.preload = PRELOAD;
        c.threads = 8;
        c.invalid_rate = 0.05;
    }));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let app = Arc::clone(&app);
            thread::spawn(move || -> Seen {
                let agent = common::agent();
                let mut rng = fastrand::Rng::with_seed(n as u64);
                let mut seen = Seen::new();
                let mut cursor = 0u64;
                while cursor < TARGET {
                    // A few clients also ask for fresh batches, which append
                    // to the log while the others read it.
                    if n % 4 == 0 {
                        let reply = get(&agent, &app.url("/users/changes"));
                        assert_eq!(reply.status, 200);
                    }
                    let limit = rng.usize(1..=1500);
                    let url = app.url(&format!("/users/changes?since={cursor}&limit={limit}"));
                    let reply = get(&agent, &url);
                    assert_eq!(reply.status, 200);
                    let page = reply.array();
                    assert!(!page.is_empty() && page.len() <= limit);
                    let next = reply.cursor("X-Next-Cursor");
                    assert_eq!(next, cursor + page.len() as u64, "no gap, no overlap");
                    assert!(reply.cursor("X-Head-Cursor") >= next);
                    seen.extend(page.iter().map(Value::to_string));
                    cursor = next;
                }
                seen
            })
        })
        .collect();
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    // The reference: the whole log read once more, after everyone finished.
    let reference = common::page_all(&app, 0, 10_000);
    let reference: Vec<String> = reference.iter().map(Value::to_string).collect();
    assert!(reference.len() as u64 >= TARGET);
    for (n, client) in seen.iter().enumerate() {
        assert!(client.len() as u64 >= TARGET);
        // Same change under the same sequence number for every client.
        assert_eq!(
            client[..],
            reference[..client.len()],
            "client {n} saw a different log"
        );
    }
    // No change appears under two sequence numbers.
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (seq, change) in reference.iter().enumerate() {
        if let Some(first) = at.insert(change, seq + 1) {
            panic!("seq {} repeats seq {first}: {change}", seq + 1);
        }
    }
}
