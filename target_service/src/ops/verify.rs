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
//! A cursor means something only within one `X-Source-Epoch`. When the
//! source restarts while the log is read (a page of another epoch, or a
//! `410` that a new epoch explains), what was read of the old log is
//! dropped and the new log is read from its start, up to its own head; a
//! source that restarts [`MAX_RESTARTS`] times in one run ends it with an
//! error, never with a comparison of two logs mixed.
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
use crate::profile::Profile;
use crate::store;
use crate::sync::fetcher::{self, FetchError, Fetcher};

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

/// Where the log begins and ends, and in which epoch.
struct Bounds {
    min: u64,
    head: u64,
    /// `X-Source-Epoch` of the answer that gave the bounds, when sent.
    epoch: Option<String>,
}

/// How often the source may restart during one run before verify gives up.
pub(crate) const MAX_RESTARTS: u32 = 3;

/// Why reading the log stopped short.
enum ReadError {
    /// The source restarted: its log is another one now.
    Restarted,
    Failed(Failure),
}

impl From<Failure> for ReadError {
    fn from(failure: Failure) -> ReadError {
        ReadError::Failed(failure)
    }
}

/// Asks for a cursor no log reaches: a source with cursors answers `410`
/// with its bounds and generates nothing.
fn probe(config: &Config) -> Result<Bounds, Failure> {
    let beyond = u64::MAX.to_string();
    let answer = Fetcher::new(config)
        .get(&[("since", &beyond), ("limit", "1")])
        .map_err(|err| Failure::Error(err.to_string()))?;
    let number = |name: &str| answer.number(name).ok().flatten();
    let epoch = answer
        .header("X-Source-Epoch")
        .map_err(|err| Failure::Error(err.to_string()))?
        .map(str::to_owned);
    let bounds = |head| Bounds {
        min: number("X-Min-Cursor").unwrap_or(0),
        head,
        epoch: epoch.clone(),
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
            "asking the source for its log's bounds: {}",
            fetcher::status_problem(code)
        ))),
    }
}

/// For each id, the instants of its changes that pass every rule.
type Passing = HashMap<Uuid, Vec<DateTime<Utc>>>;

/// What was read of one epoch's log.
#[derive(Default)]
struct LogRead {
    changes: u64,
    passing: Passing,
}

/// Reads the log, starting over when the source restarts, at most
/// [`MAX_RESTARTS`] times.
fn read_log(config: &Config) -> Result<LogRead, Failure> {
    let mut restarts = 0;
    loop {
        let bounds = probe(config)?;
        match read_epoch(config, &bounds) {
            Ok(read) => return Ok(read),
            Err(ReadError::Failed(failure)) => return Err(failure),
            Err(ReadError::Restarted) if restarts < MAX_RESTARTS => {
                restarts += 1;
                eprintln!(
                    "verify: the source restarted (a new X-Source-Epoch) while its log was read; \
                     reading its new log from the start"
                );
            }
            Err(ReadError::Restarted) => {
                return Err(Failure::Error(format!(
                    "the source keeps restarting (a new X-Source-Epoch {} times while its log \
                     was read), so nothing was compared; run verify again once the source runs \
                     steadily",
                    restarts + 1
                )))
            }
        }
    }
}

/// Reads one epoch's log from its oldest change to `bounds.head`.
fn read_epoch(config: &Config, bounds: &Bounds) -> Result<LogRead, ReadError> {
    let fetcher = Fetcher::new(config);
    let mut since = bounds.min;
    let mut read = LogRead::default();
    let mut epoch = bounds.epoch.clone();
    let mut trimmed = 0;
    while since < bounds.head {
        let limit = usize::try_from(bounds.head - since)
            .unwrap_or(usize::MAX)
            .min(config.fetch_limit);
        let page = match fetcher.fetch(Some((since, limit))) {
            Ok(page) => page,
            Err(FetchError::Gone { .. }) if trimmed < 100 => {
                trimmed += 1;
                since = after_gone(config, epoch.as_deref(), since, bounds.head)?;
                continue;
            }
            Err(err) => {
                return Err(Failure::Error(format!("reading the source's log: {err}")).into())
            }
        };
        let Some(next) = page.next_cursor else {
            return Err(Failure::NoCursors.into());
        };
        match (&epoch, &page.epoch) {
            (Some(known), Some(sent)) if known != sent => return Err(ReadError::Restarted),
            (None, Some(sent)) => epoch = Some(sent.clone()),
            _ => {}
        }
        if next <= since || next > since + limit as u64 {
            return Err(Failure::Error(format!(
                "the source's X-Next-Cursor {next} does not follow since={since}"
            ))
            .into());
        }
        let latest_allowed = Utc::now() + config.max_future_skew;
        for (_, text) in page.elements() {
            read.changes += 1;
            if let Ok(profile) = Profile::parse_json(text, latest_allowed) {
                (read.passing.entry(profile.id).or_default())
                    .push(profile.last_updated_at.as_datetime());
            }
        }
        since = next;
    }
    Ok(read)
}

/// After a `410` to `since` while reading the log of `epoch`: where that log
/// goes on (its oldest change kept, when older ones went while it was
/// read), or that the source restarted.
fn after_gone(
    config: &Config,
    epoch: Option<&str>,
    since: u64,
    head: u64,
) -> Result<u64, ReadError> {
    let now = probe(config)?;
    if let (Some(now_epoch), Some(read_epoch)) = (now.epoch.as_deref(), epoch) {
        if now_epoch != read_epoch {
            return Err(ReadError::Restarted);
        }
    }
    if now.min > since && now.min < head {
        return Ok(now.min);
    }
    Err(Failure::Error(format!(
        "reading the source's log: it answered 410 to since={since}, which its log (oldest \
         {}, head {}) holds",
        now.min, now.head
    ))
    .into())
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
    let read = read_log(config)?;
    let database = |err: postgres::Error| {
        Failure::Error(format!(
            "PostgreSQL at {} failed: {}",
            config.database.description,
            crate::pool::describe(&err)
        ))
    };
    let mut client = crate::pool::connect(&config.database).map_err(|err| {
        Failure::Error(format!(
            "cannot connect to PostgreSQL at {}: {}",
            config.database.description,
            crate::pool::describe(&err)
        ))
    })?;
    let mut report = compare(&mut client, &read.passing).map_err(database)?;
    report.changes = read.changes;
    Ok(report)
}
