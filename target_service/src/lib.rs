//! target_service: pulls user-profile changes from the source on a timer and
//! keeps the PostgreSQL `users` table in step (SPEC §3–4).
//!
//! Every thread is started here, so their number and lifetimes read at a
//! glance:
//! - `http-N` (2): `/metrics`, `/healthz`, `/readyz`, `/status`;
//! - `sync`: waits for PostgreSQL, applies the schema, then runs the rounds
//!   ([`sync::Syncer`]), feeding one bounded channel per writer;
//! - `writer-N` (`WRITER_THREADS`): batch writes through the r2d2 pool;
//! - `db-probe`: checks once a second that PostgreSQL answers, for `/readyz`.

pub mod config;
pub mod fetcher;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod profile;
pub mod routing;
pub mod secrets;
pub mod status;
pub mod store;
pub mod sync;
pub mod tls;
pub mod writer;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::DbPool;
use crate::status::StatusBoard;

const HTTP_THREADS: usize = 2;

/// Logs to standard error at `level`, every line through
/// [`secrets::redact`].
pub fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .add_filter_allow_str("target_service")
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
    server: Arc<tiny_http::Server>,
    http_threads: Vec<JoinHandle<()>>,
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
        let stopping = Arc::new(AtomicBool::new(false));

        let server = tiny_http::Server::http(config.metrics_addr).map_err(|err| {
            io::Error::other(format!(
                "cannot listen on METRICS_ADDR {}: {err}",
                config.metrics_addr
            ))
        })?;
        let server = Arc::new(server);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the metrics server is not on an IP address"))?;
        let mut http_threads = Vec::with_capacity(HTTP_THREADS);
        for n in 0..HTTP_THREADS {
            let (server, metrics, status) = (
                Arc::clone(&server),
                Arc::clone(&metrics),
                Arc::clone(&status),
            );
            http_threads.push(thread::Builder::new().name(format!("http-{n}")).spawn(
                move || {
                    while let Ok(request) = server.recv() {
                        http::respond(request, &metrics, &status);
                    }
                },
            )?);
        }
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
            server,
            http_threads,
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
        // Each unblock wakes one thread waiting in recv().
        for _ in &self.http_threads {
            self.server.unblock();
        }
        for handle in self.http_threads.drain(..) {
            let _ = handle.join();
        }
        info!("stopped");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_sync.take();
        for _ in &self.http_threads {
            self.server.unblock();
        }
    }
}

/// Sleeps for `total`, or less if shutdown starts meanwhile: every backoff
/// and poll interval goes through here so none of them delays shutdown.
pub(crate) fn sleep_unless_stopping(total: Duration, stopping: &AtomicBool) {
    let deadline = Instant::now() + total;
    while !stopping.load(Ordering::Acquire) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(25)));
    }
}

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

    let per_writer = config
        .channel_capacity
        .div_ceil(config.writer_threads)
        .max(1);
    let mut senders = Vec::with_capacity(config.writer_threads);
    let mut writers = Vec::with_capacity(config.writer_threads);
    for n in 0..config.writer_threads {
        let (tx, rx) = crossbeam_channel::bounded(per_writer);
        senders.push(tx);
        let (pool, metrics, stopping) = (pool.clone(), Arc::clone(&metrics), Arc::clone(&stopping));
        match thread::Builder::new()
            .name(format!("writer-{n}"))
            .spawn(move || writer::run(rx, pool, metrics, stopping))
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
    let mut attempt = 1u32;
    loop {
        if stopping.load(Ordering::Acquire) {
            return false;
        }
        // A connection of its own, not the pool's: the pool would hide each
        // failed attempt behind its checkout timeout.
        let result = pool::connect(&config.database)
            .and_then(|mut client| store::apply_schema(&mut client))
            .map_err(|err| (pool::describe(&err), pool::lasting_cause(&err).is_some()));
        match result {
            Ok(()) => {
                info!(
                    "connected to PostgreSQL at {}; schema applied",
                    config.database.description
                );
                status.set_database_reachable(true);
                status.set_schema_applied();
                return true;
            }
            Err((why, lasting)) => {
                metrics.db_errors.inc();
                status.set_database_reachable(false);
                status.round_failed(&why);
                // Still retried: the operator may fix the server (create
                // the database, the role) without restarting the service,
                // and /readyz and /status keep saying why meanwhile.
                let line = format!(
                    "PostgreSQL at {} is not ready (attempt {attempt}), retrying in {delay:?}: {why}",
                    config.database.description
                );
                if lasting {
                    error!("{line}");
                } else {
                    warn!("{line}");
                }
                sleep_unless_stopping(delay, stopping);
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
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
