//! The sync pipeline end to end: a scripted source over HTTP, the real
//! target, a fresh PostgreSQL database per test.

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};
use target_service::Running;

#[test]
fn every_row_of_the_validation_table_ends_as_the_contract_says() {
    let db = TestDb::new();
    let mut wrong_type = profile(10, "2025-07-01T10:00:00Z");
    wrong_type["mobile"] = json!(15550000010u64);
    let mut nested = profile(11, "2025-07-01T10:00:00Z");
    nested["name"] = json!({"first": "Ada"});
    let mut missing = profile(12, "2025-07-01T10:00:00Z");
    missing.as_object_mut().unwrap().remove("email");
    let mut null_field = profile(13, "2025-07-01T10:00:00Z");
    null_field["status"] = Value::Null;
    let mut bad_id = profile(14, "2025-07-01T10:00:00Z");
    bad_id["id"] = json!("not-a-uuid");
    let mut bad_ts = profile(15, "2025-07-01T10:00:00Z");
    bad_ts["last_updated_at"] = json!("2025-07-01 10:00:00");
    let mut bad_email = profile(16, "2025-07-01T10:00:00Z");
    bad_email["email"] = json!("a..b@example.com");
    let mut nul_name = profile(17, "2025-07-01T10:00:00Z");
    nul_name["name"] = json!("Ada\u{0}Lovelace");
    let mut long_name = profile(18, "2025-07-01T10:00:00Z");
    long_name["name"] = json!("n".repeat(10_000));
    let mut bad_mobile = profile(19, "2025-07-01T10:00:00Z");
    bad_mobile["mobile"] = json!("12");
    let future = profile(20, "2999-01-01T00:00:00Z");
    let mut inactive = profile(21, "2025-07-01T10:00:00Z");
    inactive["status"] = json!("inactive");
    let pending = {
        let mut p = profile(22, "2025-07-01T10:00:00Z");
        p["status"] = json!("pending");
        p
    };
    let page = json!([
        42,
        "text",
        wrong_type,
        nested,
        missing,
        null_field,
        bad_id,
        bad_ts,
        bad_email,
        nul_name,
        long_name,
        bad_mobile,
        future,
        inactive,
        profile(1, "2025-07-01T10:00:00Z"),
        pending,
    ]);
    let source = ScriptedSource::fixed_page(page);
    // One round only, so the counters describe exactly one pass over the page.
    let target = start_target(&db, &source.url, &[("SYNC_INTERVAL", "3600")]);
    wait_rounds(&target, 1);

    let mut reasons = rejection_reasons(&db);
    reasons.sort();
    let mut expected = vec![
        "malformed",
        "malformed",
        "malformed",
        "malformed",
        "malformed",
        "malformed",
        "invalid_id",
        "invalid_timestamp",
        "invalid_email",
        "invalid_name",
        "invalid_name",
        "invalid_mobile",
        "future_timestamp",
    ];
    expected.sort();
    assert_eq!(
        reasons, expected,
        "an inactive change is skipped, not recorded"
    );
    assert_eq!(db.count("SELECT count(*) FROM users"), 2);
    assert_eq!(
        user_row(&db, 1).unwrap(),
        (
            "User 1".into(),
            "user1@example.com".into(),
            "+15550000001".into(),
            "active".into(),
            "synced".into(),
            Some("created".into())
        )
    );
    assert_eq!(user_row(&db, 22).unwrap().3, "pending");
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE outcome = 'failed_validation'"),
        13
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE outcome = 'skipped'"),
        0
    );
    assert_eq!(rejected(&target, "inactive_status"), 1);
    assert_eq!(
        target.metrics.skipped.get(),
        14,
        "13 rejected and 1 inactive"
    );
    // The raw element is kept as JSON text; the NUL stays escaped.
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE reason = 'invalid_name' AND payload LIKE '%\\u0000%'"),
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE profile_id IS NOT NULL AND reason = 'malformed'"),
        4,
        "malformed objects keep the id they have"
    );
    assert_eq!(rejected(&target, "malformed"), 6);
    assert_eq!(rejected(&target, "invalid_name"), 2);
    assert_eq!(target.metrics.synced.get(), 2);
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn the_newest_change_wins_whatever_the_offsets_and_page_order() {
    let db = TestDb::new();
    let mut newest = profile(1, "2025-07-01T15:43:04.000002+05:30"); // 10:13:04.000002Z
    newest["name"] = json!("Newest");
    let mut older = profile(1, "2025-07-01T10:13:04.000001Z");
    older["name"] = json!("Older");
    let mut same_instant = profile(1, "2025-07-01T03:13:04.000002-07:00");
    same_instant["name"] = json!("Equal but later in the page");
    let mut finer_digits = profile(1, "2025-07-01T10:13:04.0000029Z"); // truncates to ...002
    finer_digits["name"] = json!("Finer digits, same microsecond");
    let source = ScriptedSource::fixed_page(json!([older, newest, same_instant, finer_digits]));
    let target = start_target(&db, &source.url, &[]);
    wait_rounds(&target, 2);
    let row = user_row(&db, 1).unwrap();
    assert_eq!(row.0, "Newest");
    // Applied one at a time: the older change creates the row, the newest
    // updates it, and the two at the newest's instant are not newer.
    assert_eq!(row.5.as_deref(), Some("updated"));
    // First round: 2 synced, 2 stale; later rounds: all 4 stale.
    assert_eq!(target.metrics.synced.get(), 2);
    assert!(rejected(&target, "stale") >= 6);
    let stored: String = db
        .client()
        .query_one(
            "SELECT to_char(last_updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM users",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, "2025-07-01 10:13:04.000002");
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections"),
        0,
        "stale changes write nothing"
    );
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn a_stale_or_invalid_change_never_overwrites_a_good_row() {
    let db = TestDb::new();
    let log = CursorLog::new(vec![profile(1, "2025-07-01T10:00:00Z")]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("first row", Duration::from_secs(10), || {
        user_row(&db, 1).is_some()
    });

    let mut older = profile(1, "2025-07-01T09:00:00Z");
    older["name"] = json!("Older");
    let mut newer_invalid = profile(1, "2025-07-01T11:00:00Z");
    newer_invalid["email"] = json!("not an email");
    newer_invalid["name"] = json!("Invalid");
    log.changes.lock().unwrap().extend([older, newer_invalid]);
    wait_until("both changes handled", Duration::from_secs(10), || {
        rejected(&target, "invalid_email") == 1 && rejected(&target, "stale") == 1
    });
    wait_rounds(&target, 1);
    let row = user_row(&db, 1).unwrap();
    assert_eq!(row.0, "User 1", "data columns are left as they were");
    assert_eq!(
        row.4, "failed_validation",
        "a newer bad change marks the row"
    );
    assert!(row.5.unwrap().contains("email"));

    // An older bad change does not touch the row's status.
    let mut old_inactive = profile(1, "2025-07-01T08:00:00Z");
    old_inactive["status"] = json!("inactive");
    let mut newest = profile(1, "2025-07-01T12:00:00Z");
    newest["name"] = json!("Newest");
    log.changes.lock().unwrap().extend([newest, old_inactive]);
    wait_until("newest synced", Duration::from_secs(10), || {
        user_row(&db, 1).is_some_and(|r| r.0 == "Newest")
            && rejected(&target, "inactive_status") == 1
    });
    wait_rounds(&target, 1);
    let row = user_row(&db, 1).unwrap();
    assert_eq!(
        (row.4.as_str(), row.5.as_deref()),
        ("synced", Some("updated"))
    );
    assert_invariant(&target);
    target.shutdown();
}

/// Writers read only the rows of ids that occur more than once in a batch
/// while catching up, and leave the rest to the statements' guards; every
/// outcome must be the one a full read would have given.
#[test]
fn rows_a_batch_did_not_read_still_get_exactly_the_contract_s_outcomes() {
    let db = TestDb::new();
    let first: Vec<Value> = (1..=5)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    let log = CursorLog::new(first);
    let source = log.source();
    let target = start_target(&db, &source.url, &[("WRITER_THREADS", "1")]);
    wait_until("first rows", Duration::from_secs(10), || {
        target.metrics.synced.get() == 5
    });

    let inactive = |n: u32, at: &str| {
        let mut change = profile(n, at);
        change["status"] = json!("inactive");
        change
    };
    let mut updated = profile(1, "2025-07-01T11:00:00Z");
    updated["name"] = json!("Updated");
    let mut stale = profile(2, "2025-07-01T09:00:00Z");
    stale["name"] = json!("Stale");
    log.changes.lock().unwrap().extend([
        profile(6, "2025-07-01T10:00:00Z"),
        updated,
        stale,
        inactive(3, "2025-07-01T11:00:00Z"),
        inactive(4, "2025-07-01T09:00:00Z"),
        inactive(7, "2025-07-01T11:00:00Z"),
    ]);
    wait_until("second page handled", Duration::from_secs(10), || {
        target.metrics.fetched.get() == 11
            && target.metrics.synced.get() + target.metrics.skipped.get() == 11
    });
    assert_eq!(target.metrics.synced.get(), 7);
    assert_eq!(rejected(&target, "stale"), 1);
    assert_eq!(rejected(&target, "inactive_status"), 3);
    let status = |n: u32| user_row(&db, n).map(|r| (r.0, r.4, r.5));
    let synced = |name: &str, message: &str| {
        Some((
            name.to_owned(),
            "synced".to_owned(),
            Some(message.to_owned()),
        ))
    };
    assert_eq!(status(1), synced("Updated", "updated"));
    assert_eq!(status(2), synced("User 2", "created"), "stale: untouched");
    assert_eq!(
        status(3),
        synced("User 3", "created"),
        "a newer inactive change is skipped: it marks nothing"
    );
    assert_eq!(status(4), synced("User 4", "created"), "older: not marked");
    assert_eq!(status(6), synced("User 6", "created"));
    assert_eq!(status(7), None);
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections"),
        0,
        "inactive changes are counted, not recorded"
    );

    // A claim on the email of a row the batch did not read, next to a change
    // of that very row: the first in sequence wins.
    let mut thief = profile(8, "2025-07-01T12:00:00Z");
    thief["email"] = json!("user5@example.com");
    let mut owner = profile(5, "2025-07-01T12:00:00Z");
    owner["name"] = json!("Owner");
    log.changes.lock().unwrap().extend([owner, thief]);
    wait_until("third page handled", Duration::from_secs(10), || {
        target.metrics.synced.get() + target.metrics.skipped.get() == 13
    });
    assert_eq!(rejected(&target, "email_taken"), 1);
    assert_eq!(status(5), synced("Owner", "updated"));
    assert_eq!(status(8), None);
    assert_invariant(&target);
    target.shutdown();
}

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
fn a_replayed_page_changes_nothing_and_records_nothing_twice() {
    let db = TestDb::new();
    let mut bad = profile(2, "2025-07-01T10:00:00Z");
    bad["mobile"] = json!("nope");
    let mut inactive = profile(3, "2025-07-01T10:00:00Z");
    inactive["status"] = json!("inactive");
    // A source like the original hands out the same page every round.
    let source =
        ScriptedSource::fixed_page(json!([profile(1, "2025-07-01T10:00:00Z"), bad, inactive]));
    let target = start_target(&db, &source.url, &[]);
    wait_rounds(&target, 4);
    assert_eq!(db.count("SELECT count(*) FROM users"), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections"),
        1,
        "the bad mobile, once; the inactive change is never recorded"
    );
    assert!(rejected(&target, "inactive_status") >= 4);
    assert_eq!(target.metrics.synced.get(), 1);
    assert!(rejected(&target, "stale") >= 3);
    assert!(source.requests.load(std::sync::atomic::Ordering::SeqCst) >= 4);
    assert_eq!(target.metrics.db_errors.get(), 0);
    wait_rounds(&target, 1);
    assert_invariant(&target);
    target.shutdown();
}

/// Syncs `source_url` up to `head`, then simulates a crash in which
/// everything was written but the cursor never moved, and replays up to
/// `head` again. Returns the tables as the first pass left them
/// ([`table_snapshot`]) and the replaying target.
fn sync_then_replay_after_a_crash(
    db: &TestDb,
    source_url: &str,
    head: i64,
    extra: &[(&str, &str)],
) -> (Vec<String>, Running) {
    let target = start_target(db, source_url, extra);
    wait_until("cursor at the head", Duration::from_secs(30), || {
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state") >= head
    });
    target.shutdown();
    let before = table_snapshot(db);
    db.client()
        .execute("UPDATE sync_state SET cursor = 0", &[])
        .unwrap();

    let target = start_target(db, source_url, extra);
    wait_until("replayed to the head", Duration::from_secs(30), || {
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state") >= head
    });
    wait_rounds(&target, 1);
    (before, target)
}

#[test]
fn after_a_crash_before_the_cursor_was_stored_the_replay_has_no_further_effect() {
    let db = TestDb::new();
    let mut changes: Vec<Value> = (1..=2500)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    let mut bad = profile(9999, "2025-07-01T10:00:00Z");
    bad["email"] = json!("broken");
    // First, so that the replay meets it in a writer's first batch, which
    // expects nothing recorded yet and must fall back to skipping it.
    changes.insert(0, bad);
    let source = CursorLog::new(changes).source();
    let (before, target) =
        sync_then_replay_after_a_crash(&db, &source.url, 2501, &[("FETCH_LIMIT", "1000")]);
    assert_eq!(table_snapshot(&db), before);
    assert_eq!(db.count("SELECT count(*) FROM sync_rejections"), 1);
    assert_eq!(
        target.metrics.synced.get(),
        0,
        "every replayed change is stale"
    );
    assert_eq!(rejected(&target, "stale"), 2500);
    assert_eq!(target.metrics.db_errors.get(), 0);
    target.shutdown();
}

#[test]
fn a_replayed_rejection_does_not_mark_the_row_a_later_sent_change_wrote() {
    // Sent in this order: an invalid change newer than the valid change
    // sent after it. The first pass marks the row, which the valid change
    // then updates; the replay finds that row older than the invalid
    // change, and must still leave it alone.
    let db = TestDb::new();
    let mut bad = profile(1, "2025-07-01T10:40:00Z");
    bad["email"] = json!("bad-email");
    let log = CursorLog::new(vec![
        profile(1, "2025-07-01T10:10:00Z"),
        bad,
        profile(1, "2025-07-01T10:30:00Z"),
    ]);
    let source = log.source();
    let (before, target) = sync_then_replay_after_a_crash(&db, &source.url, 3, &[]);
    assert_eq!(table_snapshot(&db), before);
    assert_eq!(
        user_row(&db, 1).map(|r| (r.4, r.5)),
        Some(("synced".to_owned(), Some("updated".to_owned())))
    );
    assert_eq!(rejection_reasons(&db), ["invalid_email"]);
    assert_eq!(target.metrics.synced.get(), 0);
    target.shutdown();
}

#[test]
fn a_replayed_conflict_stays_a_conflict_after_its_email_was_given_up() {
    // 1 holds shared@, 2 claims it (a conflict), 1 moves on. Replayed from
    // 2's change, in a writer's first (optimistic) batch, the email is free:
    // 2 must still not get a row, as it never did without the crash.
    let db = TestDb::new();
    let mut first = profile(1, "2025-07-01T10:00:00Z");
    first["email"] = json!("shared@example.com");
    let mut claim = profile(2, "2025-07-01T10:00:00Z");
    claim["email"] = json!("shared@example.com");
    let mut moves = profile(1, "2025-07-01T11:00:00Z");
    moves["email"] = json!("moved@example.com");
    let source = CursorLog::new(vec![first, claim, moves]).source();
    let one_at_a_time = [("WRITER_THREADS", "1"), ("FETCH_LIMIT", "1")];
    let target = start_target(&db, &source.url, &one_at_a_time);
    wait_until("cursor at the head", Duration::from_secs(20), || {
        db.count("SELECT coalesce(max(cursor), 0) FROM sync_state") >= 3
    });
    target.shutdown();
    let before = table_snapshot(&db);
    assert_eq!(rejection_reasons(&db), ["email_taken"]);
    db.client()
        .execute("UPDATE sync_state SET cursor = 1", &[])
        .unwrap();

    let target = start_target(&db, &source.url, &one_at_a_time);
    wait_until("replayed to the head", Duration::from_secs(20), || {
        target.metrics.fetched.get() >= 2
    });
    wait_rounds(&target, 1);
    assert_eq!(table_snapshot(&db), before);
    assert!(user_row(&db, 2).is_none());
    assert_eq!(rejection_reasons(&db), ["email_taken"]);
    assert_eq!(target.metrics.synced.get(), 0);
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
fn a_change_recorded_as_future_has_no_effect_when_it_comes_again_once_due() {
    // The change is recorded as future_timestamp. Once its instant has
    // passed, the source restarts and serves the same log under a new
    // epoch: the replay is an element recorded already, so it has no
    // further effect; deciding it again is redrive's job.
    let db = TestDb::new();
    let due = chrono::Utc::now() + chrono::Duration::seconds(2);
    let at = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let log = CursorLog::new(vec![profile(1, &at)]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[("MAX_FUTURE_SKEW_SECS", "0")]);
    wait_rounds(&target, 1);
    wait_until("recorded as future", Duration::from_secs(10), || {
        rejection_reasons(&db) == ["future_timestamp"]
    });
    thread::sleep(Duration::from_millis(2500));
    *log.epoch.lock().unwrap() = "epoch-2".to_owned();
    wait_until("the replay handled", Duration::from_secs(10), || {
        rejected(&target, "future_timestamp") == 2
    });
    wait_rounds(&target, 1);
    assert!(user_row(&db, 1).is_none(), "the replay did not sync it");
    assert_eq!(target.metrics.synced.get(), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE resolved_at IS NULL"),
        1,
        "its one record stays unresolved, for redrive"
    );
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

fn table_snapshot(db: &TestDb) -> Vec<String> {
    db.client()
        .query(
            "SELECT id::text || name || email || mobile || status || last_updated_at::text || sync_status FROM users ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn cursor_paging_syncs_a_backlog_and_stores_where_it_got() {
    let db = TestDb::new();
    let log = CursorLog::new(
        (1..=3456)
            .map(|n| profile(n, "2025-07-01T10:00:00Z"))
            .collect(),
    );
    let source = log.source();
    let target = start_target(&db, &source.url, &[("FETCH_LIMIT", "500")]);
    wait_until("backlog synced", Duration::from_secs(30), || {
        db.count("SELECT count(*) FROM users") == 3456
    });
    wait_until("cursor stored", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 3456
    });
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
    let log = CursorLog::new(
        (1..=30)
            .map(|n| profile(n, "2025-07-01T10:00:00Z"))
            .collect(),
    );
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("first epoch synced", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 30
    });
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
        reply.headers.retain(|(name, _)| name != "X-Source-Epoch");
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
fn a_failing_source_is_counted_and_retried_with_the_cursor_kept() {
    let db = TestDb::new();
    let log = CursorLog::new(
        (1..=10)
            .map(|n| profile(n, "2025-07-01T10:00:00Z"))
            .collect(),
    );
    let source = log.source();
    let target = start_target(&db, &source.url, &[("MAX_RESPONSE_BYTES", "100000")]);
    wait_until("synced", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 10
    });
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
fn identical_rejected_elements_are_recorded_once_wherever_they_arrive() {
    // The same bad element three times in one page, again in the next page,
    // and again after the source restarted: one row, counted every time.
    let db = TestDb::new();
    let bad = json!({"id": id(1), "email": "nope", "last_updated_at": "2025-07-01T10:00:00Z"});
    let log = CursorLog::new(vec![
        bad.clone(),
        bad.clone(),
        bad.clone(),
        profile(2, "2025-07-01T10:00:00Z"),
        bad.clone(),
    ]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[("FETCH_LIMIT", "3")]);
    wait_until("first epoch synced", Duration::from_secs(10), || {
        db.count("SELECT cursor FROM sync_state") == 5
    });
    *log.changes.lock().unwrap() = vec![bad.clone(), bad, profile(3, "2025-07-01T10:00:00Z")];
    *log.epoch.lock().unwrap() = "epoch-2".to_owned();
    wait_until("second epoch synced", Duration::from_secs(10), || {
        user_row(&db, 3).is_some()
    });
    wait_rounds(&target, 1);
    assert_eq!(rejection_reasons(&db), ["malformed"]);
    assert_eq!(rejected(&target, "malformed"), 6);
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn identical_bad_elements_of_a_page_handed_out_every_round_are_one_row_each() {
    let db = TestDb::new();
    let page = json!([null, null, 7, 7, {"id": "nope"}, {"id": "nope"}, {"id": "nope"}]);
    let source = ScriptedSource::fixed_page(page);
    let target = start_target(&db, &source.url, &[]);
    wait_rounds(&target, 3);
    assert_eq!(db.count("SELECT count(*) FROM sync_rejections"), 3);
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections WHERE payload = '{\"id\":\"nope\"}'"),
        1
    );
    target.shutdown();
}

#[test]
fn hostile_elements_are_decided_alone_and_recorded_exactly_as_sent() {
    let db = TestDb::new();
    let valid_with = |n: u32, extra: &str, at: &str| {
        format!(
            r#"{{ "id": "{}", {extra} "name": "User {n}", "email": "user{n}@example.com", "mobile": "+1555{n:07}", "status": "active", "last_updated_at": "{at}" }}"#,
            id(n)
        )
    };
    let at = "2025-07-01T10:00:00Z";
    let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // A lone surrogate escape in a name: no character, so the name rule
    // fails. Before, it failed its whole page every round.
    let lone_surrogate = valid_with(2, "", at).replace("User 2", r"Ada \ud800");
    // Valid, but its email is user 1's: a writer rejects it, with its text.
    let taken = format!(
        r#"{{"status":"active" ,"id":"{}","name":"Taken","email":"user1@example.com","mobile":"+15550000004","last_updated_at":"2025-07-01T10:00:00Z"}}"#,
        id(4)
    );
    // Unknown members no `Value` takes change nothing, however deep.
    let hostile_extras = valid_with(
        5,
        &format!(
            r#""deep": {}, "big": 1e400, "digits": {}, "lone": "\udc00x", "\ud800": {{"k": -1e-999}},"#,
            nest(200),
            "9".repeat(400)
        ),
        at,
    );
    let very_deep = valid_with(6, &format!(r#""deep": {},"#, nest(100_000)), at);
    // A second of 60 is the next minute; a day the calendar lacks is refused.
    let leap = valid_with(7, "", "2025-12-31T23:59:60Z");
    let no_such_day = valid_with(8, "", "2025-02-29T00:00:00Z");
    // Bytes that are not UTF-8 inside strings: kept as lone surrogates.
    let junk_extra = valid_with(9, r#""junk": "NOT-UTF-8","#, at);
    let junk_name = valid_with(10, "", at).replace("User 10", "User NOT-UTF-8");
    let body = format!(
        "\u{feff} \n[{},\n  {lone_surrogate} ,{},{taken},{hostile_extras},{very_deep},{leap},{no_such_day},{junk_extra},{junk_name}]\r\n",
        profile(1, at),
        profile(3, at)
    );
    let body = body.replace("NOT-UTF-8", "\u{0}").into_bytes();
    let body: Vec<u8> = body
        .into_iter()
        .flat_map(|b| if b == 0 { vec![0xff, 0xfe] } else { vec![b] })
        .collect();
    let source = ScriptedSource::new(move |_| Reply {
        status: 200,
        headers: Vec::new(),
        body: body.clone(),
    });
    let target = start_target(&db, &source.url, &[("SYNC_INTERVAL", "3600")]);
    wait_rounds(&target, 1);

    assert_eq!(
        target.metrics.fetch_errors.get(),
        0,
        "the page is not spoilt"
    );
    for n in [1, 3, 5, 6, 7, 9] {
        assert!(user_row(&db, n).is_some(), "user {n} synced");
    }
    for n in [2, 4, 8, 10] {
        assert!(user_row(&db, n).is_none(), "user {n} not synced");
    }
    let stored: chrono::DateTime<chrono::Utc> = db
        .client()
        .query_one(
            "SELECT last_updated_at FROM users WHERE id = $1::text::uuid",
            &[&id(7)],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    let rows: Vec<(String, Option<uuid::Uuid>, String, String)> = db
        .client()
        .query(
            "SELECT reason, profile_id, message, payload FROM sync_rejections ORDER BY reason, payload",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let (reason, profile_id, message, payload) = &rows[0];
    assert_eq!(reason, "email_taken");
    assert_eq!(profile_id.map(|u| u.to_string()), Some(id(4)));
    assert_eq!(payload, &taken, "the text as the source sent it: {message}");
    let (reason, profile_id, message, payload) = &rows[1];
    assert_eq!(reason, "invalid_name");
    assert_eq!(profile_id.map(|u| u.to_string()), Some(id(2)));
    assert!(message.contains("lone surrogate"), "{message}");
    assert_eq!(payload, &lone_surrogate, "the text as the source sent it");
    let (reason, profile_id, message, payload) = &rows[2];
    assert_eq!(reason, "invalid_name");
    assert_eq!(profile_id.map(|u| u.to_string()), Some(id(10)));
    assert!(message.contains("not UTF-8"), "{message}");
    assert_eq!(payload, &junk_name.replace("NOT-UTF-8", r"\udcff\udcfe"));
    let (reason, profile_id, _, payload) = &rows[3];
    assert_eq!(reason, "invalid_timestamp");
    assert_eq!(profile_id.map(|u| u.to_string()), Some(id(8)));
    assert_eq!(payload, &no_such_day);
    assert_eq!(rejected(&target, "malformed"), 0);
    assert_invariant(&target);
    target.shutdown();
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
            ("X-Next-Cursor".to_owned(), next.to_string()),
            ("X-Head-Cursor".to_owned(), head.to_string()),
            ("X-Source-Epoch".to_owned(), epoch),
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
            ("X-Next-Cursor".to_owned(), next.to_string()),
            ("X-Head-Cursor".to_owned(), "4".to_owned()),
            ("X-Source-Epoch".to_owned(), "epoch-1".to_owned()),
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

#[test]
fn on_a_latin1_database_what_it_cannot_hold_is_recorded_escaped_and_the_rest_syncs() {
    let db = TestDb::with_encoding("LATIN1");
    let mut bad_email = profile(1, "2025-07-01T10:00:00Z");
    bad_email["email"] = json!("smile\u{1F600}@example.com");
    let mut emoji_name = profile(2, "2025-07-01T10:00:00Z");
    emoji_name["name"] = json!("Zo\u{eb} \u{1F600}");
    let mut latin_name = profile(3, "2025-07-01T10:00:00Z");
    latin_name["name"] = json!("Zo\u{eb}");
    let mut latin_bad_mobile = profile(5, "2025-07-01T10:00:00Z");
    latin_bad_mobile["name"] = json!("Zo\u{eb}");
    latin_bad_mobile["mobile"] = json!("12");
    let mut emoji_status = profile(6, "2025-07-01T10:00:00Z");
    emoji_status["status"] = json!("inactive \u{1F600}");
    let elements = [
        bad_email,
        emoji_name,
        latin_name,
        profile(4, "2025-07-01T10:00:00Z"),
        latin_bad_mobile,
        emoji_status,
    ];
    let texts: Vec<String> = elements.iter().map(Value::to_string).collect();
    let body = format!("[{}]", texts.join(","));
    let source = ScriptedSource::new(move |_| Reply::raw(200, &body));
    let target = start_target(&db, &source.url, &[]);
    wait_until("the rest synced", Duration::from_secs(10), || {
        user_row(&db, 3).is_some() && user_row(&db, 4).is_some()
    });
    wait_rounds(&target, 2);
    assert_eq!(user_row(&db, 3).unwrap().0, "Zo\u{eb}");
    assert!(user_row(&db, 2).is_none());
    let rows: Vec<(String, String)> = db
        .client()
        .query(
            "SELECT reason, payload FROM sync_rejections ORDER BY profile_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let reasons: Vec<&str> = rows.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["invalid_email", "db_error", "invalid_mobile"],
        "the inactive change is skipped, whatever it holds"
    );
    for ((_, payload), sent) in rows.iter().zip([&texts[0], &texts[1], &texts[4]]) {
        let stored: Value = serde_json::from_str(payload).unwrap();
        let sent: Value = serde_json::from_str(sent).unwrap();
        assert_eq!(stored, sent, "the same JSON value");
    }
    assert!(
        rows[0].1.is_ascii() && rows[0].1.contains("\\ud83d\\ude00"),
        "{}",
        rows[0].1
    );
    assert!(
        rows[1].1.is_ascii() && rows[1].1.contains("\\u00eb"),
        "{}",
        rows[1].1
    );
    assert_eq!(
        rows[2].1, texts[4],
        "LATIN1 holds an e acute: stored as sent"
    );
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn recorded_elements_decided_afresh_sync_exactly_as_fresh_changes_would() {
    use target_service::decide::decide_afresh;
    use target_service::metrics::Counted;
    use target_service::profile::Reason;

    let db = TestDb::new();
    let mut client = db.client();
    target_service::store::apply_schema(&mut client).unwrap();
    let now = chrono::Utc::now();
    let t = "2025-07-01T10:00:00Z";
    let holder = with_email(1, t, "e@example.com").to_string();
    let claim = with_email(2, t, "e@example.com").to_string();
    let moves = with_email(1, "2025-07-01T11:00:00Z", "moved@example.com").to_string();
    let mut decide =
        |texts: &[&str], dry_run| decide_afresh(&mut client, texts, now, dry_run).unwrap();

    assert_eq!(decide(&[&holder], false), [Counted::Synced]);
    assert_eq!(
        decide(&[&claim], false),
        [Counted::NotSynced(Reason::EmailTaken)]
    );
    assert_eq!(decide(&[&moves], false), [Counted::Synced]);
    assert_eq!(decide(&[&claim], true), [Counted::Synced], "dry run");
    assert!(user_row(&db, 2).is_none(), "a dry run writes nothing");
    assert_eq!(decide(&[&claim], false), [Counted::Synced]);
    assert_eq!(
        user_row(&db, 2).map(|r| r.1).as_deref(),
        Some("e@example.com")
    );
    assert_eq!(
        decide(&[&claim], false),
        [Counted::NotSynced(Reason::Stale)]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections"),
        0,
        "it records nothing"
    );
}

/// Records `text` as a rejection of id 2, as a sync round would.
fn record_rejection_of_2(db: &TestDb, text: &str, outcome: &str, reason: &str, at: &str) {
    let key = target_service::change::change_key(text);
    db.client()
        .execute(
            "INSERT INTO sync_rejections \
               (profile_id, outcome, reason, message, payload, changed_at, change_key) \
             VALUES ($1::text::uuid, $2, $3, 'm', $4, $5::text::timestamptz, $6)",
            &[&id(2), &outcome, &reason, &text, &at, &&key[..]],
        )
        .unwrap();
}

#[test]
fn decided_afresh_no_recorded_rejection_makes_an_element_stale_only_the_row_does() {
    use target_service::decide::decide_afresh;
    use target_service::metrics::Counted;
    use target_service::profile::Reason;

    let db = TestDb::new();
    target_service::store::apply_schema(&mut db.client()).unwrap();
    let (t0, t1, t2) = (
        "2025-07-01T10:00:00Z",
        "2025-07-01T10:30:00Z",
        "2025-07-01T11:00:00Z",
    );
    let claim = with_email(2, t1, "e@example.com").to_string();
    let mut other = with_email(2, t2, "e@example.com");
    other["name"] = json!("Another element, newer");
    let other = other.to_string();
    record_rejection_of_2(&db, &claim, "conflict", "email_taken", t1);
    record_rejection_of_2(&db, &other, "conflict", "mobile_taken", t2);
    let refused = with_email(2, t2, "refused@example.com").to_string();
    record_rejection_of_2(&db, &refused, "failed_validation", "db_error", t2);
    let now = chrono::Utc::now();
    let decide = |texts: &[&str]| decide_afresh(&mut db.client(), texts, now, true).unwrap();
    let holder = with_email(1, t0, "moved@example.com").to_string();
    assert_eq!(
        decide(&[&holder, &claim]),
        [Counted::Synced; 2],
        "newer conflicts and db_errors of its id do not count"
    );
    let between = with_email(2, "2025-07-01T10:45:00Z", "e@example.com").to_string();
    assert_eq!(
        decide(&[&holder, &claim, &between, &claim]),
        [
            Counted::Synced,
            Counted::Synced,
            Counted::Synced,
            Counted::NotSynced(Reason::Stale)
        ],
        "the row the earlier elements leave does"
    );
}

/// `last_updated_at` of user `n` as PostgreSQL holds it, in UTC.
fn stored_instant(db: &TestDb, n: u32) -> chrono::DateTime<chrono::Utc> {
    db.client()
        .query_one(
            "SELECT last_updated_at FROM users WHERE id = $1::text::uuid",
            &[&id(n)],
        )
        .unwrap()
        .get(0)
}

#[test]
fn offsets_to_23_59_and_year_0000_are_stored_as_the_utc_instants_they_name() {
    use chrono::TimeZone;
    let db = TestDb::new();
    let mut changes = vec![
        profile(1, "2025-07-01T10:13:04+23:59"),
        profile(2, "2025-07-01T10:13:04.1234567-16:00"),
        profile(3, "0000-01-01T00:00:00+23:59"),
        profile(4, "0000-06-01T12:00:00Z"),
    ];
    // A second before user 1's instant, however it is written: stale.
    let mut older = profile(1, "2025-06-30T10:14:03Z");
    older["name"] = json!("Older");
    changes.push(older);
    let log = CursorLog::new(changes);
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("all handled", Duration::from_secs(10), || {
        target.metrics.synced.get() + target.metrics.skipped.get() == 5
    });
    assert_eq!(target.metrics.synced.get(), 4);
    assert_eq!(rejected(&target, "stale"), 1);
    assert_eq!(rejected(&target, "invalid_timestamp"), 0);
    target.shutdown();
    let utc = |y, mo, d, h, mi, s| chrono::Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
    assert_eq!(stored_instant(&db, 1), utc(2025, 6, 30, 10, 14, 4));
    assert_eq!(
        stored_instant(&db, 2),
        utc(2025, 7, 2, 2, 13, 4) + chrono::Duration::microseconds(123_456)
    );
    // Year -1 in chrono's reckoning: 2 BC, which timestamptz holds.
    assert_eq!(stored_instant(&db, 3), utc(-1, 12, 31, 0, 1, 0));
    assert_eq!(stored_instant(&db, 4), utc(0, 6, 1, 12, 0, 0));
    let shown: String = db
        .client()
        .query_one(
            "SELECT to_char(last_updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS BC') \
             FROM users WHERE id = $1::text::uuid",
            &[&id(3)],
        )
        .unwrap()
        .get(0);
    assert_eq!(shown, "0002-12-31 00:01:00 BC");
    assert_eq!(user_row(&db, 1).unwrap().0, "User 1");
    assert_eq!(db.count("SELECT count(*) FROM sync_rejections"), 0);
}
