//! source_service: a simulated upstream that hands out user-profile changes
//! over HTTP (see SPEC §2).
//!
//! This file starts the application and owns every thread it runs: `App::start`
//! preloads the change log, binds the server and starts `threads` workers that
//! share one `tiny_http::Server` and loop on `recv()`. `Running::shutdown`
//! wakes them with `unblock()`, lets in-flight requests finish and joins them.
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tiny_http::{Header, Response, Server};

use crate::change_log::ChangeLog;
pub use crate::config::{Config, ConfigError};
use crate::feed::Feed;
use crate::generator::Generator;
use crate::http::{Handler, Reply};
use crate::metrics::Metrics;

/// Entry point of the application.
pub struct App;

impl App {
    /// Preloads the log, binds `config.addr` and starts serving. Returns once
    /// the server accepts connections.
    pub fn start(config: Config) -> io::Result<Running> {
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
            feed.preload(config.preload, &metrics);
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
        let handler = Arc::new(Handler::new(feed, metrics, epoch));
        let stopping = Arc::new(AtomicBool::new(false));

        let mut workers = Vec::with_capacity(config.threads);
        for n in 0..config.threads {
            let (worker_server, worker_handler, worker_stopping) = (
                Arc::clone(&server),
                Arc::clone(&handler),
                Arc::clone(&stopping),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || serve(&worker_server, &worker_handler, &worker_stopping));
            match spawned {
                Ok(worker) => workers.push(worker),
                Err(e) => {
                    // Stop the workers already started before giving up.
                    Running {
                        addr,
                        server,
                        workers,
                        stopping,
                    }
                    .stop();
                    return Err(e);
                }
            }
        }
        info!(
            "listening on http://{addr} with {} threads, epoch {}",
            config.threads,
            handler.epoch()
        );
        Ok(Running {
            addr,
            server,
            workers,
            stopping,
        })
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
    stopping: Arc<AtomicBool>,
}

impl Running {
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
        // The last reference to the server goes with `self`, which closes the
        // listening socket. Requests that arrive on open connections from now
        // on are not answered; the process is about to exit.
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop();
        }
    }
}

/// One worker: answers requests until shutdown.
///
/// A worker leaves only at an unblock from `Running::stop` (not at the flag),
/// so requests received before shutdown began are still answered.
fn serve(server: &Server, handler: &Handler, stopping: &AtomicBool) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                warn!("receiving a request failed: {e}");
                continue;
            }
        };
        let started = Instant::now();
        let (route, reply) = handler.handle(request.method().as_str(), request.url());
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
