//! source_service: a simulated upstream that hands out user-profile changes
//! over HTTP (see SPEC §2).
//!
//! This file starts the application and owns every thread it runs: `App::start`
//! preloads the change log, binds the server and starts `threads` workers that
//! share one `tiny_http::Server` and loop on `recv()`, and one thread that
//! checks the server still accepts connections. `Running::shutdown` wakes the
//! workers with `unblock()` and the checker with `unpark()`, lets in-flight
//! requests finish and joins them.
//!
//! tiny_http accepts connections on a thread of its own, which ends for good
//! at an accept error (reported through `recv()`) or a panic (reported
//! nowhere; the listening socket just closes). Either way the process would
//! live on with nothing listening, so both are a `Fault`, which `main` turns
//! into a non-zero exit for a supervisor to restart the service.
//!
//! Code map: `config` (environment), `generator` (seeded changes as JSON),
//! `change_log` (numbered, bounded replay log), `feed` (the two behind their
//! locks), `http` (routing, socket-free), `metrics` (Prometheus).

pub mod change_log;
pub mod config;
pub mod feed;
pub mod generator;
pub mod http;
pub mod metrics;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use tiny_http::{Header, Response, Server};

use crate::change_log::ChangeLog;
pub use crate::config::{Config, ConfigError};
use crate::feed::Feed;
use crate::generator::Generator;
use crate::http::{Handler, Incoming, Reply};
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
        let socket = bind(config.addr, config.write_timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", config.addr)))?;
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
        socket.listen(1024).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.addr))
        })?;
        let listener: std::net::TcpListener = socket.into();
        let server = Server::from_listener(listener, None).map_err(io::Error::other)?;
        let addr = server.server_addr().to_ip().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "server is not on an IP address",
            )
        })?;
        let server = Arc::new(server);
        let handler = Arc::new(
            Handler::new(feed, metrics, epoch)
                .with_token(config.token.as_ref().map(|token| token.expose())),
        );
        let mut running = Running {
            addr,
            server,
            workers: Vec::with_capacity(config.threads),
            watch: None,
            stopping: Arc::new(AtomicBool::new(false)),
            fault: Arc::new(Fault::default()),
        };

        // On an error, dropping `running` stops the threads already started.
        for n in 0..config.threads {
            let (server, handler, stopping, fault) = (
                Arc::clone(&running.server),
                Arc::clone(&handler),
                Arc::clone(&running.stopping),
                Arc::clone(&running.fault),
            );
            let worker = std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || serve(&server, &handler, &stopping, &fault))?;
            running.workers.push(worker);
        }
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

/// Binds a TCP socket (not yet listening) with `TCP_NODELAY`,
/// `TCP_USER_TIMEOUT` and `SO_SNDTIMEO` set. Linux copies these options to
/// every accepted connection; tiny_http sets none of them on its connections.
///
/// `TCP_NODELAY` matters because tiny_http writes a response's head and body
/// in separate sends: with Nagle's algorithm the body would wait for the
/// client's delayed ACK, some 40 ms per keep-alive request.
///
/// The other two enforce `write_timeout` (see `config::WRITE_TIMEOUT`). `TCP_USER_TIMEOUT` makes the
/// kernel abort a connection whose client has advertised a zero window (or
/// not acknowledged data) for that long, so every response still queued on
/// it fails at once instead of each waiting out its own timeout.
/// `SO_SNDTIMEO` bounds each blocking send as well, in case the kernel does
/// not apply the first to a zero window.
///
/// There is deliberately no `SO_RCVTIMEO`: on a listening socket it also
/// limits `accept`, and tiny_http stops accepting for good at the first
/// accept error, so a quiet minute would end the server.
fn bind(addr: SocketAddr, write_timeout: Duration) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_user_timeout(Some(write_timeout))?;
    socket.set_write_timeout(Some(write_timeout))?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A started application.
pub struct Running {
    /// The address the server listens on (with the real port when 0 was asked).
    pub addr: SocketAddr,
    server: Arc<Server>,
    workers: Vec<JoinHandle<()>>,
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
        // Each unblock makes one recv() return an error. They queue behind
        // the requests already received, so those are answered first; each
        // worker exits at the first unblock it meets, and there is one per
        // worker, so none is left waiting.
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                warn!("a server thread panicked");
            }
        }
        if let Some(watch) = self.watch.take() {
            watch.thread().unpark();
            if watch.join().is_err() {
                warn!("the listener watch panicked");
            }
        }
        // The last reference to the server goes with `self`, which closes the
        // listening socket. Requests that arrive on open connections from now
        // on are not answered; the process is about to exit.
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.workers.is_empty() || self.watch.is_some() {
            self.stop();
        }
    }
}

/// One worker: answers requests until shutdown.
///
/// A worker leaves only at an unblock from `Running::stop` (not at the flag),
/// so requests received before shutdown began are still answered; or when
/// `recv()` fails otherwise, which tiny_http does only when its accept thread
/// has given up: a fault.
fn serve(server: &Server, handler: &Handler, stopping: &AtomicBool, fault: &Fault) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                fault.report(format!("the server stopped accepting connections: {e}"));
                return;
            }
        };
        let started = Instant::now();
        let authorization = request
            .headers()
            .iter()
            .find(|header| header.field.equiv("Authorization"))
            .map(|header| header.value.as_str());
        let (route, reply) = handler.handle(&Incoming {
            method: request.method().as_str(),
            url: request.url(),
            authorization,
        });
        handler.metrics().count_request(route, reply.status);
        let mut response = response(reply);
        if stopping.load(Ordering::SeqCst) {
            // Tell keep-alive clients not to send more on this connection.
            if let Ok(close) = Header::from_bytes(&b"Connection"[..], &b"close"[..]) {
                response.add_header(close);
            }
        }
        if let Err(e) = request.respond(response) {
            debug!("client went away before the response was sent: {e}");
        }
        handler.metrics().observe_duration(route, started.elapsed());
    }
}

/// Until shutdown, checks every `LISTENER_CHECK_INTERVAL` that a connection
/// to the server is not refused. A refusal means the listening socket is
/// closed: tiny_http's accept thread panicked (as it does when it cannot
/// duplicate an accepted socket for lack of file descriptors), which nothing
/// else reports. Other outcomes, a timeout under load included, are not
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

fn response(reply: Reply) -> Response<io::Cursor<Vec<u8>>> {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    let content_type = ("Content-Type", reply.content_type);
    let headers = reply.headers.iter().map(|(n, v)| (*n, v.as_str()));
    for (name, value) in std::iter::once(content_type).chain(headers) {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    response
}
