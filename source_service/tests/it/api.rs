//! The HTTP contract of SPEC §2, over real sockets.

use std::collections::HashSet;

use crate::common::{self, page_all, start};
use serde_json::Value;

#[test]
fn fresh_batch_mode_returns_exactly_the_new_batch_with_all_headers() {
    let app = start(|_| {});
    let mut expected_head = 0;
    let mut epochs = HashSet::new();
    for i in 0..20 {
        let reply = app.get("/users/changes");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        let batch = reply.array();
        // The first batch only creates; later ones also update.
        let range = if i == 0 { 2..=5 } else { 4..=10 };
        assert!(range.contains(&batch.len()), "{} changes", batch.len());
        expected_head += batch.len() as u64;
        assert_eq!(reply.cursor("X-Next-Cursor"), expected_head);
        assert_eq!(reply.cursor("X-Head-Cursor"), expected_head);
        epochs.insert(reply.header("X-Source-Epoch").unwrap().to_string());
        // And the batch is what the log holds under those numbers.
        let since = expected_head - batch.len() as u64;
        let replay = app.get(&format!("/users/changes?since={since}&limit=10"));
        assert_eq!(replay.array(), batch);
    }
    assert_eq!(epochs.len(), 1, "one epoch per process");
}

#[test]
fn since_mode_replays_then_generates_when_caught_up() {
    let app = start(|c| c.preload = 2_500);
    let head = app
        .get("/users/changes?since=0&limit=1")
        .cursor("X-Head-Cursor");
    assert_eq!(head, 2_500, "exactly the preload");

    let reply = app.get("/users/changes?since=0");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, "application/json");
    assert_eq!(reply.array().len(), 1000, "default limit");
    assert_eq!(reply.cursor("X-Next-Cursor"), 1000);
    assert_eq!(reply.cursor("X-Head-Cursor"), head);
    assert!(!reply.header("X-Source-Epoch").unwrap().is_empty());

    let reply = app.get(&format!("/users/changes?since={}&limit=10000", head - 3));
    assert_eq!(reply.array().len(), 3);
    assert_eq!(reply.cursor("X-Next-Cursor"), head);

    // Caught up: a fresh batch, numbered right after the head.
    let reply = app.get(&format!("/users/changes?since={head}"));
    let batch = reply.array();
    assert!((4..=10).contains(&batch.len()));
    assert_eq!(reply.cursor("X-Next-Cursor"), head + batch.len() as u64);
    assert_eq!(reply.cursor("X-Head-Cursor"), head + batch.len() as u64);

    // A caught-up reader with a small limit gets the start of the batch.
    let head = head + batch.len() as u64;
    let reply = app.get(&format!("/users/changes?since={head}&limit=1"));
    assert_eq!(reply.array().len(), 1);
    assert_eq!(reply.cursor("X-Next-Cursor"), head + 1);
    assert!(reply.cursor("X-Head-Cursor") > head + 1);
}

#[test]
fn since_zero_on_a_fresh_start_generates() {
    let app = start(|_| {});
    let reply = app.get("/users/changes?since=0");
    assert_eq!(reply.status, 200);
    let n = reply.array().len() as u64;
    assert!((2..=5).contains(&n));
    assert_eq!(reply.cursor("X-Next-Cursor"), n);
    assert_eq!(reply.cursor("X-Head-Cursor"), n);
}

#[test]
fn paging_a_preloaded_log_returns_every_change_once_in_order() {
    let app = start(|c| c.preload = 25_000);
    let by_10000 = page_all(&app, 0, 10_000);
    let head = by_10000.len() as u64;
    assert_eq!(head, 25_000, "exactly the preload");
    // Pages of other sizes see the same changes in the same order (paging
    // stops at the head, so nothing new was generated meanwhile).
    for limit in [1_000, 777] {
        assert_eq!(page_all(&app, 0, limit), by_10000, "limit {limit}");
    }
    let tail = page_all(&app, head - 5, 10);
    assert_eq!(tail, by_10000[head as usize - 5..]);
    // Every change is distinct: new users and updates all carry their own timestamp.
    let distinct: HashSet<String> = by_10000.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), by_10000.len());
}

#[test]
fn malformed_parameters_are_400_with_a_json_error() {
    let app = start(|c| c.preload = 100);
    for query in [
        "since=abc",
        "since=-1",
        "since=",
        "since=1.5",
        "since=0&limit=0",
        "since=0&limit=10001",
        "since=0&limit=-1",
        "since=0&limit=abc",
        "since=0&limit=",
    ] {
        let reply = app.get(&format!("/users/changes?{query}"));
        assert_eq!(reply.status, 400, "{query}");
        let error = reply.error();
        assert!(!error.is_empty());
        assert!(reply.header("X-Next-Cursor").is_none());
    }
    // What would be ignored is refused instead, naming the parameter, and
    // nothing is generated for it.
    let head = app
        .get("/users/changes?since=0&limit=1")
        .cursor("X-Head-Cursor");
    assert_eq!(head, 100);
    for (query, error) in [
        ("limit=3", "limit is only read together with since"),
        ("since=0&limit=10000&foo=bar", "unknown parameter \"foo\""),
        ("sinse=5", "unknown parameter \"sinse\""),
        ("since=5&since=5", "since is given more than once"),
        ("since=+1", "since must be a whole number"),
    ] {
        let reply = app.get(&format!("/users/changes?{query}"));
        assert_eq!(reply.status, 400, "{query}");
        assert!(reply.error().contains(error), "{query}: {}", reply.error());
    }
    for (query, next) in [("since=01&limit=1", 2), ("since=%39%39&limit=1", 100)] {
        let reply = app.get(&format!("/users/changes?{query}"));
        assert_eq!(reply.status, 200, "{query}");
        assert_eq!(reply.cursor("X-Next-Cursor"), next, "{query}");
    }
    let reply = app.get("/users/changes?since=0&limit=1");
    assert_eq!(reply.cursor("X-Head-Cursor"), head, "nothing was generated");
}

#[test]
fn cursors_outside_the_log_are_410_with_a_json_error_and_where_to_restart() {
    let app = start(|c| {
        c.preload = 1_000;
        c.log_capacity = 100;
    });
    let number = |reply: &common::Reply, name: &str| -> Option<u64> {
        reply.header(name).and_then(|value| value.parse().ok())
    };
    let first = app.get("/users/changes?since=999999&limit=1");
    assert_eq!(first.status, 410);
    let head = number(&first, "X-Head-Cursor").unwrap();
    assert!(head >= 1_000);

    for since in [0, head - 101, head + 1] {
        let reply = app.get(&format!("/users/changes?since={since}"));
        assert_eq!(reply.status, 410, "since={since}");
        // The body is the contract's error object and nothing else.
        let body = reply.json();
        let members: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(members, ["error"], "since={since}");
        assert!(!reply.error().is_empty());
        assert_eq!(number(&reply, "X-Min-Cursor"), Some(head - 100));
        assert_eq!(number(&reply, "X-Head-Cursor"), Some(head));
        assert!(reply.header("X-Source-Epoch").is_some());
    }
    let reply = app.get(&format!("/users/changes?since={}", head - 100));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.array().len(), 100);
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let app = start(|_| {});
    for path in ["/", "/users", "/users/changes/", "/nope", "/healthz/"] {
        let reply = app.get(path);
        assert_eq!(reply.status, 404, "{path}");
        assert!(!reply.error().is_empty());
    }
    for (method, path) in [
        ("POST", "/users/changes"),
        ("PUT", "/healthz"),
        ("DELETE", "/metrics"),
    ] {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(app.url(path))
            .body(())
            .unwrap();
        let response = app
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let reply = common::into_reply(response);
        assert_eq!(reply.status, 405, "{method} {path}");
        let allow = if path == "/users/changes" {
            "GET"
        } else {
            "GET, HEAD"
        };
        assert_eq!(reply.header("Allow"), Some(allow), "{method} {path}");
        assert!(reply.error().contains(method));
    }
}

#[test]
fn head_is_get_without_a_body_and_never_generates() {
    let app = start(|c| c.preload = 100);
    let addr = app.running.as_ref().unwrap().addr;
    let head = app
        .get("/users/changes?since=0&limit=1")
        .cursor("X-Head-Cursor");
    for path in ["/healthz", "/metrics"] {
        let response = raw_request(
            addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
        assert!(response.ends_with("\r\n\r\n"), "no body: {response}");
        let length: usize = response
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("Content-Length");
        assert!(length > 0, "the length of the GET body: {response}");
    }
    let response = raw_request(
        addr,
        &format!(
            "HEAD /users/changes?since={head} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
    assert!(response.contains("\r\nAllow: GET\r\n"), "{response}");
    assert_eq!(
        app.get("/users/changes?since=0&limit=1")
            .cursor("X-Head-Cursor"),
        head
    );
}

/// Sends one raw HTTP/1.1 request and returns the whole response as text.
fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn absolute_form_request_targets_are_answered() {
    let app = start(|c| c.preload = 100);
    let addr = app.running.as_ref().unwrap().addr;
    let response = raw_request(
        addr,
        &format!("GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    let response = raw_request(
        addr,
        "GET http://elsewhere.example/users/changes?since=0&limit=3 HTTP/1.1\r\n\
         Host: elsewhere.example\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("X-Next-Cursor: 3\r\n"), "{response}");
}

#[test]
fn healthz_and_metrics() {
    let app = start(|c| c.preload = 50);
    // The first request of all is a scrape: the request counter is there.
    let first = String::from_utf8(app.get("/metrics").body).unwrap();
    assert!(
        first.contains(r#"source_requests_total{code="200",path="/users/changes"} 0"#),
        "missing source_requests_total in the first scrape:\n{first}"
    );
    let reply = app.get("/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!({"status": "ok"}));

    app.get("/users/changes");
    for path in ["/a", "/b", "/c/d"] {
        assert_eq!(app.get(path).status, 404);
    }
    let reply = app.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("text/plain"));
    let text = String::from_utf8(reply.body).unwrap();
    for expected in [
        r#"source_requests_total{code="200",path="/users/changes"} 1"#,
        r#"source_requests_total{code="200",path="/healthz"} 1"#,
        r#"source_requests_total{code="404",path="other"} 3"#,
        "source_changes_generated_total ",
        "source_change_log_entries ",
        "source_request_duration_seconds_bucket{",
        "source_request_duration_seconds_count{",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        !text.contains("path=\"/a\""),
        "unknown paths share one label"
    );
}

/// The fields that the seed decides (everything but the timestamp).
fn seeded_fields(changes: &[Value]) -> Vec<Value> {
    changes
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(object) = c.as_object_mut() {
                object.remove("last_updated_at");
            }
            c
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_changes() {
    let run = |seed: u64| {
        let app = start(|c| {
            c.seed = Some(seed);
            c.invalid_rate = 0.2;
            c.preload = 3_000;
        });
        let mut changes = page_all(&app, 0, 10_000);
        for _ in 0..20 {
            changes.extend(app.get("/users/changes").array());
        }
        seeded_fields(&changes)
    };
    let first = run(7);
    let again = run(7);
    assert_eq!(first.len(), again.len());
    assert_eq!(first, again);
    let other = run(8);
    let ids =
        |changes: &[Value]| -> Vec<Value> { changes.iter().map(|c| c["id"].clone()).collect() };
    assert_ne!(ids(&first), ids(&other));
}

#[test]
fn each_start_has_a_new_epoch() {
    let a = start(|_| {});
    let b = start(|_| {});
    let epoch = |app: &common::TestApp| {
        app.get("/users/changes")
            .header("X-Source-Epoch")
            .unwrap()
            .to_string()
    };
    assert_ne!(epoch(&a), epoch(&b));
}

#[test]
fn shutdown_finishes_answered_requests_and_closes_the_port() {
    let app = start(|c| c.preload = 20_000);
    let base = app.base.clone();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                // Requests sent after shutdown began may get no answer at all.
                let agent = common::agent_with_timeout(std::time::Duration::from_secs(2));
                let mut complete = 0;
                loop {
                    let url = format!("{base}/users/changes?since=0&limit=10000");
                    let response = match agent.get(&url).call() {
                        Ok(response) => response,
                        // Refused or dropped before an answer began: fine.
                        Err(_) => return complete,
                    };
                    // An answer that began must arrive whole.
                    let reply = common::into_reply(response);
                    assert_eq!(reply.array().len(), 10_000);
                    complete += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    app.shutdown();
    for client in clients {
        assert!(client.join().unwrap() > 0);
    }
    assert!(std::net::TcpStream::connect(base.trim_start_matches("http://")).is_err());
}
