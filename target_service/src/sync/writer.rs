//! Writer threads: execute decided writes, a batch per transaction, and
//! report each commit back to the round.
//!
//! Nothing is decided here ([`crate::sync::plan`] did that). A writer takes its
//! work in the order it was sent, which [`crate::sync::routing`] chose so that
//! the unique indexes hold at every row, and writes a batch in that order:
//! the users rows in as few statements as keep each id once per statement
//! and every claim of an email or mobile after the row that gave it up
//! ([`layers`]), then the rejections, then the marks that still stand.
//!
//! A transient PostgreSQL error retries the batch with backoff until it
//! commits, its round is abandoned or shutdown starts. A unique violation
//! or a refused row means someone else wrote meanwhile or PostgreSQL
//! refused what the planner thought it could hold: the batch is reported
//! refused (naming the refused element when one is) and the round decides
//! again from the stored cursor.

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use postgres::GenericClient;
use uuid::Uuid;

use crate::metrics::{Counted, Metrics};
use crate::pool::DbPool;
use crate::profile::Reason;
use crate::stop::{sleep_unless_stopping, stopping};
use crate::store::{self, Failure, Statements};
use crate::sync::change::ChangeKey;
use crate::sync::plan::{Decision, MarkWrite, RejectionWrite, UserWrite};

/// Most decisions a writer takes into one transaction: the pipeline hands
/// over no more in one message.
pub const MAX_BATCH: usize = 1000;

/// A decided change on its way to a writer.
#[derive(Debug)]
pub struct WorkItem {
    /// The round it belongs to; an abandoned round's work is dropped.
    pub round: u64,
    /// Its number in this writer's work (see [`crate::sync::routing::Tag`]).
    pub seq: u64,
    /// The page it came from, for the ledger.
    pub page_no: u64,
    /// When the server the round read from started: the decision holds
    /// only on that server, not on one that lost commits in a crash.
    pub server_started: DateTime<Utc>,
    pub decision: Decision,
}

/// What a writer tells the round after each batch. `seq` is the last of
/// the batch: everything up to it is settled.
#[derive(Debug)]
pub enum Report {
    Committed {
        writer: usize,
        seq: u64,
        /// How many writes of each page committed.
        pages: Vec<(u64, usize)>,
    },
    /// Not written: its round was abandoned or shutdown came first.
    Dropped { writer: usize, seq: u64 },
    /// Refused by PostgreSQL; the round must decide again.
    Refused {
        writer: usize,
        seq: u64,
        why: String,
        /// The element PostgreSQL refused to hold, if that was it.
        element: Option<(ChangeKey, String)>,
    },
}

/// One writer thread's ends.
pub struct Writer {
    pub index: usize,
    /// A page's share of work at a time, in the order to write it.
    pub inbox: Receiver<Vec<WorkItem>>,
    pub reports: Sender<Report>,
    pub pool: DbPool,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    /// Rounds up to this one are abandoned.
    pub abandoned: Arc<AtomicU64>,
}

enum Written {
    Committed(Vec<Uuid>),
    Dropped,
    Refused(String, Option<(ChangeKey, String)>),
}

impl Writer {
    /// Runs until its inbox is closed and drained.
    pub fn run(self) {
        let mut refused_round = None;
        // One message is one batch: the pipeline makes it at most a chunk.
        while let Ok(batch) = self.inbox.recv() {
            let Some(round) = batch.first().map(|item| item.round) else {
                continue;
            };
            self.metrics.queue_depth.sub(batch.len() as i64);
            let seq = batch.last().map_or(0, |item| item.seq);
            let written = if refused_round == Some(round) {
                Written::Dropped
            } else {
                self.write_with_retry(&batch)
            };
            let report = match written {
                Written::Committed(unwritten) => {
                    count(&self.metrics, &batch, &unwritten);
                    Report::Committed {
                        writer: self.index,
                        seq,
                        pages: per_page(&batch),
                    }
                }
                Written::Dropped => {
                    // Counted as decided, so that the counters balance; the
                    // changes are fetched, decided and counted again.
                    count(&self.metrics, &batch, &[]);
                    Report::Dropped {
                        writer: self.index,
                        seq,
                    }
                }
                Written::Refused(why, element) => {
                    count(&self.metrics, &batch, &[]);
                    refused_round = Some(round);
                    Report::Refused {
                        writer: self.index,
                        seq,
                        why,
                        element,
                    }
                }
            };
            // The round may have ended (shutdown): then nobody listens.
            let _ = self.reports.send(report);
        }
    }

    fn abandoned(&self, round: u64) -> bool {
        round <= self.abandoned.load(Ordering::Acquire)
    }

    fn write_with_retry(&self, batch: &[WorkItem]) -> Written {
        let Some(first) = batch.first() else {
            return Written::Committed(Vec::new());
        };
        let (round, server_started) = (first.round, first.server_started);
        let decisions: Vec<&Decision> = batch.iter().map(|item| &item.decision).collect();
        let mut delay = Duration::from_millis(50);
        loop {
            if self.abandoned(round) {
                return Written::Dropped;
            }
            let why = match self.write_once(&decisions, server_started) {
                Ok(unwritten) => return Written::Committed(unwritten),
                Err(Failed::Refused(why, element)) => return Written::Refused(why, element),
                Err(Failed::Transient(why)) => why,
            };
            self.metrics.db_errors.inc();
            if stopping(&self.stop) {
                return Written::Dropped;
            }
            warn!(
                "writing a batch of {} failed, retrying in {delay:?}: {why}",
                batch.len()
            );
            sleep_unless_stopping(delay, &self.stop);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn write_once(
        &self,
        decisions: &[&Decision],
        server_started: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, Failed> {
        let mut conn = self
            .pool
            .get()
            .map_err(|err| Failed::Transient(err.to_string()))?;
        let result = conn.with_statements().and_then(|(client, statements)| {
            execute_on(client, statements, decisions, server_started)
        });
        let err = match result {
            Ok(Some(unwritten)) => return Ok(unwritten),
            // Decided against what a crashed server held: commits it lost
            // may be among what the decisions assumed.
            Ok(None) => {
                return Err(Failed::Refused(
                    "PostgreSQL restarted during the round; its decisions are made again from the stored cursor"
                        .to_owned(),
                    None,
                ))
            }
            Err(err) => err,
        };
        match store::classify(&err) {
            Failure::Transient => {
                // Prepared again next time, in case the schema changed.
                conn.forget_statements();
                Err(Failed::Transient(store::describe(&err)))
            }
            Failure::Unique(constraint) => Err(Failed::Refused(
                format!(
                    "another writer took an email or mobile meanwhile ({}): {}",
                    constraint.unwrap_or_default(),
                    store::describe(&err)
                ),
                None,
            )),
            Failure::Data => {
                let element = conn
                    .with_statements()
                    .ok()
                    .and_then(|(client, statements)| find_refused(client, statements, decisions));
                Err(Failed::Refused(store::describe(&err), element))
            }
        }
    }
}

enum Failed {
    Transient(String),
    Refused(String, Option<(ChangeKey, String)>),
}

/// Counts each change of a committed batch as decided, but a users write
/// the guard turned down (another writer's row was as new) as stale.
fn count(metrics: &Metrics, batch: &[WorkItem], unwritten: &[Uuid]) {
    let mut counts: Vec<(Counted, u64)> = Vec::new();
    for item in batch {
        let mut outcome = item.decision.outcome;
        if let Some(user) = &item.decision.user {
            if unwritten.contains(&user.id) {
                outcome = Counted::NotSynced(Reason::Stale);
            }
        }
        match counts.iter_mut().find(|(how, _)| *how == outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((outcome, 1)),
        }
    }
    for (how, n) in counts {
        metrics.record(how, n);
    }
}

fn per_page(batch: &[WorkItem]) -> Vec<(u64, usize)> {
    let mut pages: Vec<(u64, usize)> = Vec::new();
    for item in batch {
        match pages.last_mut() {
            Some((page, n)) if *page == item.page_no => *n += 1,
            _ => pages.push((item.page_no, 1)),
        }
    }
    pages
}

/// As [`execute`], but only on the server that started at
/// `server_started`: `None`, and nothing written, on any other.
fn execute_on(
    client: &mut impl GenericClient,
    statements: &Statements,
    decisions: &[&Decision],
    server_started: DateTime<Utc>,
) -> Result<Option<Vec<Uuid>>, postgres::Error> {
    let mut tx = client.transaction()?;
    // A crash after this check ends the transaction; its retry checks again.
    if !store::server_is(&mut tx, server_started)? {
        return Ok(None);
    }
    let unwritten = write(&mut tx, statements, decisions)?;
    tx.commit()?;
    Ok(Some(unwritten))
}

/// Writes decisions, in their order, in one transaction. Returns the ids
/// whose users write the guard turned down (someone else's row was as new).
pub fn execute(
    client: &mut impl GenericClient,
    statements: &Statements,
    decisions: &[&Decision],
) -> Result<Vec<Uuid>, postgres::Error> {
    let mut tx = client.transaction()?;
    let unwritten = write(&mut tx, statements, decisions)?;
    tx.commit()?;
    Ok(unwritten)
}

fn write(
    client: &mut impl GenericClient,
    statements: &Statements,
    decisions: &[&Decision],
) -> Result<Vec<Uuid>, postgres::Error> {
    let users: Vec<&UserWrite> = decisions.iter().filter_map(|d| d.user.as_ref()).collect();
    let mut unwritten = Vec::new();
    for layer in layers(&users) {
        let written = store::upsert_users(client, statements, &layer)?;
        if written.len() < layer.len() {
            unwritten.extend(
                layer
                    .iter()
                    .map(|u| u.id)
                    .filter(|id| !written.contains(id)),
            );
        }
    }
    let rejections: Vec<&RejectionWrite> = decisions
        .iter()
        .filter_map(|d| d.rejection.as_ref())
        .collect();
    store::insert_rejections(client, statements, &rejections)?;
    store::mark_users(client, statements, &standing_marks(decisions))?;
    Ok(unwritten)
}

/// Splits users writes, kept in order, into statements: a write goes into
/// the statement after the one holding the previous write of its id (a
/// statement cannot write a row twice), and no earlier than the statement
/// holding the write that gave up its email or mobile (after which it comes
/// within that statement, rows being written in order). So the unique
/// indexes hold after every row, with as few statements as that allows.
pub fn layers<'a>(users: &[&'a UserWrite]) -> Vec<Vec<&'a UserWrite>> {
    let mut layers: Vec<Vec<&UserWrite>> = Vec::new();
    let mut of_id: HashMap<Uuid, usize> = HashMap::default();
    let mut released: HashMap<(bool, &str), usize> = HashMap::default();
    for &user in users {
        let after_own = of_id.get(&user.id).map_or(0, |layer| layer + 1);
        let after_release = [
            released.get(&(true, user.email.as_str())),
            released.get(&(false, user.mobile.as_str())),
        ]
        .into_iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0);
        let layer = after_own.max(after_release);
        if layers.len() <= layer {
            layers.resize_with(layer + 1, Vec::new);
        }
        layers[layer].push(user);
        of_id.insert(user.id, layer);
        if let Some(email) = &user.released_email {
            released.insert((true, email.as_str()), layer);
        }
        if let Some(mobile) = &user.released_mobile {
            released.insert((false, mobile.as_str()), layer);
        }
    }
    layers
}

/// The marks that still stand once the batch is written: the last of each
/// id, unless a users write of that id comes after it (which resets the
/// row's sync columns). They are applied after every users write.
fn standing_marks<'a>(decisions: &[&'a Decision]) -> Vec<&'a MarkWrite> {
    let mut marks: HashMap<Uuid, &MarkWrite> = HashMap::default();
    let mut order: Vec<Uuid> = Vec::new();
    for decision in decisions {
        if let Some(user) = &decision.user {
            marks.remove(&user.id);
        }
        if let Some(mark) = &decision.mark {
            if marks.insert(mark.id, mark).is_none() {
                order.push(mark.id);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| marks.remove(&id))
        .collect()
}

/// After a batch was refused as data PostgreSQL cannot take: writes each
/// decision alone, in a transaction that is rolled back, and names the
/// first that PostgreSQL refuses, with what it said.
fn find_refused(
    client: &mut postgres::Client,
    statements: &Statements,
    decisions: &[&Decision],
) -> Option<(ChangeKey, String)> {
    let mut tx = client.transaction().ok()?;
    for decision in decisions {
        let mut savepoint = tx.transaction().ok()?;
        match write(&mut savepoint, statements, &[decision]) {
            Ok(_) => savepoint.commit().ok()?,
            Err(err) if store::classify(&err) == Failure::Data => {
                debug!("PostgreSQL refuses one element: {}", store::describe(&err));
                return Some((decision.key, store::describe(&err)));
            }
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::change::Change;
    use crate::sync::plan::{plan, Storage, View};
    use chrono::Utc;
    use serde_json::json;

    fn decide(changes: &[(u8, &str, &str)], view: &mut View) -> Vec<Decision> {
        let changes = changes
            .iter()
            .map(|(n, when, email)| {
                let text = json!({
                    "id": Uuid::from_bytes([*n; 16]).to_string(), "name": "N", "email": format!("{email}@x.io"),
                    "mobile": format!("{n}000"), "status": "active", "last_updated_at": when,
                });
                Change::from_text(&text.to_string(), Utc::now())
            })
            .collect();
        plan(changes, view, &Storage::unicode())
    }

    fn shape(decisions: &[Decision]) -> Vec<Vec<(u8, String)>> {
        let users: Vec<&UserWrite> = decisions.iter().filter_map(|d| d.user.as_ref()).collect();
        layers(&users)
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|u| {
                        (
                            u.id.as_bytes()[0],
                            u.email.trim_end_matches("@x.io").to_owned(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_cycle_of_gives_up_and_claims_is_split_where_an_id_repeats() {
        let mut view = View::default();
        let decisions = decide(
            &[
                (1, "2025-01-01T00:00:00Z", "e1"),
                (2, "2025-01-01T00:00:00Z", "e2"),
                (1, "2025-01-02T00:00:00Z", "x"),
                (2, "2025-01-02T00:00:00Z", "e1"),
                (1, "2025-01-03T00:00:00Z", "e2"),
            ],
            &mut view,
        );
        assert_eq!(
            shape(&decisions),
            [
                vec![(1, "e1".to_owned()), (2, "e2".to_owned())],
                vec![(1, "x".to_owned()), (2, "e1".to_owned())],
                vec![(1, "e2".to_owned())],
            ]
        );
    }

    #[test]
    fn a_claim_never_comes_before_the_give_up_it_waits_for() {
        let mut view = View::default();
        let decisions = decide(
            &[
                (1, "2025-01-01T00:00:00Z", "a"),
                (1, "2025-01-02T00:00:00Z", "b"),
                (1, "2025-01-03T00:00:00Z", "c"),
                (2, "2025-01-01T00:00:00Z", "b"),
                (3, "2025-01-01T00:00:00Z", "z"),
            ],
            &mut view,
        );
        // 2 claims b, given up by 1's third write: in its statement, after it.
        assert_eq!(
            shape(&decisions),
            [
                vec![(1, "a".to_owned()), (3, "z".to_owned())],
                vec![(1, "b".to_owned())],
                vec![(1, "c".to_owned()), (2, "b".to_owned())],
            ]
        );
    }

    #[test]
    fn a_mark_followed_by_a_write_of_its_id_does_not_stand() {
        let mut view = View::default();
        let mut decisions = decide(&[(1, "2025-01-01T00:00:00Z", "a")], &mut view);
        let mark = MarkWrite {
            id: Uuid::from_bytes([1; 16]),
            changed_at: Utc::now(),
            outcome: "failed_validation",
            message: "m".into(),
        };
        let mut marking = decisions[0].clone();
        marking.user = None;
        marking.mark = Some(mark.clone());
        decisions.insert(0, marking.clone());
        let all: Vec<&Decision> = decisions.iter().collect();
        assert!(standing_marks(&all).is_empty());
        decisions.push(marking);
        let all: Vec<&Decision> = decisions.iter().collect();
        assert_eq!(standing_marks(&all), [&mark]);
    }
}
