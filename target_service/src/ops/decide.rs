//! Deciding recorded elements again, for callers outside the sync round
//! (`target_service redrive`): each element goes through exactly the rules
//! of a fresh change ([`crate::sync::plan`]) against the table as it is now, and
//! what would sync is written, newest still winning.
//!
//! It is safe beside a replica that syncs: the write statements' guards
//! never make a row older, and a unique violation (the replica took an
//! email meanwhile) fails the call, which can simply be made again.

use chrono::{DateTime, Utc};
use postgres::GenericClient;

use crate::metrics::Counted;
use crate::profile::Reason;
use crate::store::{self, Statements};
use crate::sync::change::Change;
use crate::sync::overlay::Overlay;
use crate::sync::plan::{plan, Decision, Storage};
use crate::sync::writer;

/// Decides `elements` (raw element texts, in the order they are to be
/// applied) as fresh changes against the table now: their own earlier
/// rejections do not count as "recorded already". Unless `dry_run`, writes
/// the users rows of those that sync, in one transaction (a savepoint when
/// `client` is a transaction already), and nothing for
/// the rest (their rejections stay as they were). Returns each element's
/// outcome: [`Counted::Synced`], `NotSynced(Reason::Stale)` (its row is as
/// new already), or the reason it is still rejected.
pub fn decide_afresh(
    client: &mut impl GenericClient,
    elements: &[&str],
    latest_allowed: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<Counted>, postgres::Error> {
    let statements = Statements::prepare(client)?;
    let changes: Vec<Change> = (elements.iter())
        .map(|text| Change::from_text(text, latest_allowed))
        .collect();
    let nothing_in_flight = Overlay::default();
    let (stored, _) = nothing_in_flight.read_rows(client, &statements, &changes)?;
    let encoding = store::server_encoding(client)?;
    // Nothing counts as recorded: each element's own rejection is what is
    // decided again.
    let mut view = nothing_in_flight.view(&changes, stored, Vec::new());
    // Where only PostgreSQL can tell, a name is taken to fit; if it does
    // not, the write fails and the call reports it.
    let can_store = |text: &str| encoding.holds(text).unwrap_or(true);
    let refused = Default::default();
    let storage = Storage {
        can_store: &can_store,
        refused: &refused,
    };
    let mut decisions = plan(changes, &mut view, &storage);
    let mut outcomes: Vec<Counted> = decisions.iter().map(|d| d.outcome).collect();
    if dry_run {
        return Ok(outcomes);
    }
    for decision in &mut decisions {
        decision.rejection = None;
        decision.mark = None;
    }
    let syncing: Vec<&Decision> = decisions.iter().filter(|d| d.user.is_some()).collect();
    let unwritten = writer::execute(client, &statements, &syncing)?;
    for (outcome, decision) in outcomes.iter_mut().zip(&decisions) {
        if decision
            .user
            .as_ref()
            .is_some_and(|u| unwritten.contains(&u.id))
        {
            *outcome = Counted::NotSynced(Reason::Stale);
        }
    }
    Ok(outcomes)
}
