//! The decided writes of a round on their way through the writer threads:
//! sending each to the writer [`Router`] picks, hearing back what committed,
//! and keeping the [`Overlay`] (decisions not yet committed) and the
//! [`Ledger`] (where the cursor may move) in step with those reports.
//!
//! A round that must end early is abandoned: its queued writes are dropped
//! by the writers, and the overlay and ledger forgotten, so the next round
//! decides from what the table holds and the cursor that was stored.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use crate::metrics::{Counted, Metrics};
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
    writers: Vec<Sender<WorkItem>>,
    reports: Receiver<Report>,
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
    pub fn new(
        writers: Vec<Sender<WorkItem>>,
        reports: Receiver<Report>,
        abandoned: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        let count = writers.len();
        Pipeline {
            writers,
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

    /// Sends a page's decisions to the writers; `reaches` is where the
    /// cursor may move once they commit. `go_on` says whether to keep
    /// waiting when a writer's queue is full or commits must come first.
    /// Decisions it cannot send are counted as decided, like writes a
    /// writer drops, so the counters balance; they are fetched again.
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
        while let Some(decision) = decisions.next() {
            if !decision.writes() {
                self.metrics.record(decision.outcome, 1);
                continue;
            }
            if let Err((halt, unsent)) = self.send(round, server_started, page_no, decision, go_on)
            {
                self.metrics.record(unsent, 1);
                for decision in decisions {
                    self.metrics.record(decision.outcome, 1);
                }
                return Err(halt);
            }
        }
        Ok(())
    }

    fn send(
        &mut self,
        round: u64,
        server_started: DateTime<Utc>,
        page_no: u64,
        decision: Decision,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), (Halt, Counted)> {
        if let Err(halt) = self.check() {
            return Err((halt, decision.outcome));
        }
        let writer = loop {
            match self.router.route(&decision, &self.settled) {
                Route::Writer(writer) => break writer,
                Route::AfterCommits => {
                    if let Err(halt) = self.wait_until_settled(go_on) {
                        return Err((halt, decision.outcome));
                    }
                }
            }
        };
        let tag = self.router.sent(&decision, writer);
        self.overlay.remember(&decision, tag);
        let mut item = WorkItem {
            round,
            seq: tag.seq,
            page_no,
            server_started,
            decision,
        };
        self.metrics.queue_depth.inc();
        // Blocks while that writer's queue is full: the bound on memory.
        loop {
            let halt = match self.writers[tag.writer].send_timeout(item, POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) => {
                    item = back;
                    self.drain();
                    match self.check() {
                        Err(halt) => halt,
                        Ok(()) if !go_on() => Halt("stopped while writers were busy".to_owned()),
                        Ok(()) => continue,
                    }
                }
                Err(SendTimeoutError::Disconnected(back)) => {
                    item = back;
                    Halt("the writer threads have stopped".to_owned())
                }
            };
            self.metrics.queue_depth.dec();
            // Never sent: the writer settles nothing for it.
            self.router.unsend(tag);
            return Err((halt, item.decision.outcome));
        }
    }

    fn all_settled(&self) -> bool {
        (self.settled.iter().zip(self.router.last_sent())).all(|(settled, sent)| settled >= sent)
    }

    /// Waits until every write sent so far is committed (or dropped).
    pub fn wait_until_settled(&mut self, go_on: &dyn Fn() -> bool) -> Result<(), Halt> {
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
        self.drain();
        self.overlay.clear();
        self.ledger.clear();
        self.router.forget_committed(&self.settled);
        self.refusal = None;
    }
}
