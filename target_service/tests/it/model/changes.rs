//! The changes a model test sends, each described by what it is meant to be
//! (which id, name, email, mobile and instant it names, which rules of SPEC
//! §3 it breaks), so the sequential model knows its outcome without parsing
//! it, and rendered to the exact JSON text the source serves.
//!
//! Every description prints as the Rust expression that builds it, so a
//! failing case shrunk by proptest can be pasted into a regression test.

use std::fmt;

use chrono::{DateTime, Timelike};
use serde_json::{json, Value};
use uuid::Uuid;

/// 2025-07-01T10:00:00Z in microseconds: every valid change is a little after.
const BASE_MICROS: i64 = 1_751_364_000_000_000;
const MINUTE: i64 = 60_000_000;

/// Where in its minute an instant lies: the first microsecond (which can be
/// written as the previous minute's `:60`), the one after, half a second in
/// (`:60.5` is the next minute's `:00.5`), and the last microsecond (where
/// finer digits must be truncated, not rounded into the next minute).
const WITHIN_MINUTE: [i64; 4] = [0, 1, 500_000, MINUTE - 1];
/// Instants are `t(0)..t(INSTANTS - 1)`: three minutes, four places in each,
/// so that equal instants (in different spellings) are frequent.
pub const INSTANTS: u8 = 12;

/// UTC offsets: their text and their minutes east.
const OFFSETS: [(&str, i64); 5] = [
    ("Z", 0),
    ("+00:00", 0),
    ("+05:30", 330),
    ("-07:00", -420),
    ("-00:01", -1),
];
pub const OFFSET_COUNT: u8 = OFFSETS.len() as u8;
/// Digits below a microsecond, which the target truncates.
const FINER_DIGITS: &str = "987";

/// Microseconds since the Unix epoch of instant `k`.
pub fn instant(k: u8) -> i64 {
    let k = i64::from(k);
    BASE_MICROS + (k / 4) * MINUTE + WITHIN_MINUTE[(k % 4) as usize]
}

/// The ids of the pool: any version, written in lower or upper case.
pub fn id_text(k: u8, upper: bool) -> String {
    let text = format!("{k:08x}-aaaa-{}bbb-9ccc-{k:012x}", k % 8 + 1);
    if upper {
        text.to_uppercase()
    } else {
        text
    }
}

pub fn id(k: u8) -> Uuid {
    Uuid::parse_str(&id_text(k, false)).expect("pool ids are UUIDs")
}

/// Valid names, valid emails and valid mobiles, at the edges of their rules.
pub const NAMES: [&str; 6] = [
    "Ada",
    "Grace Hopper",
    "Zoë Ærø 名前",
    "  padded  ",
    "O'Brien \"q\" \\ /",
    "Émile",
];
pub const EMAILS: [&str; 8] = [
    "a@example.com",
    "b@example.com",
    "c.d@example.org",
    "e+f@mail.example.io",
    "O'Neil@example.com",
    "g_h@x-y.example.net",
    "i@ex.co",
    "{j}~@example.com",
];
pub const MOBILES: [&str; 8] = [
    "+15550000001",
    "15550000002",
    "+123",
    "1234567890123456789",
    "+4915112345678",
    "0044207946000",
    "555",
    "+15550000008",
];

/// A field of the profile on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Id,
    Name,
    Email,
    Mobile,
    Status,
    LastUpdatedAt,
}

pub const FIELDS: [Field; 6] = [
    Field::Id,
    Field::Name,
    Field::Email,
    Field::Mobile,
    Field::Status,
    Field::LastUpdatedAt,
];

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Name => "name",
            Field::Email => "email",
            Field::Mobile => "mobile",
            Field::Status => "status",
            Field::LastUpdatedAt => "last_updated_at",
        }
    }

    /// A JSON value of the wrong type for this field.
    fn wrong_type(self) -> Value {
        match self {
            Field::Id => json!(12345),
            Field::Name => json!({"first": "Ada"}),
            Field::Email => Value::Null,
            Field::Mobile => json!(15550000001u64),
            Field::Status => json!(true),
            Field::LastUpdatedAt => json!(1751364000),
        }
    }
}

/// A rule of SPEC §3's table that a change breaks, with which bad value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Missing(Field),
    WrongType(Field),
    BadId(u8),
    BadTimestamp(u8),
    BadEmail(u8),
    BadName(u8),
    BadMobile(u8),
    Future(u8),
    Inactive(u8),
}

pub const BAD_IDS: [&str; 4] = [
    "not-a-uuid",
    "0000000g-aaaa-4bbb-9ccc-000000000001",
    "00000001aaaa4bbb9ccc000000000001--",
    "",
];
pub const BAD_TIMESTAMPS: [&str; 6] = [
    "2025-07-01 10:00:00",
    "2025-07-01T10:00:00",
    "2025-13-01T10:00:00Z",
    "2025-02-30T10:00:00Z",
    "2025-07-01T10:00:00+0530",
    "yesterday",
];
pub const BAD_EMAILS: [&str; 7] = [
    "plain",
    "a..b@example.com",
    ".a@example.com",
    "a@example",
    "a@-x.com",
    "é@example.com",
    "a@example.c0m",
];
/// Index 4 stands for 256 characters (one too many).
pub const BAD_NAMES: [&str; 5] = ["", "   ", "Ada\u{0}Lovelace", "tab\tname", "n"];
pub const BAD_MOBILES: [&str; 5] = ["12", "+1-555-0100", "+12345678901234567890", "phone", ""];
pub const FUTURES: [&str; 2] = ["2999-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+00:00"];
pub const INACTIVE: [&str; 5] = ["inactive", "Active", "", "ACTIVE", "deleted"];

/// The order of SPEC §3's table: the first rule a change breaks decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Malformed,
    InvalidId,
    InvalidTimestamp,
    InvalidEmail,
    InvalidName,
    InvalidMobile,
    FutureTimestamp,
    InactiveStatus,
    EmailTaken,
    MobileTaken,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidEmail => "invalid_email",
            Reason::InvalidName => "invalid_name",
            Reason::InvalidMobile => "invalid_mobile",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::InactiveStatus => "inactive_status",
            Reason::EmailTaken => "email_taken",
            Reason::MobileTaken => "mobile_taken",
        }
    }

    pub fn outcome(self) -> &'static str {
        match self {
            Reason::InactiveStatus => "skipped",
            Reason::EmailTaken | Reason::MobileTaken => "conflict",
            _ => "failed_validation",
        }
    }
}

impl Fault {
    /// The one field this fault changes: a change carries at most one fault
    /// per field, so what it is meant to be is never ambiguous.
    pub fn field(self) -> Field {
        match self {
            Fault::Missing(field) | Fault::WrongType(field) => field,
            Fault::BadId(_) => Field::Id,
            Fault::BadTimestamp(_) | Fault::Future(_) => Field::LastUpdatedAt,
            Fault::BadEmail(_) => Field::Email,
            Fault::BadName(_) => Field::Name,
            Fault::BadMobile(_) => Field::Mobile,
            Fault::Inactive(_) => Field::Status,
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            Fault::Missing(_) | Fault::WrongType(_) => Reason::Malformed,
            Fault::BadId(_) => Reason::InvalidId,
            Fault::BadTimestamp(_) => Reason::InvalidTimestamp,
            Fault::BadEmail(_) => Reason::InvalidEmail,
            Fault::BadName(_) => Reason::InvalidName,
            Fault::BadMobile(_) => Reason::InvalidMobile,
            Fault::Future(_) => Reason::FutureTimestamp,
            Fault::Inactive(_) => Reason::InactiveStatus,
        }
    }

    /// What the field holds instead (`None`: the field is left out).
    fn value(self) -> Option<Value> {
        let text = |list: &[&str], k: u8| json!(list[usize::from(k) % list.len()]);
        Some(match self {
            Fault::Missing(_) => return None,
            Fault::WrongType(field) => field.wrong_type(),
            Fault::BadId(k) => text(&BAD_IDS, k),
            Fault::BadTimestamp(k) => text(&BAD_TIMESTAMPS, k),
            Fault::BadEmail(k) => text(&BAD_EMAILS, k),
            Fault::BadName(k) if usize::from(k) % BAD_NAMES.len() == 4 => json!("n".repeat(256)),
            Fault::BadName(k) => text(&BAD_NAMES, k),
            Fault::BadMobile(k) => text(&BAD_MOBILES, k),
            Fault::Future(k) => text(&FUTURES, k),
            Fault::Inactive(k) => text(&INACTIVE, k),
        })
    }
}

/// How an instant is written: which instant, in which offset, with how
/// many fraction digits (0: as few as needed, 1: six, 2: six and finer
/// ones), and as the previous minute's `:60` when it falls on second 00.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub instant: u8,
    pub offset: u8,
    pub digits: u8,
    pub leap: bool,
}

impl At {
    pub fn micros(self) -> i64 {
        instant(self.instant)
    }

    /// Whether this spelling really uses `:60` (only second 00 can).
    pub fn is_leap(self) -> bool {
        self.leap && self.local().rem_euclid(MINUTE) < 1_000_000
    }

    fn local(self) -> i64 {
        self.micros() + OFFSETS[usize::from(self.offset)].1 * MINUTE
    }

    pub fn text(self) -> String {
        let leap = self.is_leap();
        let shown = if leap {
            self.local() - MINUTE
        } else {
            self.local()
        };
        let time = DateTime::from_timestamp_micros(shown)
            .expect("pool instants are in range")
            .naive_utc();
        let second = if leap { 60 } else { time.second() };
        let micros = shown.rem_euclid(1_000_000);
        let fraction = match self.digits {
            0 if micros == 0 => String::new(),
            0 => format!(".{micros:06}").trim_end_matches('0').to_owned(),
            1 => format!(".{micros:06}"),
            _ => format!(".{micros:06}{FINER_DIGITS}"),
        };
        format!(
            "{}:{second:02}{fraction}{}",
            time.format("%Y-%m-%dT%H:%M"),
            OFFSETS[usize::from(self.offset)].0
        )
    }
}

/// A change to a profile of the pools, valid unless it carries faults.
#[derive(Clone, PartialEq, Eq)]
pub struct Draft {
    pub id: u8,
    pub upper_id: bool,
    pub name: u8,
    pub email: u16,
    pub mobile: u16,
    pub pending: bool,
    pub at: At,
    pub faults: Vec<Fault>,
}

/// A valid active change of id `id` with email and mobile of those
/// numbers, at instant `t(at)` in UTC: the start of every regression case.
pub fn change(id: u8, email: u16, mobile: u16, at: u8) -> Draft {
    Draft {
        id,
        upper_id: false,
        name: 0,
        email,
        mobile,
        pending: false,
        at: At {
            instant: at,
            offset: 0,
            digits: 0,
            leap: false,
        },
        faults: Vec::new(),
    }
}

impl Draft {
    pub fn named(mut self, name: u8) -> Draft {
        self.name = name;
        self
    }

    pub fn pending(mut self) -> Draft {
        self.pending = true;
        self
    }

    pub fn upper_id(mut self) -> Draft {
        self.upper_id = true;
        self
    }

    pub fn offset(mut self, offset: u8) -> Draft {
        self.at.offset = offset;
        self
    }

    pub fn digits(mut self, digits: u8) -> Draft {
        self.at.digits = digits;
        self
    }

    pub fn leap(mut self) -> Draft {
        self.at.leap = true;
        self
    }

    /// Adds a fault, unless one already changes the same field.
    pub fn with(mut self, fault: Fault) -> Draft {
        if self.faults.iter().all(|f| f.field() != fault.field()) {
            self.faults.push(fault);
        }
        self
    }

    pub fn status(&self) -> &'static str {
        if self.pending {
            "pending"
        } else {
            "active"
        }
    }

    pub fn name_text(&self) -> &'static str {
        NAMES[usize::from(self.name) % NAMES.len()]
    }

    /// The pool's email, or beyond the pool one of as many more as a
    /// regression case needs to keep a writer busy.
    pub fn email_text(&self) -> String {
        match EMAILS.get(usize::from(self.email)) {
            Some(email) => (*email).to_owned(),
            None => format!("more{}@example.com", self.email),
        }
    }

    pub fn mobile_text(&self) -> String {
        match MOBILES.get(usize::from(self.mobile)) {
            Some(mobile) => (*mobile).to_owned(),
            None => format!("+1999{:07}", self.mobile),
        }
    }

    pub fn fault_of(&self, field: Field) -> Option<Fault> {
        self.faults.iter().copied().find(|f| f.field() == field)
    }

    fn value(&self) -> Value {
        let mut object = json!({
            "id": id_text(self.id, self.upper_id),
            "name": self.name_text(),
            "email": self.email_text(),
            "mobile": self.mobile_text(),
            "status": self.status(),
            "last_updated_at": self.at.text(),
        });
        let members = object.as_object_mut().expect("an object");
        for fault in &self.faults {
            let key = fault.field().key();
            match fault.value() {
                Some(value) => members.insert(key.to_owned(), value),
                None => members.remove(key),
            };
        }
        object
    }
}

impl fmt::Debug for Draft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "change({}, {}, {}, {})",
            self.id, self.email, self.mobile, self.at.instant
        )?;
        if self.name != 0 {
            write!(f, ".named({})", self.name)?;
        }
        if self.pending {
            f.write_str(".pending()")?;
        }
        if self.upper_id {
            f.write_str(".upper_id()")?;
        }
        if self.at.offset != 0 {
            write!(f, ".offset({})", self.at.offset)?;
        }
        if self.at.digits != 0 {
            write!(f, ".digits({})", self.at.digits)?;
        }
        if self.at.is_leap() {
            f.write_str(".leap()")?;
        }
        for fault in &self.faults {
            write!(f, ".with({fault:?})")?;
        }
        Ok(())
    }
}

/// Elements of a page that are not objects at all.
pub const JUNK: [&str; 6] = ["42", "\"text\"", "null", "[]", "true", "{}"];

/// One element of the log as generated: a change, junk, or an identical
/// copy of an earlier element (`Again(k)`: of element `k` modulo those
/// before it).
#[derive(Clone, PartialEq, Eq)]
pub enum Element {
    Change(Draft),
    Junk(u8),
    Again(u8),
}

impl From<Draft> for Element {
    fn from(draft: Draft) -> Element {
        Element::Change(draft)
    }
}

impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Change(draft) => write!(f, "{draft:?}.into()"),
            Element::Junk(k) => write!(f, "Element::Junk({k})"),
            Element::Again(k) => write!(f, "Element::Again({k})"),
        }
    }
}

/// What an element of the log is, once copies are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meaning {
    Change(Draft),
    Junk(u8),
}

/// An element as sent: what it means and its exact text.
#[derive(Clone, Debug)]
pub struct Sent {
    pub meaning: Meaning,
    pub value: Value,
    pub text: String,
}

/// Resolves copies and renders every element. The text is exactly what
/// the source's page holds, for the page is the array of these values.
pub fn resolve(elements: &[Element]) -> Vec<Sent> {
    let mut sent: Vec<Sent> = Vec::with_capacity(elements.len());
    for element in elements {
        let next = match element {
            Element::Again(k) if !sent.is_empty() => sent[usize::from(*k) % sent.len()].clone(),
            Element::Again(k) | Element::Junk(k) => {
                let k = *k % JUNK.len() as u8;
                let value: Value = serde_json::from_str(JUNK[usize::from(k)]).expect("junk parses");
                Sent {
                    meaning: Meaning::Junk(k),
                    text: value.to_string(),
                    value,
                }
            }
            Element::Change(draft) => {
                let value = draft.value();
                Sent {
                    meaning: Meaning::Change(draft.clone()),
                    text: value.to_string(),
                    value,
                }
            }
        };
        sent.push(next);
    }
    sent
}
