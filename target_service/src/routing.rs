//! Which writer a change goes to, so that changes that can affect each other
//! are written by one writer in sequence order.
//!
//! Two changes interact when they share an id (newest wins) or an email or a
//! mobile (the first to claim it keeps it, and a change that gives one up
//! must come before a change that claims it: so a change also carries the
//! contacts its id last asked for, as far as the router remembers). A change goes to its id's home
//! writer unless one of its keys is still in flight on another writer; then
//! it follows that work. When its keys are in flight on two different
//! writers, no single writer can order it, and the caller waits until
//! everything sent so far is committed before routing it home.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::writer::Change;

/// A key is a hash of an id, an email or a mobile. Two values that collide
/// only make routing more cautious (they follow each other), never wrong,
/// and hashing keeps routing free of allocations on the hot path.
type Key = u64;

/// Keys are hashes already: use them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// The keys of one change: its id, email and mobile, and the email and
/// mobile its id last asked for. At most five, so they live on the stack.
#[derive(Default)]
struct Keys {
    keys: [Key; 5],
    len: usize,
}

impl Keys {
    fn push(&mut self, key: Key) {
        if let Some(slot) = self.keys.get_mut(self.len) {
            *slot = key;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[Key] {
        &self.keys[..self.len]
    }
}

#[derive(Debug)]
pub struct Router {
    writers: usize,
    /// Hashes ids, emails and mobiles into keys; seeded per process, so
    /// nobody can choose values that collide on purpose.
    hasher: foldhash::fast::RandomState,
    /// Each key of uncommitted work: its writer and the last page that used it.
    in_flight: KeyMap<(usize, u64)>,
    /// The keys each uncommitted page registered (by page number: a few
    /// distinct numbers, which need no hashing either).
    page_keys: KeyMap<Vec<Key>>,
    /// Spreads changes without any key over the writers.
    unkeyed: usize,
    /// The email and mobile keys each recently routed id (by its key) last
    /// asked for: a change that gives them up must be ordered before a
    /// change that claims them.
    last_contacts: KeyMap<(Key, Key)>,
}

/// How many ids' last contacts are remembered (a few MB); past it the
/// memory starts afresh.
const REMEMBERED_IDS: usize = 100_000;

/// What a key hashes, so an id, an email and a mobile with the same bytes
/// are different keys.
#[derive(Clone, Copy)]
enum KeyKind {
    Id,
    Email,
    Mobile,
}

impl Router {
    pub fn new(writers: usize) -> Router {
        Router {
            writers: writers.max(1),
            hasher: foldhash::fast::RandomState::default(),
            in_flight: KeyMap::default(),
            page_keys: KeyMap::default(),
            unkeyed: 0,
            last_contacts: KeyMap::default(),
        }
    }

    fn key(&self, kind: KeyKind, value: &[u8]) -> Key {
        self.hasher.hash_one((kind as u8, value))
    }

    /// The writer for `change`, recorded as in flight for `page_no`; `None`
    /// when its keys are in flight on several writers (wait for them to
    /// commit, call [`Router::all_committed`], and route it again).
    pub fn route(&mut self, change: &Change, page_no: u64) -> Option<usize> {
        let mut keys = Keys::default();
        let mut contacts = None;
        match change {
            Change::Accepted { profile, .. } => {
                let id = self.key(KeyKind::Id, profile.id.as_bytes());
                let email = self.key(KeyKind::Email, profile.email.as_str().as_bytes());
                let mobile = self.key(KeyKind::Mobile, profile.mobile.as_str().as_bytes());
                keys.push(id);
                keys.push(email);
                keys.push(mobile);
                if let Some((last_email, last_mobile)) = self.last_contacts.get(&id) {
                    keys.push(*last_email);
                    keys.push(*last_mobile);
                }
                contacts = Some((id, (email, mobile)));
            }
            Change::Rejected { rejection, .. } => {
                if let Some(id) = rejection.profile_id {
                    keys.push(self.key(KeyKind::Id, id.as_bytes()));
                }
            }
        }
        let keys = keys.as_slice();
        let mut busy = keys
            .iter()
            .filter_map(|key| self.in_flight.get(key).map(|(writer, _)| *writer));
        let writer = match busy.next() {
            None => self.home(change),
            Some(first) if busy.all(|other| other == first) => first,
            Some(_) => return None,
        };
        for key in keys {
            self.in_flight.insert(*key, (writer, page_no));
        }
        self.page_keys.entry(page_no).or_default().extend(keys);
        if let Some((id, contacts)) = contacts {
            if self.last_contacts.len() >= REMEMBERED_IDS {
                self.last_contacts.clear();
            }
            self.last_contacts.insert(id, contacts);
        }
        Some(writer)
    }

    /// Forgets the keys of a committed page (unless a later page uses them).
    pub fn page_committed(&mut self, page_no: u64) {
        for key in self.page_keys.remove(&page_no).unwrap_or_default() {
            if self
                .in_flight
                .get(&key)
                .is_some_and(|(_, page)| *page == page_no)
            {
                self.in_flight.remove(&key);
            }
        }
    }

    /// Everything routed so far is committed.
    pub fn all_committed(&mut self) {
        self.in_flight.clear();
        self.page_keys.clear();
    }

    fn home(&mut self, change: &Change) -> usize {
        match change.profile_id() {
            Some(id) => (id.as_u64_pair().1 % self.writers as u64) as usize,
            None => {
                self.unkeyed = self.unkeyed.wrapping_add(1);
                self.unkeyed % self.writers
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Profile, Reason, Rejection};
    use serde_json::json;
    use uuid::Uuid;

    fn change(id: u8, email: &str, mobile: &str) -> Change {
        let raw = json!({
            "id": Uuid::from_bytes([id; 16]).to_string(), "name": "N", "email": email,
            "mobile": mobile, "status": "active", "last_updated_at": "2025-01-01T00:00:00Z",
        });
        let profile = Profile::parse(&raw, chrono::Utc::now()).unwrap();
        Change::Accepted {
            profile,
            payload: 0..0,
        }
    }

    fn home_of(id: u8, writers: usize) -> usize {
        (Uuid::from_bytes([id; 16]).as_u64_pair().1 % writers as u64) as usize
    }

    /// Two ids whose home writers differ among `writers`.
    fn ids_on_different_writers(writers: usize) -> (u8, u8) {
        let a = 1;
        let b = (2..=255)
            .find(|b| home_of(*b, writers) != home_of(a, writers))
            .unwrap();
        (a, b)
    }

    #[test]
    fn a_change_goes_home_unless_its_email_or_mobile_is_in_flight_elsewhere() {
        let (a, b) = ids_on_different_writers(4);
        let mut router = Router::new(4);
        assert_eq!(
            router.route(&change(a, "e@x.io", "111"), 1),
            Some(home_of(a, 4))
        );
        // b claims a's email while a's change is in flight: it follows a.
        assert_eq!(
            router.route(&change(b, "e@x.io", "222"), 1),
            Some(home_of(a, 4))
        );
        router.page_committed(1);
        assert_eq!(
            router.route(&change(b, "f@x.io", "222"), 2),
            Some(home_of(b, 4))
        );
    }

    #[test]
    fn a_claim_on_an_email_being_given_up_follows_the_change_giving_it_up() {
        let (a, b) = ids_on_different_writers(4);
        let mut router = Router::new(4);
        router.route(&change(a, "old@x.io", "111"), 1);
        router.page_committed(1);
        // a moves to a new email; b claims the old one while that is in flight.
        assert_eq!(
            router.route(&change(a, "new@x.io", "111"), 2),
            Some(home_of(a, 4))
        );
        assert_eq!(
            router.route(&change(b, "old@x.io", "222"), 2),
            Some(home_of(a, 4))
        );
    }

    #[test]
    fn keys_in_flight_on_two_writers_make_the_caller_wait() {
        let (a, b) = ids_on_different_writers(4);
        let mut router = Router::new(4);
        router.route(&change(a, "a@x.io", "111"), 1);
        router.route(&change(b, "b@x.io", "222"), 1);
        assert_eq!(router.route(&change(a, "b@x.io", "333"), 1), None);
        router.all_committed();
        assert_eq!(
            router.route(&change(a, "b@x.io", "333"), 2),
            Some(home_of(a, 4))
        );
    }

    #[test]
    fn a_later_page_keeps_its_keys_when_an_earlier_one_commits() {
        let (a, b) = ids_on_different_writers(4);
        let mut router = Router::new(4);
        router.route(&change(a, "e@x.io", "111"), 1);
        router.route(&change(a, "e@x.io", "111"), 2);
        router.page_committed(1);
        assert_eq!(
            router.route(&change(b, "e@x.io", "222"), 3),
            Some(home_of(a, 4))
        );
    }

    #[test]
    fn rejections_follow_their_id_and_unkeyed_ones_spread() {
        let mut router = Router::new(3);
        let with_id = Change::Rejected {
            rejection: Rejection {
                reason: Reason::InvalidEmail,
                message: String::new(),
                profile_id: Some(Uuid::from_bytes([9; 16])),
                changed_at: None,
            },
            payload: 0..2,
            copy: 0,
        };
        assert_eq!(router.route(&with_id, 1), Some(home_of(9, 3)));
        let unkeyed = || Change::Rejected {
            rejection: Rejection {
                reason: Reason::Malformed,
                message: String::new(),
                profile_id: None,
                changed_at: None,
            },
            payload: 0..1,
            copy: 0,
        };
        let writers: std::collections::HashSet<_> =
            (0..3).filter_map(|_| router.route(&unkeyed(), 1)).collect();
        assert_eq!(writers.len(), 3);
    }
}
