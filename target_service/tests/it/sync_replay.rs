//! Changes that come again: a replayed page, or a replay after a crash
//! before the cursor was stored, has no further effect; deciding recorded
//! elements afresh (redrive's way) decides them as fresh changes.

use std::thread;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use target_service::Running;

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
fn recorded_elements_decided_afresh_sync_exactly_as_fresh_changes_would() {
    use target_service::decide_afresh;
    use target_service::profile::Reason;
    use target_service::Counted;

    let db = TestDb::new();
    let mut client = db.client();
    target_service::apply_schema(&mut client).unwrap();
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
    let key = target_service::change_key(text);
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
    use target_service::decide_afresh;
    use target_service::profile::Reason;
    use target_service::Counted;

    let db = TestDb::new();
    target_service::apply_schema(&mut db.client()).unwrap();
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
