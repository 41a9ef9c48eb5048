//! Which writer thread executes each decided write, so that the unique
//! indexes hold at every row while several writers run at once.
//!
//! A write depends on the pending (sent, not yet committed) writes of its
//! own id and on the pending write that gave up an email or mobile it now
//! claims: it goes to the writer of those, which executes its work in the
//! order it was sent. A write with no such dependency goes to its id's home
//! writer. One whose dependencies lie on two writers cannot be ordered by
//! either: the caller waits until everything sent has committed first.

use foldhash::HashMap;
use std::hash::BuildHasher;

use uuid::Uuid;

use crate::sync::plan::Decision;

/// A write's place: its writer and its number in that writer's work. A
/// writer commits its work in order, so "committed up to N" says it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub writer: usize,
    pub seq: u64,
}

impl Tag {
    /// Whether the write is committed, given each writer's committed seq.
    pub fn committed(&self, committed: &[u64]) -> bool {
        committed
            .get(self.writer)
            .is_some_and(|&upto| self.seq <= upto)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Writer(usize),
    /// Its dependencies lie on two writers: wait until all is committed.
    AfterCommits,
}

#[derive(Debug)]
pub struct Router {
    writers: usize,
    /// Hashes emails and mobiles; seeded per process. Two values that
    /// collide only add a dependency, never lose one.
    hasher: foldhash::fast::RandomState,
    by_id: HashMap<Uuid, Tag>,
    released: HashMap<u64, Tag>,
    /// The last seq given out, per writer.
    sent: Vec<u64>,
    spread: usize,
}

impl Router {
    pub fn new(writers: usize) -> Router {
        let writers = writers.max(1);
        Router {
            writers,
            hasher: foldhash::fast::RandomState::default(),
            by_id: HashMap::default(),
            released: HashMap::default(),
            sent: vec![0; writers],
            spread: 0,
        }
    }

    fn email_key(&self, email: &str) -> u64 {
        self.hasher.hash_one((0u8, email))
    }

    fn mobile_key(&self, mobile: &str) -> u64 {
        self.hasher.hash_one((1u8, mobile))
    }

    fn home(&mut self, id: Option<Uuid>) -> usize {
        match id {
            Some(id) => (self.hasher.hash_one(id) % self.writers as u64) as usize,
            None => {
                self.spread = (self.spread + 1) % self.writers;
                self.spread
            }
        }
    }

    /// Where `decision`'s writes go, given each writer's committed seq.
    pub fn route(&mut self, decision: &Decision, committed: &[u64]) -> Route {
        let mut depends_on: Option<usize> = None;
        let mut pending = decision
            .id
            .and_then(|id| self.by_id.get(&id))
            .into_iter()
            .collect::<Vec<_>>();
        if let Some(user) = &decision.user {
            pending.extend(self.released.get(&self.email_key(&user.email)));
            pending.extend(self.released.get(&self.mobile_key(&user.mobile)));
        }
        for tag in pending.into_iter().filter(|tag| !tag.committed(committed)) {
            match depends_on {
                Some(writer) if writer != tag.writer => return Route::AfterCommits,
                _ => depends_on = Some(tag.writer),
            }
        }
        Route::Writer(depends_on.unwrap_or_else(|| self.home(decision.id)))
    }

    /// Records that `decision` was sent to `writer`; returns its tag.
    pub fn sent(&mut self, decision: &Decision, writer: usize) -> Tag {
        let writer = writer.min(self.writers - 1);
        self.sent[writer] += 1;
        let tag = Tag {
            writer,
            seq: self.sent[writer],
        };
        if let Some(id) = decision.id {
            self.by_id.insert(id, tag);
        }
        if let Some(user) = &decision.user {
            if let Some(email) = &user.released_email {
                self.released.insert(self.email_key(email), tag);
            }
            if let Some(mobile) = &user.released_mobile {
                self.released.insert(self.mobile_key(mobile), tag);
            }
        }
        tag
    }

    /// Forgets the tags past `handed`, each writer's last seq handed
    /// over: work that was routed but never sent, which no writer settles.
    /// A dependency such a tag had replaced goes with it, so this is only
    /// for a round that ends, before anything is routed again.
    pub fn forget_after(&mut self, handed: &[u64]) {
        let sent = |tag: &Tag| handed.get(tag.writer).is_some_and(|&upto| tag.seq <= upto);
        self.by_id.retain(|_, tag| sent(tag));
        self.released.retain(|_, tag| sent(tag));
    }

    /// Forgets what is committed.
    pub fn forget_committed(&mut self, committed: &[u64]) {
        self.by_id.retain(|_, tag| !tag.committed(committed));
        self.released.retain(|_, tag| !tag.committed(committed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counted;
    use crate::sync::plan::UserWrite;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn write(n: u8, email: &str, released: Option<&str>) -> Decision {
        Decision {
            outcome: Counted::Synced,
            key: [n; 32],
            id: Some(id(n)),
            user: Some(UserWrite {
                id: id(n),
                name: "n".into(),
                email: email.into(),
                mobile: format!("{n}00"),
                status: "active",
                last_updated_at: chrono::Utc::now(),
                message: "created",
                released_email: released.map(str::to_owned),
                released_mobile: None,
            }),
            rejection: None,
            mark: None,
        }
    }

    fn send(router: &mut Router, decision: &Decision, committed: &[u64]) -> Option<Tag> {
        match router.route(decision, committed) {
            Route::Writer(w) => Some(router.sent(decision, w)),
            Route::AfterCommits => None,
        }
    }

    #[test]
    fn a_claim_follows_the_pending_write_that_gave_the_email_up() {
        let mut router = Router::new(8);
        let none = [0; 8];
        let gives_up = send(&mut router, &write(1, "new@x", Some("old@x")), &none).unwrap();
        // Many ids, so that some home lies elsewhere; each follows.
        for n in 2..40 {
            let claim = send(&mut router, &write(n, "old@x", None), &none).unwrap();
            assert_eq!(claim.writer, gives_up.writer);
            let mut committed = [0; 8];
            committed[gives_up.writer] = gives_up.seq;
            assert!(matches!(
                router.route(&write(n + 100, "old@x", None), &committed),
                Route::Writer(_)
            ));
        }
    }

    #[test]
    fn dependencies_on_two_writers_wait_for_commits() {
        let mut router = Router::new(4);
        let none = [0; 4];
        // Find two ids whose homes differ.
        let a = send(&mut router, &write(1, "a@x", Some("e@x")), &none).unwrap();
        let mut other = 2;
        loop {
            let d = write(other, "b@x", None);
            if let Route::Writer(w) = router.route(&d, &none) {
                if w != a.writer {
                    router.sent(&d, w);
                    break;
                }
            }
            other += 1;
        }
        // `other` claims e@x, given up by 1 on another writer.
        assert_eq!(
            router.route(&write(other, "e@x", None), &none),
            Route::AfterCommits
        );
        let mut committed = [0; 4];
        committed[a.writer] = a.seq;
        assert!(matches!(
            router.route(&write(other, "e@x", None), &committed),
            Route::Writer(_)
        ));
    }

    #[test]
    fn committed_work_is_forgotten() {
        let mut router = Router::new(2);
        let tag = router.sent(&write(1, "a@x", Some("b@x")), 1);
        router.forget_committed(&[0, tag.seq]);
        assert!(router.by_id.is_empty() && router.released.is_empty());
    }

    #[test]
    fn work_never_handed_over_is_forgotten_and_holds_nothing_back() {
        let mut router = Router::new(2);
        let handed = router.sent(&write(1, "a@x", None), 0);
        // Routed to writer 1, never handed over: the round ended first.
        router.sent(&write(2, "c@x", Some("d@x")), 1);
        let claim = write(1, "d@x", None);
        assert_eq!(router.route(&claim, &[0, 0]), Route::AfterCommits);
        router.forget_after(&[handed.seq, 0]);
        assert_eq!(router.route(&claim, &[0, 0]), Route::Writer(0));
    }
}
