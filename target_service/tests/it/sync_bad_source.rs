//! A source that fails, is down, slow, or breaks the protocol: each is a
//! fetch error that ends the round with the cursor kept, never a crash or
//! a page half applied.

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn a_failing_source_is_counted_and_retried_with_the_cursor_kept() {
    let db = TestDb::new();
    let settings = [("MAX_RESPONSE_BYTES", "100000")];
    let (log, source, target) = synced_backlog(&db, 10, &settings, Duration::from_secs(10));
    let bad_answers = [
        Reply::raw(500, "{\"error\":\"boom\"}"),
        // Not followed, and not a page either.
        Reply::raw(302, "[]"),
        Reply::raw(200, "this is not json"),
        Reply::raw(200, "{\"not\":\"an array\"}"),
        Reply::raw(200, &format!("[\"{}\"]", "x".repeat(200_000))),
    ];
    let mut errors = target.metrics.fetch_errors.get();
    for answer in bad_answers {
        source.set_handler(move |_| answer.clone());
        wait_until("fetch error counted", Duration::from_secs(10), || {
            target.metrics.fetch_errors.get() > errors
        });
        errors = target.metrics.fetch_errors.get();
        assert_eq!(
            db.count("SELECT cursor FROM sync_state"),
            10,
            "the cursor stays"
        );
    }
    let (_, status) = get(&format!("http://{}/status", target.addr));
    assert!(serde_json::from_str::<Value>(&status).unwrap()["last_error"].is_string());
    // Back to normal: new changes arrive.
    log.changes
        .lock()
        .unwrap()
        .push(profile(11, "2025-07-01T10:00:00Z"));
    let log2 = log.clone();
    source.set_handler(move |q| log2.answer(q));
    wait_until("recovered", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 11
    });
    target.shutdown();
}

#[test]
fn a_source_down_at_start_is_a_fetch_error_not_a_crash() {
    let db = TestDb::new();
    let target = start_target(&db, "http://127.0.0.1:9/users/changes", &[]);
    wait_until("fetch errors counted", Duration::from_secs(10), || {
        target.metrics.fetch_errors.get() >= 2
    });
    let (code, _) = get(&format!("http://{}/healthz", target.addr));
    assert_eq!(code, 200);
    wait_until("ready", Duration::from_secs(10), || {
        get(&format!("http://{}/readyz", target.addr)).0 == 200
    });
    target.shutdown();
}

/// A source that answers every request by writing to the socket itself,
/// given the request's head: its URL. Each connection is served on a
/// thread of its own.
fn raw_source(answer: fn(&str, &mut std::net::TcpStream)) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/users/changes", listener.local_addr().unwrap());
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            thread::spawn(move || {
                // The request head, then the answer.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut stream, &mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                answer(&String::from_utf8_lossy(&head), &mut stream);
            });
        }
    });
    url
}

#[test]
fn a_chunk_size_line_without_end_is_a_fetch_error_at_once() {
    // Read into memory until the timeout, it would take gigabytes.
    let url = raw_source(|_, stream| {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Next-Cursor: 1\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let zeros = [b'0'; 64 * 1024];
        while stream.write_all(&zeros).is_ok() {}
    });
    let db = TestDb::new();
    let target = start_target(&db, &url, &[("HTTP_TIMEOUT_SECS", "60")]);
    let started = Instant::now();
    wait_until("fetch error counted", Duration::from_secs(10), || {
        target.metrics.fetch_errors.get() >= 1
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state"),
        0
    );
    target.shutdown();
}

#[test]
fn an_interim_1xx_answer_before_the_page_is_skipped() {
    let url = raw_source(|request, stream| {
        let page = if request.contains("since=0") {
            format!("[{}]", profile(1, "2025-07-01T10:00:00Z"))
        } else {
            "[]".to_owned()
        };
        let answer = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Next-Cursor: 1\r\n\
             X-Head-Cursor: 1\r\nX-Source-Epoch: e\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = stream.write_all(answer.as_bytes());
    });
    let db = TestDb::new();
    let target = start_target(&db, &url, &[]);
    wait_until("synced", Duration::from_secs(10), || {
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state") == 1
    });
    assert!(user_row(&db, 1).is_some());
    assert_eq!(target.metrics.fetch_errors.get(), 0);
    target.shutdown();
}

#[test]
fn a_slow_source_times_out_as_a_fetch_error() {
    let db = TestDb::new();
    let source = ScriptedSource::new(|_| {
        std::thread::sleep(Duration::from_millis(1500));
        Reply::json(200, &json!([profile(1, "2025-07-01T10:00:00Z")]))
    });
    let target = start_target(&db, &source.url, &[("HTTP_TIMEOUT_SECS", "0.3")]);
    wait_until(
        "a timed-out fetch is counted",
        Duration::from_secs(10),
        || target.metrics.fetch_errors.get() >= 1,
    );
    assert_eq!(target.metrics.fetched.get(), 0);
    assert_eq!(db.count("SELECT count(*) FROM users"), 0);
    let (_, status) = get(&format!("http://{}/status", target.addr));
    let status: Value = serde_json::from_str(&status).unwrap();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("source"),
        "{status}"
    );
    target.shutdown();
}

/// What a misbehaving source answers to `(since, limit, request number)`:
/// `(elements, X-Next-Cursor, X-Head-Cursor, X-Source-Epoch)`.
type Answer = dyn Fn(u64, u64, usize) -> (usize, u64, u64, String) + Send + Sync;

/// A source whose every answer `reply(since, limit, request number)` makes.
fn misbehaving(
    reply: impl Fn(u64, u64, usize) -> (usize, u64, u64, String) + Send + Sync + 'static,
) -> ScriptedSource {
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    ScriptedSource::new(move |query| {
        let since: u64 = query.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit: u64 = query
            .get("limit")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (count, next, head, epoch) = reply(since, limit, n);
        let page: Vec<Value> = (0..count)
            .map(|i| profile(since as u32 + i as u32 + 1, "2025-07-01T10:00:00Z"))
            .collect();
        let mut reply = Reply::json(200, &Value::Array(page));
        reply.headers = vec![
            ("X-Next-Cursor", next.to_string()),
            ("X-Head-Cursor", head.to_string()),
            ("X-Source-Epoch", epoch),
        ];
        reply
    })
}

#[test]
fn a_misbehaving_source_ends_the_round_as_a_fetch_error() {
    let cases: [(&str, Box<Answer>); 3] = [
        (
            "a full page whose cursor does not move",
            Box::new(|since, limit, _| (limit as usize, since, 1000, "e".to_owned())),
        ),
        (
            "a cursor beyond the head",
            Box::new(|since, _, _| (1, since + 50, since + 1, "e".to_owned())),
        ),
        (
            "a new epoch on every page",
            Box::new(|since, limit, n| (limit as usize, since + limit, 1000, format!("e{n}"))),
        ),
    ];
    for (what, reply) in cases {
        let db = TestDb::new();
        let source = misbehaving(reply);
        let target = start_target(
            &db,
            &source.url,
            &[("SYNC_INTERVAL", "1"), ("FETCH_LIMIT", "2")],
        );
        std::thread::sleep(Duration::from_millis(2500));
        let requests = source.requests.load(std::sync::atomic::Ordering::SeqCst);
        let errors = target.metrics.fetch_errors.get();
        let cursor = db.count("SELECT coalesce(max(cursor), 0) FROM sync_state");
        target.shutdown();
        assert!(errors >= 2, "{what}: {errors} fetch errors");
        assert!(requests <= 9, "{what}: {requests} requests in 2.5 s");
        assert!(cursor <= 4, "{what}: cursor stored at {cursor}");
    }
}

#[test]
fn a_page_whose_next_cursor_is_not_since_plus_its_length_is_not_applied() {
    let db = TestDb::new();
    let (t0, t1) = ("2025-07-01T10:00:00Z", "2025-07-01T11:00:00Z");
    let log = CursorLog::new(vec![with_email(1, t0, "x@example.com")]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("first change stored", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 1
    });

    // Change 2 creates user 3, change 3 moves user 1 off x, change 4 gives
    // x to user 2. The source sends 2 and 4 with X-Next-Cursor 2, then 3
    // and 4 with X-Next-Cursor 4.
    let (c2, c3, c4) = (
        profile(3, t0),
        with_email(1, t1, "moved@example.com"),
        with_email(2, t1, "x@example.com"),
    );
    let paged = |changes: Vec<Value>, next: u64| {
        let mut reply = Reply::json(200, &Value::Array(changes));
        reply.headers = vec![
            ("X-Next-Cursor", next.to_string()),
            ("X-Head-Cursor", "4".to_owned()),
            ("X-Source-Epoch", "epoch-1".to_owned()),
        ];
        reply
    };
    let (first, second) = (
        paged(vec![c2.clone(), c4.clone()], 2),
        paged(vec![c3.clone(), c4.clone()], 4),
    );
    let honest = log.clone();
    source.set_handler(move |query| match query.get("since").map(String::as_str) {
        Some("1") => first.clone(),
        Some("2") => second.clone(),
        _ => honest.answer(query),
    });
    log.changes.lock().unwrap().extend([c2, c3, c4]);
    wait_until(
        "fetch errors, or a cursor moved",
        Duration::from_secs(10),
        || target.metrics.fetch_errors.get() >= 2 || db.count("SELECT cursor FROM sync_state") != 1,
    );
    assert_eq!(
        db.count("SELECT cursor FROM sync_state"),
        1,
        "the cursor stays"
    );
    assert!(user_row(&db, 3).is_none(), "nothing of the page is applied");
    assert_eq!(
        user_row(&db, 1).map(|r| r.1).as_deref(),
        Some("x@example.com")
    );
    assert_eq!(db.count("SELECT count(*) FROM sync_rejections"), 0);
    assert_eq!(target.metrics.fetched.get(), 1);
    let error = last_error(&target).unwrap_or_default();
    assert!(
        error.contains("X-Next-Cursor 2 is not 3") && error.contains("since=1"),
        "{error}"
    );

    // The source pages as it should again: 3 before 4.
    let honest = log.clone();
    source.set_handler(move |query| honest.answer(query));
    wait_until("caught up", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 4
    });
    wait_rounds(&target, 1);
    assert!(user_row(&db, 3).is_some());
    assert_eq!(
        user_row(&db, 1).map(|r| r.1).as_deref(),
        Some("moved@example.com")
    );
    assert_eq!(
        user_row(&db, 2).map(|r| r.1).as_deref(),
        Some("x@example.com")
    );
    assert_eq!(rejection_reasons(&db), Vec::<String>::new());
    assert_eq!(target.metrics.synced.get(), 4);
    assert_eq!(last_error(&target), None);
    assert_invariant(&target);
    target.shutdown();
}
