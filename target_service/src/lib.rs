//! target_service: pulls user-profile changes from the source on a timer and
//! keeps the PostgreSQL `users` table in step (SPEC §3–4).
//!
//! Every thread is started here, so their number and lifetimes read at a
//! glance:
//! - `http-accept` and one `http-conn` per connection ([`http_server`], at
//!   most three quarters of `RLIMIT_NOFILE` connections): `/metrics`,
//!   `/healthz`, `/readyz`, `/status`, the status page, `/openapi.json` and
//!   `/rejections` (the last through a pool of its own);
//! - `sync`: waits for PostgreSQL, applies the schema, then runs the rounds
//!   ([`sync::Syncer`]), feeding one bounded channel per writer;
//! - `writer-N` (`WRITER_THREADS`): execute the decided writes, a batch per
//!   transaction, through the r2d2 pool;
//! - `lock-watch`: pings the connection holding the sync lock twice a second;
//! - `db-probe`: checks once a second that PostgreSQL answers, for `/readyz`;
//! - `db-connect`: at start-up, one attempt at a time to reach PostgreSQL
//!   ([`db_wait`]).

// The docs are the maintainers' (`cargo doc --document-private-items`):
// public items may point at the crate's own modules.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod config;
pub(crate) mod metrics;
pub(crate) mod ops;
pub(crate) mod pool;
pub mod profile;
pub(crate) mod secrets;
pub(crate) mod stop;
pub(crate) mod store;
pub(crate) mod sync;
pub(crate) mod tls;
pub(crate) mod web;

// What `main.rs` and the integration tests use; everything else is the
// crate's own.
pub use crate::config::{variable_warnings, Config, ConfigError, DatabaseConfig};
pub use crate::metrics::{Counted, Metrics};
pub use crate::ops::decide::decide_afresh;
pub use crate::ops::{cli, redrive, verify};
pub use crate::pool::connect;
pub use crate::store::apply_schema;
pub use crate::sync::change::change_key;
pub use crate::web::status::StatusBoard;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, info, warn};

use crate::ops::rejections;
use crate::pool::DbPool;
use crate::sync::{db_wait, writer};
use crate::web::http;

/// Logs to standard error at `level`, every line through
/// [`secrets::redact`]: the service's own lines and those of its HTTP
/// server (refused connections, descriptors running out), not the
/// libraries' chatter.
pub fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .add_filter_allow_str("target_service")
        .add_filter_allow_str("http_server")
        .build();
    let inner = simplelog::TermLogger::new(
        level,
        config,
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    if log::set_boxed_logger(Box::new(Redacting(inner))).is_ok() {
        log::set_max_level(level);
    }
}

/// A logger that masks secrets before the line is written.
struct Redacting(Box<simplelog::TermLogger>);

impl log::Log for Redacting {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.0.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let shown = secrets::redact(&text);
        self.0.log(
            &log::Record::builder()
                .metadata(record.metadata().clone())
                .args(format_args!("{shown}"))
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

pub struct App;

/// A started target: its bound address and the handles to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    stopping: Arc<AtomicBool>,
    wake_sync: Option<Sender<()>>,
    server: Option<http_server::Server>,
    sync_thread: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl App {
    /// Binds the metrics server and starts everything else in the
    /// background; PostgreSQL need not be up yet (`/readyz` says when it is).
    pub fn start(config: Config) -> io::Result<Running> {
        secrets::register(config.secrets().iter().map(String::as_str));
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(StatusBoard::default());
        status.set_serving(&config.source_url, &config.database.connection);
        let stopping = Arc::new(AtomicBool::new(false));

        let admin = Arc::new(http::Admin {
            token: config.admin_token.clone(),
            pool: rejections::admin_pool(
                config.database.connection.clone(),
                config.database.tls.clone(),
            ),
        });
        let server = start_http(&config, &metrics, &status, &admin)?;
        let addr = server.addr();
        info!(
            "metrics and health on http://{addr}; syncing from {}",
            secrets::redact(&config.source_url)
        );

        let (wake_sync, wake_rx) = crossbeam_channel::bounded::<()>(0);
        let sync_thread = {
            let (config, metrics, status, stopping) = (
                Arc::clone(&config),
                Arc::clone(&metrics),
                Arc::clone(&status),
                Arc::clone(&stopping),
            );
            thread::Builder::new()
                .name("sync".to_owned())
                .spawn(move || run_pipeline(config, metrics, status, stopping, wake_rx))?
        };
        Ok(Running {
            addr,
            metrics,
            status,
            stopping,
            wake_sync: Some(wake_sync),
            server: Some(server),
            sync_thread: Some(sync_thread),
            shutdown_timeout: config.shutdown_timeout,
        })
    }
}

impl Running {
    /// Stops fetching, lets the current page finish and its cursor be
    /// stored, and returns within `SHUTDOWN_TIMEOUT_SECS`.
    pub fn shutdown(mut self) {
        // Keep a margin for joining the servers and leaving the process, so
        // the whole exit fits in SHUTDOWN_TIMEOUT_SECS.
        let margin = (self.shutdown_timeout / 5).min(Duration::from_millis(500));
        let deadline = Instant::now() + self.shutdown_timeout - margin;
        self.stopping.store(true, Ordering::Release);
        self.wake_sync.take();
        if let Some(handle) = self.sync_thread.take() {
            if !join_until(handle, deadline) {
                warn!(
                    "shutdown timed out; unwritten changes will be fetched again on the next start"
                );
            }
        }
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        info!("stopped");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_sync.take();
        // Dropping the server (if still there) stops it.
    }
}

/// Starts the metrics and health server on `METRICS_ADDR`. A slow client
/// only holds its own connection's thread.
fn start_http(
    config: &Config,
    metrics: &Arc<Metrics>,
    status: &Arc<StatusBoard>,
    admin: &Arc<http::Admin>,
) -> io::Result<http_server::Server> {
    let cannot = |err: io::Error| {
        io::Error::new(
            err.kind(),
            format!(
                "cannot listen on METRICS_ADDR {}: {err}",
                config.metrics_addr
            ),
        )
    };
    let listener = http_server::bind(config.metrics_addr)
        .and_then(http_server::listen)
        .map_err(cannot)?;
    let settings = http_server::Settings {
        // Shutdown has SHUTDOWN_TIMEOUT_SECS in all, mostly for the sync thread.
        grace: Duration::from_millis(500),
        // Under load, four handlers taking turns in order of arrival keep
        // the slowest answers near the average (p99 of /metrics with 256
        // connections 10-20 ms, against 23-64 ms with every connection's
        // thread at once); one that waits on the database holds the others
        // back 50 ms at most.
        handlers: Some(4),
        handler_patience: Some(Duration::from_millis(50)),
        max_connections: config.max_connections,
        ..http_server::Settings::default()
    };
    let (metrics, status, admin) = (Arc::clone(metrics), Arc::clone(status), Arc::clone(admin));
    let serve =
        move |request: &http_server::Request| http::route(request, &metrics, &status, &admin);
    http_server::Server::start(listener, settings, Arc::new(serve))
}

pub(crate) use crate::stop::sleep_unless_stopping;

/// Joins a thread unless the deadline passes first (then leaves it be).
fn join_until(handle: JoinHandle<()>, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if handle.is_finished() {
            let _ = handle.join();
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The `sync` thread: database first, then writers and rounds until shutdown.
fn run_pipeline(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    stopping: Arc<AtomicBool>,
    wake: crossbeam_channel::Receiver<()>,
) {
    let manager = pool::Manager::new(&config.database);
    let pool: DbPool = r2d2::Pool::builder()
        .max_size(config.db_pool_size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager);
    if !prepare_database(&config, &metrics, &status, &stopping) {
        return;
    }
    let probe = {
        let (pool, status, stopping) = (pool.clone(), Arc::clone(&status), Arc::clone(&stopping));
        thread::Builder::new()
            .name("db-probe".to_owned())
            .spawn(move || probe_database(&pool, &status, &stopping))
    };

    let mut senders = Vec::with_capacity(config.writer_threads);
    let mut writers = Vec::with_capacity(config.writer_threads);
    let (reports, reports_rx) = crossbeam_channel::unbounded();
    let abandoned = Arc::new(AtomicU64::new(0));
    for n in 0..config.writer_threads {
        // One message at a time, of at most half of this writer's share of
        // CHANNEL_CAPACITY; the pipeline gathers the next (see Pipeline).
        let (tx, rx) = crossbeam_channel::bounded(1);
        senders.push(tx);
        let writer = writer::Writer {
            index: n,
            inbox: rx,
            reports: reports.clone(),
            pool: pool.clone(),
            metrics: Arc::clone(&metrics),
            stop: Arc::clone(&stopping),
            abandoned: Arc::clone(&abandoned),
        };
        match thread::Builder::new()
            .name(format!("writer-{n}"))
            .spawn(move || writer.run())
        {
            Ok(handle) => writers.push(handle),
            Err(err) => {
                error!("cannot start writer thread {n}: {err}");
                return;
            }
        }
    }
    info!(
        "{} writers, {} connections at most",
        config.writer_threads, config.db_pool_size
    );

    sync::Syncer::new(
        Arc::clone(&config),
        pool,
        metrics,
        status,
        stopping,
        senders,
        reports_rx,
        abandoned,
    )
    .run(wake);
    // The syncer owned the senders: the writers drain what is left and end.
    for handle in writers {
        let _ = handle.join();
    }
    if let Ok(handle) = probe {
        let _ = handle.join();
    }
}

/// Waits for PostgreSQL (logging each retry) and applies the schema.
/// Returns false when shutdown came first.
fn prepare_database(
    config: &Config,
    metrics: &Metrics,
    status: &StatusBoard,
    stopping: &AtomicBool,
) -> bool {
    let mut delay = Duration::from_millis(250);
    let mut attempts = db_wait::Attempts::default();
    loop {
        if stopping.load(Ordering::Acquire) {
            return false;
        }
        // A connection of its own, not the pool's: the pool would hide each
        // failed attempt behind its checkout timeout.
        match attempts.try_once(&config.database) {
            Ok(()) => {
                info!(
                    "connected to PostgreSQL at {}; schema applied",
                    config.database.description
                );
                status.set_database_reachable(true);
                status.set_schema_applied();
                return true;
            }
            Err(db_wait::Failure { why, lasting }) => {
                metrics.db_errors.inc();
                status.set_database_reachable(false);
                status.round_failed(&why);
                // Still retried: the operator may fix the server (create
                // the database, the role) without restarting the service,
                // and /readyz and /status keep saying why meanwhile.
                let line = db_wait::waiting_line(&config.database, &why, delay);
                if lasting {
                    error!("{line}");
                } else {
                    warn!("{line}");
                }
                sleep_unless_stopping(delay, stopping);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn probe_database(pool: &DbPool, status: &StatusBoard, stopping: &AtomicBool) {
    while !stopping.load(Ordering::Acquire) {
        let reachable = pool
            .get()
            .map(|mut conn| store::ping(&mut conn.client).is_ok())
            .unwrap_or(false);
        status.set_database_reachable(reachable);
        sleep_unless_stopping(Duration::from_secs(1), stopping);
    }
}
