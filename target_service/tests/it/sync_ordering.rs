//! The newest change wins: instants compared at microsecond precision
//! whatever their offsets, staleness against the stored row alone, and a
//! stale or invalid change never overwriting a good row.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

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
