//! One connection's life: heads read into a fixed buffer and parsed by
//! `httparse`, the handler called, responses sent within their deadline,
//! and the gentle close; with `State`, what the connection's thread is
//! doing, which the server reads to choose what to close. The code runs
//! over any `Stream`, a `TcpStream` in the server.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::debug;

use crate::limits::{DRAIN_BYTES, DRAIN_TIME, KEEP_BUFFER, MAX_HEAD, MAX_HEADERS};
use crate::message::{encode, error, Request};
use crate::server::Shared;

/// A connection's byte stream: what the server needs of a `TcpStream`.
/// Every method takes `&self`, as `TcpStream`'s do, so that the server can
/// close a connection (`shutdown`) while its thread reads or writes.
pub trait Stream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &*self, buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, buf)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

/// What a connection's thread is doing, for eviction and shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Waiting for the client: its next request head.
    Waiting,
    /// A handler runs.
    Handling,
    /// Waiting for the client to take a response.
    Sending,
    /// Draining before the close.
    Closing,
    /// Closed to make room; its thread is on its way out.
    Evicted,
    /// Kept alive between requests, nothing of the next in yet.
    Idle,
}

impl From<State> for u8 {
    fn from(state: State) -> u8 {
        state as u8
    }
}

impl TryFrom<u8> for State {
    type Error = u8;

    fn try_from(value: u8) -> Result<State, u8> {
        [
            State::Waiting,
            State::Handling,
            State::Sending,
            State::Closing,
            State::Evicted,
            State::Idle,
        ]
        .into_iter()
        .find(|state| u8::from(*state) == value)
        .ok_or(value)
    }
}

pub(crate) struct Connection<S = TcpStream> {
    pub(crate) stream: S,
    /// A `State`, read and written by `state` and `set`.
    state: AtomicU8,
    /// When the current state began, in milliseconds since the server started.
    pub(crate) since: AtomicU64,
    /// Bytes of the response being sent.
    pub(crate) pending: AtomicUsize,
}

impl<S: Stream> Connection<S> {
    /// A connection that waits for its first head.
    pub(crate) fn new(stream: S, shared: &Shared) -> Connection<S> {
        Connection {
            stream,
            state: AtomicU8::new(State::Waiting.into()),
            since: AtomicU64::new(shared.millis()),
            pending: AtomicUsize::new(0),
        }
    }

    pub(crate) fn state(&self) -> State {
        State::try_from(self.state.load(Ordering::Acquire))
            .expect("only a State is ever stored in a connection's state")
    }

    /// Enters `state`, unless the connection was closed to make room: it
    /// stays counted as on its way out.
    pub(crate) fn set(&self, state: State, shared: &Shared) {
        self.since.store(shared.millis(), Ordering::Relaxed);
        let evicted = u8::from(State::Evicted);
        let _ = (self.state).fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now != evicted).then_some(state.into())
        });
    }

    /// Marks the connection closed to make room, so that it is not chosen
    /// again while its thread winds down, and closes it.
    pub(crate) fn evict(&self) {
        self.state.store(State::Evicted.into(), Ordering::Release);
        self.close();
    }

    /// A head is coming: the connection is no longer idle (unless it was
    /// closed already).
    fn head_arriving(&self) {
        let (idle, waiting) = (State::Idle.into(), State::Waiting.into());
        let _ = (self.state).compare_exchange(idle, waiting, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// What to do with a connection after a response.
#[derive(PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
}

/// Why a connection stops reading.
enum Stop {
    /// The client closed, the read failed, or nothing came by the deadline
    /// while no head had begun: the connection just ends.
    Ended,
    /// Part of a head came, the rest not by its deadline: `408`.
    TooSlow,
}

/// What comes next after a look at the buffered bytes.
enum Next {
    /// A head was answered and the connection kept: look again.
    Parse,
    /// No whole head yet: read more.
    Read,
    /// The connection is done (its last response, if any, was sent).
    End,
}

/// The bytes of request heads that came in, and the deadline of the next.
struct Heads<'s, S> {
    stream: &'s S,
    timeout: Duration,
    buffer: Box<[u8]>,
    filled: usize,
    deadline: Instant,
    /// Whether the read timeout was shortened to meet the deadline.
    shortened: bool,
}

impl<'s, S: Stream> Heads<'s, S> {
    fn new(stream: &'s S, timeout: Duration) -> Self {
        Heads {
            stream,
            timeout,
            buffer: vec![0u8; MAX_HEAD].into_boxed_slice(),
            filled: 0,
            deadline: Instant::now() + timeout,
            shortened: false,
        }
    }

    /// Drops the head of `length` bytes that was answered; the next one has
    /// the whole timeout from now.
    fn consume(&mut self, length: usize) {
        self.buffer.copy_within(length..self.filled, 0);
        self.filled -= length;
        self.deadline = Instant::now() + self.timeout;
    }

    /// Reads what comes next into the buffer, by the deadline once part of
    /// a head is in. `Ok(true)` when bytes came.
    fn read_more(&mut self) -> Result<bool, Stop> {
        if self.filled > 0 {
            // Part of a head is in: the rest must come before the deadline.
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Stop::TooSlow);
            }
            let left = left.max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|_| Stop::Ended)?;
            self.shortened = true;
        }
        match self.stream.read(&mut self.buffer[self.filled..]) {
            Ok(0) => Err(Stop::Ended),
            Ok(n) => {
                self.filled += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && self.filled > 0 =>
            {
                Err(Stop::TooSlow)
            }
            Err(_) => Err(Stop::Ended),
        }
    }
}

/// The life of one connection: heads in, responses out, until either side
/// closes, a deadline passes or shutdown.
pub(crate) fn serve<S: Stream>(connection: &Connection<S>, shared: &Shared) {
    let mut heads = Heads::new(&connection.stream, shared.settings.io_timeout);
    let mut out = Vec::new();
    loop {
        if heads.filled > 0 {
            match answer_buffered(&mut heads, connection, shared, &mut out) {
                Next::Parse => continue,
                Next::Read => {}
                Next::End => return,
            }
        }
        if shared.stopping.load(Ordering::SeqCst) && heads.filled == 0 {
            return;
        }
        match heads.read_more() {
            Ok(true) => connection.head_arriving(),
            Ok(false) => {}
            Err(Stop::Ended) => return,
            Err(Stop::TooSlow) => {
                too_slow(connection, shared, &mut out);
                return;
            }
        }
    }
}

/// Parses what is buffered and answers it if it is a whole head (or one
/// that can never be).
fn answer_buffered<S: Stream>(
    heads: &mut Heads<'_, S>,
    connection: &Connection<S>,
    shared: &Shared,
    out: &mut Vec<u8>,
) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&heads.buffer[..heads.filled]) {
        Ok(httparse::Status::Complete(length)) => {
            if heads.shortened {
                let _ = heads.stream.set_read_timeout(Some(heads.timeout));
                heads.shortened = false;
            }
            connection.set(State::Handling, shared);
            let after = respond(&parsed, connection, shared, out);
            if after == After::Close || shared.stopping.load(Ordering::SeqCst) {
                close_gently(connection, shared);
                return Next::End;
            }
            heads.consume(length);
            let state = if heads.filled == 0 {
                State::Idle
            } else {
                State::Waiting
            };
            connection.set(state, shared);
            Next::Parse
        }
        Ok(httparse::Status::Partial) if heads.filled < heads.buffer.len() => Next::Read,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            let message = "the request head is larger than 8 KiB or has more than 64 header fields";
            fail(connection, shared, out, 431, message);
            Next::End
        }
        Err(e) => {
            let message = format!("the request is not valid HTTP/1.1 ({e})");
            fail(connection, shared, out, 400, &message);
            Next::End
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
fn too_slow<S: Stream>(connection: &Connection<S>, shared: &Shared, out: &mut Vec<u8>) {
    let message = "the request head took too long to arrive";
    fail(connection, shared, out, 408, message);
}

/// Handles one parsed request and sends its response.
fn respond<S: Stream>(
    parsed: &httparse::Request<'_, '_>,
    connection: &Connection<S>,
    shared: &Shared,
    out: &mut Vec<u8>,
) -> After {
    let request = Request::parsed(
        parsed.method.unwrap_or(""),
        parsed.path.unwrap_or(""),
        parsed.headers,
    );
    let mut keep_alive = match parsed.version {
        Some(1) => !request.has_token("connection", "close"),
        _ => request.has_token("connection", "keep-alive"),
    };
    // A body is never read, so the connection cannot be reused after one:
    // its bytes would be taken for the next request.
    if request.announces_body() {
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
    connection.set(State::Sending, shared);
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
fn fail<S: Stream>(
    connection: &Connection<S>,
    shared: &Shared,
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
) {
    connection.set(State::Sending, shared);
    encode(out, &error(status, message), false, Some("close"));
    if send(&connection.stream, &[out], shared.settings.io_timeout).is_ok() {
        close_gently(connection, shared);
    }
}

/// Closes a connection after its last response: reads (and drops) what the
/// client still sends for a moment, so that closing with unread data does
/// not reset the connection before the client has read the response.
fn close_gently<S: Stream>(connection: &Connection<S>, shared: &Shared) {
    connection.set(State::Closing, shared);
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
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Writes all of `parts`, one after the other, within `timeout` in all,
/// however the client paces its reads.
fn send<S: Stream>(stream: &S, parts: &[&[u8]], timeout: Duration) -> io::Result<()> {
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
            match stream.write(&part[sent..]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_its_round_trip_through_a_byte() {
        for value in 0..=u8::MAX {
            if let Ok(state) = State::try_from(value) {
                assert_eq!(u8::from(state), value);
            }
        }
        assert_eq!(State::try_from(u8::from(State::Idle)), Ok(State::Idle));
        assert_eq!(State::try_from(6), Err(6));
    }
}
