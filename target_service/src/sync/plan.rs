//! The one place where the fate of a change is decided: [`plan`] takes the
//! changes of a page in sequence order and a [`View`] of the rows they can
//! touch, and decides each change exactly as if the changes were applied
//! one at a time, updating the view as it goes. It is pure: what it
//! decides is written by others ([`crate::sync::writer`]), and the view comes
//! from the table and from decisions not yet committed ([`crate::sync::overlay`]).
//!
//! Because every decision is made here, in order, against the state the
//! earlier decisions left, no outcome depends on which writer thread runs
//! first, on where pages begin and end, or on restarts.

use foldhash::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::metrics::Counted;
use crate::profile::{Profile, Reason};
use crate::sync::change::{Change, ChangeKey, Element, Parsed};

/// A `users` row as far as deciding needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub last_updated_at: DateTime<Utc>,
    pub email: String,
    pub mobile: String,
}

/// The state the next change is decided against: the rows of the ids it may
/// touch, who holds each email and mobile it may claim, and which element
/// texts are recorded as rejections (with the reason they were recorded
/// with). An id missing from `rows` has no row.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct View {
    pub rows: HashMap<Uuid, Row>,
    pub email_owner: HashMap<String, Uuid>,
    pub mobile_owner: HashMap<String, Uuid>,
    pub recorded: HashMap<ChangeKey, Reason>,
}

impl View {
    /// A view of stored rows alone, each the owner of its email and mobile.
    pub fn of_rows(rows: impl IntoIterator<Item = (Uuid, Row)>) -> View {
        let mut view = View::default();
        for (id, row) in rows {
            view.email_owner.insert(row.email.clone(), id);
            view.mobile_owner.insert(row.mobile.clone(), id);
            view.rows.insert(id, row);
        }
        view
    }

    /// Makes `row` the row of `id`, giving up the email and mobile it held.
    pub fn set_row(&mut self, id: Uuid, row: Row) {
        if let Some(old) = self.rows.get(&id) {
            if self.email_owner.get(&old.email) == Some(&id) {
                self.email_owner.remove(&old.email);
            }
            if self.mobile_owner.get(&old.mobile) == Some(&id) {
                self.mobile_owner.remove(&old.mobile);
            }
        }
        self.email_owner.insert(row.email.clone(), id);
        self.mobile_owner.insert(row.mobile.clone(), id);
        self.rows.insert(id, row);
    }

    /// Whether a change of `id` at `at` is stale: not strictly newer than
    /// the id's row. Only the row counts: a change that was rejected or
    /// skipped leaves nothing that bars an older one.
    fn stale(&self, id: Uuid, at: DateTime<Utc>) -> bool {
        self.rows
            .get(&id)
            .is_some_and(|row| at <= row.last_updated_at)
    }
}

/// What the database can hold, as far as deciding needs to know.
pub struct Storage<'a> {
    /// Whether the database's encoding holds every character of a text.
    pub can_store: &'a dyn Fn(&str) -> bool,
    /// Elements whose write PostgreSQL refused although [`Storage::can_store`]
    /// said it could hold them, with what it said: decided as `db_error`.
    pub refused: &'a HashMap<ChangeKey, String>,
}

impl Storage<'_> {
    /// Every text can be stored and nothing was refused: a UTF-8 database.
    #[cfg(test)]
    pub fn unicode() -> Storage<'static> {
        static NOTHING: std::sync::OnceLock<HashMap<ChangeKey, String>> =
            std::sync::OnceLock::new();
        Storage {
            can_store: &|_| true,
            refused: NOTHING.get_or_init(HashMap::default),
        }
    }

    /// `text`, or its escaped form where the database cannot hold it.
    fn storable(&self, text: &str) -> String {
        if (self.can_store)(text) {
            text.to_owned()
        } else {
            escape_non_ascii(text)
        }
    }

    fn storable_element(&self, element: Element) -> Element {
        if (self.can_store)(element.text()) {
            element
        } else {
            Element::new(escape_non_ascii(element.text()))
        }
    }
}

/// `text` with every non-ASCII character written as a JSON `\uXXXX`
/// escape (a surrogate pair beyond the Basic Multilingual Plane). In JSON
/// text such characters occur only inside strings, so an element stays the
/// same JSON value.
pub fn escape_non_ascii(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            escaped.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    escaped
}

/// A `users` row to insert or update.
#[derive(Debug, Clone, PartialEq)]
pub struct UserWrite {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub mobile: String,
    pub status: &'static str,
    pub last_updated_at: DateTime<Utc>,
    /// `created` or `updated`.
    pub message: &'static str,
    /// The email and mobile the row held before and gives up with this
    /// write: a later claim of them by another id must come after it.
    pub released_email: Option<String>,
    pub released_mobile: Option<String>,
}

/// A row for `sync_rejections`.
#[derive(Debug, Clone)]
pub struct RejectionWrite {
    pub key: ChangeKey,
    pub profile_id: Option<Uuid>,
    pub outcome: &'static str,
    pub reason: Reason,
    pub message: String,
    /// The element's text, escaped where the database cannot hold it.
    pub payload: Element,
    pub changed_at: Option<DateTime<Utc>>,
}

/// A rejected change newer than its row: the row's sync columns say so.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkWrite {
    pub id: Uuid,
    pub changed_at: DateTime<Utc>,
    pub outcome: &'static str,
    pub message: String,
}

/// What became of one change and what is to be written for it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Counted,
    /// The change's element text's key, to name it if PostgreSQL refuses it.
    pub key: ChangeKey,
    pub id: Option<Uuid>,
    pub user: Option<UserWrite>,
    pub rejection: Option<RejectionWrite>,
    pub mark: Option<MarkWrite>,
}

impl Decision {
    fn nothing(outcome: Counted, key: ChangeKey, id: Option<Uuid>) -> Decision {
        Decision {
            outcome,
            key,
            id,
            user: None,
            rejection: None,
            mark: None,
        }
    }

    /// Whether anything is to be written for it.
    pub fn writes(&self) -> bool {
        self.user.is_some() || self.rejection.is_some() || self.mark.is_some()
    }
}

/// Decides `changes`, in order, against `view`, which ends as the state
/// they leave. SPEC §3: the first rule that fails decides; an inactive
/// change is skipped and writes nothing; a stale change (not strictly newer
/// than its id's row) writes nothing; an element whose exact text is
/// recorded already has no further effect, whatever it would be decided now
/// (deciding recorded rejections again is `redrive`'s job).
pub fn plan(changes: Vec<Change>, view: &mut View, storage: &Storage<'_>) -> Vec<Decision> {
    changes
        .into_iter()
        .map(|change| decide(change, view, storage))
        .collect()
}

fn decide(change: Change, view: &mut View, storage: &Storage<'_>) -> Decision {
    let Change {
        parsed,
        element,
        key,
    } = change;
    let profile = match parsed {
        Parsed::Inactive => {
            return Decision::nothing(Counted::NotSynced(Reason::InactiveStatus), key, None)
        }
        Parsed::Invalid(rejection) => {
            let id = rejection.profile_id;
            if view.recorded.contains_key(&key) {
                return Decision::nothing(Counted::NotSynced(rejection.reason), key, id);
            }
            let rejected = Rejected {
                key,
                id,
                changed_at: rejection.changed_at.map(|t| t.as_datetime()),
                reason: rejection.reason,
                message: rejection.message,
                element,
            };
            return rejected.decide(view, storage);
        }
        Parsed::Valid(profile) => profile,
    };
    let id = profile.id;
    let at = profile.last_updated_at.as_datetime();
    if view.stale(id, at) {
        return Decision::nothing(Counted::NotSynced(Reason::Stale), key, Some(id));
    }
    if let Some(&reason) = view.recorded.get(&key) {
        return Decision::nothing(Counted::NotSynced(reason), key, Some(id));
    }
    let taken = |owner: Option<&Uuid>| owner.is_some_and(|owner| *owner != id);
    let refusal = if taken(view.email_owner.get(profile.email.as_str())) {
        Some((
            Reason::EmailTaken,
            format!("email {} belongs to another user", profile.email.as_str()),
        ))
    } else if taken(view.mobile_owner.get(profile.mobile.as_str())) {
        Some((
            Reason::MobileTaken,
            format!("mobile {} belongs to another user", profile.mobile.as_str()),
        ))
    } else if let Some(said) = storage.refused.get(&key) {
        Some((
            Reason::DbError,
            format!("PostgreSQL refused the row: {said}"),
        ))
    } else if !(storage.can_store)(profile.name.as_str()) {
        Some((
            Reason::DbError,
            "PostgreSQL refused the row: the database's encoding cannot hold the name".to_owned(),
        ))
    } else {
        None
    };
    if let Some((reason, message)) = refusal {
        let rejected = Rejected {
            key,
            id: Some(id),
            changed_at: Some(at),
            reason,
            message,
            element,
        };
        return rejected.decide(view, storage);
    }
    let user = synced(profile, view);
    Decision {
        outcome: Counted::Synced,
        key,
        id: Some(id),
        user: Some(user),
        rejection: None,
        mark: None,
    }
}

/// A synced change becomes the row of its id.
fn synced(profile: Profile, view: &mut View) -> UserWrite {
    let Profile {
        id,
        name,
        email,
        mobile,
        status,
        last_updated_at,
    } = profile;
    let (email, mobile) = (email.into_string(), mobile.into_string());
    let last_updated_at = last_updated_at.as_datetime();
    let old = view.rows.get(&id);
    let message = if old.is_some() { "updated" } else { "created" };
    let released_email = old.filter(|o| o.email != email).map(|o| o.email.clone());
    let released_mobile = old.filter(|o| o.mobile != mobile).map(|o| o.mobile.clone());
    let row = Row {
        last_updated_at,
        email: email.clone(),
        mobile: mobile.clone(),
    };
    view.set_row(id, row);
    UserWrite {
        id,
        name: name.into_string(),
        email,
        mobile,
        status: status.as_str(),
        last_updated_at,
        message,
        released_email,
        released_mobile,
    }
}

/// A change that will not be synced, on its way to being recorded.
struct Rejected {
    key: ChangeKey,
    id: Option<Uuid>,
    changed_at: Option<DateTime<Utc>>,
    reason: Reason,
    message: String,
    element: Element,
}

impl Rejected {
    /// Recorded unless its text is already, and marks its row when newer.
    fn decide(self, view: &mut View, storage: &Storage<'_>) -> Decision {
        let outcome = self.reason.outcome().as_str();
        let message = storage.storable(&self.message);
        let mark = match (self.id, self.changed_at) {
            (Some(id), Some(at))
                if view
                    .rows
                    .get(&id)
                    .is_some_and(|row| at > row.last_updated_at) =>
            {
                Some(MarkWrite {
                    id,
                    changed_at: at,
                    outcome,
                    message: message.clone(),
                })
            }
            _ => None,
        };
        let rejection = match view.recorded.get(&self.key) {
            Some(_) => None,
            None => {
                view.recorded.insert(self.key, self.reason);
                Some(RejectionWrite {
                    key: self.key,
                    profile_id: self.id,
                    outcome,
                    reason: self.reason,
                    message,
                    payload: storage.storable_element(self.element),
                    changed_at: self.changed_at,
                })
            }
        };
        Decision {
            outcome: Counted::NotSynced(self.reason),
            key: self.key,
            id: self.id,
            user: None,
            rejection,
            mark,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn valid(n: u8, when: &str, email: &str, mobile: &str) -> Change {
        let text = json!({
            "id": id(n).to_string(), "name": format!("User {n}"), "email": email,
            "mobile": mobile, "status": "active", "last_updated_at": when,
        })
        .to_string();
        Change::from_text(&text, Utc::now())
    }

    fn invalid(n: u8, when: &str) -> Change {
        let text = json!({"id": id(n).to_string(), "last_updated_at": when, "email": "bad"});
        Change::from_text(&text.to_string(), Utc::now())
    }

    fn row(when: &str, email: &str, mobile: &str) -> Row {
        Row {
            last_updated_at: at(when),
            email: email.to_owned(),
            mobile: mobile.to_owned(),
        }
    }

    fn outcomes(decisions: &[Decision]) -> Vec<Counted> {
        decisions.iter().map(|d| d.outcome).collect()
    }

    const T1: &str = "2025-01-01T00:00:00Z";
    const T2: &str = "2025-01-02T00:00:00Z";
    const T3: &str = "2025-01-03T00:00:00Z";
    const SYNCED: Counted = Counted::Synced;
    const STALE: Counted = Counted::NotSynced(Reason::Stale);
    const TAKEN: Counted = Counted::NotSynced(Reason::EmailTaken);

    #[test]
    fn each_change_is_decided_against_what_the_earlier_ones_left() {
        let mut view = View::default();
        let decisions = plan(
            vec![
                valid(1, T1, "a@x.io", "111"),
                valid(1, T2, "b@x.io", "222"),
                valid(1, T2, "c@x.io", "333"),
                valid(1, T1, "d@x.io", "444"),
            ],
            &mut view,
            &Storage::unicode(),
        );
        assert_eq!(outcomes(&decisions), [SYNCED, SYNCED, STALE, STALE]);
        let messages: Vec<_> = decisions
            .iter()
            .filter_map(|d| d.user.as_ref())
            .map(|u| u.message)
            .collect();
        assert_eq!(messages, ["created", "updated"]);
        assert_eq!(view.rows[&id(1)], row(T2, "b@x.io", "222"));
        assert_eq!(view.email_owner.get("a@x.io"), None, "given up");
        let second = decisions[1].user.as_ref().unwrap();
        assert_eq!(second.released_email.as_deref(), Some("a@x.io"));
        assert_eq!(second.released_mobile.as_deref(), Some("111"));
    }

    #[test]
    fn a_claim_before_the_owner_gives_up_is_a_conflict_and_one_after_it_syncs() {
        let mut view = View::of_rows([(id(1), row(T1, "a@x.io", "111"))]);
        let decisions = plan(
            vec![
                valid(2, T1, "a@x.io", "222"),
                valid(1, T2, "moved@x.io", "111"),
                valid(3, T1, "a@x.io", "333"),
            ],
            &mut view,
            &Storage::unicode(),
        );
        assert_eq!(outcomes(&decisions), [TAKEN, SYNCED, SYNCED]);
        let rejection = decisions[0].rejection.as_ref().unwrap();
        assert_eq!(
            (rejection.outcome, rejection.reason),
            ("conflict", Reason::EmailTaken)
        );
        assert!(decisions[0].mark.is_none(), "2 has no row to mark");
        assert_eq!(view.email_owner.get("a@x.io"), Some(&id(3)));
    }

    #[test]
    fn a_conflict_leaves_nothing_that_makes_an_older_change_of_its_id_stale() {
        // Row X at T1; a conflict for X at T3; a valid change for X at T2.
        let mut view = View::of_rows([
            (id(1), row(T1, "x@x.io", "111")),
            (id(2), row(T1, "taken@x.io", "222")),
        ]);
        let decisions = plan(
            vec![
                valid(1, T3, "taken@x.io", "111"),
                valid(1, T2, "y@x.io", "111"),
                valid(1, T2, "z@x.io", "111"),
            ],
            &mut view,
            &Storage::unicode(),
        );
        assert_eq!(outcomes(&decisions), [TAKEN, SYNCED, STALE]);
        let mark = decisions[0].mark.as_ref().unwrap();
        assert_eq!((mark.id, mark.outcome), (id(1), "conflict"));
        assert_eq!(view.rows[&id(1)], row(T2, "y@x.io", "111"));
    }

    #[test]
    fn a_db_error_leaves_nothing_that_makes_a_change_of_its_instant_stale() {
        let refused_change = valid(1, T2, "a@x.io", "111");
        let refused: HashMap<_, _> = [(refused_change.key, "value too long".to_owned())]
            .into_iter()
            .collect();
        let storage = Storage {
            can_store: &|_| true,
            refused: &refused,
        };
        let mut view = View::default();
        let decisions = plan(
            vec![refused_change, valid(1, T2, "b@x.io", "111")],
            &mut view,
            &storage,
        );
        assert_eq!(
            outcomes(&decisions),
            [Counted::NotSynced(Reason::DbError), SYNCED]
        );
    }

    #[test]
    fn an_inactive_change_writes_nothing_and_leaves_the_row_to_decide() {
        let text = |when: &str| {
            json!({
                "id": id(1).to_string(), "name": "User 1", "email": "a@x.io",
                "mobile": "111", "status": "inactive", "last_updated_at": when,
            })
            .to_string()
        };
        let mut view = View::of_rows([(id(1), row(T1, "a@x.io", "111"))]);
        let decisions = plan(
            vec![
                Change::from_text(&text(T3), Utc::now()),
                valid(1, T2, "a@x.io", "111"),
            ],
            &mut view,
            &Storage::unicode(),
        );
        assert_eq!(
            outcomes(&decisions),
            [Counted::NotSynced(Reason::InactiveStatus), SYNCED]
        );
        assert!(!decisions[0].writes(), "no record, no mark");
    }

    #[test]
    fn a_cycle_of_gives_up_and_claims_through_two_ids_syncs_in_order() {
        let mut view = View::of_rows([
            (id(1), row(T1, "e1@x.io", "111")),
            (id(2), row(T1, "e2@x.io", "222")),
        ]);
        let decisions = plan(
            vec![
                valid(1, T2, "x@x.io", "111"),
                valid(2, T2, "e1@x.io", "222"),
                valid(1, T3, "e2@x.io", "111"),
            ],
            &mut view,
            &Storage::unicode(),
        );
        assert_eq!(outcomes(&decisions), [SYNCED; 3]);
        assert_eq!(view.rows[&id(1)].email, "e2@x.io");
        assert_eq!(view.rows[&id(2)].email, "e1@x.io");
    }

    #[test]
    fn a_rejection_newer_than_the_row_marks_it_and_an_older_one_does_not() {
        let mut view = View::of_rows([(id(1), row(T2, "a@x.io", "111"))]);
        let decisions = plan(
            vec![invalid(1, T3), invalid(1, T1)],
            &mut view,
            &Storage::unicode(),
        );
        let mark = decisions[0].mark.as_ref().unwrap();
        assert_eq!((mark.id, mark.outcome), (id(1), "failed_validation"));
        assert!(decisions[1].mark.is_none());
        assert!(decisions.iter().all(|d| d.rejection.is_some()));
    }

    #[test]
    fn an_element_recorded_already_has_no_further_effect() {
        let conflict = valid(2, T2, "a@x.io", "222");
        let bad = invalid(1, T3);
        let mut view = View::of_rows([(id(1), row(T1, "free@x.io", "111"))]);
        view.recorded.insert(conflict.key, Reason::EmailTaken);
        view.recorded.insert(bad.key, Reason::Malformed);
        let twice = bad.clone();
        let decisions = plan(vec![conflict, bad, twice], &mut view, &Storage::unicode());
        assert_eq!(
            outcomes(&decisions),
            [
                TAKEN,
                Counted::NotSynced(Reason::Malformed),
                Counted::NotSynced(Reason::Malformed)
            ]
        );
        assert!(
            decisions.iter().all(|d| !d.writes()),
            "no row, no mark, no sync"
        );
    }

    #[test]
    fn identical_rejected_elements_of_one_page_are_recorded_once() {
        let mut view = View::default();
        let bad = invalid(1, T1);
        let decisions = plan(
            vec![bad.clone(), bad.clone(), bad],
            &mut view,
            &Storage::unicode(),
        );
        let recorded = decisions.iter().filter(|d| d.rejection.is_some()).count();
        assert_eq!(recorded, 1);
        assert_eq!(
            outcomes(&decisions),
            [Counted::NotSynced(Reason::Malformed); 3]
        );
    }

    #[test]
    fn a_valid_change_recorded_for_any_reason_has_no_further_effect() {
        // Recorded when it came too early; now due, and its email free.
        let due = valid(1, T1, "a@x.io", "111");
        // Recorded as a conflict; the email is free now.
        let freed = valid(2, T1, "b@x.io", "222");
        let mut view = View::default();
        view.recorded.insert(due.key, Reason::FutureTimestamp);
        view.recorded.insert(freed.key, Reason::EmailTaken);
        let decisions = plan(vec![due, freed], &mut view, &Storage::unicode());
        assert_eq!(
            outcomes(&decisions),
            [Counted::NotSynced(Reason::FutureTimestamp), TAKEN]
        );
        assert!(decisions.iter().all(|d| !d.writes()));
        assert!(view.rows.is_empty());
    }

    #[test]
    fn a_name_the_database_cannot_hold_is_a_db_error_recorded_escaped() {
        let text = json!({
            "id": id(1).to_string(), "name": "Zo\u{eb} \u{1F600}", "email": "z@x.io",
            "mobile": "111", "status": "active", "last_updated_at": T1,
        })
        .to_string();
        let latin1 = |text: &str| text.chars().all(|c| u32::from(c) <= 0xff);
        let refused = HashMap::default();
        let storage = Storage {
            can_store: &latin1,
            refused: &refused,
        };
        let mut view = View::default();
        let decisions = plan(
            vec![
                Change::from_text(&text, Utc::now()),
                valid(2, T1, "z@x.io", "222"),
            ],
            &mut view,
            &storage,
        );
        assert_eq!(
            outcomes(&decisions),
            [Counted::NotSynced(Reason::DbError), SYNCED]
        );
        let payload = decisions[0]
            .rejection
            .as_ref()
            .unwrap()
            .payload
            .text()
            .to_owned();
        assert!(payload.contains("Zo\\u00eb \\ud83d\\ude00"), "{payload}");
        let same: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            same,
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        );
    }

    #[test]
    fn escaping_writes_every_non_ascii_character_as_a_json_escape() {
        assert_eq!(
            escape_non_ascii("a\u{e9}\u{1F600}\"z"),
            "a\\u00e9\\ud83d\\ude00\"z"
        );
        assert_eq!(escape_non_ascii("plain"), "plain");
    }
}
