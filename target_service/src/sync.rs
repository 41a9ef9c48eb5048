//! The sync round and its timer: which page to ask for, where each parsed
//! change goes, and when the cursor may move.
//!
//! A round fetches page after page (the next fetch overlaps the writing of
//! the previous page) and hands each change to the writer its id belongs to.
//! The cursor a page ends at is stored only once every change of that page,
//! and of every page before it, is committed; so a crash at any moment costs
//! a replay, never a change. Only the replica holding the PostgreSQL advisory
//! lock for the source runs rounds.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use postgres::Client;
use uuid::Uuid;

use crate::config::Config;
use crate::fetcher::{FetchError, Fetcher, Page};
use crate::metrics::{Counted, Metrics};
use crate::pool::DbPool;
use crate::profile::{Profile, Reason, Timestamp};
use crate::routing::Router;
use crate::sleep_unless_stopping;
use crate::status::{Activity, StatusBoard};
use crate::store;
use crate::writer::{Change, PageProgress, WorkItem};

/// Why a round ended early. The round is retried from the stored cursor.
#[derive(Debug)]
struct RoundError(String);

impl<E: std::fmt::Display> From<E> for RoundError {
    fn from(err: E) -> Self {
        RoundError(err.to_string())
    }
}

/// A page handed to the writers, waiting to be committed.
struct InFlight {
    page_no: u64,
    /// Where the stored cursor may move once this page is committed;
    /// `None` for a source without cursors.
    reaches: Option<store::SyncState>,
}

pub struct Syncer {
    config: Arc<Config>,
    pool: DbPool,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    stopping: Arc<AtomicBool>,
    writers: Vec<Sender<WorkItem>>,
    page_done_tx: Sender<u64>,
    page_done_rx: Receiver<u64>,
    /// A connection of its own for the session advisory lock.
    lock_connection: Option<Client>,
    /// Whether `lock_connection` holds the lock.
    holds_lock: bool,
    /// The source sent no cursor headers last time: fetch without parameters.
    source_without_cursor: bool,
    pages_sent: u64,
    /// The source's newest sequence number, as last reported.
    source_head: Option<u64>,
    /// Pages reported committed that are not yet at the front of the queue.
    completed_pages: HashSet<u64>,
    router: Router,
    /// Changes handed to writers, and (counted by them) committed.
    items_sent: u64,
    items_committed: Arc<AtomicU64>,
    /// When shutdown stops waiting for writers; set once shutdown starts.
    give_up_at: Option<Instant>,
}

impl Syncer {
    pub fn new(
        config: Arc<Config>,
        pool: DbPool,
        metrics: Arc<Metrics>,
        status: Arc<StatusBoard>,
        stopping: Arc<AtomicBool>,
        writers: Vec<Sender<WorkItem>>,
    ) -> Syncer {
        let (page_done_tx, page_done_rx) = crossbeam_channel::unbounded();
        let writer_count = writers.len();
        let fetcher = Fetcher::new(&config);
        Syncer {
            config,
            pool,
            fetcher,
            metrics,
            status,
            stopping,
            writers,
            page_done_tx,
            page_done_rx,
            lock_connection: None,
            holds_lock: false,
            source_without_cursor: false,
            pages_sent: 0,
            source_head: None,
            completed_pages: HashSet::new(),
            router: Router::new(writer_count),
            items_sent: 0,
            items_committed: Arc::new(AtomicU64::new(0)),
            give_up_at: None,
        }
    }

    /// Runs rounds, one right away and then every `SYNC_INTERVAL` (start to
    /// start; a long round delays the next, never overlaps it), until
    /// `wake` is closed for shutdown.
    pub fn run(mut self, wake: Receiver<()>) {
        loop {
            if self.stopping.load(Ordering::Acquire) {
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
        if !self.hold_sync_lock() {
            self.status.set_state(Activity::Standby);
            return;
        }
        self.status.set_state(Activity::Syncing);
        let started = Instant::now();
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
            }
            Err(RoundError(why)) => {
                warn!("sync round ended early, will retry next round: {why}");
                self.status.round_failed(&why);
            }
        }
        self.status.set_state(Activity::Idle);
    }

    /// Keeps (or takes) the advisory lock that makes this replica the one
    /// that syncs. A lost connection means a lost lock: take it again. A
    /// standby keeps its connection between attempts.
    fn hold_sync_lock(&mut self) -> bool {
        if let Some(client) = self.lock_connection.as_mut() {
            if store::ping(client).is_err() {
                if self.holds_lock {
                    warn!("lost the connection holding the sync lock; taking it again");
                }
                self.lock_connection = None;
                self.holds_lock = false;
            }
        }
        if self.holds_lock {
            return true;
        }
        let client = match self.lock_connection.as_mut() {
            Some(client) => client,
            None => match crate::pool::connect(&self.config.database) {
                Ok(client) => self.lock_connection.insert(client),
                Err(err) => {
                    let err = crate::pool::describe(&err);
                    self.metrics.db_errors.inc();
                    self.status
                        .round_failed(&format!("cannot connect to PostgreSQL: {err}"));
                    warn!("cannot connect to PostgreSQL to take the sync lock: {err}");
                    return false;
                }
            },
        };
        match store::try_sync_lock(client, self.fetcher.url()) {
            Ok(true) => {
                info!(
                    "holding the sync lock for {}; this replica syncs",
                    self.fetcher.url()
                );
                self.holds_lock = true;
                true
            }
            Ok(false) => {
                debug!("another replica holds the sync lock; standing by");
                false
            }
            Err(err) => {
                self.metrics.db_errors.inc();
                warn!(
                    "taking the sync lock failed: {}",
                    crate::pool::describe(&err)
                );
                self.lock_connection = None;
                false
            }
        }
    }

    fn sync_pages(&mut self) -> Result<(), RoundError> {
        if self.source_without_cursor {
            return self.sync_without_cursor();
        }
        let url = self.config.source_url.clone();
        let limit = self.config.fetch_limit;
        let stored = self.with_retry("reading the sync state", |client| {
            store::load_state(client, &url)
        })?;
        self.show_position(&stored);
        let mut committed = stored.clone();
        let mut cursor = stored.cursor;
        let mut epoch = stored.epoch;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut gone_in_a_row = 0;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            let page = match self.fetcher.fetch(Some((cursor, limit))) {
                Ok(page) => page,
                Err(FetchError::Gone { min_since }) => {
                    gone_in_a_row += 1;
                    self.finish(&mut in_flight, &mut committed)?;
                    cursor = self.after_gone(cursor, min_since, gone_in_a_row)?;
                    epoch = None;
                    continue;
                }
                Err(FetchError::Failed(why)) => {
                    self.metrics.fetch_errors.inc();
                    self.finish(&mut in_flight, &mut committed)?;
                    return Err(RoundError(why));
                }
            };
            gone_in_a_row = 0;
            let Some(next_cursor) = page.next_cursor else {
                info!(
                    "the source sends no X-Next-Cursor; fetching once per round without parameters"
                );
                self.source_without_cursor = true;
                self.finish(&mut in_flight, &mut committed)?;
                let page_no = self.dispatch(page)?;
                in_flight.push_back(InFlight {
                    page_no,
                    reaches: None,
                });
                return self.finish(&mut in_flight, &mut committed);
            };
            if epoch.is_some() && page.epoch != epoch {
                warn!(
                    "the source restarted (epoch {:?} -> {:?}); its cursors start again from 0",
                    epoch.as_deref().unwrap_or(""),
                    page.epoch.as_deref().unwrap_or("")
                );
                self.finish(&mut in_flight, &mut committed)?;
                let restart = store::SyncState {
                    epoch: page.epoch.clone(),
                    cursor: 0,
                };
                self.save(&restart)?;
                committed = restart;
                epoch = page.epoch.clone();
                if cursor != 0 {
                    cursor = 0;
                    continue;
                }
            }
            epoch = page.epoch.clone();
            if next_cursor < cursor {
                self.metrics.fetch_errors.inc();
                self.finish(&mut in_flight, &mut committed)?;
                return Err(RoundError(format!(
                    "the source's X-Next-Cursor {next_cursor} is behind the cursor {cursor} it was asked for"
                )));
            }
            if page.head_cursor.is_some() {
                self.source_head = page.head_cursor;
            }
            let count = page.elements().len();
            let page_no = self.dispatch(page)?;
            in_flight.push_back(InFlight {
                page_no,
                reaches: Some(store::SyncState {
                    epoch: epoch.clone(),
                    cursor: next_cursor,
                }),
            });
            cursor = next_cursor;
            self.store_committed(&mut in_flight, &mut committed, false)?;
            if count < limit {
                break;
            }
        }
        self.finish(&mut in_flight, &mut committed)
    }

    /// One fetch without parameters, for a source like the original.
    fn sync_without_cursor(&mut self) -> Result<(), RoundError> {
        let page = match self.fetcher.fetch(None) {
            Ok(page) => page,
            Err(err) => {
                self.metrics.fetch_errors.inc();
                return Err(RoundError(err.to_string()));
            }
        };
        if page.next_cursor.is_some() {
            info!("the source now sends cursors; paging with since from the next round");
            self.source_without_cursor = false;
        }
        let page_no = self.dispatch(page)?;
        let mut in_flight = VecDeque::from([InFlight {
            page_no,
            reaches: None,
        }]);
        let mut committed = store::SyncState::default();
        self.finish(&mut in_flight, &mut committed)
    }

    /// Where to go after a `410 Gone`: back to 0 (a new source or a cursor
    /// from another epoch); if 0 is gone too, the oldest cursor the source
    /// still has, losing what it dropped, and saying so.
    fn after_gone(
        &mut self,
        cursor: u64,
        min_since: Option<u64>,
        times: u32,
    ) -> Result<u64, RoundError> {
        if times == 1 && cursor != 0 {
            warn!("the source no longer knows cursor {cursor}; starting again from 0");
            return Ok(0);
        }
        match min_since {
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

    /// Parses a page, settles duplicates within it, and hands every change
    /// to its writer. Returns the page's number, reported when committed.
    fn dispatch(&mut self, page: Page) -> Result<u64, RoundError> {
        self.metrics.fetched.inc_by(page.elements().len() as u64);
        let latest_allowed = chrono::Duration::from_std(self.config.max_future_skew)
            .ok()
            .and_then(|skew| Utc::now().checked_add_signed(skew))
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        // Identical payloads are numbered in page order. The payload is the
        // element's text as the source sent it, which stays in the page.
        let mut copies: foldhash::HashMap<&str, i32> = foldhash::HashMap::default();
        let changes: Vec<Change> = page
            .elements()
            .map(
                |(span, text)| match Profile::parse_json(text, latest_allowed) {
                    Ok(profile) => Change::Accepted {
                        profile,
                        payload: span,
                    },
                    Err(rejection) => {
                        let seen = copies.entry(text).or_insert(0);
                        let copy = *seen;
                        *seen += 1;
                        Change::Rejected {
                            rejection,
                            payload: span,
                            copy,
                        }
                    }
                },
            )
            .collect();
        drop(copies);
        let mut changes = drop_superseded_in_page(changes, &self.metrics);

        self.pages_sent += 1;
        let page_no = self.pages_sent;
        let progress = PageProgress::new(
            page_no,
            page.into_body(),
            &mut changes,
            self.page_done_tx.clone(),
            Arc::clone(&self.items_committed),
        );
        for change in changes {
            let writer = match self.router.route(&change, page_no) {
                Some(writer) => writer,
                None => {
                    // Its id and its email or mobile are in flight on two
                    // writers: let them commit, then no order is at stake.
                    self.wait_for_all_sent()?;
                    self.router.all_committed();
                    self.router.route(&change, page_no).ok_or_else(|| {
                        RoundError("routing found work in flight after it was committed".to_owned())
                    })?
                }
            };
            let item = WorkItem {
                change,
                page: Arc::clone(&progress),
            };
            self.metrics.queue_depth.inc();
            // Blocks while that writer's queue is full: the bound on memory.
            if self.writers[writer].send(item).is_err() {
                self.metrics.queue_depth.dec();
                return Err(RoundError("the writer threads have stopped".to_owned()));
            }
            self.items_sent += 1;
        }
        Ok(page_no)
    }

    /// Waits until every change handed to a writer so far is committed.
    fn wait_for_all_sent(&mut self) -> Result<(), RoundError> {
        while self.items_committed.load(Ordering::Acquire) < self.items_sent {
            if self.shutdown_budget_spent() {
                return Err(RoundError(
                    "shutting down with changes unwritten; they will be fetched again".to_owned(),
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether shutdown has started and waiting for writers has used up its
    /// share of `SHUTDOWN_TIMEOUT_SECS`. Writers finish what they hold
    /// unless the database is away; that must not hold shutdown past its
    /// budget.
    fn shutdown_budget_spent(&mut self) -> bool {
        if !self.stopping.load(Ordering::Acquire) {
            return false;
        }
        let budget = self.config.shutdown_timeout.mul_f64(0.6);
        let give_up_at = *self
            .give_up_at
            .get_or_insert_with(|| Instant::now() + budget);
        Instant::now() >= give_up_at
    }

    /// Waits until every page in flight is committed (or shutdown gives up
    /// on them) and stores the cursor they reach.
    fn finish(
        &mut self,
        in_flight: &mut VecDeque<InFlight>,
        committed: &mut store::SyncState,
    ) -> Result<(), RoundError> {
        self.store_committed(in_flight, committed, true)
    }

    /// Stores the cursor of the longest run of committed pages at the front.
    fn store_committed(
        &mut self,
        in_flight: &mut VecDeque<InFlight>,
        committed: &mut store::SyncState,
        wait_for_all: bool,
    ) -> Result<(), RoundError> {
        loop {
            while let Ok(page_no) = self.page_done_rx.try_recv() {
                self.completed_pages.insert(page_no);
            }
            let mut reached = None;
            while in_flight
                .front()
                .is_some_and(|page| self.completed_pages.contains(&page.page_no))
            {
                if let Some(page) = in_flight.pop_front() {
                    self.completed_pages.remove(&page.page_no);
                    self.router.page_committed(page.page_no);
                    reached = page.reaches.or(reached);
                }
            }
            if let Some(state) = reached {
                self.save(&state)?;
                *committed = state;
                self.show_position(committed);
            }
            if in_flight.is_empty() || !wait_for_all {
                return Ok(());
            }
            if self.shutdown_budget_spent() {
                return Err(RoundError(format!(
                    "shutting down with {} pages unwritten; they will be fetched again",
                    in_flight.len()
                )));
            }
            if let Ok(page_no) = self.page_done_rx.recv_timeout(Duration::from_millis(100)) {
                self.completed_pages.insert(page_no);
            }
        }
    }

    fn save(&mut self, state: &store::SyncState) -> Result<(), RoundError> {
        let url = self.config.source_url.clone();
        self.with_retry("storing the cursor", |client| {
            store::save_state(client, &url, state)
        })
    }

    fn show_position(&self, state: &store::SyncState) {
        self.metrics
            .cursor
            .set(i64::try_from(state.cursor).unwrap_or(i64::MAX));
        if let Some(head) = self.source_head {
            let lag = head.saturating_sub(state.cursor);
            self.metrics
                .source_lag
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        self.status
            .set_position(state.cursor, state.epoch.as_deref());
    }

    /// Runs a small statement on a pooled connection, retrying transient
    /// failures with backoff until it succeeds or shutdown starts.
    fn with_retry<T>(
        &mut self,
        what: &str,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, RoundError> {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = match self.pool.get() {
                Ok(mut conn) => work(&mut conn.client).map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            match attempt {
                Ok(value) => return Ok(value),
                Err(why) => {
                    self.metrics.db_errors.inc();
                    if self.stopping.load(Ordering::Acquire) {
                        return Err(RoundError(format!("{what} failed during shutdown: {why}")));
                    }
                    warn!("{what} failed, retrying in {delay:?}: {why}");
                    sleep_unless_stopping(delay, &self.stopping);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// "Not strictly newer than a newer change for the same id in the same
/// page" is stale: of the valid changes to one id in a page, only the newest
/// (the first of equals) goes on; the rest are counted and dropped here.
fn drop_superseded_in_page(changes: Vec<Change>, metrics: &Metrics) -> Vec<Change> {
    let mut newest: foldhash::HashMap<Uuid, (Timestamp, usize)> =
        foldhash::HashMap::with_capacity_and_hasher(changes.len(), Default::default());
    for (index, change) in changes.iter().enumerate() {
        if let Change::Accepted { profile, .. } = change {
            let at = profile.last_updated_at;
            newest
                .entry(profile.id)
                .and_modify(|best| {
                    if at > best.0 {
                        *best = (at, index);
                    }
                })
                .or_insert((at, index));
        }
    }
    let mut superseded = 0;
    let kept: Vec<Change> = changes
        .into_iter()
        .enumerate()
        .filter_map(|(index, change)| match &change {
            Change::Accepted { profile, .. }
                if newest.get(&profile.id).is_some_and(|best| best.1 != index) =>
            {
                superseded += 1;
                None
            }
            _ => Some(change),
        })
        .collect();
    metrics.record(Counted::NotSynced(Reason::Stale), superseded);
    kept
}
