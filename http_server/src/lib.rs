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

//!
//! The modules: `server` (listening, the accept loop, the registry of
//! connections and what is closed to make room, shutdown), `connection`
//! (one connection's reads, parsing, answers and close), `gate` (handler
//! turns), `limits` (settings and fixed bounds), `message` (`Request`,
//! `Response` and their encoding); beside them, what the services share
//! that is not the server: `client_input` and `misspelling`.

pub mod client_input;
mod connection;
mod gate;
mod limits;
mod message;
pub mod misspelling;
mod server;

pub use connection::Stream;
pub use limits::{descriptor_cap, Settings, DEFAULT_MAX_CONNECTIONS, MAX_HEAD};
pub use message::{Request, Response};
pub use server::{bind, listen, listen_addr, serve_stream, Handler, Server};
