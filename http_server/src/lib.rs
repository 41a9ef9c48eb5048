//! The HTTP/1.1 server both services run: the accept loop, one thread per
//! connection, and every limit that keeps a hostile client from stopping the
//! service or growing its memory (SPEC §6 "Hostile clients").
//!
//! Why not tiny_http (0.12): it reads a request head
//! line by line into a growing buffer without a limit (a 256 MiB line costs
//! 256 MiB); it allocates an announced body of up to 1 KiB eagerly and, when
//! a request is dropped unread, reads the rest of the announced body (parking
//! the thread, and for a `Content-Length` of 10^15 aborting the process on a
//! failed allocation); it takes a `TcpListener`, not sockets, so no read
//! timeout can be set on accepted connections (`SO_RCVTIMEO` on the listener
//! also times out `accept`, and its accept thread ends for good at the first
//! accept error, as it does at `EMFILE`, or panics duplicating a socket when
//! descriptors run out); it starts a thread per connection without a bound
//! and queues every request for a fixed set of workers, so one slow client
//! holds a worker. None of that can be changed from outside the crate.
//!
//! What this server does instead:
//! - a request head is parsed by `httparse` from a fixed buffer of
//!   `MAX_HEAD` bytes; a head that does not fit gets `431` and the
//!   connection is closed, and so does an HTTP/1.1 head without `Host` or
//!   any head with two, with `400` (RFC 9112 §3.2);
//! - no request body is ever read: handlers take none. A request that
//!   announces one (`Content-Length` other than `0`, whatever its value, or
//!   `Transfer-Encoding`) is answered and its connection closed, after a
//!   short bounded drain so the answer is not lost to a reset;
//! - a head must arrive, and a response be taken by the client, within
//!   `Settings::io_timeout` (10 s) each, measured as deadlines, so trickling
//!   a byte at a time does not extend them;
//! - at most `Settings::max_connections` connections are open (512 by
//!   default, and never more than three quarters of `RLIMIT_NOFILE`), so
//!   that a flood of idle connections costs a bounded amount of memory. At
//!   the cap a new connection is served and an old one closed to make room:
//!   a kept-alive one idle between requests (its client loses nothing and
//!   may reconnect), else the one waiting longest for its client; the new
//!   one is admitted only once the old one has closed, and refused (`503`)
//!   only when every connection is in a handler. When `accept` fails for
//!   lack of descriptors, the one waiting longest and an eighth of the
//!   others waiting for their client (at least 7) are closed, so idle
//!   connections never block new ones; no accept error ends the accept loop;
//! - a connection waiting for its client costs a thread with a small stack
//!   and an 8 KiB buffer, never a handler: at most `Settings::handlers`
//!   requests are being handled at once (or, with
//!   `Settings::handler_patience`, a request that waited that long for a
//!   turn runs anyway), and none waits behind a slow client;
//! - responses waiting for their clients hold at most
//!   `Settings::response_budget` bytes in all: past it, the connections
//!   whose clients have been slowest to take theirs are closed;
//! - `Server::shutdown` stops accepting, closes connections that wait for
//!   their client, lets responses in flight finish within `Settings::grace`,
//!   then closes the rest.

pub mod misspelling;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};

/// The largest request head (request line and header fields) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields a request head may have.
const MAX_HEADERS: usize = 64;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Pause after an accept error, so that a lasting one (no descriptors) does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Most connections open at once unless a service says otherwise: a flood
/// of idle connections then holds about 512 threads' stacks and head
/// buffers (a few MiB), however many descriptors the process may open.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// How long a new connection at the cap waits for the one closed to make
/// room to let go of its socket before it is refused instead.
const ROOM_WAIT: Duration = Duration::from_millis(500);
/// The fewest connections closed when accept finds no descriptor left.
const EVICTED_PER_SHORTAGE: usize = 8;
/// Connection threads need little stack: bodies live on the heap.
const STACK_SIZE: usize = 256 * 1024;
/// A closing connection reads what its client still sends for at most this
/// long (and this much), so that the last response is not destroyed by the
/// reset that closing with unread data sends.
const DRAIN_TIME: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 256 * 1024;
/// A body up to this size is copied behind its head and sent with one
/// write; a larger one is sent from where it is, after the head.
const COPY_BODY: usize = 16 * 1024;
/// A response buffer larger than this is not kept for the connection's next
/// response.
const KEEP_BUFFER: usize = 64 * 1024;

/// How the server behaves; `Settings::default()` is what SPEC §6 asks for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of the connection threads' names.
    pub name: &'static str,
    /// How long a client has to send a request head (counted from when the
    /// server starts waiting for it, so it is also how long an idle
    /// keep-alive connection is kept) and to take a response.
    pub io_timeout: Duration,
    /// Most connections open at once; `descriptor_cap()` bounds it whatever
    /// is set here.
    pub max_connections: usize,
    /// Most requests handled at once; `None` for no limit beyond the
    /// connections. Under load, a few handlers taking turns answer sooner
    /// than hundreds of threads sharing the cores.
    pub handlers: Option<usize>,
    /// With `handlers`: how long a request waits for a turn before it runs
    /// anyway (`None`: as long as it takes), so that handlers that wait on
    /// something else (a database) hold the others back that long at most.
    pub handler_patience: Option<Duration>,
    /// How long `shutdown` lets responses in flight finish.
    pub grace: Duration,
    /// Most bytes of responses waiting for their clients, in all; past it
    /// the slowest clients are cut off.
    pub response_budget: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: "http",
            io_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handlers: None,
            handler_patience: None,
            grace: Duration::from_secs(3),
            response_budget: 64 * 1024 * 1024,
        }
    }
}

/// The most connections the descriptors allow: three quarters of the soft
/// `RLIMIT_NOFILE`, leaving the rest to the process (database connections,
/// logs, the listener); between 16 and 16384.
pub fn descriptor_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft / 4 * 3).clamp(16, 16_384)
}

/// What a handler is given of a request: its head. Bodies are never read.
pub struct Request<'a> {
    /// The method as sent (`GET`, `HEAD`, …).
    pub method: &'a str,
    /// The request target as sent (path and query, or absolute form).
    pub target: &'a str,
    headers: &'a [httparse::Header<'a>],
}

impl<'a> Request<'a> {
    /// The first header field `name` (case-insensitive), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    }
}

/// A response. `Content-Length`, `Date` and `Connection` are added by the
/// server; for `HEAD` the body is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

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

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    settings: Settings,
    /// `Settings::max_connections`, bounded by `descriptor_cap()`.
    cap: usize,
    /// The most connections that were ever open at once.
    peak: AtomicUsize,
    handler: Arc<Handler>,
    stopping: AtomicBool,
    gate: Option<Gate>,
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

/// What a connection's thread is doing, for eviction and shutdown.
const WAITING: u8 = 0; // for the client: its next request head
const HANDLING: u8 = 1; // a handler runs
const SENDING: u8 = 2; // for the client to take a response
const CLOSING: u8 = 3; // draining before the close
const EVICTED: u8 = 4; // closed to make room; its thread is on its way out
const IDLE: u8 = 5; // kept alive between requests, nothing of the next in yet

struct Connection {
    stream: TcpStream,
    state: AtomicU8,
    /// When the current state began, in milliseconds since the server started.
    since: AtomicU64,
    /// Bytes of the response being sent.
    pending: AtomicUsize,
}

impl Connection {
    /// Enters `state`, unless the connection was closed to make room: it
    /// stays counted as on its way out.
    fn set(&self, state: u8, shared: &Shared) {
        self.since.store(shared.millis(), Ordering::Relaxed);
        let _ = (self.state).fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now != EVICTED).then_some(state)
        });
    }

    /// A head is coming: the connection is no longer idle (unless it was
    /// closed already).
    fn head_arriving(&self) {
        let _ = (self.state).compare_exchange(IDLE, WAITING, Ordering::AcqRel, Ordering::Acquire);
    }

    fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn millis(&self) -> u64 {
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
        eligible: impl Fn(&Connection, u8) -> bool,
    ) -> Option<usize> {
        // Of two that began waiting in the same millisecond, the one
        // accepted first (ids count up) has waited longer.
        let (_, victim) = registry
            .open
            .iter()
            .filter(|(_, c)| {
                let state = c.state.load(Ordering::Acquire);
                !matches!(state, HANDLING | EVICTED) && eligible(c, state)
            })
            .min_by_key(|(id, c)| {
                let rank = match c.state.load(Ordering::Acquire) {
                    IDLE | CLOSING => 0,
                    WAITING => 1,
                    _ => 2,
                };
                (rank, c.since.load(Ordering::Relaxed), **id)
            })?;
        // Not chosen again while its thread winds down.
        victim.state.store(EVICTED, Ordering::Release);
        victim.close();
        Some(victim.pending.load(Ordering::Relaxed))
    }

    /// Counts `bytes` of response about to be sent on `connection`. Past
    /// `RESPONSE_BUDGET` in all, the connections whose clients have taken
    /// their responses slowest are closed until the excess is freed, so
    /// clients that never read cannot hold more than that much memory.
    fn reserve(&self, connection: &Connection, bytes: usize) {
        connection.pending.store(bytes, Ordering::Relaxed);
        let total = self.pending.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let mut excess = total.saturating_sub(self.settings.response_budget);
        if excess == 0 {
            return;
        }
        let registry = self.registry();
        while excess > 0 {
            let other_sender =
                |c: &Connection, state| state == SENDING && !std::ptr::eq(c, connection);
            match self.evict(&registry, other_sender) {
                Some(freed) => excess = excess.saturating_sub(freed.max(1)),
                None => return,
            }
        }
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
                .filter(|c| c.state.load(Ordering::Acquire) == EVICTED)
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

    fn release(&self, connection: &Connection) {
        let bytes = connection.pending.swap(0, Ordering::Relaxed);
        self.pending.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bounds how many handlers run at once. Turns are handed out in order of
/// arrival (a freed turn goes to the longest waiter, never to a newcomer),
/// so under load every request waits about as long as the others, not some
/// much longer.
struct Gate {
    state: Mutex<GateState>,
    /// How long a request waits for a turn before it runs anyway.
    patience: Option<Duration>,
}

struct GateState {
    free: usize,
    waiting: VecDeque<Arc<Waiter>>,
}

struct Waiter {
    thread: std::thread::Thread,
    granted: AtomicBool,
}

impl Gate {
    fn new(turns: usize, patience: Option<Duration>) -> Gate {
        Gate {
            state: Mutex::new(GateState {
                free: turns.max(1),
                waiting: VecDeque::new(),
            }),
            patience,
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Release<'a>(&'a Gate);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                match state.waiting.pop_front() {
                    Some(next) => {
                        next.granted.store(true, Ordering::Release);
                        next.thread.unpark();
                    }
                    None => state.free += 1,
                }
            }
        }
        let _release = self.take_turn().then_some(Release(self));
        f()
    }

    /// Waits for a turn; false if the patience ran out first.
    fn take_turn(&self) -> bool {
        let deadline = self.patience.map(|p| Instant::now() + p);
        let waiter = {
            let mut state = self.lock();
            if state.free > 0 && state.waiting.is_empty() {
                state.free -= 1;
                return true;
            }
            let waiter = Arc::new(Waiter {
                thread: std::thread::current(),
                granted: AtomicBool::new(false),
            });
            state.waiting.push_back(Arc::clone(&waiter));
            waiter
        };
        loop {
            if waiter.granted.load(Ordering::Acquire) {
                return true;
            }
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let mut state = self.lock();
                        if waiter.granted.load(Ordering::Acquire) {
                            return true;
                        }
                        state.waiting.retain(|w| !Arc::ptr_eq(w, &waiter));
                        return false;
                    }
                    std::thread::park_timeout(left);
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
        let gate = settings
            .handlers
            .map(|n| Gate::new(n, settings.handler_patience));
        let shared = Arc::new(Shared {
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
        });
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
                if matches!(connection.state.load(Ordering::Acquire), WAITING | IDLE) {
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
                // shortly; the listener stays. Several at a time, so that a
                // flood queued behind the listener drains in well under a
                // second instead of one connection per back-off.
                let out_of_descriptors =
                    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_descriptors {
                    let registry = shared.registry();
                    // One as ever (a response being sent, if nothing else
                    // can go), the others only among those waiting.
                    if shared.evict_one(&registry) {
                        let more = (registry.open.len() / 8).max(EVICTED_PER_SHORTAGE) - 1;
                        for _ in 0..more {
                            if shared
                                .evict(&registry, |_, state| matches!(state, WAITING | IDLE))
                                .is_none()
                            {
                                break;
                            }
                        }
                    }
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

/// Registers an accepted connection (making room at the cap) and starts its
/// thread.
fn admit(stream: TcpStream, shared: &Arc<Shared>) {
    if let Err(e) = configure(&stream, shared.settings.io_timeout) {
        debug!("dropping a connection that cannot be set up: {e}");
        return;
    }
    let connection = Arc::new(Connection {
        stream,
        state: AtomicU8::new(WAITING),
        since: AtomicU64::new(shared.millis()),
        pending: AtomicUsize::new(0),
    });
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
                // Deregisters even if the handler panics, and closes the
                // socket before the accept loop is told, so that no more
                // than the cap are open even for a moment.
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

fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A client that advertises a zero window (or acknowledges nothing) for
    // that long loses the connection at once, whatever is being sent.
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout))?;
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
    let _ = (&*stream).write(&out);
    let _ = stream.shutdown(Shutdown::Both);
}

fn error(status: u16, message: &str) -> Response {
    // `message` is ours, never client input, so it needs no escaping.
    Response {
        status,
        headers: vec![("Content-Type", "application/json".to_string())],
        body: format!("{{\"error\":\"{message}\"}}").into_bytes(),
    }
}

/// What to do with a connection after a response.
#[derive(PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
}

/// The life of one connection: heads in, responses out, until either side
/// closes, a deadline passes or shutdown.
fn serve(connection: &Connection, shared: &Shared) {
    let stream = &connection.stream;
    let timeout = shared.settings.io_timeout;
    let mut buffer = vec![0u8; MAX_HEAD].into_boxed_slice();
    let mut filled = 0;
    let mut out = Vec::new();
    let mut deadline = Instant::now() + timeout;
    // Whether SO_RCVTIMEO was shortened to meet the deadline.
    let mut shortened = false;
    loop {
        if filled > 0 {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&buffer[..filled]) {
                Ok(httparse::Status::Complete(length)) => {
                    if shortened {
                        let _ = stream.set_read_timeout(Some(timeout));
                        shortened = false;
                    }
                    connection.set(HANDLING, shared);
                    let after = respond(&parsed, connection, shared, &mut out);
                    if after == After::Close || shared.stopping.load(Ordering::SeqCst) {
                        close_gently(connection, shared);
                        return;
                    }
                    buffer.copy_within(length..filled, 0);
                    filled -= length;
                    deadline = Instant::now() + timeout;
                    connection.set(if filled == 0 { IDLE } else { WAITING }, shared);
                    continue;
                }
                Ok(httparse::Status::Partial) if filled < buffer.len() => {}
                Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                    let message =
                        "the request head is larger than 8 KiB or has more than 64 header fields";
                    fail(connection, shared, &mut out, 431, message);
                    return;
                }
                Err(e) => {
                    let message = format!("the request is not valid HTTP/1.1 ({e})");
                    fail(connection, shared, &mut out, 400, &message);
                    return;
                }
            }
        }
        if shared.stopping.load(Ordering::SeqCst) && filled == 0 {
            return;
        }
        if filled > 0 {
            // Part of a head is in: the rest must come before the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                too_slow(connection, shared, &mut out);
                return;
            }
            if stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                return;
            }
            shortened = true;
        }
        match (&*stream).read(&mut buffer[filled..]) {
            Ok(0) => return,
            Ok(n) => {
                filled += n;
                connection.head_arriving();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if filled > 0 {
                    too_slow(connection, shared, &mut out);
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// What is wrong with a request's `Host` fields, if anything: RFC 9112 §3.2
/// wants `400` for an HTTP/1.1 request without one and for any request
/// with more than one (an HTTP/1.0 request may have none).
fn host_problem(parsed: &httparse::Request<'_, '_>) -> Option<&'static str> {
    let hosts = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    match hosts {
        0 if parsed.version == Some(1) => {
            Some("the request has no Host header; an HTTP/1.1 request must send exactly one")
        }
        0 | 1 => None,
        _ => Some("the request has more than one Host header; send exactly one"),
    }
}

/// `408` for a head that did not arrive by its deadline.
fn too_slow(connection: &Connection, shared: &Shared, out: &mut Vec<u8>) {
    let message = "the request head took too long to arrive";
    fail(connection, shared, out, 408, message);
}

/// Handles one parsed request and sends its response.
fn respond(
    parsed: &httparse::Request<'_, '_>,
    connection: &Connection,
    shared: &Shared,
    out: &mut Vec<u8>,
) -> After {
    let headers: &[httparse::Header<'_>] = parsed.headers;
    let request = Request {
        method: parsed.method.unwrap_or(""),
        target: parsed.path.unwrap_or(""),
        headers,
    };
    let mut keep_alive = match parsed.version {
        Some(1) => !has_token(&request, "connection", "close"),
        _ => has_token(&request, "connection", "keep-alive"),
    };
    // A body is never read, so the connection cannot be reused after one:
    // its bytes would be taken for the next request.
    let has_body = headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && trim(h.value) != b"0")
    });
    if has_body {
        keep_alive = false;
    }
    let is_head = request.method == "HEAD";
    let handler = &shared.handler;
    let response = match (host_problem(parsed), &shared.gate) {
        (Some(message), _) => {
            keep_alive = false;
            error(400, message)
        }
        (None, Some(gate)) => gate.run(|| handler(&request)),
        (None, None) => handler(&request),
    };
    if shared.stopping.load(Ordering::SeqCst) {
        keep_alive = false;
    }
    // HTTP/1.1 keeps a connection unless told otherwise; an HTTP/1.0
    // client keeps it only when the answer says so, else it waits for the
    // close.
    let connection_header = match (keep_alive, parsed.version) {
        (false, _) => Some("close"),
        (true, Some(1)) => None,
        (true, _) => Some("keep-alive"),
    };
    // A large body is sent from where the handler made it, not copied.
    let body: &[u8] = if encode(out, &response, is_head, connection_header) || is_head {
        &[]
    } else {
        &response.body
    };
    connection.set(SENDING, shared);
    shared.reserve(connection, out.len() + response.body.len());
    let sent = send(&connection.stream, &[out, body], shared.settings.io_timeout);
    shared.release(connection);
    drop(response);
    if out.capacity() > KEEP_BUFFER {
        *out = Vec::new();
    }
    match sent {
        Ok(()) if keep_alive => After::KeepAlive,
        Ok(()) => After::Close,
        Err(e) => {
            debug!("a client did not take its response: {e}");
            After::Close
        }
    }
}

/// Answers an error that ends the connection.
fn fail(connection: &Connection, shared: &Shared, out: &mut Vec<u8>, status: u16, message: &str) {
    connection.set(SENDING, shared);
    encode(out, &error(status, message), false, Some("close"));
    if send(&connection.stream, &[out], shared.settings.io_timeout).is_ok() {
        close_gently(connection, shared);
    }
}

/// Closes a connection after its last response: reads (and drops) what the
/// client still sends for a moment, so that closing with unread data does
/// not reset the connection before the client has read the response.
fn close_gently(connection: &Connection, shared: &Shared) {
    connection.set(CLOSING, shared);
    let stream = &connection.stream;
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + DRAIN_TIME;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Writes all of `parts`, one after the other, within `timeout` in all,
/// however the client paces its reads.
fn send(stream: &TcpStream, parts: &[&[u8]], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut first = true;
    let mut shortened = false;
    let mut result = Ok(());
    'parts: for part in parts {
        let mut sent = 0;
        while sent < part.len() {
            if !first {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    result = Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "response not taken in time",
                    ));
                    break 'parts;
                }
                stream.set_write_timeout(Some(left))?;
                shortened = true;
            }
            first = false;
            match (&*stream).write(&part[sent..]) {
                Ok(0) => {
                    result = Err(io::ErrorKind::WriteZero.into());
                    break 'parts;
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break 'parts;
                }
            }
        }
    }
    if shortened && result.is_ok() {
        stream.set_write_timeout(Some(timeout))?;
    }
    result
}

/// Serialises a response into `out` (cleared first): its head, and its body
/// when small (one write is one segment) and not for `HEAD`. Returns whether
/// the body went in.
fn encode(out: &mut Vec<u8>, response: &Response, is_head: bool, connection: Option<&str>) -> bool {
    out.clear();
    let status = response.status;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    let _ = write!(
        out,
        "Date: {}\r\n",
        httpdate::HttpDate::from(SystemTime::now())
    );
    for (name, value) in &response.headers {
        // Values are ours, but a line break would split the response.
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    if let Some(connection) = connection {
        let _ = write!(out, "Connection: {connection}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let copy = !is_head && response.body.len() <= COPY_BODY;
    if copy {
        out.extend_from_slice(&response.body);
    }
    copy
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

/// Whether header `name` lists `token` (as in `Connection: keep-alive, …`).
fn has_token(request: &Request<'_>, name: &str, token: &str) -> bool {
    request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name)
            && h.value
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
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

/// Whether `given` is `expected`, in a time that depends on the length of
/// `expected` only (not a secret worth hiding), not on where the two first
/// differ: for comparing bearer tokens.
pub fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut difference = u8::from(expected.len() != given.len());
    for (i, &byte) in expected.iter().enumerate() {
        let other = given.get(i).copied().unwrap_or(!byte);
        difference |= byte ^ other;
    }
    // Keeps the compiler from cutting the loop short at the first difference.
    std::hint::black_box(difference) == 0
}

/// The request target in origin form (`/path?query`). HTTP/1.1 servers must
/// also accept the absolute form (`http://host:port/path?query`, RFC 9112
/// §3.2.2), which proxies send; its scheme and authority are dropped here
/// (the service answers for any host). Anything else is returned unchanged.
pub fn origin_form(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Cow::Borrowed(url);
    }
    let path_and_query = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
    if path_and_query.starts_with('/') {
        Cow::Borrowed(path_and_query)
    } else {
        // `http://host` and `http://host?q` name the root path.
        Cow::Owned(format!("/{path_and_query}"))
    }
}

/// Client input echoed in an error body, cut to 100 characters so error
/// bodies stay small.
pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_absolute_form_is_read_as_the_origin_form() {
        assert_eq!(origin_form("/healthz?x=1"), "/healthz?x=1");
        assert_eq!(origin_form("http://127.0.0.1:8080/healthz"), "/healthz");
        assert_eq!(origin_form("HTTPS://[::1]:8080/a?b=c"), "/a?b=c");
        assert_eq!(origin_form("http://host?q"), "/?q");
        assert_eq!(origin_form("http://host"), "/");
        assert_eq!(origin_form("ftp://host/x"), "ftp://host/x");
    }

    #[test]
    fn echoed_input_is_cut_at_100_characters() {
        assert_eq!(shorten("short"), "short");
        let long = "é".repeat(150);
        assert_eq!(shorten(&long), format!("{}...", "é".repeat(100)));
    }

    fn encoded(response: &Response, is_head: bool, close: bool) -> String {
        let mut out = Vec::new();
        encode(&mut out, response, is_head, close.then_some("close"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_response_has_its_length_and_head_leaves_the_body_out() {
        let response = Response {
            status: 200,
            headers: vec![("Content-Type", "application/json".to_string())],
            body: b"{}".to_vec(),
        };
        let text = encoded(&response, false, false);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{text}");
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.ends_with("\r\nContent-Length: 2\r\n\r\n{}"), "{text}");
        let head = encoded(&response, true, true);
        assert!(
            head.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn a_header_value_with_a_line_break_is_left_out() {
        let response = Response {
            status: 404,
            headers: vec![("X-Bad", "a\r\nSet-Cookie: x".to_string())],
            body: Vec::new(),
        };
        assert!(!encoded(&response, false, false).contains("Set-Cookie"));
    }

    #[test]
    fn the_descriptor_cap_is_below_the_descriptor_limit() {
        let cap = descriptor_cap();
        assert!((16..=16_384).contains(&cap));
    }
}
