//! Emails and mobiles held by another id: recorded conflicts, and gives-up
//! and claims decided in sequence order whatever the writers, the batches
//! and the restarts.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn an_email_or_mobile_held_by_another_id_is_a_recorded_conflict() {
    let db = TestDb::new();
    let mut email_thief = profile(2, "2025-07-01T10:00:01Z");
    email_thief["email"] = json!("user1@example.com");
    let mut mobile_thief = profile(3, "2025-07-01T10:00:01Z");
    mobile_thief["mobile"] = json!("+15550000001");
    // Same email twice among new users in one page: the first in order wins.
    let mut twin_a = profile(4, "2025-07-01T10:00:00Z");
    twin_a["email"] = json!("twin@example.com");
    let mut twin_b = profile(5, "2025-07-01T10:00:00Z");
    twin_b["email"] = json!("twin@example.com");
    let conflicts = [
        (2, email_thief.clone()),
        (3, mobile_thief.clone()),
        (5, twin_b.clone()),
    ];
    let log = CursorLog::new(vec![
        profile(1, "2025-07-01T10:00:00Z"),
        email_thief,
        mobile_thief,
        twin_a,
        twin_b,
    ]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[("WRITER_THREADS", "4")]);
    wait_until("all handled", Duration::from_secs(10), || {
        target.metrics.synced.get() + target.metrics.skipped.get() == 5
    });
    let mut reasons = rejection_reasons(&db);
    reasons.sort();
    assert_eq!(reasons, ["email_taken", "email_taken", "mobile_taken"]);
    // Each conflict records its own element of the page, as it was sent.
    let mut client = db.client();
    for (n, element) in conflicts {
        let row = client
            .query_one(
                "SELECT payload FROM sync_rejections WHERE profile_id = $1::text::uuid",
                &[&id(n)],
            )
            .unwrap();
        let payload: String = row.get(0);
        assert_eq!(serde_json::from_str::<Value>(&payload).unwrap(), element);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE outcome = 'conflict'"),
        3
    );
    assert!(user_row(&db, 2).is_none());
    assert!(user_row(&db, 4).is_some());
    assert!(user_row(&db, 5).is_none());

    // The owner moves to a new email; then the freed email can be taken.
    let mut moved = profile(1, "2025-07-01T11:00:00Z");
    moved["email"] = json!("user1.new@example.com");
    let mut taker = profile(2, "2025-07-01T11:00:01Z");
    taker["email"] = json!("user1@example.com");
    log.changes.lock().unwrap().extend([moved, taker]);
    wait_until("taker synced", Duration::from_secs(10), || {
        user_row(&db, 2).is_some_and(|r| r.1 == "user1@example.com")
    });
    target.shutdown();
}

#[test]
fn a_conflict_leaves_no_mark_that_makes_older_changes_of_its_id_stale() {
    // 1 holds shared@; 2 claims it at t1 (a conflict). Applied one at a
    // time, staleness is against 2's row alone: 2 has none, so its next
    // change syncs even at the conflict's own instant, whichever page it
    // comes in and whatever restarts lie between.
    let db = TestDb::new();
    let (t0, t1, t2) = (
        "2025-07-01T10:00:00Z",
        "2025-07-01T10:30:00Z",
        "2025-07-01T11:00:00Z",
    );
    let log = CursorLog::new(vec![
        with_email(1, t0, "shared@example.com"),
        with_email(2, t1, "shared@example.com"),
        // The next page of the same round: the same instant, a free email.
        with_email(2, t1, "free1@example.com"),
    ]);
    let source = log.source();
    let pages_of_one = [("WRITER_THREADS", "4"), ("FETCH_LIMIT", "1")];
    let target = start_target(&db, &source.url, &pages_of_one);
    wait_until("cursor at 3", Duration::from_secs(20), || {
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state") >= 3
    });
    wait_rounds(&target, 1);
    assert_eq!(rejected(&target, "stale"), 0);
    assert_eq!(target.metrics.synced.get(), 2);
    target.shutdown();
    let row = user_row(&db, 2).unwrap();
    assert_eq!(
        (row.1.as_str(), row.4.as_str(), row.5.as_deref()),
        ("free1@example.com", "synced", Some("created"))
    );
    assert_eq!(rejection_reasons(&db), ["email_taken"]);

    // After a restart: 1 claims a conflict at t2 on 2's email, then a
    // change of 1 older than that conflict but newer than 1's row syncs.
    log.changes.lock().unwrap().extend([
        with_email(1, t2, "free1@example.com"),
        with_email(1, t1, "moved@example.com"),
        with_email(2, t0, "free3@example.com"),
    ]);
    let target = start_target(&db, &source.url, &pages_of_one);
    wait_until("cursor at 6", Duration::from_secs(20), || {
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state") >= 6
    });
    wait_rounds(&target, 1);
    assert_eq!(rejected(&target, "email_taken"), 1);
    assert_eq!(
        rejected(&target, "stale"),
        1,
        "2 at t0 is older than its row"
    );
    assert_eq!(target.metrics.synced.get(), 1);
    let row = user_row(&db, 1).unwrap();
    assert_eq!(
        (row.1.as_str(), row.4.as_str(), row.5.as_deref()),
        ("moved@example.com", "synced", Some("updated")),
        "older than 1's conflict, newer than 1's row: synced"
    );
    let mut reasons = rejection_reasons(&db);
    reasons.sort();
    assert_eq!(reasons, ["email_taken", "email_taken"]);
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn a_batch_that_gives_up_an_email_and_claims_it_for_another_id_keeps_both_changes() {
    // B holds y. Then, in one writer's batch: A is created with a, B moves
    // from y to z, A takes y. Written one change at a time, all three sync;
    // merged into one write per id, A's would come before B's and collide.
    let db = TestDb::new();
    let mut b_first = profile(2, "2025-07-01T10:00:00Z");
    b_first["email"] = json!("y@example.com");
    let log = CursorLog::new(vec![b_first]);
    let source = log.source();
    let target = start_target(
        &db,
        &source.url,
        &[("WRITER_THREADS", "1"), ("FETCH_LIMIT", "1")],
    );
    wait_until("B stored", Duration::from_secs(20), || {
        user_row(&db, 2).is_some()
    });

    // Hold the writer up so that the changes below queue into one batch.
    let mut blocker = db.client();
    let mut lock = blocker.transaction().unwrap();
    lock.execute("LOCK TABLE users IN SHARE MODE", &[]).unwrap();
    let mut a_first = profile(1, "2025-07-01T10:00:00Z");
    a_first["email"] = json!("a@example.com");
    let mut b_moves = profile(2, "2025-07-01T11:00:00Z");
    b_moves["email"] = json!("z@example.com");
    let mut a_takes = profile(1, "2025-07-01T11:00:00Z");
    a_takes["email"] = json!("y@example.com");
    log.changes.lock().unwrap().extend([
        profile(3, "2025-07-01T10:00:00Z"),
        a_first,
        b_moves,
        a_takes,
    ]);
    wait_until("all fetched", Duration::from_secs(20), || {
        target.metrics.fetched.get() >= 5
    });
    std::thread::sleep(Duration::from_millis(200));
    lock.rollback().unwrap();

    wait_until("all decided", Duration::from_secs(20), || {
        target.metrics.synced.get() + target.metrics.skipped.get() >= 5
    });
    assert_eq!(
        user_row(&db, 1).map(|r| r.1),
        Some("y@example.com".to_owned())
    );
    assert_eq!(
        user_row(&db, 2).map(|r| r.1),
        Some("z@example.com".to_owned())
    );
    assert!(user_row(&db, 3).is_some());
    assert_eq!(rejection_reasons(&db), Vec::<String>::new());
    assert_eq!(target.metrics.synced.get(), 5);
    target.shutdown();
}

#[test]
fn concurrent_writers_racing_for_the_same_emails_lose_no_change() {
    let db = TestDb::new();
    let page: Vec<Value> = (1..=400)
        .map(|n| {
            let mut p = profile(n, "2025-07-01T10:00:00Z");
            p["email"] = json!(format!("shared{}@example.com", n % 20));
            p
        })
        .collect();
    let log = CursorLog::new(page);
    let source = log.source();
    let target = start_target(
        &db,
        &source.url,
        &[("WRITER_THREADS", "8"), ("FETCH_LIMIT", "50")],
    );
    wait_until("every change decided", Duration::from_secs(20), || {
        target.metrics.synced.get() + target.metrics.skipped.get() == 400
    });
    assert_eq!(db.count("SELECT count(*) FROM users"), 20);
    assert_eq!(db.count("SELECT count(DISTINCT email) FROM users"), 20);
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE reason = 'email_taken'"),
        380
    );
    assert_eq!(target.metrics.synced.get(), 20);
    assert_eq!(rejected(&target, "email_taken"), 380);
    target.shutdown();
}

#[test]
fn the_first_change_in_sequence_to_claim_an_email_keeps_it_whatever_the_writers() {
    // Filler first, so the writers are busy when the two claims arrive; the
    // two claimants' ids hash to different writers.
    for round in 0..3 {
        let db = TestDb::new();
        let mut page: Vec<Value> = (100..1000)
            .map(|n| profile(n, "2025-07-01T10:00:00Z"))
            .collect();
        let mut first = profile(5000 + round, "2025-07-01T10:00:00Z");
        first["email"] = json!("claimed@example.com");
        let mut second = profile(1, "2025-07-01T10:00:00Z");
        second["email"] = json!("claimed@example.com");
        page.push(first);
        page.push(second);
        let source = CursorLog::new(page).source();
        let target = start_target(
            &db,
            &source.url,
            &[("WRITER_THREADS", "4"), ("FETCH_LIMIT", "10000")],
        );
        wait_until("all decided", Duration::from_secs(20), || {
            target.metrics.synced.get() + target.metrics.skipped.get() == 902
        });
        assert_eq!(
            user_row(&db, 5000 + round).map(|r| r.1),
            Some("claimed@example.com".to_owned()),
            "round {round}: the earlier claim wins"
        );
        assert!(
            user_row(&db, 1).is_none(),
            "round {round}: the later claim is a conflict"
        );
        assert_eq!(rejection_reasons(&db), ["email_taken"]);
        target.shutdown();
    }
}

#[test]
fn gives_up_and_claims_in_one_page_are_decided_in_sequence_order_after_a_restart() {
    let db = TestDb::new();
    let t = "2025-07-01T10:00:00Z";
    let (later, latest) = ("2025-07-01T11:00:00Z", "2025-07-01T12:00:00Z");
    // Before the restart: each id holds its own email.
    let log = CursorLog::new(
        [1, 3, 4, 5, 6, 7]
            .iter()
            .map(|&n| with_email(n, t, &format!("e{n}@example.com")))
            .collect(),
    );
    let source = log.source();
    let settings = [("WRITER_THREADS", "4"), ("FETCH_LIMIT", "2000")];
    let target = start_target(&db, &source.url, &settings);
    wait_until("first rows stored", Duration::from_secs(20), || {
        db.count("SELECT cursor FROM sync_state") == 6
    });
    target.shutdown();

    // After it, in one page behind 990 fillers, so that the writers are busy.
    let mut page: Vec<Value> = (1000..1990).map(|n| profile(n, t)).collect();
    page.extend([
        // 1 gives up e1, then 2 claims it: 2 gets it.
        with_email(1, later, "moved1@example.com"),
        with_email(2, t, "e1@example.com"),
        // 8 claims e3 before 3 gives it up: a conflict.
        with_email(8, t, "e3@example.com"),
        with_email(3, later, "moved3@example.com"),
        // 4's previous change is stale and asked for another email; then 4
        // gives up e4 and 9 claims it.
        with_email(4, "2025-07-01T09:00:00Z", "stale4@example.com"),
        with_email(4, later, "moved4@example.com"),
        with_email(9, t, "e4@example.com"),
        // 5's previous change is itself a conflict (e6 is 6's); then 5 gives
        // up e5 and 10 claims it.
        with_email(5, "2025-07-01T10:30:00Z", "e6@example.com"),
        with_email(5, later, "moved5@example.com"),
        with_email(10, t, "e5@example.com"),
        // A cycle through two ids: 7 e7 -> x, 6 e6 -> e7, 7 x -> e6.
        with_email(7, later, "x7@example.com"),
        with_email(6, later, "e7@example.com"),
        with_email(7, latest, "e6@example.com"),
    ]);
    log.changes.lock().unwrap().extend(page);
    let target = start_target(&db, &source.url, &settings);
    wait_until("page stored", Duration::from_secs(30), || {
        db.count("SELECT cursor FROM sync_state") == 6 + 1003
    });
    let email = |n| user_row(&db, n).map(|r| r.1);
    let expected = [
        (1, Some("moved1@example.com")),
        (2, Some("e1@example.com")),
        (3, Some("moved3@example.com")),
        (8, None),
        (4, Some("moved4@example.com")),
        (9, Some("e4@example.com")),
        (5, Some("moved5@example.com")),
        (10, Some("e5@example.com")),
        (6, Some("e7@example.com")),
        (7, Some("e6@example.com")),
    ];
    for (n, want) in expected {
        assert_eq!(email(n).as_deref(), want, "user {n}");
    }
    let conflicts: Vec<(String, String)> = db
        .client()
        .query(
            "SELECT profile_id::text, reason FROM sync_rejections ORDER BY profile_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        conflicts,
        [
            (id(5), "email_taken".to_owned()),
            (id(8), "email_taken".to_owned())
        ]
    );
    assert_eq!(user_row(&db, 5).map(|r| r.4).as_deref(), Some("synced"));
    assert_eq!(db.count("SELECT count(*) FROM users"), 9 + 990);
    wait_rounds(&target, 1);
    assert_invariant(&target);
    target.shutdown();
}
