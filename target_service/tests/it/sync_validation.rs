//! What becomes of each element of a page: every rule of the validation
//! table, hostile texts decided alone and recorded exactly as sent,
//! identical bad elements recorded once, and what a LATIN1 database cannot
//! hold.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

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
