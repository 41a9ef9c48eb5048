//! Writer threads: take parsed changes off their channel, decide each one's
//! fate against the stored rows, and commit a whole batch in one transaction.
//!
//! Changes that share an id, an email or a mobile are routed to one writer
//! (see [`crate::routing`]), and a writer handles its changes in sequence
//! order, so the result never depends on how the threads happen to
//! interleave. Inside a batch,
//! [`plan_batch`] replays the changes one by one in memory against the rows
//! it has read, exactly as if they were written one at a time, and then the
//! batch is written with a few set-based statements.
//!
//! A batch that meets a transient PostgreSQL error is retried with backoff
//! until it commits or shutdown starts; nothing is acknowledged (and so no
//! cursor moves) before its commit.
//!
//! How much a batch reads before it decides is chosen per batch ([`Reading`]):
//! while changes are mostly new and claim nobody's email or mobile, the
//! guards of the write statements decide for ids that occur once in the
//! batch, and a unique violation sends the batch back to be read in full.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, warn};
use postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::metrics::{Counted, Metrics};
use crate::pool::DbPool;
use crate::profile::{Profile, Reason, Rejection};
use crate::sleep_unless_stopping;
use crate::store::{
    self, Failure, Recorded, RejectionWrite, Statements, StatusMark, StoredUsers, UserWrite,
};

/// Most changes a writer takes into one transaction.
pub const MAX_BATCH: usize = 1000;

/// What a batch reads from `users` before it decides. Both give the same
/// outcomes; they differ in which is cheaper for the changes at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Reads only the rows of ids that occur more than once in the batch.
    /// For an id that occurs once, nothing in the batch depends on its row:
    /// the upsert's `WHERE` decides stale or synced (and what it did not
    /// write is counted stale), a mark's own guard decides whether it
    /// applies, and an email or mobile held by a row outside the batch
    /// makes the upsert fail with a unique violation, after which the batch
    /// is decided again, carefully. Rejections are inserted expecting none
    /// to be recorded already ([`Recorded::Refuse`]): one that is fails the
    /// batch the same way. A batch with an id that has a recorded conflict
    /// or refused row is decided carefully from the start, for a valid
    /// change recorded so must not sync when replayed. Cheapest while
    /// catching up.
    Optimistic,
    /// Reads the row of every id and the rows holding every email and mobile
    /// the batch claims, and decides everything in memory; rejections
    /// already recorded are skipped ([`Recorded::Skip`]). Cheapest while
    /// most changes are stale (a replay: they are never sent to the upsert)
    /// or conflicts are common (no statement fails).
    Careful,
}

impl Reading {
    /// How this reading's rejections meet those already recorded.
    fn recorded(self) -> Recorded {
        match self {
            Reading::Optimistic => Recorded::Refuse,
            Reading::Careful => Recorded::Skip,
        }
    }

    /// The reading for the batch after one that ended with `counts`, and
    /// that was `refused` as optimistic and written carefully. A batch that
    /// synced nothing (only rejections, say, from a source like the original
    /// handing out the same page every round) says nothing about a catch-up
    /// going on, and whatever refused a batch (a recorded rejection: a
    /// replay) is likely to recur, so the next one reads carefully.
    fn after(counts: &[(Counted, u64)], refused: bool) -> Reading {
        let count = |wanted: Counted| -> u64 {
            counts
                .iter()
                .filter(|(how, _)| *how == wanted)
                .map(|(_, n)| n)
                .sum()
        };
        let synced = count(Counted::Synced);
        let stale = count(Counted::NotSynced(Reason::Stale));
        let conflicts = count(Counted::NotSynced(Reason::EmailTaken))
            + count(Counted::NotSynced(Reason::MobileTaken));
        if refused || conflicts > 0 || stale >= synced {
            Reading::Careful
        } else {
            Reading::Optimistic
        }
    }
}

/// One element of a page, parsed, on its way to a writer.
#[derive(Debug)]
pub struct WorkItem {
    pub change: Change,
    /// The page it came from, told when the item is committed; it holds the
    /// text of the change.
    pub page: Arc<PageProgress>,
}

impl WorkItem {
    /// The change's raw element, as the source sent it.
    pub fn payload(&self) -> &str {
        self.page.text(self.change.payload())
    }
}

/// Where an element lies in the text of its page.
pub type Span = Range<usize>;

#[derive(Debug)]
pub enum Change {
    /// `payload` is where the raw element lies in its page, recorded only if
    /// a writer rejects the change after all.
    Accepted { profile: Profile, payload: Span },
    /// `payload` is where the raw element lies in its page; `copy` counts
    /// the identical elements before it in the same page, so distinct
    /// changes that look alike are each recorded while a replay records
    /// nothing twice.
    Rejected {
        rejection: Rejection,
        payload: Span,
        copy: i32,
    },
}

impl Change {
    pub fn profile_id(&self) -> Option<Uuid> {
        match self {
            Change::Accepted { profile, .. } => Some(profile.id),
            Change::Rejected { rejection, .. } => rejection.profile_id,
        }
    }

    fn payload(&self) -> &Span {
        match self {
            Change::Accepted { payload, .. } | Change::Rejected { payload, .. } => payload,
        }
    }

    fn payload_mut(&mut self) -> &mut Span {
        match self {
            Change::Accepted { payload, .. } | Change::Rejected { payload, .. } => payload,
        }
    }
}

/// A page's text, shared by its changes so that none is copied out of it,
/// and the count of its items still to commit; the last writer to finish one
/// reports the page as done.
///
/// The text lives until the page's last change is committed, so it never
/// holds more than twice the text its changes point into: a page of which
/// few elements go on (most superseded within it) keeps only theirs.
#[derive(Debug)]
pub struct PageProgress {
    pub page_no: u64,
    /// The elements of the page's changes, as the source sent them.
    text: String,
    remaining: AtomicUsize,
    done: Sender<u64>,
    /// Changes committed by all writers so far, shared by every page.
    committed_total: Arc<AtomicU64>,
}

impl PageProgress {
    /// A page of `changes`, whose spans lie in `body`; an empty page is
    /// reported done at once. Where the changes' elements are less than
    /// half of what `body` holds, they are copied into a text of their own
    /// and their spans moved to match.
    pub fn new(
        page_no: u64,
        body: String,
        changes: &mut [Change],
        done: Sender<u64>,
        committed_total: Arc<AtomicU64>,
    ) -> Arc<PageProgress> {
        let progress = Arc::new(PageProgress {
            page_no,
            text: keep_only_elements(body, changes),
            remaining: AtomicUsize::new(changes.len()),
            done,
            committed_total,
        });
        if changes.is_empty() {
            let _ = progress.done.send(page_no);
        }
        progress
    }

    /// The text at `span`. Spans come from the page itself, so one that
    /// does not fit cannot occur; it would read as empty rather than panic.
    fn text(&self, span: &Span) -> &str {
        self.text.get(span.clone()).unwrap_or_default()
    }

    fn committed(&self, count: usize) {
        self.committed_total
            .fetch_add(count as u64, Ordering::AcqRel);
        if self.remaining.fetch_sub(count, Ordering::AcqRel) == count {
            // The fetcher may have gone (shutdown); then nobody is waiting.
            let _ = self.done.send(self.page_no);
        }
    }
}

/// `body`, or, where the elements `changes` point into take less than half
/// of its memory, a text of just those elements, with the spans moved.
fn keep_only_elements(body: String, changes: &mut [Change]) -> String {
    let needed: usize = changes.iter().map(|change| change.payload().len()).sum();
    if needed.saturating_mul(2) >= body.capacity() {
        return body;
    }
    let mut kept = String::with_capacity(needed);
    for change in changes {
        let span = change.payload_mut();
        let start = kept.len();
        kept.push_str(body.get(span.clone()).unwrap_or_default());
        *span = start..kept.len();
    }
    kept
}

/// Runs one writer until its channel is closed and drained.
pub fn run(
    inbox: Receiver<WorkItem>,
    pool: DbPool,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut reading = Reading::Optimistic;
    while let Ok(first) = inbox.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        metrics.queue_depth.sub(batch.len() as i64);
        match write_with_retry(&batch, &pool, &metrics, &stopping, reading) {
            Some((counts, written_as)) => {
                let refused = reading == Reading::Optimistic && written_as == Reading::Careful;
                reading = Reading::after(&counts, refused);
                for (how, count) in counts {
                    metrics.record(how, count);
                }
                acknowledge(&batch);
            }
            None => warn!(
                "shutting down with {} changes unwritten; they will be fetched again",
                batch.len()
            ),
        }
        batch.clear();
    }
}

fn acknowledge(batch: &[WorkItem]) {
    let mut per_page: Vec<(&Arc<PageProgress>, usize)> = Vec::new();
    for item in batch {
        match per_page.last_mut() {
            Some((page, count)) if Arc::ptr_eq(page, &item.page) => *count += 1,
            _ => per_page.push((&item.page, 1)),
        }
    }
    for (page, count) in per_page {
        page.committed(count);
    }
}

/// Writes a batch, retrying transient failures with backoff. Returns the
/// counts to record and the reading the batch was written with, or `None`
/// when shutdown interrupted the retries.
fn write_with_retry(
    batch: &[WorkItem],
    pool: &DbPool,
    metrics: &Metrics,
    stopping: &AtomicBool,
    mut reading: Reading,
) -> Option<(Vec<(Counted, u64)>, Reading)> {
    let mut delay = Duration::from_millis(50);
    let mut unique_retries = 0;
    let mut row_by_row = false;
    loop {
        let attempt = pool
            .get()
            .map_err(|err| (Failure::Transient, err.to_string()))
            .and_then(|mut conn| {
                let result = conn.with_statements().and_then(|(client, statements)| {
                    write_batch(client, statements, batch, reading, row_by_row)
                });
                result.map_err(|err| {
                    let failure = store::classify(&err);
                    if !matches!(failure, Failure::Unique(_)) {
                        // Prepared again next time, in case the schema changed
                        // under them; a unique violation says nothing of it.
                        conn.forget_statements();
                    }
                    (failure, err.to_string())
                })
            });
        let failure = match attempt {
            Ok(counts) => return Some((counts, reading)),
            Err(failure) => failure,
        };
        if let ((Failure::Unique(_), _), Reading::Optimistic) = (&failure, reading) {
            // Someone outside the batch holds an email or mobile it claims,
            // or one of its rejections is recorded already (a replay): an
            // expected way for an optimistic batch to end, not an error.
            debug!(
                "optimistic batch met a taken email or mobile or a recorded rejection; \
                 deciding it carefully"
            );
            reading = Reading::Careful;
            continue;
        }
        metrics.db_errors.inc();
        match failure {
            (Failure::Transient, message) => {
                if stopping.load(Ordering::Acquire) {
                    return None;
                }
                warn!(
                    "writing a batch of {} failed, retrying in {delay:?}: {message}",
                    batch.len()
                );
                sleep_unless_stopping(delay, stopping);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            // A unique index refused a row: someone else committed that email
            // or mobile after we looked, or the batch swaps values in an order
            // one statement cannot apply. A second look usually settles it;
            // otherwise the batch is written row by row.
            (Failure::Unique(_), message) if unique_retries < 2 => {
                debug!("batch hit a unique constraint, deciding again: {message}");
                unique_retries += 1;
            }
            (_, message) => {
                if row_by_row {
                    error!("writing row by row failed, retrying: {message}");
                    sleep_unless_stopping(delay, stopping);
                    if stopping.load(Ordering::Acquire) {
                        return None;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                } else {
                    debug!("batch refused by the database, writing it row by row: {message}");
                    row_by_row = true;
                    reading = Reading::Careful;
                }
            }
        }
    }
}

/// One transaction: read, decide, write. `row_by_row` (only ever with
/// [`Reading::Careful`]) isolates each users write in a savepoint so one
/// refused row becomes a rejection of its own.
fn write_batch(
    client: &mut Client,
    statements: &Statements,
    batch: &[WorkItem],
    reading: Reading,
    row_by_row: bool,
) -> Result<Vec<(Counted, u64)>, postgres::Error> {
    let (ids, unread) = ids_to_read(batch, reading);
    let to_write = ToWrite {
        batch,
        ids: &ids,
        unread: &unread,
        reading,
        row_by_row,
    };
    // A batch that reads nothing is written by one statement: a transaction
    // of its own, without BEGIN and COMMIT round trips.
    let counts = if ids.is_empty() && reading == Reading::Optimistic && !row_by_row {
        decide_and_write(client, statements, &to_write)?
    } else {
        let mut tx = client.transaction()?;
        let counts = decide_and_write(&mut tx, statements, &to_write)?;
        if counts.is_some() {
            tx.commit()?;
        }
        counts
    };
    match counts {
        Some(counts) => Ok(counts),
        None => write_batch(client, statements, batch, Reading::Careful, row_by_row),
    }
}

/// A batch and how [`write_batch`] is to write it.
struct ToWrite<'a> {
    batch: &'a [WorkItem],
    /// The ids whose rows are read.
    ids: &'a [Uuid],
    unread: &'a HashSet<Uuid>,
    reading: Reading,
    row_by_row: bool,
}

/// Reads, decides and writes a batch on `client`; `None` (nothing written)
/// when the plan is undecided and the batch must be read carefully.
fn decide_and_write(
    client: &mut impl GenericClient,
    statements: &Statements,
    to_write: &ToWrite<'_>,
) -> Result<Option<Vec<(Counted, u64)>>, postgres::Error> {
    let read = store::read_users(client, statements, to_write.ids)?;
    let stored = store::stored_users(&read)?;
    let (owners, recorded) = match to_write.reading {
        Reading::Careful => (
            read_owners(client, statements, to_write.batch, &stored)?,
            read_recorded(client, statements, to_write.batch, &stored)?,
        ),
        // Its rejections are refused if any is recorded already; a valid
        // change decided before (a conflict) would not be, so a batch with
        // an id that has one is decided carefully.
        Reading::Optimistic => {
            let ids: Vec<Uuid> = accepted(to_write.batch).map(|p| p.id).collect();
            if store::any_valid_change_decided(client, statements, &ids)? {
                return Ok(None);
            }
            (Vec::new(), AlreadyRecorded::new())
        }
    };
    let writes = if to_write.row_by_row {
        Writes::OnePerChange
    } else {
        Writes::Merged
    };
    let mut plan = plan_batch(
        to_write
            .batch
            .iter()
            .map(|item| (&item.change, item.payload())),
        &stored,
        &owners,
        to_write.unread,
        &recorded,
        writes,
    );
    if plan.undecided {
        return Ok(None);
    }
    if to_write.row_by_row {
        let applied = write_rows_one_by_one(client, statements, &mut plan, &stored)?;
        plan.demote_not_applied(&applied);
        store::insert_rejections(client, statements, &plan.rejections)?;
        store::mark_users(client, statements, &plan.marks)?;
    } else {
        // One statement sees one snapshot: a mark of a row this batch also
        // writes goes in a statement of its own, after the write.
        let written_ids: HashSet<Uuid> = plan.writes.iter().map(|w| w.id).collect();
        let (marks_after, marks_now): (Vec<StatusMark<'_>>, Vec<StatusMark<'_>>) =
            std::mem::take(&mut plan.marks)
                .into_iter()
                .partition(|mark| written_ids.contains(&mark.id));
        let unwritten = store::write_plan(
            client,
            statements,
            to_write.reading.recorded(),
            &plan.writes,
            &plan.rejections,
            &marks_now,
        )?;
        store::mark_users(client, statements, &marks_after)?;
        plan.demote_unwritten(&unwritten);
    }
    Ok(Some(plan.counts()))
}

/// The ids whose rows a batch reads (sorted, for the index's sake), and the
/// ids it leaves unread: with [`Reading::Optimistic`], those that occur once.
fn ids_to_read(batch: &[WorkItem], reading: Reading) -> (Vec<Uuid>, HashSet<Uuid>) {
    let mut repeated: foldhash::HashMap<Uuid, bool> =
        foldhash::HashMap::with_capacity_and_hasher(batch.len(), Default::default());
    for id in batch.iter().filter_map(|item| item.change.profile_id()) {
        repeated
            .entry(id)
            .and_modify(|again| *again = true)
            .or_insert(false);
    }
    let (mut ids, unread): (Vec<Uuid>, HashSet<Uuid>) = match reading {
        Reading::Careful => (repeated.into_keys().collect(), HashSet::new()),
        Reading::Optimistic => {
            let (read, unread): (Vec<_>, Vec<_>) =
                repeated.into_iter().partition(|(_, again)| *again);
            (
                read.into_iter().map(|(id, _)| id).collect(),
                unread.into_iter().map(|(id, _)| id).collect(),
            )
        }
    };
    ids.sort_unstable();
    (ids, unread)
}

/// The rows holding an email or mobile that a change of the batch may claim.
fn read_owners(
    client: &mut impl GenericClient,
    statements: &Statements,
    batch: &[WorkItem],
    stored: &StoredUsers<'_>,
) -> Result<Vec<(Uuid, String, String)>, postgres::Error> {
    // Only a change newer than its row can claim an email or mobile, and a
    // row's own values cannot belong to anyone else: a replayed backlog
    // skips this look-up entirely.
    let mut emails: Vec<&str> = Vec::new();
    let mut mobiles: Vec<&str> = Vec::new();
    for profile in accepted(batch) {
        let row = stored.get(&profile.id);
        if row.is_some_and(|row| profile.last_updated_at.as_datetime() <= row.last_updated_at) {
            continue;
        }
        if row.is_none_or(|row| row.email != profile.email.as_str()) {
            emails.push(profile.email.as_str());
        }
        if row.is_none_or(|row| row.mobile != profile.mobile.as_str()) {
            mobiles.push(profile.mobile.as_str());
        }
    }
    if emails.is_empty() && mobiles.is_empty() {
        return Ok(Vec::new());
    }
    store::owners_of(client, statements, &emails, &mobiles)
}

/// The changes of a batch, by their place in it, that are recorded in
/// `sync_rejections` already, each with whether it was recorded with a
/// reason a valid change can get (a conflict or a refused row).
pub type AlreadyRecorded = HashMap<usize, bool>;

/// The changes of the batch that an earlier pass recorded as rejected
/// already (a replay). Only a change newer than its stored row can have an
/// effect, so only those are looked up.
fn read_recorded(
    client: &mut impl GenericClient,
    statements: &Statements,
    batch: &[WorkItem],
    stored: &StoredUsers<'_>,
) -> Result<AlreadyRecorded, postgres::Error> {
    let candidates: Vec<(usize, (Uuid, Uuid))> = (batch.iter().enumerate())
        .filter_map(|(place, item)| {
            let (id, changed_at, copy) = match &item.change {
                // A conflict or a refused row is recorded as copy 0.
                Change::Accepted { profile, .. } => {
                    (profile.id, profile.last_updated_at.as_datetime(), 0)
                }
                Change::Rejected {
                    rejection, copy, ..
                } => (
                    rejection.profile_id?,
                    rejection.changed_at?.as_datetime(),
                    *copy,
                ),
            };
            let newer = stored
                .get(&id)
                .is_none_or(|row| changed_at > row.last_updated_at);
            newer.then(|| (place, (id, store::change_key(item.payload(), copy))))
        })
        .collect();
    let keys: Vec<(Uuid, Uuid)> = candidates.iter().map(|(_, key)| *key).collect();
    let found = store::recorded_changes(client, statements, &keys)?;
    Ok(candidates
        .into_iter()
        .filter_map(|(place, key)| {
            found
                .get(&key)
                .map(|&of_a_valid_change| (place, of_a_valid_change))
        })
        .collect())
}

fn accepted(batch: &[WorkItem]) -> impl Iterator<Item = &Profile> {
    batch.iter().filter_map(|item| match &item.change {
        Change::Accepted { profile, .. } => Some(profile),
        Change::Rejected { .. } => None,
    })
}

/// Each planned users write in its own savepoint, in order; a refused one
/// turns into a conflict or `db_error` rejection. Returns, for each write,
/// whether it was applied (a write not refused but not applied found its
/// row as new already).
fn write_rows_one_by_one(
    client: &mut impl GenericClient,
    statements: &Statements,
    plan: &mut BatchPlan<'_>,
    stored: &StoredUsers<'_>,
) -> Result<Vec<bool>, postgres::Error> {
    let mut applied = Vec::with_capacity(plan.writes.len());
    for index in 0..plan.writes.len() {
        let write = plan.writes[index].clone();
        let mut savepoint = client.transaction()?;
        match store::upsert_users(&mut savepoint, statements, std::slice::from_ref(&write)) {
            Ok(ids) => {
                savepoint.commit()?;
                applied.push(!ids.is_empty());
            }
            Err(err) => {
                let reason = match store::classify(&err) {
                    Failure::Transient => return Err(err),
                    Failure::Unique(Some(constraint)) if constraint.contains("email") => {
                        Reason::EmailTaken
                    }
                    Failure::Unique(Some(constraint)) if constraint.contains("mobile") => {
                        Reason::MobileTaken
                    }
                    Failure::Unique(_) | Failure::Data => Reason::DbError,
                };
                drop(savepoint);
                plan.reject_write(
                    index,
                    reason,
                    &format!("PostgreSQL refused the row: {}", store::describe(&err)),
                    stored,
                );
                // Counted as rejected, not as stale.
                applied.push(true);
            }
        }
    }
    Ok(applied)
}

/// How a batch's synced changes become writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// One write per id, the last synced change's (one statement cannot
    /// write a row twice).
    Merged,
    /// One write per synced change, in order: for writing row by row, where
    /// a change that gives up an email must be written before the change
    /// of another id that claims it, even when its own id changes again
    /// later in the batch.
    OnePerChange,
}

/// Whether the change at `place` in its batch is among `recorded`. A valid
/// change matches only a decision a valid change can get: one recorded as,
/// say, `future_timestamp` when it was fetched too early is decided afresh.
fn is_recorded(recorded: &AlreadyRecorded, place: usize, valid: bool) -> bool {
    recorded
        .get(&place)
        .is_some_and(|&of_a_valid_change| of_a_valid_change || !valid)
}

/// What a batch will do, decided in memory before anything is written.
#[derive(Debug, Default)]
pub struct BatchPlan<'a> {
    /// With [`Writes::Merged`] at most one per id: the newest synced change.
    pub writes: Vec<UserWrite<'a>>,
    pub rejections: Vec<RejectionWrite<'a>>,
    /// At most one per id, applied after `writes`.
    pub marks: Vec<StatusMark<'a>>,
    /// How each change of the batch ended, in batch order.
    pub outcomes: Vec<Counted>,
    /// For each write: its index into `outcomes` and its raw element.
    write_items: Vec<(usize, &'a str)>,
    /// Rejections (indexes into `rejections`) of ids whose rows were not
    /// read: each marks its row if there is one and it is older.
    unread_marks: Vec<usize>,
    /// A conflict was decided that depends on a row that was not read: the
    /// plan must not be written; decide again with [`Reading::Careful`].
    pub undecided: bool,
}

/// The simulated state of one id while a batch is planned.
struct SimulatedRow<'a> {
    last_updated_at: chrono::DateTime<chrono::Utc>,
    email: &'a str,
    mobile: &'a str,
    /// Index into `writes` of the change that last wrote it in this batch.
    write: Option<usize>,
    /// Index into `marks` of the rejection that last marked it.
    mark: Option<usize>,
}

/// Decides every change of a batch in order, as if each were written alone:
/// a change not strictly newer than its row is stale; an email or mobile
/// held by another id is a conflict; anything else is synced and becomes the
/// row that later changes are compared with. `stored` are the stored rows of
/// the batch's ids, `owners` the rows holding any of its emails or mobiles.
/// Each change comes with its raw element, recorded if it is rejected.
/// `unread` are ids that occur once in the batch and whose rows were not
/// read (see [`Reading::Optimistic`]): their change is planned as if the row
/// were absent, and the statements' guards settle the rest. A change whose
/// place in the batch is among `recorded` was rejected when it was first
/// decided (this is a replay): it has no further effect. `writes` says whether an id's synced changes are
/// merged into one write.
pub fn plan_batch<'a>(
    changes: impl Iterator<Item = (&'a Change, &'a str)>,
    stored: &'a StoredUsers<'a>,
    owners: &'a [(Uuid, String, String)],
    unread: &HashSet<Uuid>,
    recorded: &AlreadyRecorded,
    writes: Writes,
) -> BatchPlan<'a> {
    // Everything the plan holds borrows from the batch and the rows read.
    let mut rows: foldhash::HashMap<Uuid, SimulatedRow<'a>> = stored
        .iter()
        .map(|(id, row)| {
            (
                *id,
                SimulatedRow {
                    last_updated_at: row.last_updated_at,
                    email: row.email,
                    mobile: row.mobile,
                    write: None,
                    mark: None,
                },
            )
        })
        .collect();
    let mut email_owner: foldhash::HashMap<&'a str, Uuid> = foldhash::HashMap::default();
    let mut mobile_owner: foldhash::HashMap<&'a str, Uuid> = foldhash::HashMap::default();
    for (id, email, mobile) in owners {
        email_owner.insert(email, *id);
        mobile_owner.insert(mobile, *id);
    }
    for (id, row) in stored {
        email_owner.insert(row.email, *id);
        mobile_owner.insert(row.mobile, *id);
    }

    let mut plan = BatchPlan::default();
    for (place, (change, payload)) in changes.enumerate() {
        match change {
            Change::Accepted { profile, .. } => {
                let row = rows.get(&profile.id);
                let changed_at = profile.last_updated_at.as_datetime();
                if row.is_some_and(|row| changed_at <= row.last_updated_at)
                    || is_recorded(recorded, place, true)
                {
                    // A replayed change that was rejected when it was first
                    // decided has had its effect.
                    plan.outcomes.push(Counted::NotSynced(Reason::Stale));
                    continue;
                }
                let email_holder = email_owner.get(profile.email.as_str());
                let mobile_holder = mobile_owner.get(profile.mobile.as_str());
                let taken = |owner: Option<&Uuid>| owner.is_some_and(|owner| *owner != profile.id);
                let conflict = if taken(email_holder) {
                    Some((
                        Reason::EmailTaken,
                        format!("email {} belongs to another user", profile.email.as_str()),
                    ))
                } else if taken(mobile_holder) {
                    Some((
                        Reason::MobileTaken,
                        format!("mobile {} belongs to another user", profile.mobile.as_str()),
                    ))
                } else {
                    None
                };
                if let Some((reason, message)) = conflict {
                    // Whether this change is stale, or whether the holder's
                    // own change was, hangs on a row that was not read.
                    let holders = [Some(&profile.id), email_holder, mobile_holder];
                    if holders.into_iter().flatten().any(|id| unread.contains(id)) {
                        plan.undecided = true;
                    }
                    plan.reject(
                        &mut rows,
                        unread,
                        (Some(profile.id), Some(changed_at)),
                        reason,
                        Cow::Owned(message),
                        (payload, 0),
                    );
                    continue;
                }
                // Synced: this change is now the row.
                let message = if row.is_some() { "updated" } else { "created" };
                if let Some(row) = row {
                    if email_owner.get(row.email) == Some(&profile.id) {
                        email_owner.remove(row.email);
                    }
                    if mobile_owner.get(row.mobile) == Some(&profile.id) {
                        mobile_owner.remove(row.mobile);
                    }
                }
                email_owner.insert(profile.email.as_str(), profile.id);
                mobile_owner.insert(profile.mobile.as_str(), profile.id);
                let write = UserWrite {
                    id: profile.id,
                    name: profile.name.as_str(),
                    email: profile.email.as_str(),
                    mobile: profile.mobile.as_str(),
                    status: profile.status.as_str(),
                    last_updated_at: changed_at,
                    message,
                };
                let previous = match writes {
                    Writes::Merged => rows.get(&profile.id).and_then(|row| row.write),
                    Writes::OnePerChange => None,
                };
                let index = match previous {
                    // An earlier change of this batch is overwritten in place;
                    // it still counts as synced, as it would have been alone.
                    Some(index) => {
                        plan.writes[index] = write;
                        plan.write_items[index] = (plan.outcomes.len(), payload);
                        index
                    }
                    None => {
                        plan.writes.push(write);
                        plan.write_items.push((plan.outcomes.len(), payload));
                        plan.writes.len() - 1
                    }
                };
                rows.insert(
                    profile.id,
                    SimulatedRow {
                        last_updated_at: changed_at,
                        email: profile.email.as_str(),
                        mobile: profile.mobile.as_str(),
                        write: Some(index),
                        // A synced write resets the row's sync columns.
                        mark: None,
                    },
                );
                plan.outcomes.push(Counted::Synced);
            }
            Change::Rejected {
                rejection, copy, ..
            } if is_recorded(recorded, place, false) => {
                // A replay: recorded, and its row marked, the first time.
                plan.outcomes.push(Counted::NotSynced(rejection.reason));
            }
            Change::Rejected {
                rejection, copy, ..
            } => {
                plan.reject(
                    &mut rows,
                    unread,
                    (
                        rejection.profile_id,
                        rejection.changed_at.map(|t| t.as_datetime()),
                    ),
                    rejection.reason,
                    Cow::Borrowed(&rejection.message),
                    (payload, *copy),
                );
            }
        }
    }
    plan.drop_cleared_marks(&rows);
    plan
}

impl<'a> BatchPlan<'a> {
    /// Records a rejection of the change with this id and time, and marks
    /// its row when the change is newer.
    fn reject(
        &mut self,
        rows: &mut foldhash::HashMap<Uuid, SimulatedRow<'a>>,
        unread: &HashSet<Uuid>,
        (profile_id, changed_at): (Option<Uuid>, Option<chrono::DateTime<chrono::Utc>>),
        reason: Reason,
        message: Cow<'a, str>,
        (payload, copy): (&'a str, i32),
    ) {
        self.outcomes.push(Counted::NotSynced(reason));
        if let (Some(id), Some(at)) = (profile_id, changed_at) {
            if let Some(row) = rows.get_mut(&id) {
                if at > row.last_updated_at {
                    row.mark = Some(self.rejections.len());
                }
            } else if unread.contains(&id) {
                self.unread_marks.push(self.rejections.len());
            }
        }
        self.rejections.push(RejectionWrite {
            profile_id,
            outcome: reason.outcome().as_str(),
            reason: reason.as_str(),
            message,
            payload,
            copy,
            changed_at,
        });
    }

    /// Turns the rejection that last marked each row into that row's mark,
    /// and each rejection of an unread row into a mark its guard decides.
    fn drop_cleared_marks(&mut self, rows: &foldhash::HashMap<Uuid, SimulatedRow<'a>>) {
        let last_marks = rows.values().filter_map(|row| row.mark);
        let marking: Vec<usize> = last_marks.chain(self.unread_marks.drain(..)).collect();
        for index in marking {
            let rejection = &self.rejections[index];
            if let (Some(id), Some(changed_at)) = (rejection.profile_id, rejection.changed_at) {
                self.marks.push(StatusMark {
                    id,
                    changed_at,
                    outcome: rejection.outcome,
                    message: rejection.message.clone(),
                });
            }
        }
    }

    /// A planned write that PostgreSQL refused in row-by-row mode becomes a
    /// rejection, marking the stored row if the change is newer than it.
    fn reject_write(
        &mut self,
        index: usize,
        reason: Reason,
        message: &str,
        stored: &StoredUsers<'_>,
    ) {
        let (Some(write), Some(&(outcome_index, raw))) =
            (self.writes.get(index), self.write_items.get(index))
        else {
            return;
        };
        let (id, changed_at) = (write.id, write.last_updated_at);
        self.outcomes[outcome_index] = Counted::NotSynced(reason);
        // The row is the stored one or one an earlier write of this batch
        // made; the mark's own guard settles whether it is older.
        let newer_than_stored = stored
            .get(&id)
            .is_none_or(|row| changed_at > row.last_updated_at);
        let already_marked = self.marks.iter().any(|m| m.id == id);
        if newer_than_stored && !already_marked {
            self.marks.push(StatusMark {
                id,
                changed_at,
                outcome: reason.outcome().as_str(),
                message: Cow::Owned(message.to_owned()),
            });
        }
        self.rejections.push(RejectionWrite {
            profile_id: Some(id),
            outcome: reason.outcome().as_str(),
            reason: reason.as_str(),
            message: Cow::Owned(message.to_owned()),
            payload: raw,
            copy: 0,
            changed_at: Some(changed_at),
        });
    }

    /// A planned write the database did not apply (its row was already as
    /// new: a row the batch did not read, or one another replica wrote
    /// meanwhile) counts as stale; `applied[i]` is false for `writes[i]`
    /// not applied.
    fn demote_not_applied(&mut self, applied: &[bool]) {
        for (&(outcome_index, _), &applied) in self.write_items.iter().zip(applied) {
            if !applied && self.outcomes[outcome_index] == Counted::Synced {
                self.outcomes[outcome_index] = Counted::NotSynced(Reason::Stale);
            }
        }
    }

    /// [`BatchPlan::demote_not_applied`] for writes known by id: those of
    /// the ids in `unwritten`.
    fn demote_unwritten(&mut self, unwritten: &[Uuid]) {
        if unwritten.is_empty() {
            return;
        }
        let unwritten: HashSet<&Uuid> = unwritten.iter().collect();
        let applied: Vec<bool> = (self.writes.iter())
            .map(|write| !unwritten.contains(&write.id))
            .collect();
        self.demote_not_applied(&applied);
    }

    /// The outcomes of the batch, grouped for the counters.
    pub fn counts(&self) -> Vec<(Counted, u64)> {
        let mut counts: Vec<(Counted, u64)> = Vec::new();
        for outcome in &self.outcomes {
            match counts.iter_mut().find(|(how, _)| how == outcome) {
                Some((_, n)) => *n += 1,
                None => counts.push((*outcome, 1)),
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredUser;
    use chrono::{DateTime, Utc};
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    /// A change and its raw element (the whole text of a page of its own).
    type WithPayload = (Change, String);

    fn accepted(n: u8, when: &str, email: &str, mobile: &str) -> WithPayload {
        let raw = json!({
            "id": id(n).to_string(), "name": format!("User {n}"), "email": email,
            "mobile": mobile, "status": "active", "last_updated_at": when,
        })
        .to_string();
        let profile = Profile::parse_json(&raw, Utc::now()).expect("valid test profile");
        let payload = 0..raw.len();
        (Change::Accepted { profile, payload }, raw)
    }

    fn rejected(n: u8, when: &str, reason: Reason) -> WithPayload {
        let raw = json!({"id": id(n).to_string(), "last_updated_at": when}).to_string();
        let change = Change::Rejected {
            rejection: Rejection {
                reason,
                message: format!("{} for {n}", reason.as_str()),
                profile_id: Some(id(n)),
                changed_at: Some(crate::profile::Timestamp::parse(when).unwrap()),
            },
            payload: 0..raw.len(),
            copy: 0,
        };
        (change, raw)
    }

    /// What [`plan_batch`] takes.
    fn with_payloads(changes: &[WithPayload]) -> impl Iterator<Item = (&Change, &str)> {
        changes.iter().map(|(change, raw)| (change, raw.as_str()))
    }

    fn stored<'a>(rows: &[(u8, &str, &'a str, &'a str)]) -> StoredUsers<'a> {
        rows.iter()
            .map(|(n, when, email, mobile)| {
                (
                    id(*n),
                    StoredUser {
                        last_updated_at: at(when),
                        email,
                        mobile,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_is_optimistic_only_after_one_that_synced_more_than_it_found_stale() {
        let inactive = Counted::NotSynced(Reason::InactiveStatus);
        let stale = Counted::NotSynced(Reason::Stale);
        let taken = Counted::NotSynced(Reason::EmailTaken);
        let catching_up = vec![(Counted::Synced, 600), (inactive, 300), (stale, 2)];
        let cases = [
            (catching_up.clone(), false, Reading::Optimistic),
            // The same, but refused as optimistic for a recorded rejection.
            (catching_up, true, Reading::Careful),
            (
                vec![(Counted::Synced, 2), (stale, 600)],
                false,
                Reading::Careful,
            ),
            (
                vec![(Counted::Synced, 600), (taken, 1)],
                false,
                Reading::Careful,
            ),
            // Rejections alone (the same page handed out again) tell nothing.
            (vec![(inactive, 3)], false, Reading::Careful),
        ];
        for (counts, refused, expected) in cases {
            let after = Reading::after(&counts, refused);
            assert_eq!(after, expected, "after {counts:?}, refused: {refused}");
        }
    }

    /// [`plan_batch`] with nothing recorded, merging each id's writes.
    fn plan_merged<'a>(
        changes: impl Iterator<Item = (&'a Change, &'a str)>,
        rows: &'a StoredUsers<'a>,
        owners: &'a [(Uuid, String, String)],
        unread: &HashSet<Uuid>,
    ) -> BatchPlan<'a> {
        let nothing_recorded = AlreadyRecorded::new();
        plan_batch(
            changes,
            rows,
            owners,
            unread,
            &nothing_recorded,
            Writes::Merged,
        )
    }

    #[test]
    fn later_changes_to_one_id_in_a_batch_overwrite_earlier_ones_in_place() {
        let changes = [
            accepted(1, "2025-01-01T00:00:00Z", "a@x.io", "111"),
            accepted(1, "2025-01-02T00:00:00Z", "b@x.io", "222"),
        ];
        let no_rows = StoredUsers::default();
        let plan = plan_merged(with_payloads(&changes), &no_rows, &[], &HashSet::new());
        assert_eq!(plan.outcomes, [Counted::Synced, Counted::Synced]);
        assert_eq!(plan.writes.len(), 1);
        assert_eq!(plan.writes[0].email, "b@x.io");
        // As if written one at a time: created by the first, updated by the second.
        assert_eq!(plan.writes[0].message, "updated");
    }

    #[test]
    fn written_one_per_change_each_synced_change_is_a_write_of_its_own() {
        let changes = [
            accepted(1, "2025-01-01T00:00:00Z", "a@x.io", "111"),
            accepted(2, "2025-01-01T00:00:00Z", "c@x.io", "333"),
            accepted(1, "2025-01-02T00:00:00Z", "b@x.io", "222"),
        ];
        let no_rows = StoredUsers::default();
        let nothing_recorded = AlreadyRecorded::new();
        let plan = plan_batch(
            with_payloads(&changes),
            &no_rows,
            &[],
            &HashSet::new(),
            &nothing_recorded,
            Writes::OnePerChange,
        );
        assert_eq!(plan.outcomes, [Counted::Synced; 3]);
        let writes: Vec<(Uuid, &str, &str)> = (plan.writes.iter())
            .map(|w| (w.id, w.email, w.message))
            .collect();
        assert_eq!(
            writes,
            [
                (id(1), "a@x.io", "created"),
                (id(2), "c@x.io", "created"),
                (id(1), "b@x.io", "updated"),
            ]
        );
    }

    #[test]
    fn a_replayed_change_recorded_as_rejected_has_no_further_effect() {
        // The row is older than both changes; each was rejected (recorded)
        // when first decided, so neither marks nor writes it now.
        let rows = stored(&[(1, "2025-01-01T00:00:00Z", "a@x.io", "111")]);
        let (taken, taken_raw) = accepted(1, "2025-01-02T00:00:00Z", "b@x.io", "222");
        let (invalid, invalid_raw) = rejected(1, "2025-01-03T00:00:00Z", Reason::InvalidEmail);
        // The first as a conflict, the second as invalid.
        let recorded: AlreadyRecorded = [(0, true), (1, false)].into();
        let changes = [(taken, taken_raw), (invalid, invalid_raw)];
        let plan = plan_batch(
            with_payloads(&changes),
            &rows,
            &[],
            &HashSet::new(),
            &recorded,
            Writes::Merged,
        );
        assert!(plan.writes.is_empty());
        assert!(plan.rejections.is_empty());
        assert!(plan.marks.is_empty());
        assert_eq!(
            plan.outcomes,
            [
                Counted::NotSynced(Reason::Stale),
                Counted::NotSynced(Reason::InvalidEmail)
            ]
        );
    }

    #[test]
    fn a_valid_change_recorded_as_invalid_when_it_was_fetched_too_early_is_decided_afresh() {
        let (due, raw) = accepted(1, "2025-01-02T00:00:00Z", "b@x.io", "222");
        // Recorded as future_timestamp, say: not a decision a valid change gets.
        let recorded: AlreadyRecorded = [(0, false)].into();
        let changes = [(due, raw)];
        let no_rows = StoredUsers::default();
        let plan = plan_batch(
            with_payloads(&changes),
            &no_rows,
            &[],
            &HashSet::new(),
            &recorded,
            Writes::Merged,
        );
        assert_eq!(plan.outcomes, [Counted::Synced]);
        assert_eq!(plan.writes.len(), 1);
    }

    #[test]
    fn a_change_not_strictly_newer_than_the_row_is_stale() {
        let rows = stored(&[(1, "2025-01-02T00:00:00Z", "a@x.io", "111")]);
        let changes = [
            accepted(1, "2025-01-02T00:00:00Z", "a@x.io", "111"),
            accepted(1, "2025-01-01T00:00:00Z", "a@x.io", "111"),
            accepted(1, "2025-01-03T00:00:00Z", "a@x.io", "111"),
        ];
        let plan = plan_merged(with_payloads(&changes), &rows, &[], &HashSet::new());
        let stale = Counted::NotSynced(Reason::Stale);
        assert_eq!(plan.outcomes, [stale, stale, Counted::Synced]);
        assert_eq!(plan.writes[0].message, "updated");
        assert!(plan.rejections.is_empty(), "stale changes record nothing");
    }

    #[test]
    fn an_email_or_mobile_of_another_id_conflicts_until_that_id_lets_it_go() {
        let rows = stored(&[(1, "2025-01-01T00:00:00Z", "a@x.io", "111")]);
        let owners = [(id(1), "a@x.io".to_owned(), "111".to_owned())];
        let changes = [
            accepted(2, "2025-01-01T00:00:00Z", "a@x.io", "222"),
            accepted(3, "2025-01-01T00:00:00Z", "c@x.io", "111"),
            accepted(1, "2025-01-05T00:00:00Z", "new@x.io", "999"),
            accepted(2, "2025-01-06T00:00:00Z", "a@x.io", "222"),
        ];
        let plan = plan_merged(with_payloads(&changes), &rows, &owners, &HashSet::new());
        assert_eq!(
            plan.outcomes,
            [
                Counted::NotSynced(Reason::EmailTaken),
                Counted::NotSynced(Reason::MobileTaken),
                Counted::Synced,
                Counted::Synced,
            ]
        );
        let reasons: Vec<_> = plan
            .rejections
            .iter()
            .map(|r| (r.outcome, r.reason))
            .collect();
        assert_eq!(
            reasons,
            [("conflict", "email_taken"), ("conflict", "mobile_taken")]
        );
        assert!(
            plan.marks.is_empty(),
            "neither id 2 nor 3 had a row to mark"
        );
    }

    #[test]
    fn unread_rows_are_planned_as_absent_and_left_to_the_guards() {
        let unread: HashSet<Uuid> = [id(1), id(2)].into();
        let changes = [
            accepted(1, "2025-01-01T00:00:00Z", "a@x.io", "111"),
            rejected(2, "2025-01-02T00:00:00Z", Reason::InactiveStatus),
        ];
        let no_rows = StoredUsers::default();
        let plan = plan_merged(with_payloads(&changes), &no_rows, &[], &unread);
        assert!(!plan.undecided);
        assert_eq!(plan.writes.len(), 1);
        assert_eq!(plan.writes[0].message, "created", "the upsert says updated");
        assert_eq!(plan.marks.len(), 1, "the mark's guard decides");
        assert_eq!(plan.marks[0].id, id(2));
    }

    #[test]
    fn a_conflict_that_hangs_on_an_unread_row_is_left_undecided() {
        let claims = [
            accepted(1, "2025-01-01T00:00:00Z", "a@x.io", "111"),
            accepted(2, "2025-01-01T00:00:00Z", "a@x.io", "222"),
        ];
        let no_rows = StoredUsers::default();
        let plan = plan_merged(with_payloads(&claims), &no_rows, &[], &[id(1)].into());
        assert!(
            plan.undecided,
            "id 1 may be stale, and then id 2 gets a@x.io"
        );
        let plan = plan_merged(with_payloads(&claims), &no_rows, &[], &HashSet::new());
        assert!(!plan.undecided);
        assert_eq!(
            plan.outcomes,
            [Counted::Synced, Counted::NotSynced(Reason::EmailTaken)]
        );
    }

    #[test]
    fn a_newer_rejection_marks_the_row_and_a_later_sync_clears_the_mark() {
        let rows = stored(&[
            (1, "2025-01-01T00:00:00Z", "a@x.io", "111"),
            (2, "2025-01-01T00:00:00Z", "b@x.io", "222"),
            (3, "2025-01-09T00:00:00Z", "c@x.io", "333"),
        ]);
        let changes = [
            rejected(1, "2025-01-02T00:00:00Z", Reason::InvalidEmail),
            rejected(2, "2025-01-02T00:00:00Z", Reason::InactiveStatus),
            accepted(2, "2025-01-03T00:00:00Z", "b@x.io", "222"),
            rejected(3, "2025-01-02T00:00:00Z", Reason::InvalidName),
        ];
        let plan = plan_merged(with_payloads(&changes), &rows, &[], &HashSet::new());
        assert_eq!(plan.rejections.len(), 3, "every rejection is recorded");
        assert_eq!(plan.marks.len(), 1, "{:?}", plan.marks);
        assert_eq!(plan.marks[0].id, id(1));
        assert_eq!(plan.marks[0].outcome, "failed_validation");
        assert_eq!(plan.counts().iter().map(|(_, n)| n).sum::<u64>(), 4);
    }

    /// A page of `count` copies of one element, and the changes for those
    /// of them at `kept`, each pointing into the page.
    fn page_keeping(count: usize, kept: &[usize]) -> (String, Vec<Change>) {
        let element = || accepted(1, "2025-01-01T00:00:00Z", "a@x.io", "111");
        let (_, raw) = element();
        let mut body = format!("[{}]", vec![raw.as_str(); count].join(","));
        body.shrink_to_fit();
        let changes = kept
            .iter()
            .map(|at| {
                let (mut change, raw) = element();
                let start = 1 + at * (raw.len() + 1);
                *change.payload_mut() = start..start + raw.len();
                change
            })
            .collect();
        (body, changes)
    }

    #[test]
    fn a_page_whose_changes_need_most_of_it_is_kept_as_it_came() {
        let (body, mut changes) = page_keeping(3, &[0, 2]);
        let spans: Vec<Span> = changes.iter().map(|c| c.payload().clone()).collect();
        let (done, _) = crossbeam_channel::unbounded();
        let at = body.as_ptr();
        let page = PageProgress::new(1, body, &mut changes, done, Arc::default());
        assert_eq!(page.text.as_ptr(), at, "the body is not copied");
        let now: Vec<Span> = changes.iter().map(|c| c.payload().clone()).collect();
        assert_eq!(now, spans);
    }

    #[test]
    fn a_page_with_few_changes_left_keeps_only_their_elements() {
        let (body, mut changes) = page_keeping(1000, &[998, 999]);
        let elements: Vec<String> = changes
            .iter()
            .map(|c| body[c.payload().clone()].to_owned())
            .collect();
        let (done, _) = crossbeam_channel::unbounded();
        let page = PageProgress::new(1, body, &mut changes, done, Arc::default());
        let needed = elements.iter().map(String::len).sum::<usize>();
        assert_eq!(page.text.len(), needed);
        assert!(page.text.capacity() < 2 * needed);
        for (change, element) in changes.iter().zip(&elements) {
            assert_eq!(page.text(change.payload()), element);
        }
    }
}
