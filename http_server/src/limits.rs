//! Every bound the server keeps: the settings a service chooses (deadlines,
//! the connection cap, handler turns, the response budget) and the fixed
//! sizes and times behind them, with `descriptor_cap`, which bounds the cap
//! by what the process may open. Nothing here runs; the other modules read
//! these values.

use std::time::Duration;

/// The largest request head (request line and header fields) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields a request head may have.
pub(crate) const MAX_HEADERS: usize = 64;
/// How often the accept loop looks at the stop flag.
pub(crate) const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Pause after an accept error, so that a lasting one (no descriptors) does
/// not spin.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Most connections open at once unless a service says otherwise: a flood
/// of idle connections then holds about 512 threads' stacks and head
/// buffers (a few MiB), however many descriptors the process may open.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// How long a new connection at the cap waits for the one closed to make
/// room to let go of its socket before it is refused instead.
pub(crate) const ROOM_WAIT: Duration = Duration::from_millis(500);
/// The fewest connections closed when accept finds no descriptor left.
pub(crate) const EVICTED_PER_SHORTAGE: usize = 8;
/// Connection threads need little stack: bodies live on the heap.
pub(crate) const STACK_SIZE: usize = 256 * 1024;
/// A closing connection reads what its client still sends for at most this
/// long (and this much), so that the last response is not destroyed by the
/// reset that closing with unread data sends.
pub(crate) const DRAIN_TIME: Duration = Duration::from_millis(500);
pub(crate) const DRAIN_BYTES: usize = 256 * 1024;
/// A body up to this size is copied behind its head and sent with one
/// write; a larger one is sent from where it is, after the head.
pub(crate) const COPY_BODY: usize = 16 * 1024;
/// A response buffer larger than this is not kept for the connection's next
/// response.
pub(crate) const KEEP_BUFFER: usize = 64 * 1024;

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
    (soft_descriptor_limit() / 4 * 3).clamp(16, 16_384)
}

#[cfg(unix)]
fn soft_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// Without `RLIMIT_NOFILE`, the common default of Unix systems.
#[cfg(not(unix))]
fn soft_descriptor_limit() -> usize {
    1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_cap_is_below_the_descriptor_limit() {
        let cap = descriptor_cap();
        assert!((16..=16_384).contains(&cap));
    }
}
