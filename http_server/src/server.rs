//! The server around the connections: binding and listening, the accept
//! loop, the registry of open connections with the cap and what is closed
//! to make room (at the cap, when descriptors run out, past the response
//! budget), one thread per connection, and shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::connection::{serve, Connection, State, Stream};
use crate::gate::Gate;
use crate::limits::{
    descriptor_cap, Settings, ACCEPT_BACKOFF, ACCEPT_POLL, EVICTED_PER_SHORTAGE, ROOM_WAIT,
    STACK_SIZE,
};
use crate::message::{encode, error, Request, Response};

/// Answers requests; called on connection threads, at most
/// `Settings::handlers` at once.
pub type Handler = dyn Fn(&Request<'_>) -> Response + Send + Sync;

/// A TCP socket bound to `addr`, not yet listening: a caller may bind early
/// (to report an address in use at once) and listen once it can answer.
/// `TCP_NODELAY` is set here and so inherited by every accepted connection:
/// without it a response written after a previous one would wait for the
/// client's delayed ACK.
pub fn bind(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Starts listening on a socket from `bind`.
pub fn listen(socket: socket2::Socket) -> io::Result<TcpListener> {
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The address a service listens on, from a setting: a host (address or
/// name, a name listening on the first address it resolves to) and a port;
/// `:8080`, as Go services write it, listens on every address.
pub fn listen_addr(text: &str) -> Option<SocketAddr> {
    match text.strip_prefix(':') {
        Some(port) => Some(SocketAddr::from(([0, 0, 0, 0], port.parse().ok()?))),
        None => text.to_socket_addrs().ok()?.next(),
    }
}

/// Serves one connection over `stream` until either side closes it, a
/// deadline passes or the handler's answer closes it: the reading, parsing,
/// answering and closing of a `Server`'s connections, with their deadlines
/// and handler turns, but alone (no cap, no eviction, no shutdown). For
/// exercising the connection handling over streams that are not sockets.
pub fn serve_stream<S: Stream>(stream: S, settings: Settings, handler: Arc<Handler>) {
    let shared = Shared::new(settings, handler);
    serve(&Connection::new(stream, &shared), &shared);
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the accept loop and every connection's thread share.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    /// `Settings::max_connections`, bounded by `descriptor_cap()`.
    cap: usize,
    /// The most connections that were ever open at once.
    peak: AtomicUsize,
    pub(crate) handler: Arc<Handler>,
    pub(crate) stopping: AtomicBool,
    pub(crate) gate: Option<Gate>,
    connections: Mutex<Registry>,
    /// Notified whenever a connection ends.
    ended: Condvar,
    /// Bytes of responses being sent, in all.
    pending: AtomicUsize,
    started: Instant,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
}

impl Shared {
    fn new(settings: Settings, handler: Arc<Handler>) -> Shared {
        let gate = settings
            .handlers
            .map(|n| Gate::new(n, settings.handler_patience));
        Shared {
            cap: settings.max_connections.clamp(1, descriptor_cap()),
            peak: AtomicUsize::new(0),
            handler,
            stopping: AtomicBool::new(false),
            gate,
            connections: Mutex::new(Registry::default()),
            ended: Condvar::new(),
            pending: AtomicUsize::new(0),
            started: Instant::now(),
            settings,
        }
    }

    pub(crate) fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes a connection to make room for another (not one whose handler
    /// runs; see `evict`). Returns false if there is none.
    fn evict_one(&self, registry: &Registry) -> bool {
        self.evict(registry, |_, _| true).is_some()
    }

    /// Closes one connection among those `eligible` (by connection and
    /// state), never one whose handler runs: the one idle longest between
    /// requests (or already closing), else the one waiting longest for its
    /// next head, else the one whose client has taken longest over a
    /// response. Returns the bytes of response it held, if one was closed.
    fn evict(
        &self,
        registry: &Registry,
        eligible: impl Fn(&Connection, State) -> bool,
    ) -> Option<usize> {
        // Of two that began waiting in the same millisecond, the one
        // accepted first (ids count up) has waited longer.
        let (_, victim) = registry
            .open
            .iter()
            .filter(|(_, c)| {
                let state = c.state();
                !matches!(state, State::Handling | State::Evicted) && eligible(c, state)
            })
            .min_by_key(|(id, c)| {
                let rank = match c.state() {
                    State::Idle | State::Closing => 0,
                    State::Waiting => 1,
                    _ => 2,
                };
                (rank, c.since.load(Ordering::Relaxed), **id)
            })?;
        victim.evict();
        Some(victim.pending.load(Ordering::Relaxed))
    }

    /// Counts `bytes` of response about to be sent on `connection`. Past
    /// `Settings::response_budget` in all, the connections whose clients
    /// have taken their responses slowest are closed until the excess is
    /// freed, so clients that never read cannot hold more than that much
    /// memory.
    pub(crate) fn reserve<S>(&self, connection: &Connection<S>, bytes: usize) {
        connection.pending.store(bytes, Ordering::Relaxed);
        let total = self.pending.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let mut excess = total.saturating_sub(self.settings.response_budget);
        if excess == 0 {
            return;
        }
        let registry = self.registry();
        while excess > 0 {
            let other_sender = |c: &Connection, state| {
                state == State::Sending && !std::ptr::addr_eq(c, connection)
            };
            match self.evict(&registry, other_sender) {
                Some(freed) => excess = excess.saturating_sub(freed.max(1)),
                None => return,
            }
        }
    }

    pub(crate) fn release<S>(&self, connection: &Connection<S>) {
        let bytes = connection.pending.swap(0, Ordering::Relaxed);
        self.pending.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Waits, holding `registry` between looks, until there is room for one
    /// more connection, closing one (`evict_one`) whenever none is on its
    /// way out already. `None` when none can be closed (every connection is
    /// in a handler) or none let go in `ROOM_WAIT`.
    fn make_room<'a>(
        &'a self,
        mut registry: MutexGuard<'a, Registry>,
    ) -> Option<MutexGuard<'a, Registry>> {
        let deadline = Instant::now() + ROOM_WAIT;
        while registry.open.len() >= self.cap {
            let leaving = (registry.open.values())
                .filter(|c| c.state() == State::Evicted)
                .count();
            if registry.open.len() - leaving >= self.cap && !self.evict_one(&registry) {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            registry = (self.ended.wait_timeout(registry, left))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(registry)
    }

    /// Out of descriptors: closes the connection waiting longest as ever (a
    /// response being sent, if nothing else can go), and an eighth of the
    /// others waiting for their client (at least 7), so that a flood queued
    /// behind the listener drains in well under a second instead of one
    /// connection per back-off.
    fn evict_for_descriptors(&self) {
        let registry = self.registry();
        if self.evict_one(&registry) {
            let more = (registry.open.len() / 8).max(EVICTED_PER_SHORTAGE) - 1;
            for _ in 0..more {
                let waiting = |_: &Connection, state| matches!(state, State::Waiting | State::Idle);
                if self.evict(&registry, waiting).is_none() {
                    break;
                }
            }
        }
    }
}

impl Server {
    /// Serves `listener` (from `listen`) with `handler` until `shutdown`.
    pub fn start(
        listener: TcpListener,
        settings: Settings,
        handler: Arc<Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        // Accept wakes up this often to look at the stop flag.
        socket2::SockRef::from(&listener).set_read_timeout(Some(ACCEPT_POLL))?;
        let shared = Arc::new(Shared::new(settings, handler));
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("{}-accept", shared.settings.name))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Server {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.registry().open.len()
    }

    /// The most connections that were ever open at once.
    pub fn peak_connections(&self) -> usize {
        self.shared.peak.load(Ordering::Relaxed)
    }

    /// The most connections that may be open at once.
    pub fn connection_cap(&self) -> usize {
        self.shared.cap
    }

    /// Whether the accept loop still runs (it ends only at `shutdown` or by
    /// a panic).
    pub fn is_accepting(&self) -> bool {
        self.acceptor.as_ref().is_some_and(|a| !a.is_finished())
    }

    /// Stops accepting, closes the connections that wait for their client,
    /// lets responses in flight finish within `Settings::grace`, then closes
    /// every connection left and returns once their threads are done (or a
    /// second later at most).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.join().is_err() {
                warn!("the accept loop panicked");
            }
        }
        {
            let registry = shared.registry();
            for connection in registry.open.values() {
                if matches!(connection.state(), State::Waiting | State::Idle) {
                    connection.close();
                }
            }
        }
        if !self.wait_for_connections(shared.settings.grace) {
            for connection in shared.registry().open.values() {
                connection.close();
            }
            if !self.wait_for_connections(Duration::from_secs(1)) {
                warn!("connections still open at shutdown");
            }
        }
    }

    /// Waits until no connection is open; false if `limit` passed first.
    fn wait_for_connections(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut registry = self.shared.registry();
        while !registry.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            registry = self
                .shared
                .ended
                .wait_timeout(registry, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut last_warning: Option<Instant> = None;
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => admit(stream, shared),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: make room
                // by closing the connections waiting longest, and try again
                // shortly; the listener stays.
                if out_of_descriptors(&e) {
                    shared.evict_for_descriptors();
                }
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    warn!("accepting a connection failed, trying again: {e}");
                    last_warning = Some(Instant::now());
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Whether `accept` failed for want of a descriptor, of the process
/// (`EMFILE`) or of the system (`ENFILE`).
#[cfg(unix)]
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Elsewhere no error is known to mean that; the back-off alone applies.
#[cfg(not(unix))]
fn out_of_descriptors(_: &io::Error) -> bool {
    false
}

/// Registers an accepted connection (making room at the cap) and starts its
/// thread.
fn admit(stream: TcpStream, shared: &Arc<Shared>) {
    if let Err(e) = configure(&stream, shared.settings.io_timeout) {
        debug!("dropping a connection that cannot be set up: {e}");
        return;
    }
    let connection = Arc::new(Connection::new(stream, shared));
    let id = {
        let Some(mut registry) = shared.make_room(shared.registry()) else {
            // Every connection is in a handler: refuse this one.
            refuse(&connection.stream);
            return;
        };
        let id = registry.next_id;
        registry.next_id += 1;
        registry.open.insert(id, Arc::clone(&connection));
        shared
            .peak
            .fetch_max(registry.open.len(), Ordering::Relaxed);
        id
    };
    let spawned = {
        let shared = Arc::clone(shared);
        let connection = Arc::clone(&connection);
        std::thread::Builder::new()
            .name(format!("{}-conn", shared.settings.name))
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let done = Done(&shared, id, Some(connection));
                if let Some(connection) = &done.2 {
                    serve(connection, &shared);
                }
            })
    };
    if let Err(e) = spawned {
        warn!("cannot start a connection thread: {e}");
        shared.registry().open.remove(&id);
        refuse(&connection.stream);
    }
}

/// Deregisters a connection when its thread ends, even if the handler
/// panics, and closes the socket before the accept loop is told, so that no
/// more than the cap are open even for a moment.
struct Done<'a>(&'a Shared, u64, Option<Arc<Connection>>);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        let mut registry = self.0.registry();
        let registered = registry.open.remove(&self.1);
        drop((registered, self.2.take()));
        drop(registry);
        self.0.ended.notify_all();
    }
}

fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    set_user_timeout(stream, timeout)
}

/// A client that advertises a zero window (or acknowledges nothing) for
/// `timeout` loses the connection at once, whatever is being sent.
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
fn set_user_timeout(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout))
}

/// Without `TCP_USER_TIMEOUT`, the write deadline of each response alone
/// bounds such a client.
#[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
fn set_user_timeout(_: &TcpStream, _: Duration) -> io::Result<()> {
    Ok(())
}

/// Answers `503` to a connection that cannot be served, without waiting.
fn refuse(stream: &TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut out = Vec::new();
    encode(
        &mut out,
        &error(503, "the server is busy; try again"),
        false,
        Some("close"),
    );
    let _ = io::Write::write(&mut &*stream, &out);
    let _ = stream.shutdown(Shutdown::Both);
}
