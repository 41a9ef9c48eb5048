//! `target_service verify`: compares the `users` table with the source's
//! retained change log.
//!
//! It learns the log's bounds without making the source generate anything:
//! a first request with a cursor beyond any head is answered `410` with
//! `X-Min-Cursor` and `X-Head-Cursor`. It then pages from the oldest
//! retained change (`since=X-Min-Cursor`, `0` while nothing was dropped) up to
//! that head, never asking for `since=head` (which would generate a batch).
//! A source that answers without cursor headers is one like the original:
//! there is no log to read, and the command exits 2.
//!
//! Each element is read by the service's own parser
//! ([`Profile::parse_json`]); a change "passes every rule on its own" when
//! it parses (valid, `active`/`pending`, not in the future). For each id, its
//! newest such change that has no rejection recorded for it (matched by id
//! and `last_updated_at`, so it holds whatever the rejection key is) must not
//! be newer than the id's row. Rows newer than every passing change of their
//! id in the log are counted as ahead of the source (a row written from an
//! earlier epoch, or by hand); ids the log no longer holds are not judged.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use postgres::Client;
use uuid::Uuid;

use crate::config::Config;
use crate::fetcher::{FetchError, Fetcher};
use crate::profile::Profile;
use crate::store;

/// How a verification ended.
#[derive(Debug)]
pub enum Failure {
    /// The source sends no cursors (like the original): exit 2.
    NoCursors,
    /// The source or the database failed: exit 1.
    Error(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoCursors => f.write_str(
                "verify: the source sends no X-Next-Cursor (a source like the original): it keeps no log to compare with",
            ),
            Failure::Error(why) => write!(f, "verify: {why}"),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub changes: u64,
    pub ids: u64,
    /// Ids missing or behind, sorted, each with whether its row is missing.
    pub missing_or_behind: Vec<(Uuid, bool)>,
    pub ahead: u64,
}

impl Report {
    /// The summary line and up to `max_report` ids, one a line.
    pub fn lines(&self, max_report: usize) -> Vec<String> {
        let mut lines = vec![format!(
            "verify: {} changes read, {} ids, {} missing or behind, {} rows ahead of the source",
            self.changes,
            self.ids,
            self.missing_or_behind.len(),
            self.ahead
        )];
        for (id, missing) in self.missing_or_behind.iter().take(max_report) {
            lines.push(format!(
                "{id} {}",
                if *missing { "missing" } else { "behind" }
            ));
        }
        lines
    }
}

/// Where the log begins and ends.
struct Bounds {
    min: u64,
    head: u64,
}

/// Asks for a cursor no log reaches: a source with cursors answers `410`
/// with its bounds and generates nothing.
fn probe(config: &Config) -> Result<Bounds, Failure> {
    let beyond = u64::MAX.to_string();
    let answer = Fetcher::new(config)
        .get(&[("since", &beyond), ("limit", "1")])
        .map_err(|err| Failure::Error(err.to_string()))?;
    let number = |name: &str| answer.number(name).ok().flatten();
    let bounds = |head| Bounds {
        min: number("X-Min-Cursor").unwrap_or(0),
        head,
    };
    match answer.status() {
        410 => number("X-Head-Cursor").map(bounds).ok_or_else(|| {
            Failure::Error("the source answered 410 without X-Head-Cursor".to_owned())
        }),
        200..=299
            if answer
                .header("X-Next-Cursor")
                .map_err(|err| Failure::Error(err.to_string()))?
                .is_none() =>
        {
            Err(Failure::NoCursors)
        }
        200..=299 => number("X-Head-Cursor")
            .map(bounds)
            .ok_or_else(|| Failure::Error("the source sent no X-Head-Cursor".to_owned())),
        code => Err(Failure::Error(format!(
            "the source answered HTTP {code} to a cursor beyond its head"
        ))),
    }
}

/// For each id, the instants of its changes that pass every rule.
type Passing = HashMap<Uuid, Vec<DateTime<Utc>>>;

/// Reads the log from its oldest change to `bounds.head`.
fn read_log(config: &Config, bounds: &Bounds) -> Result<(u64, Passing), Failure> {
    let fetcher = Fetcher::new(config);
    let mut since = bounds.min;
    let mut read = 0u64;
    let mut passing = Passing::new();
    let mut restarts = 0;
    while since < bounds.head {
        let limit = usize::try_from(bounds.head - since)
            .unwrap_or(usize::MAX)
            .min(config.fetch_limit);
        let page = match fetcher.fetch(Some((since, limit))) {
            Ok(page) => page,
            // The oldest changes went while we read: go on from the oldest kept.
            Err(FetchError::Gone {
                min_cursor: Some(min),
            }) if min > since && min < bounds.head && restarts < 100 => {
                restarts += 1;
                since = min;
                continue;
            }
            Err(err) => return Err(Failure::Error(format!("reading the source's log: {err}"))),
        };
        let Some(next) = page.next_cursor else {
            return Err(Failure::NoCursors);
        };
        if next <= since || next > since + limit as u64 {
            return Err(Failure::Error(format!(
                "the source's X-Next-Cursor {next} does not follow since={since}"
            )));
        }
        let latest_allowed = Utc::now() + config.max_future_skew;
        for (_, text) in page.elements() {
            read += 1;
            if let Ok(profile) = Profile::parse_json(text, latest_allowed) {
                (passing.entry(profile.id).or_default())
                    .push(profile.last_updated_at.as_datetime());
            }
        }
        since = next;
    }
    Ok((read, passing))
}

/// Ids looked up per statement.
const CHUNK: usize = 5000;

/// Compares the passing changes with the table.
fn compare(client: &mut Client, passing: &Passing) -> Result<Report, postgres::Error> {
    let mut report = Report {
        ids: passing.len() as u64,
        ..Report::default()
    };
    let ids: Vec<Uuid> = passing.keys().copied().collect();
    for chunk in ids.chunks(CHUNK) {
        let rows = store::row_times(client, chunk)?;
        let recorded = store::rejected_changes(client, chunk)?;
        for id in chunk {
            let times = &passing[id];
            let newest_unrejected = (times.iter())
                .filter(|at| !recorded.contains(&(*id, **at)))
                .max();
            let newest = times.iter().max();
            match (rows.get(id), newest_unrejected) {
                (None, Some(_)) => report.missing_or_behind.push((*id, true)),
                (Some(row), Some(at)) if at > row => report.missing_or_behind.push((*id, false)),
                _ => {}
            }
            if let (Some(row), Some(newest)) = (rows.get(id), newest) {
                if row > newest {
                    report.ahead += 1;
                }
            }
        }
    }
    report.missing_or_behind.sort_unstable();
    Ok(report)
}

/// Runs the command.
pub fn run(config: &Config) -> Result<Report, Failure> {
    let bounds = probe(config)?;
    let (changes, passing) = read_log(config, &bounds)?;
    let mut client = crate::pool::connect(&config.database).map_err(|err| {
        Failure::Error(format!(
            "cannot connect to PostgreSQL at {}: {err}",
            config.database.description
        ))
    })?;
    let mut report = compare(&mut client, &passing).map_err(|err| {
        Failure::Error(format!(
            "PostgreSQL at {} failed: {}",
            config.database.description,
            store::describe(&err)
        ))
    })?;
    report.changes = changes;
    Ok(report)
}
