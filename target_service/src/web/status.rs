//! What the service is doing right now, shared between the threads that
//! change it and the HTTP handlers that report it (`/readyz`, `/status`).
//!
//! Readers only ever take a short lock or read an atomic, so reporting never
//! waits on PostgreSQL or the source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Holding the sync lock and working through a round.
    Syncing,
    /// Holding the sync lock, between rounds.
    Idle,
    /// Another replica holds the sync lock.
    Standby,
}

#[derive(Debug, Default)]
struct Progress {
    state: Option<Activity>,
    cursor: u64,
    epoch: Option<String>,
    last_success: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

/// Where the service reads from and writes to, as `/status` shows it:
/// secrets masked, no user names.
#[derive(Debug)]
struct Serving {
    source: String,
    database: String,
}

#[derive(Debug, Default)]
pub struct StatusBoard {
    database_reachable: AtomicBool,
    schema_applied: AtomicBool,
    serving: OnceLock<Serving>,
    progress: Mutex<Progress>,
}

impl StatusBoard {
    pub fn set_database_reachable(&self, reachable: bool) {
        self.database_reachable.store(reachable, Ordering::Release);
    }

    pub fn set_schema_applied(&self) {
        self.schema_applied.store(true, Ordering::Release);
    }

    /// Ready means: the database answers and the schema is in place.
    pub fn is_ready(&self) -> bool {
        self.database_reachable.load(Ordering::Acquire)
            && self.schema_applied.load(Ordering::Acquire)
    }

    /// Names the source and the database on `/status`: the source URL with
    /// its user-info and every registered secret masked, the database as
    /// `host:port[,host:port…]/dbname` (no user, no password). Set once, at
    /// start-up.
    pub fn set_serving(&self, source_url: &str, database: &postgres::Config) {
        let source = crate::secrets::redact(source_url).into_owned();
        let database = crate::secrets::redact(&database_location(database)).into_owned();
        let _ = self.serving.set(Serving { source, database });
    }

    pub fn set_state(&self, state: Activity) {
        self.with(|p| p.state = Some(state));
    }

    pub fn set_position(&self, cursor: u64, epoch: Option<&str>) {
        self.with(|p| {
            p.cursor = cursor;
            p.epoch = epoch.map(str::to_owned);
        });
    }

    pub fn round_succeeded(&self, at: DateTime<Utc>) {
        self.with(|p| {
            p.last_success = Some(at);
            p.last_error = None;
        });
    }

    /// Records the last error, secrets masked (it is shown on `/status`).
    pub fn round_failed(&self, error: &str) {
        let shown = crate::secrets::redact(error).into_owned();
        self.with(|p| p.last_error = Some(shown));
    }

    fn with(&self, change: impl FnOnce(&mut Progress)) {
        // A poisoned lock only means a reporter panicked mid-update; the
        // fields are plain values, still fine to overwrite.
        let mut progress = self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut progress);
    }

    /// The body of `GET /status`.
    pub fn to_json(&self, metrics: &Metrics) -> Value {
        let progress = self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = if !self.is_ready() {
            "waiting_for_database"
        } else {
            match progress.state {
                Some(Activity::Syncing) => "syncing",
                Some(Activity::Standby) => "standby",
                Some(Activity::Idle) | None => "idle",
            }
        };
        let rejected: serde_json::Map<String, Value> = metrics
            .rejected_by_reason()
            .into_iter()
            .map(|(reason, count)| (reason.to_owned(), json!(count)))
            .collect();
        let serving = self.serving.get();
        json!({
            "state": state,
            "source": serving.map(|s| s.source.as_str()),
            "database": serving.map(|s| s.database.as_str()),
            "cursor": progress.cursor,
            "epoch": progress.epoch,
            "last_success": progress.last_success.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            "last_error": progress.last_error,
            // Head minus cursor, as `sync_source_lag`; the page shows it.
            "lag": metrics.source_lag.get(),
            "queue_depth": metrics.queue_depth.get(),
            "totals": {
                "fetched": metrics.fetched.get(),
                "synced": metrics.synced.get(),
                "skipped": metrics.skipped.get(),
                "rejected": rejected,
                "fetch_errors": metrics.fetch_errors.get(),
                "db_errors": metrics.db_errors.get(),
            },
        })
    }
}

/// `host:port[,host:port…]/dbname` of a connection configuration: every
/// server it may reach (several for failover), without user-info.
fn database_location(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(n, host)| {
            let name = match host {
                postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one per host, as libpq reads them.
            let port = ports.get(n).or(ports.first()).copied().unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let dbname = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{hosts}/{dbname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_named_by_its_servers_and_name_without_user_info() {
        let config: postgres::Config =
            "postgres://app:pw@db1:5433,db2/profiles?target_session_attrs=read-write"
                .parse()
                .expect("a valid URL");
        let board = StatusBoard::default();
        board.set_serving(
            "https://reader:s3cret@source.example/users/changes",
            &config,
        );
        let body = board.to_json(&Metrics::new());
        assert_eq!(body["source"], "https://***@source.example/users/changes");
        assert_eq!(body["database"], "db1:5433,db2:5432/profiles");
    }
}
