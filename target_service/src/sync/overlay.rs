//! Decisions the planner made whose writes are not yet known to be
//! committed, laid over what a read of the table returns.
//!
//! A page is decided against the table as read just before, but the table
//! does not yet show the writes still queued or running for earlier pages;
//! the overlay does. An entry stays until its write's commit was reported
//! before the read that replaces it began ([`Overlay::forget_committed`] is
//! called between draining the writers' reports and reading), so no
//! decision is ever made against a state older than the one before it.
//! Entries are kept in the order they were sent to each writer as well,
//! which is the order that writer commits them, so forgetting what
//! committed looks at nothing else.

use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;

use postgres::GenericClient;
use uuid::Uuid;

use crate::profile::Reason;
use crate::store::{self, Statements};
use crate::sync::change::{Change, ChangeKey, Parsed};
use crate::sync::plan::{Decision, Row, View};
use crate::sync::routing::Tag;

/// What a page needs read from the table once the rows of its ids are known
/// ([`Overlay::ids_to_read`]), and only what can change an outcome.
#[derive(Debug, Default, PartialEq)]
pub struct Reads {
    /// The emails and mobiles whose holders are to be read: those a valid
    /// change past the stale rule claims and its id's row does not hold.
    pub emails: Vec<String>,
    pub mobiles: Vec<String>,
    /// The element texts whose record is to be read (see
    /// [`Overlay::reads_for`]) that the overlay does not know, each with its
    /// id when that is a UUID.
    pub keys: Vec<(Option<Uuid>, ChangeKey)>,
}

#[derive(Debug, Default)]
pub struct Overlay {
    rows: HashMap<Uuid, (Row, Tag)>,
    emails: HashMap<String, Uuid>,
    mobiles: HashMap<String, Uuid>,
    recorded: HashMap<ChangeKey, (Reason, Tag)>,
    /// Per writer, the entries sent to it, oldest first, with their seq.
    sent: Vec<VecDeque<(u64, Entry)>>,
}

/// Which entry a write sent to a writer made.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Row(Uuid),
    Recorded(ChangeKey),
}

impl Overlay {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.recorded.is_empty()
    }

    pub fn clear(&mut self) {
        *self = Overlay::default();
    }

    /// Drops the entries whose writes are committed (`committed[w]` is the
    /// last seq writer `w` committed); the table shows them from now on.
    /// An entry a later write replaced stays: it is that write's now.
    pub fn forget_committed(&mut self, committed: &[u64]) {
        for (writer, sent) in self.sent.iter_mut().enumerate() {
            let upto = committed.get(writer).copied().unwrap_or(0);
            while let Some(&(seq, entry)) = sent.front() {
                if seq > upto {
                    break;
                }
                sent.pop_front();
                let tag = Tag { writer, seq };
                match entry {
                    Entry::Row(id) => {
                        if self.rows.get(&id).is_some_and(|(_, held)| *held == tag) {
                            if let Some((row, _)) = self.rows.remove(&id) {
                                forget_holder(&mut self.emails, &row.email, id);
                                forget_holder(&mut self.mobiles, &row.mobile, id);
                            }
                        }
                    }
                    Entry::Recorded(key) => {
                        if self
                            .recorded
                            .get(&key)
                            .is_some_and(|(_, held)| *held == tag)
                        {
                            self.recorded.remove(&key);
                        }
                    }
                }
            }
        }
    }

    /// The ids of `changes` whose rows are to be read: those the overlay
    /// does not hold.
    pub fn ids_to_read(&self, changes: &[Change]) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = (changes.iter())
            .filter_map(Change::id)
            .filter(|id| !self.rows.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// What else to read for `changes`, given `stored`, the rows read of
    /// [`Overlay::ids_to_read`]. A valid change not newer than its id's row
    /// before the page is stale whatever else holds (rows only get newer),
    /// so nothing is read for it. For the others: the holder of the email
    /// and of the mobile it claims, unless the id's own row holds them (then
    /// the id is their holder: both are unique), and whether its text is
    /// recorded (a conflict recorded in an earlier round has no further
    /// effect, even once the email is free).
    ///
    /// An invalid element's record decides whether it marks its row, and
    /// spares writing it again; it is not read for an id that has no row and
    /// no valid change before it in the page, since no row can be marked and
    /// the insert skips a text recorded already. Nothing is read for an
    /// inactive change.
    pub fn reads_for(&self, changes: &[Change], stored: &[(Uuid, Row)]) -> Reads {
        let stored: HashMap<Uuid, &Row> = stored.iter().map(|(id, row)| (*id, row)).collect();
        let row_before =
            |id: &Uuid| (self.rows.get(id).map(|(row, _)| row)).or_else(|| stored.get(id).copied());
        let mut reads = Reads::default();
        let mut valid_so_far: HashSet<Uuid> = HashSet::default();
        let mut read_key = |id: Option<Uuid>, key: ChangeKey| {
            if !self.recorded.contains_key(&key) {
                reads.keys.push((id, key));
            }
        };
        for change in changes {
            match &change.parsed {
                Parsed::Valid(profile) => {
                    valid_so_far.insert(profile.id);
                    let row = row_before(&profile.id);
                    let at = profile.last_updated_at.as_datetime();
                    if row.is_some_and(|row| at <= row.last_updated_at) {
                        continue;
                    }
                    if row.is_none_or(|row| row.email != profile.email.as_str()) {
                        reads.emails.push(profile.email.as_str().to_owned());
                    }
                    if row.is_none_or(|row| row.mobile != profile.mobile.as_str()) {
                        reads.mobiles.push(profile.mobile.as_str().to_owned());
                    }
                    read_key(Some(profile.id), change.key);
                }
                Parsed::Inactive => {}
                Parsed::Invalid(rejection) => {
                    let rowless = rejection
                        .profile_id
                        .is_some_and(|id| row_before(&id).is_none() && !valid_so_far.contains(&id));
                    if !rowless {
                        read_key(rejection.profile_id, change.key);
                    }
                }
            }
        }
        for list in [&mut reads.emails, &mut reads.mobiles] {
            list.sort_unstable();
            list.dedup();
        }
        reads.keys.sort_unstable();
        reads.keys.dedup();
        reads
    }

    /// Reads the rows `changes` are decided against, in two steps: the rows
    /// of their ids the overlay does not hold, then the holders of the
    /// emails and mobiles [`Overlay::reads_for`] finds they need. Returns
    /// those rows and what else to read. Both steps are to see one
    /// snapshot (a `REPEATABLE READ` transaction), or a row could show two
    /// versions.
    pub fn read_rows(
        &self,
        client: &mut impl GenericClient,
        statements: &Statements,
        changes: &[Change],
    ) -> Result<(Vec<(Uuid, Row)>, Reads), postgres::Error> {
        let mut stored = store::read_rows(client, statements, &self.ids_to_read(changes))?;
        let reads = self.reads_for(changes, &stored);
        stored.extend(store::read_holders(
            client,
            statements,
            &reads.emails,
            &reads.mobiles,
        )?);
        Ok((stored, reads))
    }

    /// The view `changes` are decided against: the rows (of their ids and
    /// of the holders read) and the records read for them
    /// ([`Overlay::ids_to_read`], [`Overlay::reads_for`]), with the overlay
    /// laid over them.
    pub fn view(
        &self,
        changes: &[Change],
        stored: Vec<(Uuid, Row)>,
        recorded: Vec<(ChangeKey, Reason)>,
    ) -> View {
        let in_overlay = |id: &Uuid| self.rows.contains_key(id);
        let mut view = View::of_rows(stored.into_iter().filter(|(id, _)| !in_overlay(id)));
        for change in changes {
            if let Some((id, (row, _))) = change.id().and_then(|id| Some((id, self.rows.get(&id)?)))
            {
                view.set_row(id, row.clone());
            }
            if let Parsed::Valid(profile) = &change.parsed {
                if let Some(owner) = self.emails.get(profile.email.as_str()) {
                    view.email_owner
                        .insert(profile.email.as_str().to_owned(), *owner);
                }
                if let Some(owner) = self.mobiles.get(profile.mobile.as_str()) {
                    view.mobile_owner
                        .insert(profile.mobile.as_str().to_owned(), *owner);
                }
            }
            if let Some((reason, _)) = self.recorded.get(&change.key) {
                view.recorded.insert(change.key, *reason);
            }
        }
        view.recorded.extend(recorded);
        view
    }

    /// Remembers what `decision` writes, sent as `tag`.
    pub fn remember(&mut self, decision: &Decision, tag: Tag) {
        if self.sent.len() <= tag.writer {
            self.sent.resize_with(tag.writer + 1, VecDeque::new);
        }
        if let Some(user) = &decision.user {
            if let Some((old, _)) = self.rows.get(&user.id) {
                forget_holder(&mut self.emails, &old.email, user.id);
                forget_holder(&mut self.mobiles, &old.mobile, user.id);
            }
            self.emails.insert(user.email.clone(), user.id);
            self.mobiles.insert(user.mobile.clone(), user.id);
            let row = Row {
                last_updated_at: user.last_updated_at,
                email: user.email.clone(),
                mobile: user.mobile.clone(),
            };
            self.rows.insert(user.id, (row, tag));
            self.sent[tag.writer].push_back((tag.seq, Entry::Row(user.id)));
        }
        if let Some(rejection) = &decision.rejection {
            self.recorded.insert(rejection.key, (rejection.reason, tag));
            (self.sent[tag.writer]).push_back((tag.seq, Entry::Recorded(rejection.key)));
        }
    }
}

/// Forgets that `id` holds `value`, unless another id holds it by now.
fn forget_holder(holders: &mut HashMap<String, Uuid>, value: &str, id: Uuid) {
    if holders.get(value) == Some(&id) {
        holders.remove(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counted;
    use crate::sync::plan::{plan, Storage};
    use chrono::Utc;
    use serde_json::json;

    fn change(n: u8, when: &str, email: &str) -> Change {
        let text = json!({
            "id": Uuid::from_bytes([n; 16]).to_string(), "name": "N", "email": email,
            "mobile": format!("{n}000"), "status": "active", "last_updated_at": when,
        });
        Change::from_text(&text.to_string(), Utc::now())
    }

    #[test]
    fn a_pending_give_up_frees_the_email_the_table_still_shows_taken() {
        let mut overlay = Overlay::default();
        let first = vec![change(1, "2025-01-01T00:00:00Z", "e@x.io")];
        let mut view = overlay.view(&first, Vec::new(), Vec::new());
        let decided = plan(first, &mut view, &Storage::unicode());
        let tag = Tag { writer: 0, seq: 1 };
        overlay.remember(&decided[0], tag);
        // 1 moves off e@x; the write is pending, so the table still shows e@x.
        let moves = vec![change(1, "2025-01-02T00:00:00Z", "f@x.io")];
        assert!(
            overlay.ids_to_read(&moves).is_empty(),
            "the overlay knows the row"
        );
        let reads = overlay.reads_for(&moves, &[]);
        assert_eq!(reads.emails, ["f@x.io"], "e@x is the id's own");
        assert!(reads.mobiles.is_empty(), "the mobile is the id's own");
        let mut view = overlay.view(&moves, Vec::new(), Vec::new());
        let decided = plan(moves, &mut view, &Storage::unicode());
        overlay.remember(&decided[0], Tag { writer: 0, seq: 2 });
        let stored_row = Row {
            last_updated_at: chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
                .unwrap()
                .into(),
            email: "e@x.io".into(),
            mobile: "1000".into(),
        };
        let id1 = Uuid::from_bytes([1; 16]);
        let claim = vec![change(2, "2025-01-01T00:00:00Z", "e@x.io")];
        let mut view = overlay.view(&claim, vec![(id1, stored_row)], Vec::new());
        let decided = plan(claim, &mut view, &Storage::unicode());
        assert_eq!(decided[0].outcome, Counted::Synced);
        // Once both writes are committed the overlay is empty.
        overlay.forget_committed(&[1]);
        assert!(!overlay.is_empty());
        overlay.forget_committed(&[2]);
        assert!(overlay.is_empty());
        assert!(overlay.emails.is_empty() && overlay.mobiles.is_empty());
    }

    #[test]
    fn a_row_written_again_on_another_writer_stays_until_that_write_commits() {
        let mut overlay = Overlay::default();
        let first = vec![change(1, "2025-01-01T00:00:00Z", "e@x.io")];
        let mut view = overlay.view(&first, Vec::new(), Vec::new());
        let decided = plan(first, &mut view, &Storage::unicode());
        overlay.remember(&decided[0], Tag { writer: 0, seq: 1 });
        let again = vec![change(1, "2025-01-02T00:00:00Z", "f@x.io")];
        let mut view = overlay.view(&again, Vec::new(), Vec::new());
        let decided = plan(again, &mut view, &Storage::unicode());
        overlay.remember(&decided[0], Tag { writer: 1, seq: 1 });
        // Writer 0's write committed; writer 1's, which replaced it, did not.
        overlay.forget_committed(&[1, 0]);
        let (row, _) = &overlay.rows[&Uuid::from_bytes([1; 16])];
        assert_eq!(row.email, "f@x.io");
        assert_eq!(
            overlay.emails.get("f@x.io"),
            Some(&Uuid::from_bytes([1; 16]))
        );
        assert!(!overlay.emails.contains_key("e@x.io"));
        overlay.forget_committed(&[1, 1]);
        assert!(overlay.is_empty() && overlay.emails.is_empty() && overlay.mobiles.is_empty());
    }

    #[test]
    fn only_what_can_change_an_outcome_is_read() {
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().into();
        let id1 = Uuid::from_bytes([1; 16]);
        let stored = vec![(
            id1,
            Row {
                last_updated_at: at("2025-01-02T00:00:00Z"),
                email: "e@x.io".into(),
                mobile: "1000".into(),
            },
        )];
        let overlay = Overlay::default();
        // Not newer than its row: stale, whatever holds the email it claims.
        let stale = vec![
            change(1, "2025-01-01T00:00:00Z", "other@x.io"),
            change(1, "2025-01-02T00:00:00Z", "other@x.io"),
        ];
        assert_eq!(overlay.reads_for(&stale, &stored), Reads::default());
        // Newer: its claim of another email, and whether its text is
        // recorded (a conflict of an earlier round has no further effect).
        let newer = vec![change(1, "2025-01-03T00:00:00Z", "other@x.io")];
        let reads = overlay.reads_for(&newer, &stored);
        assert_eq!(reads.emails, ["other@x.io"]);
        assert!(reads.mobiles.is_empty(), "its row holds its mobile");
        assert_eq!(reads.keys, [(Some(id1), newer[0].key)]);
        // Inactive: nothing at all, not even its row.
        let inactive = Change::from_text(
            &json!({
                "id": Uuid::from_bytes([9; 16]).to_string(), "name": "N", "email": "i@x.io",
                "mobile": "9000", "status": "inactive", "last_updated_at": "2025-01-05T00:00:00Z",
            })
            .to_string(),
            Utc::now(),
        );
        let inactive = vec![inactive];
        assert!(overlay.ids_to_read(&inactive).is_empty());
        assert_eq!(overlay.reads_for(&inactive, &[]), Reads::default());
        // An invalid element's record is read where its id has a row, or a
        // valid change before it in the page; not for an id with neither.
        let invalid = |n: u8| {
            Change::from_text(
                &json!({"id": Uuid::from_bytes([n; 16]).to_string(), "last_updated_at": "2025-01-01T00:00:00Z"})
                    .to_string(),
                Utc::now(),
            )
        };
        let idless = Change::from_text(r#"{"id": "x"}"#, Utc::now());
        let page = vec![
            invalid(1),
            invalid(2),
            change(3, "2025-01-01T00:00:00Z", "t@x.io"),
            invalid(3),
            idless,
        ];
        let keys = overlay.reads_for(&page, &stored).keys;
        let (id3, idless_key) = (Uuid::from_bytes([3; 16]), page[4].key);
        assert_eq!(keys.len(), 4);
        assert!(keys.contains(&(Some(id1), page[0].key)));
        assert!(keys.contains(&(Some(id3), page[2].key)), "a valid change");
        assert!(keys.contains(&(Some(id3), page[3].key)));
        assert!(
            keys.contains(&(None, idless_key)),
            "a text without a UUID id"
        );
    }

    #[test]
    fn a_pending_conflict_s_record_holds_until_it_commits_then_the_table_s_does() {
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().into();
        let holder = Uuid::from_bytes([1; 16]);
        let held = Row {
            last_updated_at: at("2025-01-01T00:00:00Z"),
            email: "e@x.io".into(),
            mobile: "1000".into(),
        };
        let mut overlay = Overlay::default();
        let claim = vec![change(2, "2025-01-02T00:00:00Z", "e@x.io")];
        let mut view = overlay.view(&claim, vec![(holder, held)], Vec::new());
        let decided = plan(claim.clone(), &mut view, &Storage::unicode());
        assert_eq!(decided[0].outcome, Counted::NotSynced(Reason::EmailTaken));
        overlay.remember(&decided[0], Tag { writer: 0, seq: 1 });
        // The same element again, the email now free: the overlay knows it
        // is recorded, so it is not read and has no further effect.
        assert!(overlay.reads_for(&claim, &[]).keys.is_empty());
        let mut view = overlay.view(&claim, Vec::new(), Vec::new());
        let decided = plan(claim.clone(), &mut view, &Storage::unicode());
        assert_eq!(decided[0].outcome, Counted::NotSynced(Reason::EmailTaken));
        assert!(!decided[0].writes());
        // Committed, the record is the table's to tell.
        overlay.forget_committed(&[1]);
        assert!(overlay.is_empty());
        let reads = overlay.reads_for(&claim, &[]);
        assert_eq!(
            reads.keys,
            [(Some(Uuid::from_bytes([2; 16])), claim[0].key)]
        );
        let recorded = vec![(claim[0].key, Reason::EmailTaken)];
        let mut view = overlay.view(&claim, Vec::new(), recorded);
        let decided = plan(claim, &mut view, &Storage::unicode());
        assert_eq!(decided[0].outcome, Counted::NotSynced(Reason::EmailTaken));
        assert!(!decided[0].writes());
    }
}
