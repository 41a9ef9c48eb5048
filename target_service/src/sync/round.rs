//! The sync round and its timer: which page to ask for, when a source
//! misbehaves, and when the cursor is stored.
//!
//! A round fetches page after page; each page is decided as a whole by
//! [`plan`] against the rows it can touch, read in bulk, and the decisions
//! go to the writers ([`Pipeline`]) while the next page is fetched and
//! ingested ([`ReadAhead`]). The cursor a page ends at is stored once every
//! write of that page and of the pages before it has committed, durably and
//! only on the server that took those commits ([`store::save_state`]).
//! Only the replica holding the advisory lock ([`Leader`]) runs rounds;
//! one that loses it stops at once.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::DbPool;
use crate::stop::{sleep_unless_stopping, stopping};
use crate::store::{self, Encoding, Statements, SyncState};
use crate::sync::change::{self, Change, Parsed};
use crate::sync::fetcher::{FetchError, Fetcher, Page};
use crate::sync::leader::Leader;
use crate::sync::pipeline::{Halt, Pipeline};
use crate::sync::plan::{plan, Storage};
use crate::sync::writer::{Report, WorkItem, MAX_BATCH};
use crate::web::status::{Activity, StatusBoard};

/// The stored cursor moves at most this often while a round goes on (each
/// store waits for the disk); it is always stored when the round ends.
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// Why a round ended early. The next round starts from the stored cursor.
#[derive(Debug)]
struct RoundError(String);

impl From<Halt> for RoundError {
    fn from(halt: Halt) -> Self {
        RoundError(halt.0)
    }
}

/// Where one round stands.
struct Round {
    number: u64,
    /// The server's start time when the round began.
    server_started: DateTime<Utc>,
    encoding: Encoding,
    /// Reached by committed pages, not stored yet.
    unsaved: Option<SyncState>,
    last_saved: Instant,
}

pub struct Syncer {
    config: Arc<Config>,
    pool: DbPool,
    db: Option<r2d2::PooledConnection<crate::pool::Manager>>,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    gate: Gate,
    pipeline: Pipeline,
    rounds: u64,
    /// The source sent no cursor headers last time: fetch without parameters.
    source_without_cursor: bool,
}

impl Syncer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        pool: DbPool,
        metrics: Arc<Metrics>,
        status: Arc<StatusBoard>,
        stop: Arc<AtomicBool>,
        writers: Vec<Sender<Vec<WorkItem>>>,
        reports: Receiver<Report>,
        abandoned: Arc<AtomicU64>,
    ) -> Syncer {
        let fetcher = Fetcher::new(&config);
        let leader = Leader::new(
            config.database.clone(),
            &config.source_url,
            Arc::clone(&status),
            Arc::clone(&stop),
        );
        // Per writer, one message in its channel and one being gathered in
        // the pipeline: together its share of CHANNEL_CAPACITY.
        let share = config.channel_capacity.div_ceil(writers.len().max(1));
        let chunk = (share / 2).clamp(1, MAX_BATCH);
        Syncer {
            pipeline: Pipeline::new(writers, chunk, reports, abandoned, Arc::clone(&metrics)),
            pool,
            db: None,
            fetcher,
            gate: Gate {
                leader,
                stop,
                give_up_at: Cell::new(None),
                budget: config.shutdown_timeout.mul_f64(0.6),
            },
            config,
            metrics,
            status,
            rounds: 0,
            source_without_cursor: false,
        }
    }

    /// Runs rounds, one right away and then every `SYNC_INTERVAL` (start to
    /// start; a long round delays the next, never overlaps it), until
    /// `wake` is closed for shutdown.
    pub fn run(mut self, wake: Receiver<()>) {
        loop {
            if stopping(&self.gate.stop) {
                break;
            }
            let started = Instant::now();
            self.round();
            let next = started + self.config.sync_interval;
            match wake.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) | Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        info!("sync loop stopped");
    }

    fn round(&mut self) {
        match self.gate.leader.hold() {
            Ok(true) => {}
            Ok(false) => {
                self.status.set_state(Activity::Standby);
                return;
            }
            Err(why) => {
                self.metrics.db_errors.inc();
                warn!("{why}");
                self.status.round_failed(&why);
                self.status.set_state(Activity::Standby);
                return;
            }
        }
        self.status.set_state(Activity::Syncing);
        self.rounds += 1;
        let started = Instant::now();
        let before = crate::sync::round_log::RoundCounts::read(&self.metrics);
        let result = self.sync_pages();
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let now = Utc::now();
                self.metrics
                    .last_success
                    .set(now.timestamp_millis() as f64 / 1000.0);
                self.status.round_succeeded(now);
                self.pipeline.end_round();
            }
            Err(RoundError(why)) => {
                warn!("sync round ended early, will retry next round: {why}");
                self.status.round_failed(&why);
                let deadline = stopping(&self.gate.stop).then(|| self.gate.give_up_at());
                self.pipeline.abandon(self.rounds, deadline);
            }
        }
        crate::sync::round_log::log_round(&before, &self.metrics, started.elapsed());
        let state = if self.gate.leader.holds() {
            Activity::Idle
        } else {
            Activity::Standby
        };
        self.status.set_state(state);
    }

    /// Runs `work` on the round's connection, retrying transient failures
    /// with backoff on a fresh connection while [`Gate::go_on`] holds.
    fn with_db<T>(
        &mut self,
        what: &str,
        work: impl FnMut(&mut postgres::Client, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, RoundError> {
        retrying(
            &mut self.db,
            &self.pool,
            &self.metrics,
            &self.gate,
            what,
            work,
        )
    }

    fn sync_pages(&mut self) -> Result<(), RoundError> {
        let (server_started, encoding) = self.with_db("reading the server's state", |c, _| {
            Ok((store::server_started(c)?, store::server_encoding(c)?))
        })?;
        let mut round = Round {
            number: self.rounds,
            server_started,
            encoding,
            unsaved: None,
            last_saved: Instant::now(),
        };
        if self.source_without_cursor {
            return self.sync_without_cursor(&mut round);
        }
        let url = self.config.source_url.clone();
        let stored = self.with_db("reading the sync state", |c, _| store::load_state(c, &url))?;
        self.show_position(&stored);
        let limit = self.config.fetch_limit;
        let skew = self.config.max_future_skew;
        let mut cursor = stored.cursor;
        // The epoch of this round's pages, once one arrived.
        let mut epoch: Option<Option<String>> = None;
        let mut gone_in_a_row = 0;
        // A 410 sent the cursor back to 0: said once the next answer shows
        // whether the source restarted, so that the cause is logged first.
        let mut gone_from: Option<u64> = None;
        let mut ahead: Option<ReadAhead> = None;
        loop {
            if stopping(&self.gate.stop) || !self.gate.leader.holds() {
                break;
            }
            let fetched = match ahead.take() {
                Some(next) if next.cursor == cursor => next.page(),
                _ => Fetched::fetch(&self.fetcher, cursor, limit, skew),
            };
            let page = match fetched {
                Ok(page) => page,
                Err(FetchError::Gone { min_cursor }) => {
                    gone_in_a_row += 1;
                    self.finish(&mut round)?;
                    if let Some(lost) = gone_from.take() {
                        log_gone(lost);
                    }
                    if gone_in_a_row == 1 && cursor != 0 {
                        gone_from = Some(cursor);
                    }
                    cursor = self.after_gone(cursor, min_cursor, gone_in_a_row)?;
                    continue;
                }
                Err(FetchError::Failed(why)) => return self.fetch_failed(&mut round, why),
            };
            gone_in_a_row = 0;
            let Some(next_cursor) = page.next_cursor else {
                info!(
                    "the source sends no X-Next-Cursor; fetching once per round without parameters"
                );
                self.source_without_cursor = true;
                self.finish(&mut round)?;
                self.dispatch(&mut round, page.changes, None)?;
                return self.finish(&mut round);
            };
            match &epoch {
                Some(seen) if *seen != page.epoch => {
                    let why = format!(
                        "the source's epoch changed within the round ({:?} -> {:?})",
                        seen.as_deref().unwrap_or(""),
                        page.epoch.as_deref().unwrap_or("")
                    );
                    return self.fetch_failed(&mut round, why);
                }
                Some(_) => {
                    if let Some(lost) = gone_from.take() {
                        log_gone(lost);
                    }
                }
                None => {
                    epoch = Some(page.epoch.clone());
                    let restarted = restarts(&stored, page.epoch.as_deref());
                    if let Some(lost) = gone_from.take().filter(|_| !restarted) {
                        log_gone(lost);
                    }
                    if restarted {
                        warn!(
                            "the source restarted (epoch {:?} -> {:?}); its cursors start again from 0",
                            stored.epoch.as_deref().unwrap_or(""),
                            page.epoch.as_deref().unwrap_or("")
                        );
                        let restart = SyncState {
                            epoch: page.epoch.clone(),
                            cursor: 0,
                        };
                        self.save(&mut round, restart)?;
                        if cursor != 0 {
                            cursor = 0;
                            continue;
                        }
                    }
                }
            }
            let count = page.changes.len();
            if let Some(why) = misbehaviour(cursor, next_cursor, page.head_cursor, count, limit) {
                return self.fetch_failed(&mut round, why);
            }
            if let Some(head) = page.head_cursor {
                let lag = head.saturating_sub(next_cursor);
                self.metrics
                    .source_lag
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            let reaches = SyncState {
                epoch: page.epoch.clone(),
                cursor: next_cursor,
            };
            if count >= limit {
                ahead = ReadAhead::start(&self.fetcher, next_cursor, limit, skew);
            }
            self.dispatch(&mut round, page.changes, Some(reaches))?;
            cursor = next_cursor;
            self.store_progress(&mut round, false)?;
            if count < limit {
                break;
            }
        }
        self.finish(&mut round)
    }

    /// A fetch error ends the round, once what is in flight is stored.
    fn fetch_failed(&mut self, round: &mut Round, why: String) -> Result<(), RoundError> {
        self.metrics.fetch_errors.inc();
        self.finish(round)?;
        Err(RoundError(why))
    }

    /// One fetch without parameters, for a source like the original. A
    /// cursor source answers it with a fresh batch and X-Next-Cursor, which
    /// may lie beyond changes the stored cursor has not reached: that page
    /// is not applied, and the next round pages from the stored cursor.
    fn sync_without_cursor(&mut self, round: &mut Round) -> Result<(), RoundError> {
        let page = match self.fetcher.fetch(None) {
            Ok(page) => page,
            Err(err) => {
                self.metrics.fetch_errors.inc();
                return Err(RoundError(err.to_string()));
            }
        };
        if let Some(next) = page.next_cursor {
            self.source_without_cursor = false;
            let why = format!(
                "the source answered with cursors to a request without them (X-Next-Cursor {next}); \
                 its page is not applied, and the next round pages from the stored cursor"
            );
            return self.fetch_failed(round, why);
        }
        let page = Fetched::ingest(page, self.config.max_future_skew);
        self.dispatch(round, page.changes, None)?;
        self.finish(round)
    }

    /// Where to go after a `410 Gone`: back to 0 (a new source or a cursor
    /// from another epoch); if 0 is gone too, the oldest cursor the source
    /// still has, losing what it dropped, and saying so.
    fn after_gone(
        &mut self,
        cursor: u64,
        min_cursor: Option<u64>,
        times: u32,
    ) -> Result<u64, RoundError> {
        if times == 1 && cursor != 0 {
            // Logged by the caller once it knows whether the source restarted.
            return Ok(0);
        }
        match min_cursor {
            Some(oldest) if oldest > cursor && times <= 3 => {
                warn!(
                    "the source dropped changes {}..={oldest} before they were synced; continuing from {oldest}",
                    cursor + 1
                );
                Ok(oldest)
            }
            _ => {
                self.metrics.fetch_errors.inc();
                Err(RoundError(format!(
                    "the source answers 410 Gone for cursor {cursor}"
                )))
            }
        }
    }

    /// Decides a page's changes and sends their writes on; `reaches` is
    /// where the cursor may move once they commit.
    fn dispatch(
        &mut self,
        round: &mut Round,
        changes: Vec<Change>,
        reaches: Option<SyncState>,
    ) -> Result<(), RoundError> {
        if !self.gate.leader.holds() {
            return Err(RoundError(
                "lost the sync lock; the page is left to the replica that holds it".to_owned(),
            ));
        }
        let fetched = changes.len() as u64;
        // What an earlier page left waiting goes now if there is room.
        self.pipeline.offer_waiting(&|| self.gate.go_on())?;
        self.pipeline.forget_committed();
        let overlay = self.pipeline.overlay();
        let encoding = round.encoding.clone();
        let started = round.server_started;
        let what = "reading the rows a page touches";
        let read = retrying(
            &mut self.db,
            &self.pool,
            &self.metrics,
            &self.gate,
            what,
            |client, statements| {
                // One snapshot for every read of the page.
                let mut tx = client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                // Rows read from a server that crashed since the round
                // began may lack commits the crash took.
                if !store::server_is(&mut tx, started)? {
                    return Ok(None);
                }
                let (stored, reads) = overlay.read_rows(&mut tx, statements, &changes)?;
                let recorded = store::read_recorded(&mut tx, statements, &reads.keys)?;
                tx.commit()?;
                // Outside the transaction: a refusal would abort it.
                let mut cannot_hold = HashSet::new();
                for text in texts_to_ask_about(&changes, &encoding) {
                    if !store::can_store(client, text)? {
                        cannot_hold.insert(text.to_owned());
                    }
                }
                Ok(Some((stored, recorded, cannot_hold)))
            },
        )?;
        let Some((stored, recorded, cannot_hold)) = read else {
            return Err(RoundError(
                "PostgreSQL restarted during the round; what it may have lost is fetched again from the stored cursor"
                    .to_owned(),
            ));
        };
        let mut view = (self.pipeline.overlay()).view(&changes, stored, recorded);
        let can_store = |text: &str| {
            encoding
                .holds(text)
                .unwrap_or_else(|| !cannot_hold.contains(text))
        };
        let storage = Storage {
            can_store: &can_store,
            refused: self.pipeline.refused(),
        };
        let decisions = plan(changes, &mut view, &storage);
        // Counted once decided: each decision is counted exactly once from here.
        self.metrics.fetched.inc_by(fetched);
        let gate = &self.gate;
        self.pipeline.send_page(
            round.number,
            round.server_started,
            decisions,
            reaches,
            &|| gate.go_on(),
        )?;
        Ok(())
    }

    /// Stores the cursor committed pages reach: at once when `now`, else
    /// at most every [`SAVE_EVERY`].
    fn store_progress(&mut self, round: &mut Round, now: bool) -> Result<(), RoundError> {
        if let Some(reached) = self.pipeline.advance() {
            round.unsaved = Some(reached);
        }
        if now || round.last_saved.elapsed() >= SAVE_EVERY {
            if let Some(state) = round.unsaved.take() {
                self.save(round, state)?;
            }
        }
        Ok(())
    }

    /// Waits until every write in flight is committed and stores the
    /// cursor they reach.
    fn finish(&mut self, round: &mut Round) -> Result<(), RoundError> {
        let gate = &self.gate;
        self.pipeline.wait_until_settled(&|| gate.go_on())?;
        self.store_progress(round, true)
    }

    fn save(&mut self, round: &mut Round, state: SyncState) -> Result<(), RoundError> {
        let url = self.config.source_url.clone();
        let started = round.server_started;
        let stored = self.with_db("storing the cursor", |client, _| {
            store::save_state(client, &url, &state, started)
        })?;
        if !stored {
            return Err(RoundError(
                "PostgreSQL restarted during the round; what it may have lost is fetched again from the stored cursor"
                    .to_owned(),
            ));
        }
        round.last_saved = Instant::now();
        self.show_position(&state);
        Ok(())
    }

    fn show_position(&self, state: &SyncState) {
        self.metrics
            .cursor
            .set(i64::try_from(state.cursor).unwrap_or(i64::MAX));
        self.status
            .set_position(state.cursor, state.epoch.as_deref());
    }
}

/// A fetched page, its elements ingested as changes: what the round needs
/// of it.
struct Fetched {
    next_cursor: Option<u64>,
    head_cursor: Option<u64>,
    epoch: Option<String>,
    changes: Vec<Change>,
}

impl Fetched {
    /// Fetches the page after `cursor` and ingests it.
    fn fetch(
        fetcher: &Fetcher,
        cursor: u64,
        limit: usize,
        max_future_skew: Duration,
    ) -> Result<Fetched, FetchError> {
        (fetcher.fetch(Some((cursor, limit)))).map(|page| Fetched::ingest(page, max_future_skew))
    }

    /// Ingests `page` as it arrives: a change is in the future by the
    /// clock of that moment and `max_future_skew`.
    fn ingest(mut page: Page, max_future_skew: Duration) -> Fetched {
        let (next_cursor, head_cursor, epoch) =
            (page.next_cursor, page.head_cursor, page.epoch.take());
        Fetched {
            next_cursor,
            head_cursor,
            epoch,
            changes: change::ingest(page, latest_allowed(max_future_skew)),
        }
    }
}

/// The next page, fetched and ingested on a thread of its own while the
/// current one is read against, decided and sent to the writers: ingesting
/// needs nothing but the page, and on the round's thread it would wait for
/// the reads and they for it. When the round ends first, the page is
/// forgotten; its thread ends with its one request.
struct ReadAhead {
    cursor: u64,
    page: Receiver<Result<Fetched, FetchError>>,
}

impl ReadAhead {
    /// Starts fetching the page after `cursor`; `None` when no thread can
    /// be started (the page is then fetched when it is needed).
    fn start(
        fetcher: &Fetcher,
        cursor: u64,
        limit: usize,
        max_future_skew: Duration,
    ) -> Option<ReadAhead> {
        let (sender, page) = crossbeam_channel::bounded(1);
        let fetcher = fetcher.clone();
        let spawned = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                let fetched = Fetched::fetch(&fetcher, cursor, limit, max_future_skew);
                // The receiver is gone when the round ended first.
                let _ = sender.send(fetched);
            });
        match spawned {
            Ok(_) => Some(ReadAhead { cursor, page }),
            Err(err) => {
                warn!("cannot start a thread to read the next page ahead: {err}");
                None
            }
        }
    }

    fn page(self) -> Result<Fetched, FetchError> {
        self.page.recv().unwrap_or_else(|_| {
            Err(FetchError::Failed(
                "the thread reading the next page ended without one".to_owned(),
            ))
        })
    }
}

/// Whether to go on waiting for writers, and when shutdown gives up.
struct Gate {
    leader: Leader,
    stop: Arc<AtomicBool>,
    give_up_at: Cell<Option<Instant>>,
    /// How long shutdown waits for writers: its share of `SHUTDOWN_TIMEOUT_SECS`.
    budget: Duration,
}

impl Gate {
    /// When shutdown stops waiting, counted from the first time it is asked.
    fn give_up_at(&self) -> Instant {
        let at = (self.give_up_at.get()).unwrap_or_else(|| Instant::now() + self.budget);
        self.give_up_at.set(Some(at));
        at
    }

    /// The lock is held and shutdown has not used up its budget.
    fn go_on(&self) -> bool {
        self.leader.holds() && !(stopping(&self.stop) && Instant::now() >= self.give_up_at())
    }
}

/// [`Syncer::with_db`], on the fields it needs, so that `work` may borrow
/// the others.
fn retrying<T>(
    db: &mut Option<r2d2::PooledConnection<crate::pool::Manager>>,
    pool: &DbPool,
    metrics: &Metrics,
    gate: &Gate,
    what: &str,
    mut work: impl FnMut(&mut postgres::Client, &Statements) -> Result<T, postgres::Error>,
) -> Result<T, RoundError> {
    let mut delay = Duration::from_millis(100);
    loop {
        if db.is_none() {
            *db = pool.get().map_err(|err| warn!("{what}: {err}")).ok();
        }
        let attempt = match db.as_mut() {
            Some(conn) => conn
                .with_statements()
                .and_then(|(client, statements)| work(client, statements))
                .map_err(|err| store::describe(&err)),
            None => Err("no connection to PostgreSQL".to_owned()),
        };
        match attempt {
            Ok(value) => return Ok(value),
            Err(why) => {
                *db = None;
                metrics.db_errors.inc();
                if !gate.go_on() || stopping(&gate.stop) {
                    return Err(RoundError(format!("{what} failed: {why}")));
                }
                warn!("{what} failed, retrying in {delay:?}: {why}");
                sleep_unless_stopping(delay, &gate.stop);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A 410 for `cursor` sent the round back to 0 while the source kept its
/// epoch: it dropped changes the target had not reached.
fn log_gone(cursor: u64) {
    warn!("the source no longer knows cursor {cursor}; started again from 0");
}

/// Whether a round's first page, of `epoch`, sends the cursor back to 0:
/// the cursor was stored with another epoch, or with none (an epoch not
/// known) and the page carries one. A source that never sends an epoch
/// keeps its cursor, and a cursor of 0 has nothing to go back over.
fn restarts(stored: &SyncState, epoch: Option<&str>) -> bool {
    let nothing_stored = stored.epoch.is_none() && stored.cursor == 0;
    stored.epoch.as_deref() != epoch && !nothing_stored
}

/// What makes a page impossible from a source that keeps its contract. Its
/// sequence numbers are gapless, and X-Next-Cursor is that of the last
/// change sent, so a page of `count` changes after `cursor` ends at
/// `cursor + count`.
fn misbehaviour(
    cursor: u64,
    next: u64,
    head: Option<u64>,
    count: usize,
    limit: usize,
) -> Option<String> {
    if next < cursor {
        return Some(format!(
            "the source's X-Next-Cursor {next} is behind the cursor {cursor} it was asked for"
        ));
    }
    if count >= limit && next == cursor {
        return Some(format!(
            "the source sent a full page whose X-Next-Cursor {next} does not move forward"
        ));
    }
    if let Some(head) = head.filter(|&head| next > head) {
        return Some(format!(
            "the source's X-Next-Cursor {next} lies beyond its X-Head-Cursor {head}"
        ));
    }
    let ends_at = u128::from(cursor) + count as u128;
    if u128::from(next) != ends_at {
        return Some(format!(
            "the source's X-Next-Cursor {next} is not {ends_at}, since={cursor} plus the {count} changes of its page"
        ));
    }
    None
}

/// The latest `last_updated_at` accepted now.
fn latest_allowed(skew: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(skew)
        .ok()
        .and_then(|skew| Utc::now().checked_add_signed(skew))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The texts of a page whose fit in the database's encoding only
/// PostgreSQL can tell (an encoding other than UTF8 and LATIN1).
fn texts_to_ask_about<'a>(changes: &'a [Change], encoding: &Encoding) -> Vec<&'a str> {
    if !matches!(encoding, Encoding::Other(_)) {
        return Vec::new();
    }
    let mut texts = Vec::new();
    for change in changes {
        match &change.parsed {
            Parsed::Valid(profile) => texts.extend([change.element.text(), profile.name.as_str()]),
            Parsed::Inactive => {}
            Parsed::Invalid(rejection) => {
                texts.extend([change.element.text(), rejection.message.as_str()])
            }
        }
    }
    texts.retain(|text| encoding.holds(text).is_none());
    texts
}

#[cfg(test)]
mod tests {
    use super::{misbehaviour, restarts};
    use crate::store::SyncState;

    #[test]
    fn a_page_of_another_epoch_than_the_stored_one_restarts_the_cursor() {
        let stored = |epoch: Option<&str>, cursor| SyncState {
            epoch: epoch.map(str::to_owned),
            cursor,
        };
        assert!(restarts(&stored(Some("e1"), 4), Some("e2")), "a new epoch");
        assert!(restarts(&stored(Some("e1"), 4), None), "the epoch gone");
        assert!(restarts(&stored(None, 4), Some("e2")), "an epoch announced");
        assert!(!restarts(&stored(Some("e1"), 4), Some("e1")), "the same");
        assert!(!restarts(&stored(None, 4), None), "a source without epochs");
        assert!(
            !restarts(&stored(None, 0), Some("e1")),
            "nothing stored yet"
        );
    }

    #[test]
    fn a_page_no_source_keeping_its_contract_sends_is_named() {
        assert!(
            misbehaviour(10, 10, Some(50), 5, 5).is_some(),
            "full, not moving"
        );
        assert!(misbehaviour(10, 10, Some(10), 0, 5).is_none(), "caught up");
        assert!(misbehaviour(10, 9, Some(50), 0, 5).is_some(), "behind");
        assert!(
            misbehaviour(10, 60, Some(50), 5, 5).is_some(),
            "beyond the head"
        );
        assert!(misbehaviour(10, 15, Some(50), 5, 5).is_none());
        assert!(misbehaviour(10, 15, None, 5, 5).is_none());
        assert!(misbehaviour(10, 13, Some(50), 3, 5).is_none(), "short");
        assert!(misbehaviour(10, 14, Some(50), 5, 5).is_some(), "repeats");
        assert!(misbehaviour(10, 16, Some(50), 5, 5).is_some(), "a gap");
        assert!(
            misbehaviour(10, 11, Some(50), 0, 5).is_some(),
            "empty, moving"
        );
        let why = misbehaviour(0, 1, Some(3), 2, 1000).unwrap();
        assert!(
            why.contains("X-Next-Cursor 1") && why.contains("is not 2"),
            "{why}"
        );
    }
}
