//! `target_service redrive`: decides again the recorded, unresolved
//! rejections whose reason can change with time or with the table
//! (`email_taken`, `mobile_taken`, `future_timestamp`, `db_error`).
//!
//! Each recorded element is read again from its payload and decided by the
//! service's own code, through one seam, [`decide_recorded`]: the same
//! parsing, the same planner ([`crate::sync::plan`]) against the rows as they are
//! now, and the same guarded writes ([`crate::sync::writer::execute`]). One that syncs now is written
//! exactly as a fresh change, and its rejection gets `resolved_at` and
//! `resolution` in the same transaction; one that still fails is left as it
//! was (no second rejection, no mark).
//!
//! It is safe while replicas sync beside it: every element is a short
//! transaction of its own, its rejection row locked (`FOR UPDATE SKIP
//! LOCKED`, so two redrives never decide one element twice), and the upsert's
//! guards (`WHERE users.last_updated_at < excluded.last_updated_at` and the
//! unique indexes) make a decision that raced with a writer harmless: it
//! never makes a row older and never breaks a unique rule. A unique
//! violation at write time means someone took the email or mobile meanwhile:
//! the element stays rejected.

use std::fmt;

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient};

use crate::config::Config;
use crate::metrics::Counted;
use crate::ops::decide;
use crate::profile::Reason;
use crate::store::{self, Failure};

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub examined: u64,
    pub synced: u64,
    pub stale: u64,
    pub still_rejected: u64,
    /// Nothing was written: the summary line says so.
    pub dry_run: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redrive: {} examined, {} synced, {} stale, {} still rejected",
            self.examined, self.synced, self.stale, self.still_rejected
        )?;
        if self.dry_run {
            f.write_str(" (dry run)")?;
        }
        Ok(())
    }
}

/// A recorded rejection's element, as `sync_rejections` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedElement {
    /// `sync_rejections.id`.
    pub id: i64,
    /// The element's text as recorded.
    pub payload: String,
}

/// What deciding a recorded element again gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redecided {
    /// Written to `users` as a fresh change would be.
    Synced,
    /// Valid and free now, but its row is already as new or newer.
    Stale,
    /// A rule still fails (still in the future, the email still taken…).
    StillRejected,
}

impl Redecided {
    /// The `resolution` stored for it, if it is resolved.
    fn resolution(self) -> Option<&'static str> {
        match self {
            Redecided::Synced => Some("synced"),
            Redecided::Stale => Some("stale"),
            Redecided::StillRejected => None,
        }
    }
}

/// **The seam** between redrive and the service's write path: decides
/// `elements`, in order, exactly as the service decides fresh changes
/// ([`decide::decide_afresh`], the planner of the sync rounds) against the
/// table as it is now, and writes those that sync (users rows only; nothing
/// is recorded or marked for the others). `latest_allowed` is now plus
/// `MAX_FUTURE_SKEW_SECS`.
///
/// It runs on `client` inside the caller's transaction; the write goes in a
/// savepoint, so a unique violation (an email or mobile taken meanwhile, by
/// a writer beside it) or a refused row leaves the transaction usable and
/// the element [`Redecided::StillRejected`]. Any other failure is returned.
pub(crate) fn decide_recorded(
    client: &mut impl GenericClient,
    elements: &[RecordedElement],
    latest_allowed: DateTime<Utc>,
) -> Result<Vec<Redecided>, postgres::Error> {
    let texts: Vec<&str> = elements.iter().map(|e| e.payload.as_str()).collect();
    let mut savepoint = client.transaction()?;
    let outcomes = match decide::decide_afresh(&mut savepoint, &texts, latest_allowed, false) {
        Ok(outcomes) => {
            savepoint.commit()?;
            outcomes
        }
        Err(err) => match store::classify(&err) {
            // Taken meanwhile, or refused again: still rejected.
            Failure::Unique(_) | Failure::Data => {
                drop(savepoint);
                return Ok(vec![Redecided::StillRejected; elements.len()]);
            }
            Failure::Transient => return Err(err),
        },
    };
    Ok(outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Counted::Synced => Redecided::Synced,
            Counted::NotSynced(Reason::Stale) => Redecided::Stale,
            Counted::NotSynced(_) => Redecided::StillRejected,
        })
        .collect())
}

/// Candidates are read in pages of this many ids.
const PAGE: i64 = 500;

/// Runs the command: connects, decides every matching rejection, oldest
/// first, one short transaction each; `dry_run` rolls every one back.
pub fn run(config: &Config, reasons: &[Reason], dry_run: bool) -> Result<Summary, String> {
    // A postgres::Error shows only its kind ("db error"): `describe` gives
    // the server's message or the connection's cause.
    let mut client = crate::pool::connect(&config.database).map_err(|err| {
        format!(
            "cannot connect to PostgreSQL at {}: {}",
            config.database.description,
            crate::pool::describe(&err)
        )
    })?;
    redrive(&mut client, config, reasons, dry_run).map_err(|err| {
        format!(
            "PostgreSQL at {} failed: {}",
            config.database.description,
            crate::pool::describe(&err)
        )
    })
}

fn redrive(
    client: &mut Client,
    config: &Config,
    reasons: &[Reason],
    dry_run: bool,
) -> Result<Summary, postgres::Error> {
    store::apply_schema(client)?;
    let reasons: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let mut after = 0i64;
    loop {
        let ids = store::unresolved_rejections(client, &reasons, after, PAGE)?;
        let Some(&last) = ids.last() else {
            return Ok(summary);
        };
        after = last;
        for id in ids {
            let latest_allowed = Utc::now() + config.max_future_skew;
            let mut tx = client.transaction()?;
            // Locked, and still unresolved: another redrive may have taken it.
            let Some(payload) = store::lock_unresolved_rejection(&mut tx, id)? else {
                continue;
            };
            let element = RecordedElement { id, payload };
            let outcome = decide_recorded(&mut tx, std::slice::from_ref(&element), latest_allowed)?
                .first()
                .copied()
                .unwrap_or(Redecided::StillRejected);
            if let Some(resolution) = outcome.resolution() {
                store::resolve_rejection(&mut tx, id, resolution)?;
            }
            if dry_run {
                tx.rollback()?;
            } else {
                tx.commit()?;
            }
            summary.examined += 1;
            match outcome {
                Redecided::Synced => summary.synced += 1,
                Redecided::Stale => summary.stale += 1,
                Redecided::StillRejected => summary.still_rejected += 1,
            }
        }
    }
}
