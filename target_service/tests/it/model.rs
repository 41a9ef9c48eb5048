//! The target against a sequential model of SPEC §3: random change logs over
//! small pools of ids, emails and mobiles (so that releases, claims, swaps,
//! duplicates, equal instants, stale changes and every rejection reason are
//! frequent), served in random page sizes to a random number of writers,
//! with the target restarted, its stored cursor rewound (a crash before the
//! cursor was stored) and the source's epoch changed along the way. Once the
//! target has caught up, `users` and `sync_rejections` must be exactly what
//! applying the log one change at a time gives.
//!
//! The target is reached only through its public interface: started with
//! `App::start`, observed through PostgreSQL and `GET /status`.
//!
//! `PROPTEST_CASES` sets how many logs the property tries (24 by default,
//! about half a second each), `MODEL_SHRINK_SECS` and `MODEL_SHRINK_ITERS`
//! how long it may shrink a failing one (120 s, 1024 tries). A failing case
//! prints as the Rust expression that builds it, each change annotated with
//! its text and the model's decision, ready to become a regression test
//! below.

mod changes;
mod sequential;

use std::collections::BTreeMap;
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use changes::{change, At, Draft, Element, Fault, Field, FIELDS, INSTANTS, NAMES, OFFSET_COUNT};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sequential::{micros_text, Expected, Message, Rejected, Row};
use serde_json::Value;
use target_service::Running;
use uuid::Uuid;

/// What happens once the first `after` changes of the log are available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Wait until the target has caught up.
    Settle,
    /// Stop the target (after catching up, or `pause_ms` into the catch-up)
    /// and start it again; `rewind` first moves the stored cursor back to
    /// at most this, as a crash before the cursor was stored leaves it.
    Restart {
        settle: bool,
        pause_ms: u8,
        rewind: Option<u8>,
    },
    /// The source restarts: a new `X-Source-Epoch`, the same log.
    NewEpoch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    after: u8,
    action: Action,
}

/// One run: the target's settings, the log, and what happens meanwhile.
#[derive(Clone)]
struct Case {
    fetch_limit: u16,
    writers: u8,
    channel: u16,
    log: Vec<Element>,
    steps: Vec<Step>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent = changes::resolve(&self.log);
        let expected = Expected::of(&sent);
        writeln!(f, "Case {{")?;
        writeln!(
            f,
            "    fetch_limit: {}, writers: {}, channel: {},",
            self.fetch_limit, self.writers, self.channel
        )?;
        writeln!(f, "    log: vec![")?;
        for (n, ((element, sent), decision)) in self
            .log
            .iter()
            .zip(&sent)
            .zip(&expected.decisions)
            .enumerate()
        {
            writeln!(f, "        /* #{} */ {element:?},", n + 1)?;
            writeln!(f, "        //   {}", sent.text)?;
            writeln!(f, "        //   -> {decision}")?;
        }
        writeln!(f, "    ],")?;
        writeln!(f, "    steps: vec![")?;
        for step in &self.steps {
            writeln!(f, "        {step:?},")?;
        }
        write!(f, "    ],\n}}")
    }
}

/// Runs `case` against a fresh database and a fresh target; the
/// differences from the model, if any.
fn run(case: &Case) -> Result<(), String> {
    let sent = changes::resolve(&case.log);
    let expected = Expected::of(&sent);
    let db = TestDb::new();
    let log = CursorLog::new(Vec::new());
    let source = log.source();
    let (limit, writers, channel) = (
        case.fetch_limit.to_string(),
        case.writers.to_string(),
        case.channel.to_string(),
    );
    let settings = [
        ("FETCH_LIMIT", limit.as_str()),
        ("WRITER_THREADS", writers.as_str()),
        ("CHANNEL_CAPACITY", channel.as_str()),
        ("SYNC_INTERVAL", "0.05"),
    ];
    let start = || start_target(&db, &source.url, &settings);
    let mut target = start();
    let mut steps = case.steps.clone();
    steps.sort_by_key(|step| step.after);
    let mut epochs = 1;
    for step in steps {
        release(&log, &sent, usize::from(step.after));
        match step.action {
            Action::Settle => caught_up(&db, &log, &target)?,
            Action::Restart {
                settle,
                pause_ms,
                rewind,
            } => {
                if settle {
                    caught_up(&db, &log, &target)?;
                } else {
                    thread::sleep(Duration::from_millis(u64::from(pause_ms)));
                }
                target.shutdown();
                if let Some(at_most) = rewind {
                    rewind_cursor(&db, at_most)?;
                }
                target = start();
            }
            Action::NewEpoch => {
                epochs += 1;
                *log.epoch.lock().unwrap() = format!("epoch-{epochs}");
            }
        }
    }
    release(&log, &sent, sent.len());
    caught_up(&db, &log, &target)?;
    let outcome = compare(&db, &expected);
    target.shutdown();
    outcome
}

/// Moves the stored cursor back to at most `at_most`, as a crash between
/// writing changes and storing the cursor leaves it. A target stopped
/// before it applied the schema has stored nothing to move.
fn rewind_cursor(db: &TestDb, at_most: u8) -> Result<(), String> {
    let mut client = db.client();
    let why = |err: postgres::Error| format!("rewinding the cursor: {err:?}");
    let schema_applied: Option<String> = client
        .query_one("SELECT to_regclass('sync_state')::text", &[])
        .map_err(why)?
        .get(0);
    if schema_applied.is_some() {
        client
            .execute(
                "UPDATE sync_state SET cursor = LEAST(cursor, $1)",
                &[&i64::from(at_most)],
            )
            .map_err(why)?;
    }
    Ok(())
}

/// Makes the log's first `count` changes available (never fewer than now).
fn release(log: &CursorLog, sent: &[changes::Sent], count: usize) {
    let mut changes = log.changes.lock().unwrap();
    let count = count.min(sent.len());
    let from = changes.len();
    if count > from {
        changes.extend(sent[from..count].iter().map(|s| s.value.clone()));
    }
}

/// Waits until the stored cursor is the source's head in its current
/// epoch and the target is idle with every fetched change accounted for.
fn caught_up(db: &TestDb, log: &CursorLog, target: &Running) -> Result<(), String> {
    let head = log.changes.lock().unwrap().len() as i64;
    let epoch = log.epoch.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: Option<(i64, Option<String>)> = db
            .client()
            .query_opt("SELECT cursor, source_epoch FROM sync_state", &[])
            .ok()
            .flatten()
            .map(|row| (row.get(0), row.get(1)));
        let at_head = match &stored {
            Some((cursor, stored_epoch)) => {
                *cursor == head && (head == 0 || stored_epoch.as_deref() == Some(epoch.as_str()))
            }
            None => head == 0,
        };
        let (_, body) = get(&format!("http://{}/status", target.addr));
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let totals = &status["totals"];
        let accounted = totals["fetched"].as_u64()
            == Some(
                totals["synced"].as_u64().unwrap_or(0) + totals["skipped"].as_u64().unwrap_or(0),
            );
        if at_head && status["state"] == "idle" && accounted {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not caught up within 30 s: stored cursor {stored:?}, head {head} in {epoch}, status {status}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `users` row as read: every column, the instant in microseconds.
#[derive(Clone, PartialEq, Eq)]
struct Observed {
    name: String,
    email: String,
    mobile: String,
    status: String,
    last_updated_at: i64,
    sync_status: String,
    sync_message: Option<String>,
}

impl fmt::Debug for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:?} {:?} {:?} {} {} {:?}",
            self.name,
            self.email,
            self.mobile,
            self.status,
            micros_text(self.last_updated_at),
            self.sync_status,
            self.sync_message
        )
    }
}

/// The differences between the tables and the model, or `Ok`.
fn compare(db: &TestDb, expected: &Expected) -> Result<(), String> {
    let mut client = db.client();
    let users: BTreeMap<Uuid, Observed> = client
        .query(
            "SELECT id, name, email, mobile, status,
                    (extract(epoch FROM last_updated_at) * 1000000)::bigint,
                    sync_status, sync_message
             FROM users",
            &[],
        )
        .map_err(|err| format!("reading users: {err}"))?
        .iter()
        .map(|r| {
            let row = Observed {
                name: r.get(1),
                email: r.get(2),
                mobile: r.get(3),
                status: r.get(4),
                last_updated_at: r.get(5),
                sync_status: r.get(6),
                sync_message: r.get(7),
            };
            (r.get(0), row)
        })
        .collect();
    let recorded = client
        .query(
            "SELECT profile_id, outcome, reason, payload, message FROM sync_rejections",
            &[],
        )
        .map_err(|err| format!("reading sync_rejections: {err}"))?;
    let messages: BTreeMap<String, String> =
        recorded.iter().map(|r| (r.get(3), r.get(4))).collect();
    let mut rejections: Vec<Rejected> = recorded
        .iter()
        .map(|r| Rejected {
            profile_id: r.get(0),
            outcome: r.get(1),
            reason: r.get(2),
            payload: r.get(3),
        })
        .collect();
    rejections.sort();

    let mut differences = Vec::new();
    let ids: std::collections::BTreeSet<&Uuid> =
        users.keys().chain(expected.users.keys()).collect();
    for id in ids {
        let want = expected.users.get(id).map(|row| observed(row, &messages));
        let got = users.get(id);
        if want.as_ref() != got {
            differences.push(format!(
                "users {id}:\n    model: {}\n    table: {}",
                want.map_or("no row".to_owned(), |row| format!("{row:?}")),
                got.map_or("no row".to_owned(), |row| format!("{row:?}"))
            ));
        }
    }
    for (what, from, to) in [
        ("only in the model", &expected.rejections, &rejections),
        ("only in the table", &rejections, &expected.rejections),
    ] {
        for extra in multiset_minus(from, to) {
            differences.push(format!("sync_rejections {what}: {extra:?}"));
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("\n"))
    }
}

fn observed(row: &Row, messages: &BTreeMap<String, String>) -> Observed {
    Observed {
        name: row.name.clone(),
        email: row.email.clone(),
        mobile: row.mobile.clone(),
        status: row.status.clone(),
        last_updated_at: row.last_updated_at,
        sync_status: row.sync_status.clone(),
        sync_message: Some(match &row.sync_message {
            Message::Word(word) => (*word).to_owned(),
            Message::OfRejection(payload) => messages
                .get(payload)
                .cloned()
                .unwrap_or_else(|| format!("<no rejection recorded for {payload}>")),
        }),
    }
}

/// The elements of sorted `a` that sorted `b` lacks, counting repeats.
fn multiset_minus<'a>(a: &'a [Rejected], b: &[Rejected]) -> Vec<&'a Rejected> {
    let mut rest = b.to_vec();
    a.iter()
        .filter(|item| match rest.iter().position(|other| other == *item) {
            Some(at) => {
                rest.remove(at);
                false
            }
            None => true,
        })
        .collect()
}

fn check(case: Case) {
    if let Err(differences) = run(&case) {
        panic!("{case:?}\n{differences}");
    }
}

// ---- the property ----

fn field() -> impl Strategy<Value = Field> {
    (0..FIELDS.len()).prop_map(|i| FIELDS[i])
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        1 => field().prop_map(Fault::Missing),
        1 => field().prop_map(Fault::WrongType),
        1 => any::<u8>().prop_map(Fault::BadId),
        1 => any::<u8>().prop_map(Fault::BadTimestamp),
        1 => any::<u8>().prop_map(Fault::BadEmail),
        1 => any::<u8>().prop_map(Fault::BadName),
        1 => any::<u8>().prop_map(Fault::BadMobile),
        1 => any::<u8>().prop_map(Fault::Future),
        2 => any::<u8>().prop_map(Fault::Inactive),
    ]
}

fn at() -> impl Strategy<Value = At> {
    (
        0..INSTANTS,
        0..OFFSET_COUNT,
        0..3u8,
        prop::bool::weighted(0.3),
    )
        .prop_map(|(instant, offset, digits, leap)| At {
            instant,
            offset,
            digits,
            leap,
        })
}

fn draft(
    ids: u8,
    emails: u16,
    mobiles: u16,
    faults: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Draft> {
    (
        0..ids,
        prop::bool::weighted(0.2),
        0..NAMES.len() as u8,
        (0..emails, 0..mobiles),
        prop::bool::weighted(0.3),
        at(),
        prop::collection::vec(fault(), faults),
    )
        .prop_map(
            |(id, upper_id, name, (email, mobile), pending, at, faults)| {
                faults.into_iter().fold(
                    Draft {
                        id,
                        upper_id,
                        name,
                        email,
                        mobile,
                        pending,
                        at,
                        faults: Vec::new(),
                    },
                    Draft::with,
                )
            },
        )
}

fn element(ids: u8, emails: u16, mobiles: u16) -> impl Strategy<Value = Element> {
    prop_oneof![
        12 => draft(ids, emails, mobiles, 0..=0).prop_map(Element::Change),
        5 => draft(ids, emails, mobiles, 1..=2).prop_map(Element::Change),
        1 => any::<u8>().prop_map(Element::Junk),
        3 => any::<u8>().prop_map(Element::Again),
    ]
}

fn step(len: usize) -> impl Strategy<Value = Step> {
    let action = prop_oneof![
        2 => Just(Action::Settle),
        4 => (any::<bool>(), 0..40u8, prop::option::of(0..=len as u8)).prop_map(
            |(settle, pause_ms, rewind)| Action::Restart { settle, pause_ms, rewind }
        ),
        1 => Just(Action::NewEpoch),
    ];
    (0..=len as u8, action).prop_map(|(after, action)| Step { after, action })
}

fn case() -> impl Strategy<Value = Case> {
    const LONGEST: usize = 40;
    (
        (4..=8u8, 4..=8u16, 4..=8u16),
        1..=7u16,
        1..=4u8,
        prop_oneof![Just(1u16), Just(3), Just(4096)],
    )
        .prop_flat_map(|((ids, emails, mobiles), fetch_limit, writers, channel)| {
            (
                prop::collection::vec(element(ids, emails, mobiles), 1..=LONGEST),
                prop::collection::vec(step(LONGEST), 0..=4),
            )
                .prop_map(move |(log, mut steps)| {
                    steps.sort_by_key(|step| step.after);
                    Case {
                        fetch_limit,
                        writers,
                        channel,
                        log,
                        steps,
                    }
                })
        })
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn property_config() -> ProptestConfig {
    ProptestConfig {
        cases: env_number("PROPTEST_CASES", 24),
        max_shrink_time: env_number("MODEL_SHRINK_SECS", 120) * 1000,
        max_shrink_iters: env_number("MODEL_SHRINK_ITERS", 1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(property_config())]

    #[test]
    fn the_tables_are_what_applying_the_log_one_change_at_a_time_gives(case in case()) {
        run(&case).map_err(TestCaseError::fail)?;
    }
}

// ---- cases worth keeping ----

/// One case of each kind, to keep the harness itself honest: it must pass.
#[test]
fn a_plain_log_ends_as_the_model_says() {
    check(Case {
        fetch_limit: 2,
        writers: 2,
        channel: 4096,
        log: vec![
            change(0, 0, 0, 0).into(),
            change(1, 1, 1, 1).pending().into(),
            change(0, 2, 0, 4).named(2).offset(2).into(),
            change(1, 1, 1, 0).into(),
            change(2, 3, 3, 5).with(Fault::BadEmail(1)).into(),
            change(2, 3, 3, 6).with(Fault::Inactive(0)).into(),
            change(1, 1, 1, 8).with(Fault::BadMobile(0)).into(),
            Element::Junk(0),
            change(3, 4, 4, 4).upper_id().leap().digits(1).into(),
            change(4, 5, 5, 7).offset(3).digits(2).into(),
        ],
        steps: vec![Step {
            after: 4,
            action: Action::Restart {
                settle: true,
                pause_ms: 0,
                rewind: Some(0),
            },
        }],
    });
}

/// Main keeps only the newest change of an id in a page, so the row says
/// `created`; a page cut between the two gives `updated`.
#[test]
fn a_row_created_and_updated_in_one_page_says_updated() {
    check(Case {
        fetch_limit: 2,
        writers: 1,
        channel: 4096,
        log: vec![change(0, 0, 0, 0).into(), change(0, 0, 0, 1).into()],
        steps: vec![],
    });
}

/// Id 1's first change is a conflict; its second, at the same instant, is
/// stale against no row (id 1 has none), so it syncs: a rejected change
/// leaves no mark that bars its id, a page apart as in one page.
#[test]
fn a_change_as_old_as_an_earlier_conflict_of_its_id_syncs_when_newer_than_its_row() {
    for fetch_limit in [1, 3] {
        check(Case {
            fetch_limit,
            writers: 1,
            channel: 4096,
            log: vec![
                change(0, 0, 0, 0).into(),
                change(1, 1, 0, 1).into(),
                change(1, 0, 1, 1).into(),
            ],
            steps: vec![],
        });
    }
}

/// Row X at T1, a conflict for X at T3, a valid change for X at T2: the T2
/// change is newer than the row, so it syncs.
#[test]
fn an_older_change_after_a_newer_conflict_of_its_id_syncs() {
    for fetch_limit in [1, 4] {
        check(Case {
            fetch_limit,
            writers: 2,
            channel: 4096,
            log: vec![
                change(0, 0, 0, 1).into(),
                change(1, 1, 1, 1).into(),
                change(0, 1, 0, 3).into(),
                change(0, 2, 0, 2).into(),
            ],
            steps: vec![],
        });
    }
}

/// A conflict, then its email set free; the source restarts and serves the
/// same log again: the recorded conflict has no further effect (it does not
/// sync now that the email is free), nor does any other replayed change.
#[test]
fn a_replayed_conflict_does_not_sync_once_its_email_is_free() {
    check(Case {
        fetch_limit: 2,
        writers: 2,
        channel: 4096,
        log: vec![
            change(0, 0, 0, 0).into(),
            change(1, 0, 1, 1).into(),
            change(0, 1, 0, 2).into(),
        ],
        steps: vec![
            settle(3),
            Step {
                after: 3,
                action: Action::NewEpoch,
            },
        ],
    });
}

/// Inactive changes are skipped: nothing recorded, no row marked, even when
/// newer than the row; the id's next change is decided against the row.
#[test]
fn inactive_changes_are_skipped_without_a_record_or_a_mark() {
    check(Case {
        fetch_limit: 2,
        writers: 2,
        channel: 4096,
        log: vec![
            change(0, 0, 0, 1).into(),
            change(0, 1, 1, 5).with(Fault::Inactive(0)).into(),
            change(0, 2, 0, 3).into(),
            change(1, 3, 3, 2).with(Fault::Inactive(1)).into(),
        ],
        steps: vec![],
    });
}

/// A rejection's identity is its element's exact text, wherever it arrives:
/// twice in one page is still one row (main records one per copy in a page,
/// and only in a page).
#[test]
fn identical_rejected_elements_in_one_page_are_recorded_once() {
    check(Case {
        fetch_limit: 4,
        writers: 2,
        channel: 4096,
        log: vec![
            Element::Junk(0),
            Element::Junk(0),
            change(0, 0, 0, 0).with(Fault::BadEmail(0)).into(),
            Element::Again(2),
        ],
        steps: vec![],
    });
}

/// `10:00:60.000001Z` is `10:01:00.000001Z`, a microsecond after the stored
/// `10:01:00Z`: it syncs.
#[test]
fn sixty_seconds_are_the_next_minute_against_the_stored_row() {
    check(Case {
        fetch_limit: 1,
        writers: 1,
        channel: 4096,
        log: vec![
            change(0, 0, 0, 4).into(),
            change(0, 1, 1, 5).named(1).leap().into(),
        ],
        steps: vec![],
    });
}

/// `10:00:60Z` and `10:01:00Z` are one instant: in one page the first of
/// them wins (main takes the second as newer).
#[test]
fn sixty_seconds_and_the_next_minute_in_one_page_are_equal_and_the_first_wins() {
    check(Case {
        fetch_limit: 2,
        writers: 1,
        channel: 4096,
        log: vec![
            change(0, 0, 0, 4).leap().into(),
            change(0, 1, 1, 4).named(1).into(),
        ],
        steps: vec![],
    });
}

/// Work for one id's writer: `count` rejected changes (a bad mobile) of
/// `id` at instant 0 (not newer than its row, so they mark nothing), each a
/// text of its own, so each is recorded.
fn busy(id: u8, count: u16) -> impl Iterator<Item = Element> {
    (0..count).map(move |k| change(id, 100 + k, 0, 0).with(Fault::BadMobile(0)).into())
}

fn after_a_restart(after: u8) -> Step {
    Step {
        after,
        action: Action::Restart {
            settle: true,
            pause_ms: 0,
            rewind: None,
        },
    }
}

fn settle(after: u8) -> Step {
    Step {
        after,
        action: Action::Settle,
    }
}

fn one_page(log: Vec<Element>, steps: Vec<Step>) -> Case {
    Case {
        fetch_limit: 1000,
        writers: 4,
        channel: 4096,
        log,
        steps,
    }
}

/// Id 0 holds email 0; after a restart, one page: work for id 0's writer,
/// id 0 moving to email 1, id 1 claiming email 0. In sequence the claim
/// comes after the move: synced. Main, whose router forgot id 0's email in
/// the restart, lets the claim run first on another writer (when the two
/// ids' home writers differ: most runs).
#[test]
fn an_email_given_up_after_a_restart_is_free_for_a_later_claim_in_the_page() {
    let mut log: Vec<Element> = vec![change(0, 0, 0, 0).into()];
    log.extend(busy(0, 600));
    log.push(change(0, 1, 0, 1).into());
    log.push(change(1, 0, 1, 1).into());
    check(one_page(log, vec![after_a_restart(1)]));
}

/// The same claim, without a restart, after id 0's previous change (in a
/// page of its own) was stale and asked for another email.
#[test]
fn an_email_given_up_after_a_stale_change_asked_for_another_is_free_for_a_later_claim() {
    let mut log: Vec<Element> = vec![change(0, 0, 0, 5).into(), change(0, 2, 0, 4).into()];
    log.extend(busy(0, 600));
    log.push(change(0, 1, 0, 6).into());
    log.push(change(1, 0, 1, 6).into());
    check(one_page(log, vec![settle(1), settle(2)]));
}

/// The same claim, after id 0's previous change (in an earlier page) was
/// itself a conflict.
#[test]
fn an_email_given_up_after_a_conflict_is_free_for_a_later_claim() {
    let mut log: Vec<Element> = vec![
        change(0, 0, 0, 0).into(),
        change(2, 3, 3, 0).into(),
        change(0, 3, 0, 1).into(),
    ];
    log.extend(busy(0, 600));
    log.push(change(0, 1, 0, 2).into());
    log.push(change(1, 0, 1, 2).into());
    check(one_page(log, vec![settle(1), settle(3)]));
}

/// Id 0 takes email 0, id 1 claims it (a conflict), id 0 moves on, all in
/// one page. Main keeps only id 0's newest change of the page, so id 1
/// finds the email free and syncs.
#[test]
fn a_change_superseded_later_in_its_page_still_held_its_email_until_then() {
    check(Case {
        fetch_limit: 3,
        writers: 1,
        channel: 4096,
        log: vec![
            change(0, 0, 0, 0).into(),
            change(1, 0, 1, 1).into(),
            change(0, 1, 0, 2).into(),
        ],
        steps: vec![],
    });
}

/// The reverse: id 1 claims id 0's email before id 0 gives it up later in
/// the page: a conflict, whichever writer finishes first.
#[test]
fn an_email_claimed_before_its_owner_gives_it_up_is_a_conflict() {
    let mut log: Vec<Element> = vec![change(0, 0, 0, 0).into()];
    log.extend(busy(1, 600));
    log.push(change(1, 0, 1, 1).into());
    log.push(change(0, 1, 0, 1).into());
    check(one_page(log, vec![after_a_restart(1)]));
}
