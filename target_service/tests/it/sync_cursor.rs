//! The cursor: paging through a backlog and storing where it got, source
//! epochs, sources without cursors, and a cursor the source no longer
//! holds.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn cursor_paging_syncs_a_backlog_and_stores_where_it_got() {
    let db = TestDb::new();
    let settings = [("FETCH_LIMIT", "500")];
    let (_log, _source, target) = synced_backlog(&db, 3456, &settings, Duration::from_secs(30));
    let epoch: String = db
        .client()
        .query_one("SELECT source_epoch FROM sync_state", &[])
        .unwrap()
        .get(0);
    assert_eq!(epoch, "epoch-1");
    let (code, body) = get(&format!("http://{}/status", target.addr));
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["cursor"], 3456);
    assert_eq!(status["epoch"], "epoch-1");
    let metrics = get(&format!("http://{}/metrics", target.addr)).1;
    assert!(metrics.contains("sync_cursor 3456"), "{metrics}");
    assert!(metrics.contains("sync_source_lag 0"));
    assert!(
        metrics.contains("sync_queue_depth 0"),
        "the queue drains when idle"
    );
    assert!(metrics.contains("profiles_synced_total 3456"));
    target.shutdown();
}

#[test]
fn a_new_source_epoch_restarts_the_cursor_from_zero() {
    let db = TestDb::new();
    let (log, _source, target) = synced_backlog(&db, 30, &[], Duration::from_secs(10));
    // The source restarts with a shorter log of new users.
    *log.changes.lock().unwrap() = (101..=105)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    *log.epoch.lock().unwrap() = "epoch-2".to_owned();
    wait_until("second epoch synced", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM users") == 35
    });
    wait_until("cursor in the new epoch", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 5
    });
    let epoch: String = db
        .client()
        .query_one("SELECT source_epoch FROM sync_state", &[])
        .unwrap()
        .get(0);
    assert_eq!(epoch, "epoch-2");
    target.shutdown();
}

#[test]
fn an_epoch_announced_where_none_was_stored_restarts_the_cursor_from_zero() {
    let db = TestDb::new();
    let t = "2025-07-01T10:00:00Z";
    let log = CursorLog::new((1..=4).map(|n| profile(n, t)).collect());
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("first epoch synced", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 4
    });
    // Answers without X-Source-Epoch: the cursor is stored with none.
    let without_epoch = log.clone();
    source.set_handler(move |query| {
        let mut reply = without_epoch.answer(query);
        reply.headers.retain(|(name, _)| *name != "X-Source-Epoch");
        reply
    });
    wait_until(
        "cursor stored without an epoch",
        Duration::from_secs(10),
        || {
            db.count("SELECT count(*) FROM sync_state WHERE source_epoch IS NULL AND cursor = 4")
                == 1
        },
    );
    // None stored and none sent: the cursor stays where it is, round after
    // round (the 4 changes were read again once, on leaving epoch-1).
    wait_rounds(&target, 3);
    assert_eq!(target.metrics.fetched.get(), 8);
    assert_eq!(db.count("SELECT cursor FROM sync_state"), 4);

    // The source restarts, announcing an epoch again, with 6 new users.
    let restarted = CursorLog::new((101..=106).map(|n| profile(n, t)).collect());
    *restarted.epoch.lock().unwrap() = "epoch-2".to_owned();
    source.set_handler(move |query| restarted.answer(query));
    wait_until("cursor in the new epoch", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM sync_state WHERE source_epoch = 'epoch-2' AND cursor = 6")
            == 1
    });
    wait_rounds(&target, 1);
    for n in 101..=106 {
        assert!(user_row(&db, n).is_some(), "user {n} of epoch-2 synced");
    }
    assert_eq!(db.count("SELECT count(*) FROM users"), 10);
    assert_eq!(db.count("SELECT count(*) FROM sync_rejections"), 0);
    assert_eq!(target.metrics.synced.get(), 10);
    assert_eq!(target.metrics.fetch_errors.get(), 0);
    let status = status_json(&target);
    assert_eq!(
        (&status["epoch"], &status["cursor"]),
        (&json!("epoch-2"), &json!(6))
    );
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn a_source_without_cursors_is_read_whole_whatever_fetch_limit_says() {
    // The original hands out batches of four to ten, and is given no limit.
    let db = TestDb::new();
    let page: Vec<Value> = (1..=5)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    let source = ScriptedSource::fixed_page(Value::Array(page));
    let target = start_target(&db, &source.url, &[("FETCH_LIMIT", "3")]);
    wait_until("the page synced", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM users") == 5
    });
    assert_eq!(target.metrics.fetch_errors.get(), 0);
    target.shutdown();
}

#[test]
fn a_page_fetched_without_parameters_that_carries_cursors_is_left_for_the_stored_cursor() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let db = TestDb::new();
    let (t0, t1) = ("2025-07-01T10:00:00Z", "2025-07-01T11:00:00Z");
    let log = CursorLog::new(vec![with_email(1, t0, "x@example.com")]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[("SYNC_INTERVAL", "1")]);
    wait_until("first change stored", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 1
    });

    // A cursor source that answers one since request without X-Next-Cursor;
    // asked without parameters, it logs a fresh batch and returns it with
    // cursors, as source_service does.
    let (bare, answered_without) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (fake, bare_requests) = (log.clone(), Arc::clone(&bare));
    source.set_handler(move |query| {
        if !query.contains_key("since") {
            bare_requests.fetch_add(1, Ordering::SeqCst);
            let mut changes = fake.changes.lock().unwrap();
            let before = changes.len();
            // User 2 claims x, which change 2 (not fetched yet) frees.
            changes.push(with_email(2, t1, "x@example.com"));
            drop(changes);
            return fake.answer(&[("since".to_owned(), before.to_string())].into());
        }
        if !answered_without.swap(true, Ordering::SeqCst) {
            return Reply::json(200, &json!([]));
        }
        fake.answer(query)
    });
    // Change 2: user 1 moves off x.
    log.changes
        .lock()
        .unwrap()
        .push(with_email(1, t1, "moved@example.com"));

    let mut error_shown = None;
    wait_until("both changes stored", Duration::from_secs(15), || {
        if error_shown.is_none() {
            error_shown = last_error(&target);
        }
        db.count("SELECT cursor FROM sync_state") == 3
    });
    wait_rounds(&target, 1);
    // Decided in sequence order: user 1 gives x up, then user 2 takes it.
    assert_eq!(
        user_row(&db, 1).map(|r| r.1).as_deref(),
        Some("moved@example.com")
    );
    assert_eq!(
        user_row(&db, 2).map(|r| (r.1, r.4)),
        Some(("x@example.com".to_owned(), "synced".to_owned()))
    );
    assert_eq!(rejection_reasons(&db), Vec::<String>::new());
    assert_eq!(target.metrics.synced.get(), 3);
    assert_eq!(
        bare.load(Ordering::SeqCst),
        1,
        "asked without parameters once"
    );
    assert_eq!(target.metrics.fetch_errors.get(), 1);
    let error = error_shown.expect("/status showed the fetch error");
    assert!(
        error.contains("with cursors to a request without them"),
        "{error}"
    );
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn a_cursor_the_source_no_longer_holds_restarts_from_what_it_still_has() {
    // Where to restart comes in X-Min-Cursor.
    {
        let db = TestDb::new();
        let log = CursorLog::new(
            (1..=100)
                .map(|n| profile(n, "2025-07-01T10:00:00Z"))
                .collect(),
        );
        // The source has dropped its oldest 60 changes: even cursor 0 is gone.
        *log.dropped.lock().unwrap() = 60;
        let source = log.source();
        let target = start_target(&db, &source.url, &[]);
        wait_until(
            "synced from the oldest change held",
            Duration::from_secs(10),
            || db.count("SELECT cursor FROM sync_state") == 100,
        );
        assert_eq!(db.count("SELECT count(*) FROM users"), 40);
        assert!(user_row(&db, 61).is_some() && user_row(&db, 60).is_none());
        target.shutdown();
    }
}
