//! Handler turns: `Gate` bounds how many handlers run at once
//! (`Settings::handlers`), handing freed turns to the longest waiter, and
//! lets a request that waited `Settings::handler_patience` run anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Bounds how many handlers run at once. Turns are handed out in order of
/// arrival (a freed turn goes to the longest waiter, never to a newcomer),
/// so under load every request waits about as long as the others, not some
/// much longer.
pub(crate) struct Gate {
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
    pub(crate) fn new(turns: usize, patience: Option<Duration>) -> Gate {
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

    pub(crate) fn run<T>(&self, f: impl FnOnce() -> T) -> T {
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
