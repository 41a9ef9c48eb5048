//! Which replica syncs: the one holding a PostgreSQL session advisory lock
//! for the source. The lock lives as long as its connection; a watcher
//! thread pings that connection every half second, so a replica whose
//! connection ends learns within a second that it may have lost the lock
//! (another replica may hold it by then), stops, and reports `standby`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use log::{debug, info, warn};
use postgres::Client;

use crate::config::DatabaseConfig;
use crate::stop::{sleep_unless_stopping, stopping};
use crate::store;
use crate::web::status::{Activity, StatusBoard};

/// How often the holder checks its lock connection.
const WATCH_EVERY: Duration = Duration::from_millis(500);

struct Shared {
    connection: Mutex<Option<Client>>,
    holds: AtomicBool,
}

pub struct Leader {
    shared: Arc<Shared>,
    database: DatabaseConfig,
    source_url: String,
    watcher: Option<thread::JoinHandle<()>>,
}

impl Leader {
    /// Starts the watcher; nothing is locked until [`Leader::hold`].
    pub fn new(
        database: DatabaseConfig,
        source_url: &str,
        status: Arc<StatusBoard>,
        stop: Arc<AtomicBool>,
    ) -> Leader {
        let shared = Arc::new(Shared {
            connection: Mutex::new(None),
            holds: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let watcher = thread::Builder::new()
            .name("lock-watch".to_owned())
            .spawn(move || watch(&watched, &status, &stop))
            .map_err(|err| warn!("cannot start the lock watcher: {err}"))
            .ok();
        Leader {
            shared,
            database,
            source_url: source_url.to_owned(),
            watcher,
        }
    }

    /// Whether this replica holds the lock, as last checked.
    pub fn holds(&self) -> bool {
        self.shared.holds.load(Ordering::Acquire)
    }

    /// Keeps or takes the lock; `Err` when PostgreSQL cannot be reached.
    pub fn hold(&self) -> Result<bool, String> {
        if self.holds() {
            return Ok(true);
        }
        let mut slot = self
            .shared
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let client = match slot.as_mut() {
            Some(client) => client,
            None => match crate::pool::connect(&self.database) {
                Ok(client) => slot.insert(client),
                Err(err) => {
                    return Err(format!(
                        "cannot connect to PostgreSQL: {}",
                        crate::pool::describe(&err)
                    ))
                }
            },
        };
        match store::try_sync_lock(client, &self.source_url) {
            Ok(true) => {
                info!(
                    "holding the sync lock for {}; this replica syncs",
                    self.source_url
                );
                self.shared.holds.store(true, Ordering::Release);
                Ok(true)
            }
            Ok(false) => {
                debug!("another replica holds the sync lock; standing by");
                Ok(false)
            }
            Err(err) => {
                *slot = None;
                Err(format!(
                    "taking the sync lock failed: {}",
                    crate::pool::describe(&err)
                ))
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(handle) = self.watcher.take() {
            // The watcher ends with the stop flag, which is set by now.
            let _ = handle.join();
        }
    }
}

fn watch(shared: &Shared, status: &StatusBoard, stop: &AtomicBool) {
    while !stopping(stop) {
        if shared.holds.load(Ordering::Acquire) {
            let mut slot = shared
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let alive = slot
                .as_mut()
                .is_some_and(|client| store::ping(client).is_ok());
            if !alive {
                *slot = None;
                shared.holds.store(false, Ordering::Release);
                status.set_state(Activity::Standby);
                warn!("lost the connection holding the sync lock; standing by until it is taken again");
            }
        }
        sleep_unless_stopping(WATCH_EVERY, stop);
    }
}
