//! The decided writes of a round on their way through the writer threads:
//! routing each to the writer [`Router`] picks, handing each writer its
//! share of a page as one message, hearing back what committed,
//! and keeping the [`Overlay`] (decisions not yet committed) and the
//! [`Ledger`] (where the cursor may move) in step with those reports.
//!
//! A round that must end early is abandoned: its queued writes are dropped
//! by the writers (or here, if never handed over), and the overlay and
//! ledger forgotten, so the next round
//! decides from what the table holds and the cursor that was stored.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

use crate::metrics::Metrics;
use crate::store::SyncState;
use crate::sync::change::ChangeKey;
use crate::sync::ledger::Ledger;
use crate::sync::overlay::Overlay;
use crate::sync::plan::Decision;
use crate::sync::routing::{Route, Router};
use crate::sync::writer::{Report, WorkItem};

/// How long a wait for writers goes before it looks again whether to go on.
const POLL: Duration = Duration::from_millis(100);

/// Why the round cannot go on.
#[derive(Debug)]
pub struct Halt(pub String);

pub struct Pipeline {
    writers: Vec<Sender<Vec<WorkItem>>>,
    reports: Receiver<Report>,
    /// Per writer, the work routed to it and not yet handed over.
    unsent: Vec<Vec<WorkItem>>,
    /// Most decisions handed to a writer in one message, and kept in
    /// `unsent` for it: with a channel that holds one message, at most two
    /// chunks wait for each writer besides the batch it writes.
    chunk: usize,
    /// Per writer, the last seq handed over: all is settled once each
    /// writer has settled up to it.
    handed: Vec<u64>,
    /// Rounds up to this one are abandoned; writers drop their work.
    abandoned: Arc<AtomicU64>,
    /// Per writer, the last seq it committed or dropped.
    settled: Vec<u64>,
    router: Router,
    overlay: Overlay,
    ledger: Ledger,
    /// Elements PostgreSQL refused although the planner thought it could
    /// hold them: decided as `db_error` from now on.
    refused: HashMap<ChangeKey, String>,
    /// A batch of this round was refused: the round must end.
    refusal: Option<String>,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// `chunk` is the most decisions handed to a writer at once.
    pub fn new(
        writers: Vec<Sender<Vec<WorkItem>>>,
        chunk: usize,
        reports: Receiver<Report>,
        abandoned: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        let count = writers.len();
        Pipeline {
            writers,
            unsent: (0..count).map(|_| Vec::new()).collect(),
            chunk: chunk.max(1),
            handed: vec![0; count],
            reports,
            abandoned,
            settled: vec![0; count],
            router: Router::new(count),
            overlay: Overlay::default(),
            ledger: Ledger::default(),
            refused: HashMap::default(),
            refusal: None,
            metrics,
        }
    }

    fn absorb(&mut self, report: Report) {
        let (writer, seq) = match report {
            Report::Committed { writer, seq, pages } => {
                for (page_no, count) in pages {
                    self.ledger.committed(page_no, count);
                }
                (writer, seq)
            }
            Report::Dropped { writer, seq } => (writer, seq),
            Report::Refused {
                writer,
                seq,
                why,
                element,
            } => {
                if let Some((key, said)) = element {
                    self.refused.insert(key, said);
                }
                self.refusal.get_or_insert(why);
                (writer, seq)
            }
        };
        if let Some(settled) = self.settled.get_mut(writer) {
            *settled = (*settled).max(seq);
        }
    }

    /// Takes in every report that has arrived.
    fn drain(&mut self) {
        while let Ok(report) = self.reports.try_recv() {
            self.absorb(report);
        }
    }

    fn wait_for_report(&mut self) {
        match self.reports.recv_timeout(POLL) {
            Ok(report) => self.absorb(report),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
    }

    fn check(&self) -> Result<(), Halt> {
        match &self.refusal {
            Some(why) => Err(Halt(why.clone())),
            None => Ok(()),
        }
    }

    /// Makes the overlay forget what the writers reported committed, so a
    /// read that begins after it shows those writes: to be called right
    /// before reading what a page is decided against.
    pub fn forget_committed(&mut self) {
        self.drain();
        self.overlay.forget_committed(&self.settled);
        self.router.forget_committed(&self.settled);
    }

    /// The decisions not yet committed, to lay over what was read.
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    pub fn refused(&self) -> &HashMap<ChangeKey, String> {
        &self.refused
    }

    /// Sends a page's decisions to the writers, each writer's share as one
    /// message (held back, up to a chunk, while that writer's channel is
    /// full, so that small pages queue as deep as large ones); `reaches` is
    /// where the cursor may move once they commit.
    /// `go_on` says whether to keep waiting when a writer's queue is full
    /// or commits must come first. Decisions it cannot send are counted as
    /// decided, like writes a writer drops, so the counters balance; they
    /// are fetched again.
    pub fn send_page(
        &mut self,
        round: u64,
        server_started: DateTime<Utc>,
        decisions: Vec<Decision>,
        reaches: Option<SyncState>,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), Halt> {
        let writes = decisions.iter().filter(|d| d.writes()).count();
        let page_no = self.ledger.push(writes, reaches);
        let mut decisions = decisions.into_iter();
        let sent = loop {
            let Some(decision) = decisions.next() else {
                break self.hand_over_all(false, go_on);
            };
            if !decision.writes() {
                self.metrics.record(decision.outcome, 1);
                continue;
            }
            let item = WorkItem {
                round,
                seq: 0,
                page_no,
                server_started,
                decision,
            };
            if let Err(halt) = self.route(item, go_on) {
                break Err(halt);
            }
        };
        if sent.is_err() {
            for decision in decisions {
                self.metrics.record(decision.outcome, 1);
            }
            self.drop_unsent();
        }
        sent
    }

    /// Routes `item` to its writer and queues it there, handing the
    /// writer its queue once that is a chunk long.
    fn route(&mut self, mut item: WorkItem, go_on: &dyn Fn() -> bool) -> Result<(), Halt> {
        let checked = self.check().and_then(|()| loop {
            match self.router.route(&item.decision, &self.settled) {
                Route::Writer(writer) => break Ok(writer),
                Route::AfterCommits => self.wait_until_settled(go_on)?,
            }
        });
        let writer = match checked {
            Ok(writer) => writer,
            Err(halt) => {
                self.metrics.record(item.decision.outcome, 1);
                return Err(halt);
            }
        };
        let tag = self.router.sent(&item.decision, writer);
        self.overlay.remember(&item.decision, tag);
        item.seq = tag.seq;
        let queue = &mut self.unsent[tag.writer];
        queue.push(item);
        self.metrics.queue_depth.inc();
        if queue.len() >= self.chunk {
            self.hand_over(tag.writer, true, go_on)?;
        }
        Ok(())
    }

    /// Hands each writer what is queued for it; with `wait`, waits for room
    /// where a writer's channel is full, else leaves it queued here (up to
    /// a chunk) for the next try.
    /// Hands over, without waiting, what is kept back for writers whose
    /// channel has room.
    pub fn offer_waiting(&mut self, go_on: &dyn Fn() -> bool) -> Result<(), Halt> {
        self.hand_over_all(false, go_on)
    }

    fn hand_over_all(&mut self, wait: bool, go_on: &dyn Fn() -> bool) -> Result<(), Halt> {
        (0..self.writers.len()).try_for_each(|writer| self.hand_over(writer, wait, go_on))
    }

    /// Hands `writer` what is queued for it. With `wait`, blocks while that
    /// writer's channel is full: the bound on memory.
    fn hand_over(
        &mut self,
        writer: usize,
        wait: bool,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), Halt> {
        let mut work = std::mem::take(&mut self.unsent[writer]);
        let Some(last) = work.last().map(|item| item.seq) else {
            return Ok(());
        };
        let halt = 'send: loop {
            let sent = match wait {
                true => self.writers[writer].send_timeout(work, POLL),
                false => (self.writers[writer].try_send(work)).map_err(|err| match err {
                    TrySendError::Full(back) => SendTimeoutError::Timeout(back),
                    TrySendError::Disconnected(back) => SendTimeoutError::Disconnected(back),
                }),
            };
            match sent {
                Ok(()) => {
                    self.handed[writer] = last;
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back)) if !wait => {
                    self.unsent[writer] = back;
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back)) => {
                    work = back;
                    // The others need not wait for this one.
                    for other in (0..self.writers.len()).filter(|&other| other != writer) {
                        if let Err(halt) = self.hand_over(other, false, go_on) {
                            break 'send halt;
                        }
                    }
                    self.drain();
                    match self.check() {
                        Err(halt) => break halt,
                        Ok(()) if !go_on() => {
                            break Halt("stopped while writers were busy".to_owned())
                        }
                        Ok(()) => continue,
                    }
                }
                Err(SendTimeoutError::Disconnected(back)) => {
                    work = back;
                    break Halt("the writer threads have stopped".to_owned());
                }
            }
        };
        self.unsent[writer] = work;
        Err(halt)
    }

    /// Drops what was routed but never handed over, counting it as
    /// decided; the router forgets it, since no writer will settle it.
    fn drop_unsent(&mut self) {
        for queue in &mut self.unsent {
            for item in queue.drain(..) {
                self.metrics.queue_depth.dec();
                self.metrics.record(item.decision.outcome, 1);
            }
        }
        self.router.forget_after(&self.handed);
    }

    fn all_settled(&self) -> bool {
        (self.settled.iter().zip(&self.handed)).all(|(settled, handed)| settled >= handed)
    }

    /// Waits until every write sent so far is committed (or dropped).
    /// What was kept back is handed over first, unless it is time to stop.
    pub fn wait_until_settled(&mut self, go_on: &dyn Fn() -> bool) -> Result<(), Halt> {
        if !go_on() {
            return Err(Halt(
                "stopped before the writers were handed their work".to_owned(),
            ));
        }
        self.hand_over_all(true, go_on)?;
        loop {
            self.drain();
            self.check()?;
            if self.all_settled() {
                return Ok(());
            }
            if !go_on() {
                return Err(Halt(format!(
                    "stopped with {} pages unwritten; they will be fetched again",
                    self.ledger.len()
                )));
            }
            self.wait_for_report();
        }
    }

    /// Where the stored cursor may move now, if further than before.
    pub fn advance(&mut self) -> Option<SyncState> {
        self.drain();
        self.ledger.advance()
    }

    /// Ends a round early: writers drop its queued work; waits (until
    /// `deadline`, if any) for them to settle, then forgets the round.
    pub fn abandon(&mut self, round: u64, deadline: Option<Instant>) {
        self.abandoned.fetch_max(round, Ordering::AcqRel);
        while !self.all_settled() && deadline.is_none_or(|at| Instant::now() < at) {
            self.drain();
            self.wait_for_report();
        }
        self.end_round();
    }

    /// Forgets the round's overlay, ledger and refusal. Between rounds
    /// every write is settled, so the next round reads all from the table.
    pub fn end_round(&mut self) {
        self.drop_unsent();
        self.drain();
        self.overlay.clear();
        self.ledger.clear();
        self.router.forget_committed(&self.settled);
        self.refusal = None;
    }
}
