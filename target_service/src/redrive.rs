//! `target_service redrive`: decides again the recorded, unresolved
//! rejections whose reason can change with time or with the table
//! (`email_taken`, `mobile_taken`, `future_timestamp`, `db_error`).
//!
//! Each recorded element is read again from its payload and decided by the
//! service's own code, through one seam, [`decide_recorded`]: the same
//! parsing ([`Profile::parse_json`]), the same planner
//! ([`writer::plan_batch`]) against the rows as they are now, and the same
//! guarded upsert ([`store::upsert_users`]). One that syncs now is written
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

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use postgres::{Client, GenericClient, NoTls};

use crate::config::Config;
use crate::metrics::Counted;
use crate::profile::{Profile, Reason};
use crate::store::{self, Failure, Statements};
use crate::writer::{self, AlreadyRecorded, Change, Writes};

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub examined: u64,
    pub synced: u64,
    pub stale: u64,
    pub still_rejected: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redrive: {} examined, {} synced, {} stale, {} still rejected",
            self.examined, self.synced, self.stale, self.still_rejected
        )
    }
}

/// A recorded rejection's element, as `sync_rejections` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedElement {
    /// `sync_rejections.id`.
    pub id: i64,
    /// The element's text as recorded.
    pub payload: String,
}

/// What deciding a recorded element again gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redecided {
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
/// `elements`, in order, as the service decides fresh changes against the
/// table as it is now, and writes those that sync (users rows only; nothing
/// is recorded or marked for the others). `latest_allowed` is now plus
/// `MAX_FUTURE_SKEW_SECS`.
///
/// It runs on `client` inside the caller's transaction; the write goes in a
/// savepoint, so a unique violation (an email or mobile taken meanwhile, by
/// a writer beside it) leaves the transaction usable and the element
/// [`Redecided::StillRejected`]. Any other failure is returned.
///
/// Today it is built from the writer's parts: [`Profile::parse_json`],
/// [`store::read_users`]/[`store::owners_of`], [`writer::plan_batch`] (with no
/// element counted as recorded, since being recorded is the point) and
/// [`store::upsert_users`]. A rebuilt write path replaces this body with a
/// call to its planner; the signature is all redrive depends on.
pub fn decide_recorded(
    client: &mut impl GenericClient,
    statements: &Statements,
    elements: &[RecordedElement],
    latest_allowed: DateTime<Utc>,
) -> Result<Vec<Redecided>, postgres::Error> {
    let mut outcomes = vec![Redecided::StillRejected; elements.len()];
    // Only elements that pass every rule on their own go on to the planner.
    let mut changes = Vec::new();
    let mut places = Vec::new();
    for (place, element) in elements.iter().enumerate() {
        if let Ok(profile) = Profile::parse_json(&element.payload, latest_allowed) {
            changes.push(Change::Accepted {
                profile,
                payload: 0..element.payload.len(),
            });
            places.push(place);
        }
    }
    if changes.is_empty() {
        return Ok(outcomes);
    }
    let profiles: Vec<&Profile> = (changes.iter())
        .filter_map(|change| match change {
            Change::Accepted { profile, .. } => Some(profile),
            Change::Rejected { .. } => None,
        })
        .collect();
    let mut ids: Vec<_> = profiles.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let emails: Vec<&str> = profiles.iter().map(|p| p.email.as_str()).collect();
    let mobiles: Vec<&str> = profiles.iter().map(|p| p.mobile.as_str()).collect();
    let read = store::read_users(client, statements, &ids)?;
    let stored = store::stored_users(&read)?;
    let owners = store::owners_of(client, statements, &emails, &mobiles)?;
    let plan = writer::plan_batch(
        (changes.iter())
            .zip(&places)
            .map(|(change, &place)| (change, elements[place].payload.as_str())),
        &stored,
        &owners,
        &HashSet::new(),
        &AlreadyRecorded::new(),
        Writes::Merged,
    );
    let mut savepoint = client.transaction()?;
    let written = match store::upsert_users(&mut savepoint, statements, &plan.writes) {
        Ok(written) => {
            savepoint.commit()?;
            written
        }
        Err(err) => match store::classify(&err) {
            // Taken meanwhile, or refused again: still rejected.
            Failure::Unique(_) | Failure::Data => {
                drop(savepoint);
                return Ok(outcomes);
            }
            Failure::Transient => return Err(err),
        },
    };
    for ((outcome, &place), profile) in plan.outcomes.iter().zip(&places).zip(&profiles) {
        outcomes[place] = match outcome {
            Counted::Synced if written.contains(&profile.id) => Redecided::Synced,
            // Planned but not applied: the row was as new already.
            Counted::Synced | Counted::NotSynced(Reason::Stale) => Redecided::Stale,
            Counted::NotSynced(_) => Redecided::StillRejected,
        };
    }
    Ok(outcomes)
}

/// Candidates are read in pages of this many ids.
const PAGE: i64 = 500;

/// Runs the command: connects, decides every matching rejection, oldest
/// first, one short transaction each; `dry_run` rolls every one back.
pub fn run(config: &Config, reasons: &[Reason], dry_run: bool) -> Result<Summary, String> {
    let mut client = config.database.connection.connect(NoTls).map_err(|err| {
        format!(
            "cannot connect to PostgreSQL at {}: {err}",
            config.database.description
        )
    })?;
    redrive(&mut client, config, reasons, dry_run).map_err(|err| {
        format!(
            "PostgreSQL at {} failed: {}",
            config.database.description,
            store::describe(&err)
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
    let statements = Statements::prepare(client)?;
    let reasons: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    let mut summary = Summary::default();
    let mut after = 0i64;
    loop {
        let ids: Vec<i64> = client
            .query(
                "SELECT id FROM sync_rejections \
                 WHERE resolved_at IS NULL AND reason = ANY($1) AND id > $2 \
                 ORDER BY id LIMIT $3",
                &[&reasons, &after, &PAGE],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let Some(&last) = ids.last() else {
            return Ok(summary);
        };
        after = last;
        for id in ids {
            let latest_allowed = Utc::now() + config.max_future_skew;
            let mut tx = client.transaction()?;
            // Locked, and still unresolved: another redrive may have taken it.
            let row = tx.query_opt(
                "SELECT payload FROM sync_rejections \
                 WHERE id = $1 AND resolved_at IS NULL FOR UPDATE SKIP LOCKED",
                &[&id],
            )?;
            let Some(row) = row else { continue };
            let element = RecordedElement {
                id,
                payload: row.try_get(0)?,
            };
            let outcome = decide_recorded(
                &mut tx,
                &statements,
                std::slice::from_ref(&element),
                latest_allowed,
            )?
            .first()
            .copied()
            .unwrap_or(Redecided::StillRejected);
            if let Some(resolution) = outcome.resolution() {
                tx.execute(
                    "UPDATE sync_rejections SET resolved_at = now(), resolution = $2 WHERE id = $1",
                    &[&id, &resolution],
                )?;
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
