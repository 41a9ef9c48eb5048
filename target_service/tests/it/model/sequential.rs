//! A straightforward sequential model of SPEC §3: the changes applied one at
//! a time, in sequence order, the first failing rule deciding each. It knows
//! what each change is meant to be from its description, so it never parses
//! anything and shares no code with the target.
//!
//! The rules, as this model reads them:
//! - validation, then status, then staleness, then conflicts, in the order of
//!   the table;
//! - a status other than `active`/`pending` is skipped: nothing is recorded
//!   and no row is marked;
//! - stale: not strictly newer than the id's row as the changes before it
//!   left it (no row: never stale). A rejected change leaves no trace that
//!   makes a later, older change of its id stale;
//! - conflict: the email (first) or the mobile belongs to another id's row
//!   at that moment;
//! - an element whose exact text is recorded already has no effect at all,
//!   whatever it would be decided now (a valid change recorded as a conflict
//!   does not sync once the email is free); otherwise a rejection is
//!   recorded, and marks the id's row when the change's instant parses and
//!   is strictly newer than the row.

use std::collections::BTreeMap;

use chrono::DateTime;
use uuid::Uuid;

use super::changes::{self, Draft, Fault, Field, Meaning, Reason, Sent, FUTURES};

/// A `users` row as the model expects it.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub email: String,
    pub mobile: String,
    pub status: String,
    /// Microseconds since the Unix epoch.
    pub last_updated_at: i64,
    pub sync_status: String,
    pub sync_message: Message,
}

/// What `sync_message` holds: a fixed word for a synced row, or the message
/// of the rejection that marked it (the target's words, so named by the
/// payload of that rejection).
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    Word(&'static str),
    OfRejection(String),
}

/// A `sync_rejections` row as compared: `(profile_id, outcome, reason, payload)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejected {
    pub profile_id: Option<Uuid>,
    pub outcome: String,
    pub reason: String,
    pub payload: String,
}

/// The final state the model predicts, and what it decided for each change.
#[derive(Default)]
pub struct Expected {
    pub users: BTreeMap<Uuid, Row>,
    pub rejections: Vec<Rejected>,
    pub decisions: Vec<String>,
}

/// What the rules before staleness make of a change.
enum Verdict {
    Rejected {
        reason: Reason,
        profile_id: Option<Uuid>,
        changed_at: Option<i64>,
    },
    Candidate(Uuid, i64),
}

fn verdict(meaning: &Meaning) -> Verdict {
    let draft = match meaning {
        Meaning::Junk(_) => {
            return Verdict::Rejected {
                reason: Reason::Malformed,
                profile_id: None,
                changed_at: None,
            }
        }
        Meaning::Change(draft) => draft,
    };
    let profile_id = match draft.fault_of(Field::Id) {
        None => Some(changes::id(draft.id)),
        Some(_) => None,
    };
    match draft.faults.iter().map(|fault| fault.reason()).min() {
        None => Verdict::Candidate(changes::id(draft.id), draft.at.micros()),
        Some(reason) => Verdict::Rejected {
            reason,
            profile_id,
            changed_at: changed_at(draft),
        },
    }
}

/// The change's instant, when its `last_updated_at` parses.
fn changed_at(draft: &Draft) -> Option<i64> {
    match draft.fault_of(Field::LastUpdatedAt) {
        None => Some(draft.at.micros()),
        Some(Fault::Future(k)) => {
            let text = FUTURES[usize::from(k) % FUTURES.len()];
            let instant = DateTime::parse_from_rfc3339(text).expect("future instants parse");
            Some(instant.timestamp_micros())
        }
        Some(_) => None,
    }
}

impl Expected {
    /// Applies `log` one change at a time.
    pub fn of(log: &[Sent]) -> Expected {
        let mut model = Expected::default();
        for sent in log {
            let decision = match verdict(&sent.meaning) {
                Verdict::Rejected {
                    reason: Reason::InactiveStatus,
                    ..
                } => "skipped inactive_status".to_owned(),
                Verdict::Rejected {
                    reason,
                    profile_id,
                    changed_at,
                } => model.reject(sent, reason, profile_id, changed_at),
                Verdict::Candidate(id, at) if model.row_is_as_new(id, at) => "stale".to_owned(),
                Verdict::Candidate(..) if model.recorded(sent) => {
                    "recorded already: no effect".to_owned()
                }
                Verdict::Candidate(id, at) => {
                    let Meaning::Change(draft) = &sent.meaning else {
                        unreachable!("only a change is a candidate")
                    };
                    model.decide_candidate(sent, draft, id, at)
                }
            };
            model.decisions.push(decision);
        }
        model.rejections.sort();
        model
    }

    /// Whether `id` has a row at least as new as `at`: the stale rule.
    fn row_is_as_new(&self, id: Uuid, at: i64) -> bool {
        self.users
            .get(&id)
            .is_some_and(|row| at <= row.last_updated_at)
    }

    /// Whether the element's exact text is recorded as a rejection.
    fn recorded(&self, sent: &Sent) -> bool {
        self.rejections.iter().any(|r| r.payload == sent.text)
    }

    fn decide_candidate(&mut self, sent: &Sent, draft: &Draft, id: Uuid, at: i64) -> String {
        let taken = |value: &str, of: fn(&Row) -> &str| {
            self.users
                .iter()
                .any(|(owner, row)| *owner != id && of(row) == value)
        };
        if taken(&draft.email_text(), |row| &row.email) {
            return self.reject(sent, Reason::EmailTaken, Some(id), Some(at));
        }
        if taken(&draft.mobile_text(), |row| &row.mobile) {
            return self.reject(sent, Reason::MobileTaken, Some(id), Some(at));
        }
        let word = if self.users.contains_key(&id) {
            "updated"
        } else {
            "created"
        };
        self.users.insert(
            id,
            Row {
                name: draft.name_text().to_owned(),
                email: draft.email_text(),
                mobile: draft.mobile_text(),
                status: draft.status().to_owned(),
                last_updated_at: at,
                sync_status: "synced".to_owned(),
                sync_message: Message::Word(word),
            },
        );
        format!("synced ({word})")
    }

    fn reject(
        &mut self,
        sent: &Sent,
        reason: Reason,
        profile_id: Option<Uuid>,
        changed_at: Option<i64>,
    ) -> String {
        let what = format!("{} {}", reason.outcome(), reason.code());
        if self.recorded(sent) {
            return format!("{what}, recorded already: no effect");
        }
        self.rejections.push(Rejected {
            profile_id,
            outcome: reason.outcome().to_owned(),
            reason: reason.code().to_owned(),
            payload: sent.text.clone(),
        });
        let row = profile_id.and_then(|id| self.users.get_mut(&id));
        match (row, changed_at) {
            (Some(row), Some(at)) if at > row.last_updated_at => {
                row.sync_status = reason.outcome().to_owned();
                row.sync_message = Message::OfRejection(sent.text.clone());
                format!("{what}, recorded, marks the row")
            }
            _ => format!("{what}, recorded"),
        }
    }
}

/// An instant as PostgreSQL shows it in UTC, to the microsecond.
pub fn micros_text(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| format!("{micros}us"))
}
