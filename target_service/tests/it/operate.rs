//! Operating the target (SPEC §5), against real PostgreSQL and real HTTP:
//! `GET /rejections` (auth, filters, paging, 400s), the status page,
//! `/openapi.json`, and the `redrive` and `verify` commands run as the
//! built binary, checked by their output, exit code and the rows they leave;
//! and what the running binary tells its operator: warnings about misspelt
//! variables, one line per busy round, a source's restart.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, *};
use serde_json::{json, Value};

const TOKEN: &str = "operator-token-1";

/// `GET` with an optional bearer token: status, `WWW-Authenticate`, body.
fn get_as(url: &str, token: Option<&str>) -> (u16, Option<String>, Value) {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    let answer = get_with(url, &headers);
    (
        answer.status,
        answer.header("WWW-Authenticate").map(str::to_owned),
        serde_json::from_str(&answer.body).unwrap_or(Value::Null),
    )
}

/// A change whose email breaks the rule: recorded as `invalid_email`.
fn bad_email(n: u32) -> Value {
    let mut change = profile(n, "2025-07-01T10:00:00Z");
    change["email"] = json!(format!("not-an-email-{n}"));
    change
}

/// Runs the built binary with this database and source and nothing else
/// from the environment that could change its configuration.
fn run(
    db: &TestDb,
    source_url: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> (i32, String, String) {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("operate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = common::target_binary();
    command
        .args(args)
        .current_dir(&dir)
        .env("DATABASE_URL", &db.url)
        .env("SOURCE_SERVICE_URL", source_url)
        .env("HTTP_TIMEOUT_SECS", "5");
    for (name, value) in extra {
        command.env(name, value);
    }
    let output = command.output().expect("run target_service");
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn rejections_answer_only_the_admin_token() {
    let db = TestDb::new();
    let source = CursorLog::new(vec![bad_email(1)]).source();
    let closed = start_target(&db, &source.url, &[]);
    let (status, _, body) = get_as(&format!("http://{}/rejections", closed.addr), Some(TOKEN));
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"));
    closed.shutdown();

    let target = start_target(&db, &source.url, &[("ADMIN_TOKEN", TOKEN)]);
    let url = format!("http://{}/rejections", target.addr);
    wait_until("recorded", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM sync_rejections") == 1
    });
    for token in [None, Some("wrong"), Some("operator-token-")] {
        let (status, challenge, body) = get_as(&url, token);
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        assert!(body["error"].is_string());
    }
    let (status, _, body) = get_as(&url, Some(TOKEN));
    assert_eq!(status, 200);
    let rejection = &body["rejections"][0];
    assert_eq!(rejection["reason"], "invalid_email");
    assert_eq!(rejection["outcome"], "failed_validation");
    assert_eq!(rejection["profile_id"], id(1));
    assert_eq!(rejection["changed_at"], "2025-07-01T10:00:00.000000Z");
    assert_eq!(rejection["resolved_at"], Value::Null);
    assert_eq!(rejection["resolution"], Value::Null);
    let payload: Value = serde_json::from_str(rejection["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, bad_email(1));
    assert!(rejection["received_at"].is_string());
    assert_eq!(body["next_before"], Value::Null);
    target.shutdown();
}

#[test]
fn rejections_are_filtered_and_paged_newest_first() {
    let db = TestDb::new();
    let mut changes: Vec<Value> = (1..=250).map(bad_email).collect();
    let mut inactive = profile(299, "2025-07-01T10:00:00Z");
    inactive["status"] = json!("inactive");
    changes.push(inactive);
    changes.push(profile(300, "2025-07-01T10:00:00Z"));
    let mut thief = profile(301, "2025-07-01T10:00:00Z");
    thief["email"] = json!("user300@example.com");
    changes.push(thief);
    let source = CursorLog::new(changes).source();
    let target = start_target(&db, &source.url, &[("ADMIN_TOKEN", TOKEN)]);
    let base = format!("http://{}/rejections", target.addr);
    wait_until("all handled", Duration::from_secs(20), || {
        target.metrics.synced.get() + target.metrics.skipped.get() == 253
    });
    assert_eq!(
        db.count("SELECT count(*) FROM sync_rejections"),
        251,
        "the inactive change is not recorded"
    );

    // Paging through the 250 invalid emails, 100 at a time.
    let mut ids: Vec<i64> = Vec::new();
    let mut pages = 0;
    let mut before: Option<i64> = None;
    loop {
        let url = match before {
            Some(before) => format!("{base}?reason=invalid_email&limit=100&before={before}"),
            None => format!("{base}?reason=invalid_email&limit=100"),
        };
        let (status, _, body) = get_as(&url, Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let page = body["rejections"].as_array().unwrap();
        ids.extend(page.iter().map(|r| r["id"].as_i64().unwrap()));
        assert!(page.iter().all(|r| r["reason"] == "invalid_email"));
        match body["next_before"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), ids.last().copied());
                before = Some(next);
            }
            None => break,
        }
        assert!(pages < 5, "paging does not end");
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(pages, 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "strictly decreasing");

    // Default limit, and the other filters.
    let (_, _, body) = get_as(&base, Some(TOKEN));
    assert_eq!(body["rejections"].as_array().unwrap().len(), 100);
    let (_, _, body) = get_as(&format!("{base}?outcome=conflict"), Some(TOKEN));
    let conflicts = body["rejections"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0]["reason"], "email_taken");
    let (_, _, body) = get_as(&format!("{base}?profile_id={}", id(7)), Some(TOKEN));
    let one = body["rejections"].as_array().unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["profile_id"], id(7));
    let (_, _, body) = get_as(&format!("{base}?resolved=true"), Some(TOKEN));
    assert_eq!(body["rejections"], json!([]));
    let (_, _, body) = get_as(&format!("{base}?resolved=false&limit=1000"), Some(TOKEN));
    assert_eq!(body["rejections"].as_array().unwrap().len(), 251);
    assert_eq!(body["next_before"], Value::Null);

    // Bad parameters name themselves.
    for (query, named) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("before=abc", "before"),
        ("resolved=maybe", "resolved"),
        ("reason=bogus", "reason"),
        ("outcome=synced", "outcome"),
        ("profile_id=42", "profile_id"),
        ("colour=blue", "colour"),
    ] {
        let (status, _, body) = get_as(&format!("{base}?{query}"), Some(TOKEN));
        assert_eq!(status, 400, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(named),
            "{query}: {body}"
        );
    }
    target.shutdown();
}

#[test]
fn the_status_page_and_the_api_document_are_served() {
    let db = TestDb::new();
    let source = CursorLog::new(vec![profile(1, "2025-07-01T10:00:00Z")]).source();
    let target = start_target(&db, &source.url, &[]);
    let page = get_with(&format!("http://{}/", target.addr), &[]);
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.header("Content-Security-Policy").is_some());
    let html = page.body;
    assert!(html.contains("fetch(\"status\""));
    let (status, body) = get(&format!("http://{}/openapi.json", target.addr));
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"]["/rejections"]["get"]["parameters"].is_array());
    wait_until("synced", Duration::from_secs(10), || {
        target.metrics.synced.get() == 1
    });
    let (_, body) = get(&format!("http://{}/status", target.addr));
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["lag"], 0);
    assert!(status["queue_depth"].is_i64());
    target.shutdown();
}

/// A conflict (id 2 claims the email id 1 holds) recorded, then the owner
/// moving to another email, by a target that is left running. A change
/// superseded within its page is stale, so the move comes in a later page.
fn conflict_then_owner_moves(db: &TestDb) -> (CursorLog, ScriptedSource, target_service::Running) {
    let mut thief = profile(2, "2025-07-01T10:00:01Z");
    thief["email"] = json!("user1@example.com");
    let log = CursorLog::new(vec![profile(1, "2025-07-01T10:00:00Z"), thief]);
    let source = log.source();
    let target = start_target(db, &source.url, &[("SYNC_INTERVAL", "0.05")]);
    wait_until("conflict recorded", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM sync_rejections WHERE reason = 'email_taken'") == 1
    });
    let mut moved = profile(1, "2025-07-01T11:00:00Z");
    moved["email"] = json!("user1.new@example.com");
    log.changes.lock().unwrap().push(moved);
    wait_until("owner moved", Duration::from_secs(10), || {
        user_row(db, 1).is_some_and(|r| r.1 == "user1.new@example.com")
    });
    (log, source, target)
}

fn resolution(db: &TestDb, n: u32) -> (Option<String>, bool) {
    let row = db
        .client()
        .query_one(
            "SELECT resolution, resolved_at IS NOT NULL FROM sync_rejections WHERE profile_id = $1::text::uuid",
            &[&id(n)],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn redrive_syncs_a_conflict_once_the_owner_moved_and_dry_run_writes_nothing() {
    let db = TestDb::new();
    let (_log, _source, target) = conflict_then_owner_moves(&db);
    target.shutdown();
    assert!(user_row(&db, 2).is_none());
    let nowhere = "http://127.0.0.1:9/users/changes";

    let (code, out, err) = run(&db, nowhere, &["redrive", "--dry-run"], &[]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "redrive: 1 examined, 1 synced, 0 stale, 0 still rejected (dry run)"
        ),
        "{err}"
    );
    assert!(user_row(&db, 2).is_none(), "dry run wrote the row");
    assert_eq!(resolution(&db, 2), (None, false));

    // Only future timestamps: the conflict is not examined.
    let (code, out, _) = run(
        &db,
        nowhere,
        &["redrive", "--reason", "future_timestamp"],
        &[],
    );
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "redrive: 0 examined, 0 synced, 0 stale, 0 still rejected"
        )
    );

    let (code, out, err) = run(&db, nowhere, &["redrive", "--reason", "email_taken"], &[]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "redrive: 1 examined, 1 synced, 0 stale, 0 still rejected"
        ),
        "{err}"
    );
    let row = user_row(&db, 2).expect("synced by redrive");
    assert_eq!(row.1, "user1@example.com");
    assert_eq!(
        (row.4.as_str(), row.5.as_deref()),
        ("synced", Some("created"))
    );
    assert_eq!(resolution(&db, 2), (Some("synced".to_owned()), true));

    // Resolved ones are not examined again.
    let (_, out, _) = run(&db, nowhere, &["redrive"], &[]);
    assert_eq!(
        out.trim(),
        "redrive: 0 examined, 0 synced, 0 stale, 0 still rejected"
    );
}

#[test]
fn redrive_leaves_a_conflict_still_taken_and_marks_an_overtaken_one_stale() {
    let db = TestDb::new();
    let mut thief = profile(2, "2025-07-01T10:00:01Z");
    thief["email"] = json!("user1@example.com");
    let mut other = profile(3, "2025-07-01T10:00:01Z");
    other["mobile"] = json!("+15550000001");
    let log = CursorLog::new(vec![profile(1, "2025-07-01T10:00:00Z"), thief, other]);
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("conflicts recorded", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM sync_rejections") == 2
    });
    // Id 3 later syncs a newer change of its own: its conflict is overtaken.
    log.changes
        .lock()
        .unwrap()
        .push(profile(3, "2025-07-01T12:00:00Z"));
    wait_until("id 3 synced", Duration::from_secs(10), || {
        user_row(&db, 3).is_some()
    });
    target.shutdown();

    let (code, out, err) = run(&db, "http://127.0.0.1:9/users/changes", &["redrive"], &[]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "redrive: 2 examined, 0 synced, 1 stale, 1 still rejected"
        ),
        "{err}"
    );
    assert_eq!(resolution(&db, 2), (None, false));
    assert_eq!(resolution(&db, 3), (Some("stale".to_owned()), true));
    assert!(user_row(&db, 2).is_none());
    // The stale one did not make id 3's row older.
    let at: chrono::DateTime<chrono::Utc> = db
        .client()
        .query_one(
            "SELECT last_updated_at FROM users WHERE id = $1::text::uuid",
            &[&id(3)],
        )
        .unwrap()
        .get(0);
    assert_eq!(at.to_rfc3339(), "2025-07-01T12:00:00+00:00");
}

#[test]
fn redrive_syncs_a_future_timestamp_once_it_is_due() {
    let db = TestDb::new();
    let due = chrono::Utc::now() + chrono::Duration::seconds(2);
    let at = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let source = CursorLog::new(vec![profile(1, &at)]).source();
    let target = start_target(&db, &source.url, &[("MAX_FUTURE_SKEW_SECS", "0")]);
    wait_until("recorded as future", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM sync_rejections WHERE reason = 'future_timestamp'") == 1
    });
    target.shutdown();
    let skew = [("MAX_FUTURE_SKEW_SECS", "0")];
    let nowhere = "http://127.0.0.1:9/users/changes";
    if chrono::Utc::now() < due {
        let (_, out, _) = run(&db, nowhere, &["redrive"], &skew);
        assert_eq!(
            out.trim(),
            "redrive: 1 examined, 0 synced, 0 stale, 1 still rejected"
        );
    }
    std::thread::sleep(
        (due - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1100),
    );
    let (code, out, err) = run(&db, nowhere, &["redrive"], &skew);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "redrive: 1 examined, 1 synced, 0 stale, 0 still rejected"
        ),
        "{err}"
    );
    assert!(user_row(&db, 1).is_some());
    assert_eq!(resolution(&db, 1), (Some("synced".to_owned()), true));
}

#[test]
fn verify_finds_a_deleted_row_and_passes_when_in_step() {
    let db = TestDb::new();
    let mut changes: Vec<Value> = (1..=30)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    changes.push(bad_email(40));
    let mut inactive = profile(41, "2025-07-01T10:00:00Z");
    inactive["status"] = json!("inactive");
    changes.push(inactive);
    // A conflict is recorded: verify does not count it as missing.
    let mut thief = profile(42, "2025-07-01T10:00:01Z");
    thief["email"] = json!("user1@example.com");
    changes.push(thief);
    changes.push(profile(5, "2025-07-01T11:00:00Z"));
    let log = CursorLog::new(changes);
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("all handled", Duration::from_secs(10), || {
        target.metrics.synced.get() + target.metrics.skipped.get() == 34
    });
    target.shutdown();
    let requests_before = source.requests.load(std::sync::atomic::Ordering::SeqCst);

    let (code, out, err) = run(&db, &source.url, &["verify"], &[("FETCH_LIMIT", "7")]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        "verify: 34 changes read, 31 ids, 0 missing or behind, 0 rows ahead of the source"
    );
    assert_eq!(
        log.changes.lock().unwrap().len(),
        34,
        "verify made the source generate"
    );
    assert!(source.requests.load(std::sync::atomic::Ordering::SeqCst) > requests_before + 4);

    db.client()
        .execute("DELETE FROM users WHERE id = $1::text::uuid", &[&id(17)])
        .unwrap();
    db.client()
        .execute(
            "UPDATE users SET last_updated_at = '2025-07-01T10:00:00Z' WHERE id = $1::text::uuid",
            &[&id(5)],
        )
        .unwrap();
    let (code, out, _) = run(&db, &source.url, &["verify"], &[]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "verify: 34 changes read, 31 ids, 2 missing or behind, 0 rows ahead of the source"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&id(17)) && l.ends_with("missing")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&id(5)) && l.ends_with("behind")),
        "{out}"
    );
    let (code, out, _) = run(&db, &source.url, &["verify", "--max-report", "1"], &[]);
    assert_eq!((code, out.lines().count()), (1, 2));
}

#[test]
fn verify_reads_from_the_oldest_retained_change() {
    let db = TestDb::new();
    let (log, source, target) = synced_backlog(&db, 10, &[], Duration::from_secs(10));
    assert_eq!(target.metrics.synced.get(), 10);
    target.shutdown();
    *log.dropped.lock().unwrap() = 4;
    let (code, out, err) = run(&db, &source.url, &["verify"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "verify: 6 changes read, 6 ids, 0 missing or behind, 0 rows ahead of the source"
    );
}

/// A database synced from a log of ids 1..=10, and the changes of a new
/// log the source holds after a restart: ids 11..=15 (never synced), then
/// ids 6..=10 as synced already.
fn synced_db_and_a_restarted_log() -> (TestDb, Vec<Value>, Vec<Value>) {
    let db = TestDb::new();
    let old: Vec<Value> = (1..=10)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    let log = CursorLog::new(old.clone());
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    wait_until("synced", Duration::from_secs(10), || {
        target.metrics.synced.get() == 10
    });
    target.shutdown();
    let new = (11..=15)
        .chain(6..=10)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    (db, old, new)
}

/// A source serving `old` under `epoch-1` that restarts with `new` under
/// `epoch-2` right after its first page; and whether it has.
fn restarting_after_the_first_page(
    old: Vec<Value>,
    new: Vec<Value>,
) -> (
    ScriptedSource,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let log = CursorLog::new(old);
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&restarted);
    let source = ScriptedSource::new(move |query| {
        let reply = log.answer(query);
        if reply.status == 200 && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            *log.epoch.lock().unwrap() = "epoch-2".to_owned();
            *log.changes.lock().unwrap() = new.clone();
        }
        reply
    });
    (source, restarted)
}

#[test]
fn verify_reads_the_new_log_from_its_start_when_the_source_restarts_between_pages() {
    let (db, old, new) = synced_db_and_a_restarted_log();
    let (source, restarted) = restarting_after_the_first_page(old, new);
    let (code, out, err) = run(&db, &source.url, &["verify"], &[("FETCH_LIMIT", "5")]);
    assert!(restarted.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "verify: 10 changes read, 10 ids, 5 missing or behind, 0 rows ahead of the source",
        "{err}"
    );
    for n in 11..=15 {
        assert!(
            lines.contains(&format!("{} missing", id(n)).as_str()),
            "{out}"
        );
    }
    assert!(err.contains("restarted"), "{err}");
}

#[test]
fn verify_reads_the_new_log_when_a_restart_makes_its_cursor_gone() {
    let (db, old, _) = synced_db_and_a_restarted_log();
    // The new log is shorter than the cursor verify reached: a 410.
    let new = (11..=13)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    let (source, restarted) = restarting_after_the_first_page(old, new);
    let (code, out, err) = run(&db, &source.url, &["verify"], &[("FETCH_LIMIT", "5")]);
    assert!(restarted.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.lines().next(),
        Some("verify: 3 changes read, 3 ids, 3 missing or behind, 0 rows ahead of the source"),
        "{err}"
    );
}

#[test]
fn verify_gives_up_on_a_source_that_restarts_on_every_page() {
    let (db, old, _) = synced_db_and_a_restarted_log();
    let log = CursorLog::new(old);
    let restarts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let (served, count) = (log.clone(), std::sync::Arc::clone(&restarts));
    let source = ScriptedSource::new(move |query| {
        let reply = served.answer(query);
        if reply.status == 200 {
            let epoch = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            *served.epoch.lock().unwrap() = format!("epoch-{epoch}");
        }
        reply
    });
    let (code, out, err) = run(&db, &source.url, &["verify"], &[("FETCH_LIMIT", "5")]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("keeps restarting"), "{err}");
    assert!(last.starts_with("verify: "), "{err}");
}

#[test]
fn verify_exits_2_against_a_source_without_cursors() {
    let db = TestDb::new();
    let source = ScriptedSource::fixed_page(json!([profile(1, "2025-07-01T10:00:00Z")]));
    let (code, out, err) = run(&db, &source.url, &["verify"], &[]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("X-Next-Cursor"));
}

#[test]
fn commands_take_help_and_refuse_bad_arguments_in_one_line() {
    let db = TestDb::new();
    let nowhere = "http://127.0.0.1:9/users/changes";
    for args in [
        &["--help"][..],
        &["redrive", "--help"],
        &["verify", "--help"],
    ] {
        let (code, out, _) = run(&db, nowhere, args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.starts_with("usage: target_service"), "{args:?}: {out}");
    }
    for flag in ["--version", "-V"] {
        let (code, out, err) = run(&db, nowhere, &[flag], &[]);
        assert_eq!(
            (code, out.as_str()),
            (
                0,
                concat!("target_service ", env!("CARGO_PKG_VERSION"), "\n")
            ),
            "{flag}: {err}"
        );
    }
    let (_, usage, _) = run(&db, nowhere, &["--help"], &[]);
    assert!(usage.contains("--version"), "{usage}");
    for args in [
        &["frobnicate"][..],
        &["redrive", "--reason", "stale"],
        &["redrive", "--now"],
        &["verify", "--max-report", "many"],
    ] {
        let (code, out, err) = run(&db, nowhere, args, &[]);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let (code, _, err) = run(&db, nowhere, &["redrive"], &[("WRITER_THREADS", "abc")]);
    assert_eq!(code, 2);
    assert!(err.contains("WRITER_THREADS"));
}

#[test]
fn redrive_beside_a_syncing_target_never_makes_a_row_older() {
    let db = TestDb::new();
    let (log, source, target) = conflict_then_owner_moves(&db);
    // The target keeps syncing: new users, and a newer change of id 2 that
    // arrives while redrive runs.
    let feeder = {
        let log = log.clone();
        std::thread::spawn(move || {
            for n in 100..160u32 {
                log.changes
                    .lock()
                    .unwrap()
                    .push(profile(n, "2025-07-01T10:00:00Z"));
                if n == 130 {
                    let mut newer = profile(2, "2025-07-01T13:00:00Z");
                    newer["email"] = json!("two@example.com");
                    log.changes.lock().unwrap().push(newer);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (code, out, err) = run(&db, &source.url, &["redrive"], &[]);
    feeder.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.trim() == "redrive: 1 examined, 1 synced, 0 stale, 0 still rejected"
            || out.trim() == "redrive: 1 examined, 0 synced, 1 stale, 0 still rejected",
        "{out}"
    );
    wait_until("all synced", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM users") == 62
    });
    // Whichever came first, the newest change of id 2 is what stands.
    let row = user_row(&db, 2).unwrap();
    assert_eq!(row.1, "two@example.com");
    target.shutdown();
}

#[test]
fn verify_against_a_source_that_wants_a_token_says_so() {
    let db = TestDb::new();
    let source = ScriptedSource::new(|_| Reply::json(401, &json!({"error": "unauthorized"})));
    let (code, out, err) = run(&db, &source.url, &["verify"], &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("verify: "), "{err}");
    assert!(err.contains("HTTP 401 Unauthorized"), "{err}");
    assert!(err.contains("SOURCE_TOKEN"), "{err}");
    assert!(!err.contains("beyond its head"), "{err}");
}

#[test]
fn verify_names_the_reason_postgresql_refuses_the_connection() {
    let db = TestDb::new();
    let log = CursorLog::new(vec![profile(1, "2025-07-01T10:00:00Z")]);
    let source = log.source();
    let (_, host) = db.url.split_once('@').expect("a URL with a user");
    let no_such_role = format!("postgres://nosuchrole_verify@{host}");
    let (code, out, err) = run(
        &db,
        &source.url,
        &["verify"],
        &[("DATABASE_URL", &no_such_role)],
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(r#"role "nosuchrole_verify" does not exist"#),
        "{err}"
    );
}

#[test]
fn redrive_names_the_reason_postgresql_refuses_the_password() {
    let cluster = OwnCluster::start("password");
    postgres::Client::connect(&cluster.url, postgres::NoTls)
        .and_then(|mut admin| admin.batch_execute("ALTER ROLE postgres PASSWORD 'right-pw-5tq'"))
        .expect("set the password");
    cluster.run(
        r#"echo 'host all all 127.0.0.1/32 scram-sha-256' >"$PG_THROWAWAY_DATA/pg_hba.conf" &&
        pg_throwaway_restart_server >&2"#,
    );
    let wrong = format!(
        "postgres://postgres:wrong-pw-8zu@127.0.0.1:{}/postgres",
        cluster.port
    );
    let mut command = common::target_binary();
    let output = command
        .args(["redrive"])
        .env("DATABASE_URL", &wrong)
        .output()
        .expect("run target_service");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("redrive: cannot connect to PostgreSQL"),
        "{err}"
    );
    assert!(
        err.contains(r#"password authentication failed for user "postgres""#),
        "{err}"
    );
    assert!(err.contains("correct DB_PASSWORD"), "{err}");
    assert!(!err.contains("wrong-pw-8zu"), "{err}");
}

#[test]
fn a_round_against_a_source_that_wants_a_token_says_so() {
    let db = TestDb::new();
    let source = ScriptedSource::new(|_| Reply::json(401, &json!({"error": "unauthorized"})));
    let target = start_target(&db, &source.url, &[]);
    wait_until("a fetch error", Duration::from_secs(10), || {
        target.metrics.fetch_errors.get() > 0 && last_error(&target).is_some()
    });
    let why = last_error(&target).unwrap_or_default();
    target.shutdown();
    assert!(why.contains("HTTP 401 Unauthorized"), "{why}");
    assert!(why.contains("SOURCE_TOKEN"), "{why}");
}

/// The service run as the built binary at `info`, its log lines collected
/// as they come.
struct LoggedTarget {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LoggedTarget {
    fn spawn(vars: &[(&str, &str)]) -> LoggedTarget {
        let mut command = common::target_binary();
        command
            .env("LOG_LEVEL", "info")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("SYNC_INTERVAL", "0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("target_service runs");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        LoggedTarget { child, lines }
    }

    /// SIGTERM, the exit, then every line it logged.
    fn stop(mut self) -> Vec<String> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_until("the target exits", Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        wait_until("its log is read", Duration::from_secs(5), || {
            Arc::strong_count(&self.lines) == 1
        });
        let lines = self.lines.lock().unwrap().clone();
        lines
    }
}

impl Drop for LoggedTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stored_position(db: &TestDb) -> Option<(Option<String>, i64)> {
    db.client()
        .query_opt("SELECT source_epoch, cursor FROM sync_state", &[])
        .ok()
        .flatten()
        .map(|row| (row.get(0), row.get(1)))
}

#[test]
fn a_source_restart_is_logged_before_the_cursor_going_back_to_0() {
    let db = TestDb::new();
    let changes = (1..=5)
        .map(|n| profile(n, "2025-07-01T10:00:00Z"))
        .collect();
    let log = CursorLog::new(changes);
    let source = log.source();
    let target = LoggedTarget::spawn(&[
        ("DATABASE_URL", &db.url),
        ("SOURCE_SERVICE_URL", &source.url),
    ]);
    wait_until("cursor 5 stored", Duration::from_secs(20), || {
        stored_position(&db) == Some((Some("epoch-1".to_owned()), 5))
    });
    // A new source: a new epoch and a shorter log, so cursor 5 is a 410.
    *log.changes.lock().unwrap() = vec![
        profile(6, "2025-07-01T10:00:00Z"),
        profile(7, "2025-07-01T10:00:00Z"),
    ];
    *log.epoch.lock().unwrap() = "epoch-2".to_owned();
    wait_until("cursor 2 of the new epoch", Duration::from_secs(20), || {
        stored_position(&db) == Some((Some("epoch-2".to_owned()), 2))
    });
    let lines = target.stop();
    let restart = lines
        .iter()
        .position(|l| l.contains(r#"the source restarted (epoch "epoch-1" -> "epoch-2")"#))
        .unwrap_or_else(|| panic!("a restart line:\n{}", lines.join("\n")));
    let back_to_0 = lines
        .iter()
        .position(|l| l.contains("again from 0"))
        .unwrap_or(usize::MAX);
    assert_eq!(
        back_to_0,
        restart,
        "the restart is the first line about cursor 0:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_round_that_fetched_changes_logs_one_info_line_and_an_idle_round_none() {
    let db = TestDb::new();
    let log = CursorLog::new(vec![
        profile(1, "2025-07-01T10:00:00Z"),
        profile(1, "2025-07-01T09:00:00Z"),
        bad_email(3),
    ]);
    let source = log.source();
    let target = LoggedTarget::spawn(&[
        ("DATABASE_URL", &db.url),
        ("SOURCE_SERVICE_URL", &source.url),
    ]);
    wait_until("cursor 3 stored", Duration::from_secs(20), || {
        stored_position(&db).is_some_and(|(_, cursor)| cursor == 3)
    });
    let asked = source.requests.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("three idle rounds", Duration::from_secs(20), || {
        source.requests.load(std::sync::atomic::Ordering::SeqCst) >= asked + 3
    });
    let lines = target.stop();
    let rounds: Vec<&String> = lines.iter().filter(|l| l.contains("round: ")).collect();
    assert_eq!(rounds.len(), 1, "{}", lines.join("\n"));
    assert!(rounds[0].contains("[INFO]"), "{}", rounds[0]);
    assert!(
        rounds[0].contains("round: 3 changes, 1 synced, 1 skipped, 1 rejected, cursor 3, "),
        "{}",
        rounds[0]
    );
    assert!(rounds[0].ends_with(" s"), "{}", rounds[0]);
}

#[test]
fn misspelt_variables_and_unknown_dotenv_keys_are_warned_about_and_nothing_else() {
    let db = TestDb::new();
    let dir = std::env::temp_dir().join(format!("typos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "WRITER_THREADS=2\nSYNC_INTERVALL=0.5\nAPP_SECRET=dotenv-hidden-value\n",
    )
    .unwrap();
    let output = common::target_binary()
        .arg("redrive")
        .current_dir(&dir)
        .env("DATABASE_URL", &db.url)
        .env("METRIC_ADDR", "127.0.0.1:1-hidden-value")
        .env("APP_MODE", "unrelated")
        .output()
        .expect("run target_service");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "never fatal: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "redrive: 0 examined, 0 synced, 0 stale, 0 still rejected"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "warning: METRIC_ADDR is not a variable of target_service; did you mean METRICS_ADDR?",
            "warning: .env line 2: SYNC_INTERVALL is not a variable of target_service; did you mean SYNC_INTERVAL?",
            "warning: .env line 3: APP_SECRET is not a variable of target_service",
        ]
    );
}
