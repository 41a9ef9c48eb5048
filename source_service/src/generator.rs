//! The seeded generator of profile changes, and the JSON text it writes.
//!
//! The generator simulates an upstream system of users. It remembers a
//! bounded ring of recent users (`POOL_CAPACITY`) so that it can update them;
//! older users are forgotten, which keeps memory flat however long it runs.
//! Emails and mobiles are derived from ever-increasing counters through
//! injective functions, so they are unique forever without keeping a set;
//! the counters start at a seed-dependent base, so runs with different seeds
//! do not reuse each other's values.
//!
//! Determinism: every choice (ids, names, emails, mobiles, statuses, which
//! changes are bad and how) comes from one `fastrand::Rng` seeded from
//! `SOURCE_SEED`; only timestamps come from the wall clock, and the clock never
//! feeds back into a choice. The same seed thus gives the same sequence.
//!
//! Bad changes: a change is made bad with probability `invalid_rate`, in
//! exactly one of the ways listed in `Flaw`. A bad change never moves a user's
//! state: a bad update leaves the user as it was, and a user whose first
//! change was bad exists upstream but is not yet *published* (no good change
//! has shown it). Flaws that refer to other state (a stale timestamp, an email
//! or mobile of another user) refer to published users, so a consumer that
//! applied every good change really sees them as stale or conflicting. Only a
//! generator that has never made a good change (`invalid_rate` = 1) falls
//! back to users whose facts were at least shown on the wire by bad changes.

use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// How many recent users the generator remembers for updates.
pub const POOL_CAPACITY: usize = 65_536;

/// The ways in which a deliberately bad change is bad; each bad change has
/// exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flaw {
    /// `email` breaks the email rule.
    InvalidEmail,
    /// `name` is empty or only white space.
    EmptyName,
    /// `mobile` does not match `^\+?[0-9]{3,19}$`.
    BadMobile,
    /// `last_updated_at` is not RFC 3339 with an offset.
    BadTimestamp,
    /// `last_updated_at` is absent.
    MissingTimestamp,
    /// `id` is not a UUID.
    NonUuidId,
    /// `last_updated_at` is older than the user's previous good change.
    StaleTimestamp,
    /// `email` is the current email of another (published) user.
    EmailTaken,
    /// `mobile` is the current mobile of another (published) user.
    MobileTaken,
    /// One field holds a JSON value of the wrong type (a number, a boolean).
    WrongType,
}

impl Flaw {
    /// Every flaw, in a fixed order; bad changes draw from it uniformly.
    pub const ALL: [Flaw; 10] = [
        Flaw::InvalidEmail,
        Flaw::EmptyName,
        Flaw::BadMobile,
        Flaw::BadTimestamp,
        Flaw::MissingTimestamp,
        Flaw::NonUuidId,
        Flaw::StaleTimestamp,
        Flaw::EmailTaken,
        Flaw::MobileTaken,
        Flaw::WrongType,
    ];

    /// A stable snake_case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Flaw::InvalidEmail => "invalid_email",
            Flaw::EmptyName => "empty_name",
            Flaw::BadMobile => "bad_mobile",
            Flaw::BadTimestamp => "bad_timestamp",
            Flaw::MissingTimestamp => "missing_timestamp",
            Flaw::NonUuidId => "non_uuid_id",
            Flaw::StaleTimestamp => "stale_timestamp",
            Flaw::EmailTaken => "email_taken",
            Flaw::MobileTaken => "mobile_taken",
            Flaw::WrongType => "wrong_type",
        }
    }

    /// Position in `Flaw::ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The changes of one batch as JSON text, each followed by a comma so that a
/// run of them can be copied into a JSON array in one piece.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    text: Vec<u8>,
    /// `ends[i]` is the offset just past change `i`'s trailing comma.
    ends: Vec<usize>,
    flaws: Vec<Option<Flaw>>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.flaws.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The JSON object of change `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i] - 1]
    }

    /// How change `i` was made bad, if it was.
    pub fn flaw(&self, i: usize) -> Option<Flaw> {
        self.flaws[i]
    }

    /// The JSON objects, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// A JSON array of the first `n` changes (all of them if `n` is larger).
    pub fn to_json_array(&self, n: usize) -> Vec<u8> {
        let n = n.min(self.len());
        let end = if n == 0 { 0 } else { self.ends[n - 1] };
        let mut body = Vec::with_capacity(end + 2);
        body.push(b'[');
        // Drop the last trailing comma.
        body.extend_from_slice(&self.text[..end.saturating_sub(1)]);
        body.push(b']');
        body
    }

    fn finish(&mut self, flaw: Option<Flaw>) {
        self.text.push(b',');
        self.ends.push(self.text.len());
        self.flaws.push(flaw);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Inactive,
    Pending,
}

impl Status {
    const ALL: [Status; 3] = [Status::Active, Status::Inactive, Status::Pending];

    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Pending => "pending",
        }
    }

    /// One of the two other statuses.
    fn other(self, second: bool) -> Status {
        let i = Status::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Status::ALL[(i + 1 + usize::from(second)) % 3]
    }
}

// Bits of `User::shown`: which facts of the user's current state have been on
// the wire next to its real id.
const SHOWN_EMAIL: u8 = 1;
const SHOWN_MOBILE: u8 = 2;
const SHOWN_TIMESTAMP: u8 = 4;
const SHOWN_ALL: u8 = SHOWN_EMAIL | SHOWN_MOBILE | SHOWN_TIMESTAMP;

/// A user as the upstream knows it; under 64 bytes, so the pool stays small
/// (a few MiB).
#[derive(Debug, Clone, Copy)]
struct User {
    id: Uuid,
    first: u16,
    last: u16,
    status: Status,
    /// Counter values from which the email and mobile are derived.
    email: u64,
    mobile: u64,
    /// Timestamp (µs since the epoch) of the change that set this state.
    good_at: i64,
    /// Newest timestamp put on the wire for this id; the next change must be later.
    shown_at: i64,
    /// A good change has carried the current state.
    published: bool,
    shown: u8,
}

/// Which field a `Flaw::WrongType` change spoils.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Name,
    Email,
    Mobile,
    Status,
    Timestamp,
}

const FIELDS: [Field; 6] = [
    Field::Id,
    Field::Name,
    Field::Email,
    Field::Mobile,
    Field::Status,
    Field::Timestamp,
];

/// Produces batches of changes; see the module documentation.
pub struct Generator {
    rng: fastrand::Rng,
    invalid_rate: f64,
    pool: Vec<User>,
    /// Where the next user goes once the pool is full (oldest first).
    pool_next: usize,
    /// How many users in the pool are published.
    published: usize,
    next_email: u64,
    next_mobile: u64,
    clock: Clock,
}

impl Generator {
    /// `invalid_rate` is clamped to 0..=1.
    pub fn new(seed: u64, invalid_rate: f64) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            invalid_rate: if invalid_rate.is_nan() {
                0.0
            } else {
                invalid_rate.clamp(0.0, 1.0)
            },
            pool: Vec::new(),
            pool_next: 0,
            published: 0,
            next_email: counter_base(seed),
            next_mobile: counter_base(seed),
            clock: Clock::default(),
        }
    }

    /// Users currently remembered for updates (at most `POOL_CAPACITY`).
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Replaces the contents of `batch` with a new batch: 2–5 new users, then
    /// 2–5 updates of existing users when there are any.
    pub fn next_batch(&mut self, batch: &mut Batch) {
        self.next_batch_at_most(batch, usize::MAX);
    }

    /// [`Generator::next_batch`], cut short to its first `most` changes (for
    /// a preload of an exact number). What is cut is never generated, so
    /// the generator remembers only what it handed out.
    pub fn next_batch_at_most(&mut self, batch: &mut Batch, most: usize) {
        batch.clear();
        let creations = self.rng.usize(2..=5);
        let updates = if self.pool.is_empty() {
            0
        } else {
            self.rng.usize(2..=5)
        };
        let creations = creations.min(most);
        let updates = updates.min(most - creations);
        for _ in 0..creations {
            self.create(batch);
        }
        for _ in 0..updates {
            self.update(batch);
        }
    }

    fn create(&mut self, batch: &mut Batch) {
        let flaw = self.draw_flaw(None);
        let mut user = User {
            id: uuid::Builder::from_random_bytes(self.rng.u128(..).to_le_bytes()).into_uuid(),
            first: self.rng.u16(..FIRST_NAMES.len() as u16),
            last: self.rng.u16(..LAST_NAMES.len() as u16),
            status: Status::ALL[self.rng.usize(..3)],
            email: self.take_email(),
            mobile: self.take_mobile(),
            good_at: 0,
            shown_at: 0,
            published: false,
            shown: 0,
        };
        let at = self.clock.later_than(i64::MIN);
        let shown = self.render(&mut batch.text, &user, at, flaw);
        batch.finish(flaw.map(|(f, _)| f));

        user.good_at = at;
        user.shown_at = at;
        user.published = flaw.is_none();
        user.shown = if user.published { SHOWN_ALL } else { shown };
        self.insert(user);
    }

    fn update(&mut self, batch: &mut Batch) {
        let index = self.rng.usize(..self.pool.len());
        let flaw = self.draw_flaw(Some(index));
        let current = self.pool[index];
        let mut next = current;
        next.status = current.status.other(self.rng.bool());
        if self.rng.u8(..4) == 0 {
            next.first = self.rng.u16(..FIRST_NAMES.len() as u16);
            next.last = self.rng.u16(..LAST_NAMES.len() as u16);
        }
        if self.rng.u8(..5) == 0 {
            next.email = self.take_email();
        }
        if self.rng.u8(..5) == 0 {
            next.mobile = self.take_mobile();
        }
        let stale = matches!(flaw, Some((Flaw::StaleTimestamp, _)));
        let at = if stale {
            // Up to an hour before the last good change.
            current.good_at - self.rng.i64(1..=3_600_000_000)
        } else {
            self.clock.later_than(current.shown_at)
        };
        let shown = self.render(&mut batch.text, &next, at, flaw);
        batch.finish(flaw.map(|(f, _)| f));

        let user = &mut self.pool[index];
        if flaw.is_none() {
            if !user.published {
                self.published += 1;
            }
            *user = next;
            user.good_at = at;
            user.shown_at = at;
            user.published = true;
            user.shown = SHOWN_ALL;
            return;
        }
        if !stale {
            user.shown_at = at;
        }
        // Only facts equal to the unchanged current state count as shown.
        let mut facts = shown & SHOWN_TIMESTAMP;
        if next.email == current.email {
            facts |= shown & SHOWN_EMAIL;
        }
        if next.mobile == current.mobile {
            facts |= shown & SHOWN_MOBILE;
        }
        user.shown |= facts;
    }

    fn insert(&mut self, user: User) {
        if user.published {
            self.published += 1;
        }
        if self.pool.len() < POOL_CAPACITY {
            self.pool.push(user);
            return;
        }
        let slot = &mut self.pool[self.pool_next];
        if slot.published {
            self.published -= 1;
        }
        *slot = user;
        self.pool_next = (self.pool_next + 1) % POOL_CAPACITY;
    }

    fn take_email(&mut self) -> u64 {
        self.next_email += 1;
        self.next_email
    }

    fn take_mobile(&mut self) -> u64 {
        self.next_mobile += 1;
        self.next_mobile
    }

    /// Decides whether the next change (about the pool user `subject`, or a
    /// new user) is bad, and how. Returns the flaw and, for flaws that refer
    /// to a user, that user's pool index.
    fn draw_flaw(&mut self, subject: Option<usize>) -> Option<(Flaw, Option<usize>)> {
        // f64() is in [0, 1): a rate of 0 never and a rate of 1 always passes.
        if self.rng.f64() >= self.invalid_rate {
            return None;
        }
        // Flaws that refer to others may be impossible right now (an empty
        // pool, a new user cannot be stale); draw again among the rest.
        for _ in 0..64 {
            let flaw = Flaw::ALL[self.rng.usize(..Flaw::ALL.len())];
            let reference = match flaw {
                Flaw::StaleTimestamp => subject.filter(|&i| self.referable(i, SHOWN_TIMESTAMP)),
                Flaw::EmailTaken => self.pick_other(subject, SHOWN_EMAIL),
                Flaw::MobileTaken => self.pick_other(subject, SHOWN_MOBILE),
                _ => return Some((flaw, None)),
            };
            if reference.is_some() {
                return Some((flaw, reference));
            }
        }
        Some((Flaw::EmptyName, None))
    }

    /// Whether pool user `i` may be referred to for the fact `bit`.
    fn referable(&self, i: usize, bit: u8) -> bool {
        let user = &self.pool[i];
        user.published || (self.published == 0 && user.shown & bit != 0)
    }

    /// A referable pool user other than `subject`, if a few random tries find one.
    fn pick_other(&mut self, subject: Option<usize>, bit: u8) -> Option<usize> {
        if self.pool.is_empty() {
            return None;
        }
        for _ in 0..8 {
            let i = self.rng.usize(..self.pool.len());
            if Some(i) != subject && self.referable(i, bit) {
                return Some(i);
            }
        }
        None
    }

    /// Writes `user` as a JSON object with timestamp `at`, spoiled by `flaw`.
    /// Returns the `SHOWN_*` bits of the facts that went out next to the real id.
    fn render(
        &mut self,
        out: &mut Vec<u8>,
        user: &User,
        at: i64,
        flaw: Option<(Flaw, Option<usize>)>,
    ) -> u8 {
        let (flaw, reference) = match flaw {
            Some((f, r)) => (Some(f), r),
            None => (None, None),
        };
        let wrong = if flaw == Some(Flaw::WrongType) {
            Some(FIELDS[self.rng.usize(..FIELDS.len())])
        } else {
            None
        };
        let real_id = flaw != Some(Flaw::NonUuidId) && wrong != Some(Field::Id);
        let mut shown = 0;

        out.extend_from_slice(b"{\"id\":");
        let mut id_text = [0u8; 36];
        let id_text = user.id.hyphenated().encode_lower(&mut id_text);
        if flaw == Some(Flaw::NonUuidId) {
            let variant = self.rng.u8(..6);
            push_json_str(out, &bad_id(variant, id_text, user.email));
        } else if wrong == Some(Field::Id) {
            push_u64(out, user.email);
        } else {
            push_json_str(out, id_text);
        }

        out.extend_from_slice(b",\"name\":");
        if flaw == Some(Flaw::EmptyName) {
            push_json_str(out, if self.rng.bool() { "" } else { "   " });
        } else if wrong == Some(Field::Name) {
            out.extend_from_slice(b"true");
        } else {
            out.push(b'"');
            push_escaped(out, FIRST_NAMES[usize::from(user.first)]);
            out.push(b' ');
            push_escaped(out, LAST_NAMES[usize::from(user.last)]);
            out.push(b'"');
        }

        // Next to a made-up id, the user's real email and mobile would look
        // like they belong to someone else; use throwaway values instead.
        let email = if real_id {
            user.email
        } else {
            self.take_email()
        };
        let mobile = if real_id {
            user.mobile
        } else {
            self.take_mobile()
        };

        out.extend_from_slice(b",\"email\":");
        match (flaw, wrong) {
            (Some(Flaw::InvalidEmail), _) => {
                let variant = self.rng.u8(..BAD_EMAIL_VARIANTS);
                let n = self.take_email();
                out.push(b'"');
                write_bad_email(out, variant, n);
                out.push(b'"');
            }
            (Some(Flaw::EmailTaken), _) => {
                let owner = reference.map_or(email, |i| self.pool[i].email);
                out.push(b'"');
                write_email(out, owner);
                out.push(b'"');
            }
            (_, Some(Field::Email)) => push_u64(out, 42),
            _ => {
                out.push(b'"');
                write_email(out, email);
                out.push(b'"');
                if real_id {
                    shown |= SHOWN_EMAIL;
                }
            }
        }

        out.extend_from_slice(b",\"mobile\":");
        match (flaw, wrong) {
            (Some(Flaw::BadMobile), _) => {
                let variant = self.rng.u8(..BAD_MOBILE_VARIANTS);
                let n = self.take_mobile();
                out.push(b'"');
                write_bad_mobile(out, variant, n);
                out.push(b'"');
            }
            (Some(Flaw::MobileTaken), _) => {
                let owner = reference.map_or(mobile, |i| self.pool[i].mobile);
                out.push(b'"');
                write_mobile(out, owner);
                out.push(b'"');
            }
            // The digits of a real-looking number, but as a JSON number.
            (_, Some(Field::Mobile)) => push_u64(out, 15_550_000_000 + mobile % 10_000_000),
            _ => {
                out.push(b'"');
                write_mobile(out, mobile);
                out.push(b'"');
                if real_id {
                    shown |= SHOWN_MOBILE;
                }
            }
        }

        out.extend_from_slice(b",\"status\":");
        if wrong == Some(Field::Status) {
            out.push(b'1');
        } else {
            out.push(b'"');
            out.extend_from_slice(user.status.as_str().as_bytes());
            out.push(b'"');
        }

        let offset = self.rng.usize(..OFFSETS.len());
        match (flaw, wrong) {
            (Some(Flaw::MissingTimestamp), _) => {}
            (Some(Flaw::BadTimestamp), _) => {
                let variant = self.rng.u8(..BAD_TIMESTAMP_VARIANTS);
                out.extend_from_slice(b",\"last_updated_at\":\"");
                write_bad_timestamp(out, variant, at, offset);
                out.push(b'"');
            }
            (_, Some(Field::Timestamp)) => {
                out.extend_from_slice(b",\"last_updated_at\":");
                push_u64(out, u64::try_from(at.div_euclid(1_000_000)).unwrap_or(0));
            }
            _ => {
                out.extend_from_slice(b",\"last_updated_at\":\"");
                write_timestamp(out, at, offset);
                out.push(b'"');
                if real_id && flaw != Some(Flaw::StaleTimestamp) {
                    shown |= SHOWN_TIMESTAMP;
                }
            }
        }
        out.push(b'}');
        shown
    }
}

/// The wall clock in microseconds, made to give each user strictly increasing
/// timestamps without running ahead of real time.
#[derive(Debug, Default)]
struct Clock {
    /// Latest value handed out; the clock never goes back before it, even if
    /// the system clock does.
    last: i64,
}

impl Clock {
    /// A timestamp later than `after`: now, truncated to microseconds. When
    /// `after` is this very microsecond, waits (a microsecond at most) for
    /// the next one rather than hand out a time in the future.
    fn later_than(&mut self, after: i64) -> i64 {
        let mut now = system_micros().max(self.last);
        let mut spins = 0;
        while now <= after && spins < 10_000 {
            std::hint::spin_loop();
            now = system_micros().max(self.last);
            spins += 1;
        }
        // Only if the system clock stalls or jumped back: step past `after`.
        let now = now.max(after.saturating_add(1));
        self.last = self.last.max(now);
        now
    }
}

fn system_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------
// Values. Each is a pure function of a counter or a small random choice.

const FIRST_NAMES: &[&str] = &[
    "Ava", "Liam", "Olivia", "Noah", "Emma", "Mateo", "Sofía", "Lucas", "Zoë", "Aarav", "Mei",
    "Hiroshi", "Amara", "Chloé", "Jonas", "Freya", "Kwame", "Ingrid", "Omar", "Priya", "Diego",
    "Ana", "Björn", "Nia", "Yusuf", "Elif", "Mia", "Arjun", "Léa", "Tomás", "Saoirse", "Dmitri",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "García",
    "Müller",
    "Nguyễn",
    "O'Brien",
    "Kowalski",
    "Rossi",
    "Tanaka",
    "Okafor",
    "Johansson",
    "Dubois",
    "Silva",
    "Kim",
    "Patel",
    "Cohen",
    "Novák",
    "Hernández",
    "Jensen",
    "Ivanov",
    "Schmidt",
    "van der Berg",
    "Yılmaz",
    "Murphy",
    "Costa",
    "Chen",
    "Lee-Walker",
];

const EMAIL_WORDS: &[&str] = &[
    "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper",
    "kestrel", "lumen", "maple", "nova", "orchid", "pebble", "quartz", "raven", "sage", "tundra",
    "umber", "vale", "willow", "yarrow", "zephyr",
];

const EMAIL_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "example.co.uk",
    "example.io",
    "corp.example.de",
];

/// Country codes of one to three digits; see `write_mobile` for why the
/// mix of lengths keeps mobiles unique.
const COUNTRY_CODES: &[&str] = &[
    "1", "7", "44", "49", "33", "91", "81", "61", "55", "27", "353", "971", "358", "852",
];

/// UTC offsets to render timestamps with: `(minutes east of UTC, text)`.
const OFFSETS: &[(i64, &str)] = &[
    (0, "Z"),
    (0, "+00:00"),
    (330, "+05:30"),
    (-480, "-08:00"),
    (585, "+09:45"),
    (60, "+01:00"),
    (-210, "-03:30"),
    (345, "+05:45"),
    (540, "+09:00"),
    (-300, "-05:00"),
    (840, "+14:00"),
    (-660, "-11:00"),
];

/// Where a generator's email and mobile counters start: a function of the
/// seed, so a restarted source (a new seed) hands out emails and mobiles that
/// do not collide with those of its earlier runs, while the same seed still
/// gives the same sequence. Ranges of different seeds overlap only if their
/// bases fall within a run's length of each other in 10^12.
fn counter_base(seed: u64) -> u64 {
    mix(seed ^ 0x5EED_C0DE) % 1_000_000_000_000
}

/// A fixed scramble of a counter, so consecutive users get varied words.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `word.N@domain`: the local part ends in the counter after the only dot, so
/// distinct counters give distinct emails.
fn write_email(out: &mut Vec<u8>, n: u64) {
    let h = mix(n);
    out.extend_from_slice(EMAIL_WORDS[(h % EMAIL_WORDS.len() as u64) as usize].as_bytes());
    out.push(b'.');
    push_u64(out, n);
    out.push(b'@');
    out.extend_from_slice(
        EMAIL_DOMAINS[((h >> 32) % EMAIL_DOMAINS.len() as u64) as usize].as_bytes(),
    );
}

const MOBILE_SPACE: u64 = 100_000_000_000; // 11 digits
const MOBILE_MULTIPLIER: u128 = 6_364_136_223; // coprime to 10, so a bijection mod 10^11
const MOBILE_INCREMENT: u128 = 1_442_695_040;

/// `+<country code><11 digits>`. The 11 digits are a bijection of the counter
/// modulo 10^11, and the country code is a function of the counter; two
/// mobiles with codes of different lengths differ in length, with codes of
/// the same length in their prefix or, for the same code, in the digits.
/// So mobiles are unique for the first 10^11 counter values.
fn write_mobile(out: &mut Vec<u8>, n: u64) {
    let code = COUNTRY_CODES[(mix(n) % COUNTRY_CODES.len() as u64) as usize];
    let digits =
        ((u128::from(n) * MOBILE_MULTIPLIER + MOBILE_INCREMENT) % u128::from(MOBILE_SPACE)) as u64;
    out.push(b'+');
    out.extend_from_slice(code.as_bytes());
    push_padded(out, digits, 11);
}

const BAD_EMAIL_VARIANTS: u8 = 10;

/// Email-like text that breaks the email rule in one of several ways.
fn write_bad_email(out: &mut Vec<u8>, variant: u8, n: u64) {
    let word = EMAIL_WORDS[(mix(n) % EMAIL_WORDS.len() as u64) as usize].as_bytes();
    let local = |out: &mut Vec<u8>| {
        out.extend_from_slice(word);
        out.push(b'.');
        push_u64(out, n);
    };
    match variant {
        0 => {
            // no @
            local(out);
            out.extend_from_slice(b".example.com");
        }
        1 => {
            local(out);
            out.extend_from_slice(b"@@example.com");
        }
        2 => {
            // double dot in the local part
            out.extend_from_slice(word);
            out.extend_from_slice(b"..");
            push_u64(out, n);
            out.extend_from_slice(b"@example.com");
        }
        3 => {
            out.push(b'.');
            local(out);
            out.extend_from_slice(b"@example.com");
        }
        4 => {
            // a single-label domain
            local(out);
            out.extend_from_slice(b"@example");
        }
        5 => {
            local(out);
            out.extend_from_slice(b"@-example.com");
        }
        6 => {
            out.extend_from_slice(word);
            out.push(b' ');
            push_u64(out, n);
            out.extend_from_slice(b"@example.com");
        }
        7 => {
            // the last label is not letters
            local(out);
            out.extend_from_slice(b"@example.c0m");
        }
        8 => {
            local(out);
            out.extend_from_slice(b"@exa_mple.com");
        }
        _ => {} // empty
    }
}

const BAD_MOBILE_VARIANTS: u8 = 7;

/// Mobile-like text that does not match `^\+?[0-9]{3,19}$`.
fn write_bad_mobile(out: &mut Vec<u8>, variant: u8, n: u64) {
    match variant {
        0 => push_u64(out, n % 100), // too short
        1 => {
            out.extend_from_slice(b"+1-555-");
            push_padded(out, n % 10_000, 4);
        }
        2 => {
            // 20 digits: too long
            out.push(b'+');
            push_padded(out, n % 10_000_000_000, 10);
            push_padded(out, mix(n) % 10_000_000_000, 10);
        }
        3 => {
            out.extend_from_slice(b"mobile-");
            push_u64(out, n);
        }
        4 => {
            out.extend_from_slice(b"555 ");
            push_padded(out, n % 10_000_000, 7);
        }
        5 => {
            out.extend_from_slice(b"++44");
            push_padded(out, n % 10_000_000_000, 10);
        }
        _ => {} // empty
    }
}

const BAD_ID_VARIANTS: u8 = 6;

/// Text that is not a hyphenated UUID.
fn bad_id(variant: u8, id: &str, n: u64) -> String {
    match variant % BAD_ID_VARIANTS {
        0 => format!("user-{n}"),
        1 => id[..35].to_string(),     // one digit short
        2 => format!("{id}0"),         // one digit too many
        3 => format!("z{}", &id[1..]), // not hex
        4 => id.replacen('-', "", 1),  // a hyphen missing
        _ => String::new(),
    }
}

const BAD_TIMESTAMP_VARIANTS: u8 = 6;

/// Text that is not an RFC 3339 timestamp with an offset.
fn write_bad_timestamp(out: &mut Vec<u8>, variant: u8, at: i64, offset: usize) {
    match variant {
        0 => {
            // no offset
            let start = out.len();
            write_timestamp(out, at, offset);
            let end = start + 26; // YYYY-MM-DDTHH:MM:SS.ffffff
            out.truncate(end);
        }
        1 => out.extend_from_slice(b"yesterday"),
        2 => out.extend_from_slice(b"2025-02-30T10:00:00Z"),
        3 => push_u64(out, u64::try_from(at.div_euclid(1_000_000)).unwrap_or(0)),
        4 => out.extend_from_slice(b"2025-07-01T25:61:00+05:30"),
        _ => {
            // a date alone
            let start = out.len();
            write_timestamp(out, at, offset);
            out.truncate(start + 10);
        }
    }
}

/// RFC 3339 with six fractional digits, rendered in the offset `OFFSETS[offset]`.
fn write_timestamp(out: &mut Vec<u8>, micros: i64, offset: usize) {
    let (minutes, text) = OFFSETS[offset % OFFSETS.len()];
    let local = micros + minutes * 60_000_000;
    let days = local.div_euclid(86_400_000_000);
    let in_day = local.rem_euclid(86_400_000_000);
    let (year, month, day) = civil_from_days(days);
    push_padded(out, u64::try_from(year).unwrap_or(0), 4);
    out.push(b'-');
    push_padded(out, u64::from(month), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
    out.push(b'T');
    let secs = (in_day / 1_000_000) as u64;
    push_padded(out, secs / 3600, 2);
    out.push(b':');
    push_padded(out, secs / 60 % 60, 2);
    out.push(b':');
    push_padded(out, secs % 60, 2);
    out.push(b'.');
    push_padded(out, (in_day % 1_000_000) as u64, 6);
    out.extend_from_slice(text.as_bytes());
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` in decimal, left-padded with zeros to `width` digits (`n` must fit).
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// `s` escaped for use inside a JSON string.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    fn batches(seed: u64, rate: f64, changes: usize) -> Vec<(Value, Option<Flaw>)> {
        let mut generator = Generator::new(seed, rate);
        let mut batch = Batch::new();
        let mut all = Vec::new();
        while all.len() < changes {
            generator.next_batch(&mut batch);
            for i in 0..batch.len() {
                let value: Value = serde_json::from_slice(batch.get(i)).unwrap();
                all.push((value, batch.flaw(i)));
            }
        }
        all
    }

    fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
        v.get(name).and_then(Value::as_str)
    }

    fn parse_time(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn timestamps_render_like_chrono() {
        let samples = [
            0i64,
            1,
            951_782_400_000_000,       // 2000-02-29
            1_751_382_784_123_456,     // 2025-07-01
            4_102_444_799_999_999,     // 2099-12-31T23:59:59.999999Z
            1_709_164_800_000_000 - 1, // just before 2024-02-29
        ];
        for micros in samples {
            let expected = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            for (offset, (minutes, suffix)) in OFFSETS.iter().enumerate() {
                let mut out = Vec::new();
                write_timestamp(&mut out, micros, offset);
                let text = String::from_utf8(out).unwrap();
                assert_eq!(text.len(), 26 + suffix.len(), "{text}");
                let parsed = DateTime::parse_from_rfc3339(&text).unwrap();
                assert_eq!(parsed.with_timezone(&Utc), expected, "{text}");
                assert_eq!(parsed.offset().local_minus_utc() as i64, minutes * 60);
            }
        }
    }

    #[test]
    fn mobiles_and_emails_are_unique_and_well_formed() {
        let mut emails = HashSet::new();
        let mut mobiles = HashSet::new();
        for n in 1..=200_000u64 {
            let mut e = Vec::new();
            write_email(&mut e, n);
            let mut m = Vec::new();
            write_mobile(&mut m, n);
            assert!(m.len() <= 20 && m[0] == b'+' && m[1..].iter().all(u8::is_ascii_digit));
            assert!(emails.insert(e));
            assert!(mobiles.insert(m));
        }
    }

    #[test]
    fn different_seeds_hand_out_different_emails_and_mobiles() {
        let contacts = |seed: u64| -> HashSet<String> {
            let mut generator = Generator::new(seed, 0.0);
            let mut batch = Batch::new();
            let mut seen = HashSet::new();
            for _ in 0..2_000 {
                generator.next_batch(&mut batch);
                for change in batch.iter() {
                    let value: serde_json::Value = serde_json::from_slice(change).unwrap();
                    for key in ["email", "mobile"] {
                        seen.insert(field(&value, key).unwrap().to_string());
                    }
                }
            }
            seen
        };
        let (first, second) = (contacts(1), contacts(2));
        assert!(first.len() > 10_000);
        assert_eq!(
            first.intersection(&second).count(),
            0,
            "a restarted source must not reuse contacts"
        );
        assert_eq!(contacts(1), first, "the same seed gives the same contacts");
    }

    #[test]
    fn a_batch_cut_short_is_the_start_of_the_whole_one_and_all_that_is_remembered() {
        let mut batch = Batch::new();
        let mut generator = Generator::new(7, 0.0);
        generator.next_batch_at_most(&mut batch, 0);
        assert!(batch.is_empty());
        assert_eq!(generator.pool_len(), 0);
        generator.next_batch_at_most(&mut batch, 1);
        assert_eq!(batch.len(), 1);
        assert_eq!(generator.pool_len(), 1, "only the user handed out");
        // Updates then refer only to that user.
        let id = field(&serde_json::from_slice(batch.get(0)).unwrap(), "id")
            .unwrap()
            .to_string();
        let mut whole = Batch::new();
        generator.next_batch(&mut whole);
        // The pool grew by this batch's new users, which come first.
        let creations = generator.pool_len() - 1;
        for change in whole.iter().skip(creations) {
            let change: Value = serde_json::from_slice(change).unwrap();
            let updated = field(&change, "id").unwrap();
            assert!(
                updated == id
                    || whole.iter().take(creations).any(|c| {
                        field(&serde_json::from_slice(c).unwrap(), "id") == Some(updated)
                    })
            );
        }
        // A cut batch is the start of what the same seed makes whole.
        let (mut cut, mut full) = (Generator::new(9, 0.5), Generator::new(9, 0.5));
        let mut full_batch = Batch::new();
        cut.next_batch_at_most(&mut batch, 3);
        full.next_batch(&mut full_batch);
        assert_eq!(batch.len(), 3);
        let without_time = |c: &[u8]| {
            let mut v: Value = serde_json::from_slice(c).unwrap();
            v.as_object_mut().map(|o| o.remove("last_updated_at"));
            v
        };
        for i in 0..3 {
            assert_eq!(without_time(batch.get(i)), without_time(full_batch.get(i)));
        }
    }

    #[test]
    fn batches_have_two_to_five_new_users_then_updates() {
        let mut generator = Generator::new(7, 0.0);
        let mut batch = Batch::new();
        generator.next_batch(&mut batch);
        assert!((2..=5).contains(&batch.len()), "first batch only creates");
        let mut seen: HashSet<String> = batch
            .iter()
            .map(|c| {
                field(&serde_json::from_slice(c).unwrap(), "id")
                    .unwrap()
                    .to_string()
            })
            .collect();
        for _ in 0..200 {
            generator.next_batch(&mut batch);
            assert!((4..=10).contains(&batch.len()));
            let ids: Vec<String> = batch
                .iter()
                .map(|c| {
                    field(&serde_json::from_slice(c).unwrap(), "id")
                        .unwrap()
                        .to_string()
                })
                .collect();
            // New users come first; updates may also touch this batch's new users.
            let mut new = 0;
            while new < ids.len() && !seen.contains(&ids[new]) && !ids[..new].contains(&ids[new]) {
                new += 1;
            }
            assert!((2..=5).contains(&new), "{new} new users");
            seen.extend(ids[..new].iter().cloned());
            assert!(
                ids[new..].iter().all(|id| seen.contains(id)),
                "then updates"
            );
        }
    }

    #[test]
    fn same_seed_gives_same_sequence_except_timestamps() {
        let strip = |all: Vec<(Value, Option<Flaw>)>| -> Vec<(Value, Option<Flaw>)> {
            all.into_iter()
                .map(|(mut v, f)| {
                    v.as_object_mut().unwrap().remove("last_updated_at");
                    (v, f)
                })
                .collect()
        };
        let a = strip(batches(42, 0.3, 5_000));
        let b = strip(batches(42, 0.3, 5_000));
        let c = strip(batches(43, 0.3, 5_000));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn good_changes_keep_each_user_consistent() {
        let all = batches(1, 0.0, 50_000);
        let mut last: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut email_owner: HashMap<String, String> = HashMap::new();
        let mut mobile_owner: HashMap<String, String> = HashMap::new();
        let now = Utc::now() + chrono::Duration::seconds(1);
        let mut statuses = HashSet::new();
        let mut offsets = HashSet::new();
        for (v, flaw) in &all {
            assert_eq!(*flaw, None);
            let id = field(v, "id").unwrap().to_string();
            let stamp = field(v, "last_updated_at").unwrap();
            let at = parse_time(stamp).unwrap();
            assert!(at <= now, "{stamp} is in the future");
            offsets.insert(stamp[26..].to_string());
            if let Some(previous) = last.insert(id.clone(), at) {
                assert!(at > previous, "{id}: {at} after {previous}");
            }
            let email = field(v, "email").unwrap().to_string();
            let mobile = field(v, "mobile").unwrap().to_string();
            assert_eq!(email_owner.entry(email).or_insert(id.clone()), &id);
            assert_eq!(mobile_owner.entry(mobile).or_insert(id.clone()), &id);
            statuses.insert(field(v, "status").unwrap().to_string());
        }
        assert_eq!(statuses.len(), 3);
        assert_eq!(offsets.len(), OFFSETS.len());
    }

    #[test]
    fn invalid_rate_is_respected() {
        let all = batches(5, 0.2, 20_000);
        let bad = all.iter().filter(|(_, f)| f.is_some()).count() as f64 / all.len() as f64;
        assert!((0.18..0.22).contains(&bad), "{bad}");
    }

    #[test]
    fn at_rate_one_every_flaw_occurs() {
        let all = batches(9, 1.0, 20_000);
        let mut counts = [0usize; 10];
        for (_, flaw) in &all {
            counts[flaw.expect("every change is bad").index()] += 1;
        }
        for flaw in Flaw::ALL {
            assert!(counts[flaw.index()] > 100, "{flaw:?}: {counts:?}");
        }
    }

    #[test]
    fn flaws_refer_to_published_users_once_there_are_any() {
        // Replays the stream and keeps the state a consumer that applied every
        // good change would have; each referring flaw must contradict it.
        let all = batches(11, 0.3, 60_000);
        let mut state: HashMap<String, (String, String, DateTime<Utc>)> = HashMap::new();
        let mut email_owner: HashMap<String, String> = HashMap::new();
        let mut mobile_owner: HashMap<String, String> = HashMap::new();
        let mut checked = [0usize; 3];
        for (v, flaw) in &all {
            let id = field(v, "id").unwrap_or_default().to_string();
            let email = field(v, "email").unwrap_or_default().to_string();
            let mobile = field(v, "mobile").unwrap_or_default().to_string();
            let at = field(v, "last_updated_at").and_then(parse_time);
            match flaw {
                None => {
                    let at = at.unwrap();
                    if let Some((old_email, old_mobile, _)) = state.get(&id) {
                        email_owner.remove(old_email);
                        mobile_owner.remove(old_mobile);
                    }
                    assert!(email_owner.insert(email.clone(), id.clone()).is_none());
                    assert!(mobile_owner.insert(mobile.clone(), id.clone()).is_none());
                    state.insert(id, (email, mobile, at));
                }
                Some(Flaw::StaleTimestamp) if !state.is_empty() => {
                    let (_, _, previous) = state.get(&id).expect("stale refers to a known user");
                    assert!(at.unwrap() < *previous);
                    checked[0] += 1;
                }
                Some(Flaw::EmailTaken) if !state.is_empty() => {
                    let owner = email_owner.get(&email).expect("email has an owner");
                    assert_ne!(owner, &id);
                    checked[1] += 1;
                }
                Some(Flaw::MobileTaken) if !state.is_empty() => {
                    let owner = mobile_owner.get(&mobile).expect("mobile has an owner");
                    assert_ne!(owner, &id);
                    checked[2] += 1;
                }
                _ => {}
            }
        }
        assert!(checked.iter().all(|&n| n > 100), "{checked:?}");
    }

    #[test]
    fn pool_memory_is_bounded() {
        let mut generator = Generator::new(3, 0.05);
        let mut batch = Batch::new();
        for _ in 0..(POOL_CAPACITY / 2 + 1000) {
            generator.next_batch(&mut batch);
        }
        assert_eq!(generator.pool_len(), POOL_CAPACITY);
        assert!(generator.published <= POOL_CAPACITY);
        assert!(std::mem::size_of::<User>() <= 64);
    }

    #[test]
    fn batch_renders_a_json_array() {
        let mut generator = Generator::new(3, 0.5);
        let mut batch = Batch::new();
        generator.next_batch(&mut batch);
        let array: Vec<Value> = serde_json::from_slice(&batch.to_json_array(usize::MAX)).unwrap();
        assert_eq!(array.len(), batch.len());
        let two: Vec<Value> = serde_json::from_slice(&batch.to_json_array(2)).unwrap();
        assert_eq!(two, array[..2]);
        assert_eq!(batch.to_json_array(0), b"[]");
    }

    #[test]
    fn escaping_keeps_json_valid() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\"b\\c\u{1}d é");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\u{1}d é");
    }
}
