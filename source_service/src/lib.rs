//! source_service: a simulated upstream that hands out user-profile changes
//! over HTTP (see SPEC §2).
//!
//! This file starts the application and owns every thread it runs: `App::start`
//! preloads the change log, binds the server (`http_server`: one thread per
//! connection, at most `threads` requests handled at once, the limits of
//! SPEC §6 "Hostile clients") and starts one thread that checks the server
//! still accepts connections. `Running::shutdown` stops accepting, lets
//! in-flight requests finish and joins them.
//!
//! The accept loop ends at no accept error (running out of descriptors
//! included: it closes the connection waiting longest and tries again), but
//! a panic would end it and close the listening socket, and the process
//! would live on with nothing listening: the listener watch reports that as
//! a `Fault`, which `main` turns into a non-zero exit for a supervisor to
//! restart the service.
//!
//! Code map: `config` (environment), `generator` (seeded changes as JSON),
//! `change_log` (numbered, bounded replay log), `feed` (the two behind their
//! locks), `http` (routing, socket-free), `route` (the paths it answers, for
//! `http` and `metrics`), `metrics` (Prometheus).

pub mod change_log;
pub mod config;
pub mod feed;
pub mod generator;
pub mod http;
pub mod metrics;
pub mod route;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::change_log::ChangeLog;
pub use crate::config::{Config, ConfigError};
use crate::feed::Feed;
use crate::generator::Generator;
use crate::http::Handler;
use crate::metrics::Metrics;

/// Entry point of the application.
pub struct App;

impl App {
    /// Preloads the log, binds `config.addr` and starts serving. Returns once
    /// the server accepts connections.
    pub fn start(config: Config) -> io::Result<Running> {
        let never = AtomicBool::new(false);
        let running = App::start_unless(config, &never)?;
        running.ok_or_else(|| io::Error::other("start-up was stopped"))
    }

    /// Like `start`, but gives up during the preload, returning `None`, once
    /// `stop` is set: `main` sets it on SIGTERM or SIGINT, so that a long
    /// preload does not delay shutdown.
    pub fn start_unless(config: Config, stop: &AtomicBool) -> io::Result<Option<Running>> {
        let metrics = Metrics::new().map_err(io::Error::other)?;
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        info!(
            "generator seed {seed}{}, invalid rate {}, log capacity {}",
            if config.seed.is_none() {
                " (random)"
            } else {
                ""
            },
            config.invalid_rate,
            config.log_capacity
        );
        // Bind before the preload, which may take a while, so that an address
        // in use is reported at once; listen only after it, so that nobody
        // connects before the service can answer.
        // Worded as the target words METRICS_ADDR's: the variable to change.
        let cannot_listen = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on SOURCE_ADDR {}: {e}", config.addr),
            )
        };
        let socket = http_server::bind(config.addr).map_err(cannot_listen)?;
        let feed = Feed::new(
            Generator::new(seed, config.invalid_rate),
            ChangeLog::new(config.log_capacity),
        );
        if config.preload > 0 {
            let started = Instant::now();
            if !feed.preload_unless(config.preload, &metrics, stop) {
                info!("preload stopped at {} changes", feed.head());
                return Ok(None);
            }
            info!(
                "preloaded {} changes in {:.2?} ({} MiB of log)",
                feed.head(),
                started.elapsed(),
                feed.log_bytes() / (1024 * 1024)
            );
        }

        let epoch = uuid::Uuid::new_v4().to_string();
        let listener = http_server::listen(socket).map_err(cannot_listen)?;
        let handler = Arc::new(
            Handler::new(feed, metrics, epoch)
                .with_token(config.token.as_ref().map(|token| token.expose())),
        );
        let settings = http_server::Settings {
            name: "http",
            io_timeout: config.write_timeout,
            handlers: Some(config.threads),
            max_connections: config.max_connections,
            ..http_server::Settings::default()
        };
        let serve = {
            let handler = Arc::clone(&handler);
            move |request: &http_server::Request| handler.handle(request)
        };
        let server = http_server::Server::start(listener, settings, Arc::new(serve))?;
        let addr = server.addr();
        let mut running = Running {
            addr,
            server: Some(server),
            watch: None,
            stopping: Arc::new(AtomicBool::new(false)),
            fault: Arc::new(Fault::default()),
        };

        let (stopping, fault) = (Arc::clone(&running.stopping), Arc::clone(&running.fault));
        let watch = std::thread::Builder::new()
            .name("listener-watch".to_string())
            .spawn(move || watch_listener(addr, &stopping, &fault))?;
        running.watch = Some(watch);
        info!(
            "listening on http://{addr} with {} threads, epoch {}{}",
            config.threads,
            handler.epoch(),
            if config.token.is_some() {
                "; /users/changes asks for SOURCE_TOKEN"
            } else {
                ""
            }
        );
        Ok(Some(running))
    }
}

/// How often `watch_listener` checks that the server still accepts
/// connections: how long the process may live on with nothing listening.
const LISTENER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why the server can no longer serve, once something found out; and what to
/// do about it, once `main` said.
#[derive(Default)]
struct Fault {
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    reason: Option<String>,
    on_fault: Option<Box<dyn FnOnce() + Send>>,
}

impl Fault {
    /// Records the first fault, logs it and calls the `on_fault` callback.
    fn report(&self, reason: String) {
        let on_fault = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.reason.is_some() {
                return;
            }
            error!("{reason}; the service cannot go on");
            state.reason = Some(reason);
            state.on_fault.take()
        };
        if let Some(on_fault) = on_fault {
            on_fault();
        }
    }
}

/// A started application.
pub struct Running {
    /// The address the server listens on (with the real port when 0 was asked).
    pub addr: SocketAddr,
    server: Option<http_server::Server>,
    watch: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    fault: Arc<Fault>,
}

impl Running {
    /// Calls `f` once when the server fails for good (it no longer accepts
    /// connections), or at once if it already has. `main` uses it to stop
    /// waiting for a signal; `shutdown` is still to be called.
    pub fn on_fault(&self, f: impl FnOnce() + Send + 'static) {
        let mut state = self
            .fault
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.reason.is_some() {
            drop(state);
            f();
        } else {
            state.on_fault = Some(Box::new(f));
        }
    }

    /// What made the server fail for good, if anything has.
    pub fn fault(&self) -> Option<String> {
        let state = self
            .fault
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.reason.clone()
    }

    /// Stops accepting work, lets in-flight requests finish, and returns when
    /// every worker has exited and the listening socket is closed.
    pub fn shutdown(mut self) {
        info!("shutting down");
        self.stop();
        info!("stopped");
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        if let Some(watch) = self.watch.take() {
            watch.thread().unpark();
            if watch.join().is_err() {
                warn!("the listener watch panicked");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.server.is_some() || self.watch.is_some() {
            self.stop();
        }
    }
}

/// Until shutdown, checks every `LISTENER_CHECK_INTERVAL` that a connection
/// to the server is not refused. A refusal means the listening socket is
/// closed: the accept loop panicked, which nothing else reports. Other outcomes, a timeout under load included, are not
/// faults; a connection made is closed at once.
fn watch_listener(addr: SocketAddr, stopping: &AtomicBool, fault: &Fault) {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    loop {
        // `Running::stop` unparks this thread; a spurious wake-up only checks early.
        std::thread::park_timeout(LISTENER_CHECK_INTERVAL);
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match TcpStream::connect_timeout(&target, LISTENER_CHECK_INTERVAL) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                fault.report(format!(
                    "nothing accepts connections on {addr} any more: {e}"
                ));
                return;
            }
            Err(e) => debug!("checking the listener: {e}"),
            Ok(_) => {}
        }
    }
}
