//! The profile as the rest of the service knows it: a value that exists has
//! passed every rule of SPEC §1 ("parse, don't validate").
//!
//! [`Profile::parse`] turns one JSON element of a page into either a
//! [`Profile`] or a [`Rejection`] carrying the outcome and reason code of the
//! first rule that failed, checked in the contract's order. Writers only ever
//! see `Profile`s; nothing downstream re-checks a field.
//!
//! [`Profile::parse_json`], what the sync round uses, decides the same from
//! an element's JSON text without a `serde_json::Value`: `wire` decodes the
//! six fields and skips every other member by its syntax (`syntax`), so an
//! unknown field never changes an outcome, whatever it holds. Both ways hand
//! what the six fields hold to one decision, so they never differ.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Timelike, Utc};
use regex::Regex;
use serde_json::Value;
use uuid::Uuid;

pub mod syntax;
mod wire;

use syntax::Decoded;
use wire::{Element, Field};

/// What became of a change that was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    FailedValidation,
    Skipped,
    Conflict,
}

impl Outcome {
    /// The name stored in `sync_rejections.outcome` and `users.sync_status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::FailedValidation => "failed_validation",
            Outcome::Skipped => "skipped",
            Outcome::Conflict => "conflict",
        }
    }
}

/// Why a change was not synced: the reason codes of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Malformed,
    InvalidId,
    InvalidTimestamp,
    InvalidEmail,
    InvalidName,
    InvalidMobile,
    FutureTimestamp,
    InactiveStatus,
    Stale,
    EmailTaken,
    MobileTaken,
    DbError,
}

impl Reason {
    /// Every reason code, so metrics can show each one from the start.
    pub const ALL: [Reason; 12] = [
        Reason::Malformed,
        Reason::InvalidId,
        Reason::InvalidTimestamp,
        Reason::InvalidEmail,
        Reason::InvalidName,
        Reason::InvalidMobile,
        Reason::FutureTimestamp,
        Reason::InactiveStatus,
        Reason::Stale,
        Reason::EmailTaken,
        Reason::MobileTaken,
        Reason::DbError,
    ];

    /// The reason code as stored and exported.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidEmail => "invalid_email",
            Reason::InvalidName => "invalid_name",
            Reason::InvalidMobile => "invalid_mobile",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::InactiveStatus => "inactive_status",
            Reason::Stale => "stale",
            Reason::EmailTaken => "email_taken",
            Reason::MobileTaken => "mobile_taken",
            Reason::DbError => "db_error",
        }
    }

    /// The outcome each reason belongs to.
    pub fn outcome(self) -> Outcome {
        match self {
            Reason::Malformed
            | Reason::InvalidId
            | Reason::InvalidTimestamp
            | Reason::InvalidEmail
            | Reason::InvalidName
            | Reason::InvalidMobile
            | Reason::FutureTimestamp
            | Reason::DbError => Outcome::FailedValidation,
            Reason::InactiveStatus | Reason::Stale => Outcome::Skipped,
            Reason::EmailTaken | Reason::MobileTaken => Outcome::Conflict,
        }
    }
}

/// A change that will not be synced, with what could still be read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    /// A sentence for people: which field broke which rule.
    pub message: String,
    /// The change's id, when it is a valid UUID (even if other fields are not).
    pub profile_id: Option<Uuid>,
    /// The change's `last_updated_at`, when it parses.
    pub changed_at: Option<Timestamp>,
}

impl Rejection {
    pub fn outcome(&self) -> Outcome {
        self.reason.outcome()
    }
}

/// An instant at microsecond precision, the precision of `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Parses RFC 3339 with a mandatory offset (`Z` or `±hh:mm`) into the
    /// UTC instant it names, read as PostgreSQL reads such text, so that
    /// what is compared is what is stored: a second of `60` is second `00`
    /// of the next minute (fractions included), and a time past the end of
    /// the day (`23:59:60.5`) is refused, as PostgreSQL refuses it. Finer
    /// than microsecond digits are truncated.
    ///
    /// Every date and offset RFC 3339 allows is taken: year `0000` and
    /// offsets up to `±23:59`, beyond PostgreSQL's text input (no year
    /// `0000`, offsets to `±15:59`). The instant goes to PostgreSQL in
    /// binary, where those limits do not apply, and `timestamptz` holds
    /// every such instant (4713 BC to 294276 AD; the earliest,
    /// `0000-01-01T00:00:00+23:59`, is `-0001-12-31T00:01:00Z`).
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        static SHAPE: OnceLock<Regex> = OnceLock::new();
        let shape = SHAPE.get_or_init(|| {
            Regex::new(
                r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))$",
            )
            .expect("the timestamp pattern is a valid regex")
        });
        let Some(parts) = shape.captures(text) else {
            return Err(format!(
                "last_updated_at {:?} is not an RFC 3339 timestamp with an offset",
                truncate_for_message(text)
            ));
        };
        let invalid = |why: &str| {
            Err(format!(
                "last_updated_at {:?} is not a valid date and time: {why}",
                truncate_for_message(text)
            ))
        };
        // Each of these groups is two or four ASCII digits.
        let number = |group: usize| -> u32 {
            parts
                .get(group)
                .and_then(|digits| digits.as_str().parse().ok())
                .unwrap_or(0)
        };
        let (year, month, day) = (number(1), number(2), number(3));
        let (hour, minute, second) = (number(4), number(5), number(6));
        let fraction = parts.get(7).map_or("", |digits| digits.as_str());
        let Some(date) = NaiveDate::from_ymd_opt(year as i32, month, day) else {
            return invalid("there is no such day");
        };
        if hour > 23 || minute > 59 || second > 60 {
            return invalid("the time of day is out of range");
        }
        // PostgreSQL reads the fraction to the nearest microsecond, and
        // refuses a time of day past 24:00:00.
        if (hour, minute, second) == (23, 59, 60) && rounds_above_zero(fraction) {
            return invalid("23:59:60 and a fraction lies past the end of the day");
        }
        let offset_minutes = match parts.get(8) {
            None => 0,
            Some(sign) => {
                let (hours, minutes) = (number(9), number(10));
                if hours > 23 || minutes > 59 {
                    return invalid("the offset lies beyond ±23:59");
                }
                let minutes = i64::from(hours * 60 + minutes);
                if sign.as_str() == "-" {
                    -minutes
                } else {
                    minutes
                }
            }
        };
        // Digits past the sixth are truncated.
        let micros = fraction
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(6)
            .fold(0, |micros, digit| micros * 10 + i64::from(digit - b'0'));
        let instant = date.and_hms_opt(hour, minute, 0).map(|minute_start| {
            minute_start.and_utc()
                + Duration::seconds(i64::from(second))
                + Duration::microseconds(micros)
                - Duration::minutes(offset_minutes)
        });
        match instant {
            Some(instant) => Ok(Timestamp(instant)),
            None => invalid("the time of day is out of range"),
        }
    }

    /// Truncates to whole microseconds; a leap second is read as second `00`
    /// of the next minute, as [`Timestamp::parse`] reads `:60`.
    pub fn from_datetime(instant: DateTime<Utc>) -> Timestamp {
        let nanos = instant.nanosecond();
        let (nanos, carry) = if nanos >= 1_000_000_000 {
            (nanos - 1_000_000_000, Duration::seconds(1))
        } else {
            (nanos, Duration::zero())
        };
        let truncated = instant
            .with_nanosecond(nanos - nanos % 1_000)
            .map_or(instant, |at| at + carry);
        Timestamp(truncated)
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

/// Whether PostgreSQL reads these fraction digits as more than zero
/// microseconds: it takes the fraction as a double and rounds it to the
/// nearest microsecond, halves to even.
fn rounds_above_zero(digits: &str) -> bool {
    format!("0.{digits}")
        .parse::<f64>()
        .is_ok_and(|fraction| (fraction * 1e6).round_ties_even() > 0.0)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

/// 1–255 characters, not only white space, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(text: &str) -> Result<Name, String> {
        Name::rule(text).map(|()| Name(text.to_owned()))
    }

    /// Whether `text` keeps the rule; if not, why.
    fn rule(text: &str) -> Result<(), String> {
        let length = text.chars().count();
        if length == 0 {
            return Err("name is empty".to_owned());
        }
        if length > 255 {
            return Err(format!("name has {length} characters, more than 255"));
        }
        if text.trim().is_empty() {
            return Err("name is only white space".to_owned());
        }
        if let Some(control) = text.chars().find(|c| c.is_control()) {
            return Err(format!(
                "name contains the control character U+{:04X}",
                u32::from(control)
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// `local@domain` by the rule of SPEC §1, at most 254 characters, ASCII only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, String> {
        Email::rule(text).map(|()| Email(text.to_owned()))
    }

    /// Whether `text` keeps the rule; if not, why. Allocates nothing for an
    /// email that keeps it.
    fn rule(text: &str) -> Result<(), String> {
        let invalid = |why: &str| Err(format!("email {:?} {why}", truncate_for_message(text)));
        if text.len() > 254 {
            return invalid("is longer than 254 characters");
        }
        if !text.is_ascii() {
            return invalid("is not ASCII");
        }
        let Some((local, domain)) = text.split_once('@') else {
            return invalid("has no @");
        };
        if local.is_empty() || local.len() > 64 {
            return invalid("must have a local part of 1 to 64 characters");
        }
        let local_char_ok =
            |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        if local
            .split('.')
            .any(|atom| atom.is_empty() || !atom.chars().all(local_char_ok))
        {
            return invalid("has a local part with a character or dot that is not allowed");
        }
        if !domain.contains('.') {
            return invalid("needs a domain of two or more labels");
        }
        for label in domain.split('.') {
            let label_ok = (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !label_ok {
                return invalid(
                    "has a domain label that is not 1-63 letters, digits or inner hyphens",
                );
            }
        }
        let top = domain.rsplit('.').next().unwrap_or(domain);
        if top.len() < 2 || !top.chars().all(|c| c.is_ascii_alphabetic()) {
            return invalid("must end in a label of 2 or more letters");
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// `^\+?[0-9]{3,19}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mobile(String);

impl Mobile {
    pub fn parse(text: &str) -> Result<Mobile, String> {
        Mobile::rule(text).map(|()| Mobile(text.to_owned()))
    }

    /// Whether `text` keeps the rule; if not, why.
    fn rule(text: &str) -> Result<(), String> {
        let digits = text.strip_prefix('+').unwrap_or(text);
        if (3..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err(format!(
                "mobile {:?} is not 3 to 19 digits with an optional leading +",
                truncate_for_message(text)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The statuses that are synced; every other string is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncedStatus {
    Active,
    Pending,
}

impl SyncedStatus {
    pub fn parse(text: &str) -> Option<SyncedStatus> {
        match text {
            "active" => Some(SyncedStatus::Active),
            "pending" => Some(SyncedStatus::Pending),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncedStatus::Active => "active",
            SyncedStatus::Pending => "pending",
        }
    }
}

/// A change that passed every check and may be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: Uuid,
    pub name: Name,
    pub email: Email,
    pub mobile: Mobile,
    pub status: SyncedStatus,
    pub last_updated_at: Timestamp,
}

const FIELDS: [&str; 6] = ["id", "name", "email", "mobile", "status", "last_updated_at"];

impl Profile {
    /// Applies the checks of SPEC §3 in their order; the first that fails
    /// decides. `latest_allowed` is now plus the allowed clock skew.
    pub fn parse(element: &Value, latest_allowed: DateTime<Utc>) -> Result<Profile, Rejection> {
        let Some(object) = element.as_object() else {
            return Err(not_an_object(JsonKind::of(element)));
        };
        let fields = FIELDS.map(|field| {
            object.get(field).map(|value| match value {
                Value::String(text) => Field::Text(Decoded {
                    text: Cow::Borrowed(text),
                    lone_surrogate: false,
                }),
                other => Field::Other(JsonKind::of(other)),
            })
        });
        Profile::decide(&fields, latest_allowed)
    }

    /// [`Profile::parse`] of one page element given as its JSON text, with
    /// the same result wherever a `Value` can read the text, but without
    /// building one: only the six fields are decoded, and every other
    /// member is skipped by its syntax alone, so that what an unknown field
    /// holds (any nesting, numbers beyond `f64`, lone surrogates) never
    /// changes the outcome. A lone surrogate escape in one of the six
    /// fields, which no `Value` holds, fails that field's rule. Text that is
    /// not JSON at all (never a page's element, whose syntax the page
    /// checked) is `malformed`.
    pub fn parse_json(text: &str, latest_allowed: DateTime<Utc>) -> Result<Profile, Rejection> {
        match wire::read(text) {
            Ok(Element::Object(fields)) => Profile::decide(&fields, latest_allowed),
            Ok(Element::Other(kind)) => Err(not_an_object(kind)),
            Err(err) => Err(Rejection {
                reason: Reason::Malformed,
                message: format!("element is not valid JSON: {err}"),
                profile_id: None,
                changed_at: None,
            }),
        }
    }

    /// The checks after the first, on what an object's six fields hold (in
    /// [`FIELDS`] order, `None` where missing), however it was read.
    fn decide(
        fields: &[Option<Field<'_>>; 6],
        latest_allowed: DateTime<Utc>,
    ) -> Result<Profile, Rejection> {
        let mut text: [&Decoded<'_>; 6] = [&Decoded::EMPTY; 6];
        for ((slot, field), name) in text.iter_mut().zip(fields).zip(FIELDS) {
            let why = match field {
                Some(Field::Text(decoded)) => {
                    *slot = decoded;
                    continue;
                }
                Some(Field::Other(kind)) => {
                    format!("field {name} is {}, not a string", kind.name())
                }
                None => format!("field {name} is missing"),
            };
            // What can be read of the id and timestamp goes with every
            // rejection, so a newer bad change can still mark an existing row.
            let text_of = |index: usize| match &fields[index] {
                Some(Field::Text(decoded)) if !decoded.lone_surrogate => Some(&*decoded.text),
                _ => None,
            };
            return Err(Rejection {
                reason: Reason::Malformed,
                message: why,
                profile_id: text_of(0).and_then(parse_uuid),
                changed_at: text_of(5).and_then(|text| Timestamp::parse(text).ok()),
            });
        }
        Profile::check(text, latest_allowed)
    }

    /// The rules of each of the six fields, present and strings, in the
    /// contract's order.
    fn check(text: [&Decoded<'_>; 6], latest_allowed: DateTime<Utc>) -> Result<Profile, Rejection> {
        let [id, name, email, mobile, status, last_updated_at] = text;
        // Each is parsed once: what can be read of the id and timestamp goes
        // with every rejection, so a newer bad change can still mark an
        // existing row.
        let profile_id = if id.lone_surrogate {
            None
        } else {
            parse_uuid(&id.text)
        };
        let timestamp = field_rule(last_updated_at, "last_updated_at", Timestamp::parse);
        let changed_at = timestamp.as_ref().ok().copied();
        let reject = |reason: Reason, message: String| Rejection {
            reason,
            message,
            profile_id,
            changed_at,
        };

        let Some(id) = profile_id else {
            let message = field_rule(id, "id", |text| {
                Err::<(), _>(format!(
                    "id {:?} is not a hyphenated UUID",
                    truncate_for_message(text)
                ))
            });
            return Err(reject(Reason::InvalidId, message.err().unwrap_or_default()));
        };
        let last_updated_at = timestamp.map_err(|m| reject(Reason::InvalidTimestamp, m))?;
        field_rule(email, "email", Email::rule).map_err(|m| reject(Reason::InvalidEmail, m))?;
        field_rule(name, "name", Name::rule).map_err(|m| reject(Reason::InvalidName, m))?;
        field_rule(mobile, "mobile", Mobile::rule).map_err(|m| reject(Reason::InvalidMobile, m))?;
        if last_updated_at.as_datetime() > latest_allowed {
            return Err(reject(
                Reason::FutureTimestamp,
                format!("last_updated_at {last_updated_at} lies beyond the allowed clock skew"),
            ));
        }
        let status = field_rule(status, "status", |text| {
            SyncedStatus::parse(text).ok_or_else(|| {
                format!(
                    "status {:?} is not synced (only active and pending are)",
                    truncate_for_message(text)
                )
            })
        })
        .map_err(|m| reject(Reason::InactiveStatus, m))?;
        // Every rule held: only now is the text copied out of the page.
        Ok(Profile {
            id,
            name: Name(name.text.to_string()),
            email: Email(email.text.to_string()),
            mobile: Mobile(mobile.text.to_string()),
            status,
            last_updated_at,
        })
    }
}

/// `rule` applied to a field's text, unless it holds a lone surrogate
/// escape: that is no character, so no rule of a field holds for it.
fn field_rule<T>(
    field: &Decoded<'_>,
    name: &str,
    rule: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    if field.lone_surrogate {
        Err(format!(
            "{name} holds a lone surrogate escape (\\ud800-\\udfff without its pair, or a byte that \
             is not UTF-8, kept as one), which is not a character"
        ))
    } else {
        rule(&field.text)
    }
}

fn not_an_object(kind: JsonKind) -> Rejection {
    Rejection {
        reason: Reason::Malformed,
        message: format!("element is {}, not a JSON object", kind.name()),
        profile_id: None,
        changed_at: None,
    }
}

/// The kinds of JSON value, as messages name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonKind {
    fn of(value: &Value) -> JsonKind {
        match value {
            Value::Null => JsonKind::Null,
            Value::Bool(_) => JsonKind::Bool,
            Value::Number(_) => JsonKind::Number,
            Value::String(_) => JsonKind::String,
            Value::Array(_) => JsonKind::Array,
            Value::Object(_) => JsonKind::Object,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "a boolean",
            JsonKind::Number => "a number",
            JsonKind::String => "a string",
            JsonKind::Array => "an array",
            JsonKind::Object => "an object",
        }
    }
}

/// A hyphenated UUID (8-4-4-4-12 hex digits, any case, any version).
fn parse_uuid(text: &str) -> Option<Uuid> {
    // Of the forms `Uuid::try_parse` accepts (simple, hyphenated, braced,
    // URN), only the hyphenated one is 36 bytes long; it checks the hyphens'
    // places and the hex digits itself.
    if text.len() == 36 {
        Uuid::try_parse(text).ok()
    } else {
        None
    }
}

/// Keeps messages readable when a field holds kilobytes of junk.
fn truncate_for_message(text: &str) -> Cow<'_, str> {
    const LIMIT: usize = 64;
    match text.char_indices().nth(LIMIT) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;
    use std::collections::HashSet;

    fn now_limit() -> DateTime<Utc> {
        Utc::now() + Duration::seconds(300)
    }

    fn valid() -> Value {
        json!({
            "id": "3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "mobile": "+447700900123",
            "status": "active",
            "last_updated_at": "2025-07-01T15:43:04+05:30",
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut element = valid();
        element[field] = value;
        element
    }

    fn without(field: &str) -> Value {
        let mut element = valid();
        element.as_object_mut().map(|o| o.remove(field));
        element
    }

    fn reason_of(element: &Value) -> Option<Reason> {
        Profile::parse(element, now_limit()).err().map(|r| r.reason)
    }

    #[test]
    fn a_valid_profile_parses_with_every_field() {
        let profile = Profile::parse(&valid(), now_limit()).expect("valid");
        assert_eq!(
            profile.id.to_string(),
            "3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60"
        );
        assert_eq!(profile.name.as_str(), "Ada Lovelace");
        assert_eq!(profile.email.as_str(), "ada@example.com");
        assert_eq!(profile.mobile.as_str(), "+447700900123");
        assert_eq!(profile.status, SyncedStatus::Active);
        assert_eq!(
            profile.last_updated_at.to_string(),
            "2025-07-01T10:13:04.000000Z"
        );
    }

    #[test]
    fn unknown_extra_fields_are_ignored() {
        let element = with("nickname", json!({"nested": [1, 2]}));
        assert!(Profile::parse(&element, now_limit()).is_ok());
    }

    #[test]
    fn malformed_elements() {
        for element in [
            json!(null),
            json!(42),
            json!("text"),
            json!([valid()]),
            without("id"),
            without("name"),
            without("email"),
            without("mobile"),
            without("status"),
            without("last_updated_at"),
            with("id", json!(null)),
            with("name", json!(7)),
            with("email", json!(["a@b.cd"])),
            with("mobile", json!(447700900123u64)),
            with("status", json!(true)),
            with("last_updated_at", json!({"at": "2025-07-01T10:13:04Z"})),
        ] {
            assert_eq!(reason_of(&element), Some(Reason::Malformed), "{element}");
        }
    }

    #[test]
    fn a_malformed_change_keeps_the_id_and_timestamp_it_has() {
        let rejection = Profile::parse(&with("mobile", json!(12345)), now_limit()).unwrap_err();
        assert_eq!(rejection.reason, Reason::Malformed);
        assert!(rejection.profile_id.is_some());
        assert!(rejection.changed_at.is_some());
    }

    #[test]
    fn ids_must_be_hyphenated_uuids_of_any_case_and_version() {
        for ok in [
            "3F1C2A9E-8B7D-4C6E-9A5F-1B2C3D4E5F60",
            "00000000-0000-0000-0000-000000000000",
            "3f1c2a9e-8b7d-1c6e-0a5f-1b2c3d4e5f60",
        ] {
            assert_eq!(reason_of(&with("id", json!(ok))), None, "{ok}");
        }
        for bad in [
            "",
            "not-a-uuid",
            "3f1c2a9e8b7d4c6e9a5f1b2c3d4e5f60",
            "{3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60}",
            "urn:uuid:3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60",
            "3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f6g",
            " 3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60",
            // 36 bytes, but not hyphens in the 8-4-4-4-12 places
            "3f1c2a9e8b7d4c6e9a5f1b2c3d4e5f60----",
            "{3f1c2a9-8b7d-4c6e-9a5f-1b2c3d4e5f6}",
            "3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5fé",
        ] {
            assert_eq!(
                reason_of(&with("id", json!(bad))),
                Some(Reason::InvalidId),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_need_rfc3339_with_an_offset() {
        for ok in [
            "2025-07-01T10:13:04Z",
            "2025-07-01t10:13:04z",
            "2025-07-01T10:13:04.123456789-08:00",
            "2025-07-01T15:43:04+05:30",
        ] {
            assert_eq!(reason_of(&with("last_updated_at", json!(ok))), None, "{ok}");
        }
        for bad in [
            "",
            "2025-07-01T10:13:04",
            "2025-07-01 10:13:04Z",
            "2025-07-01",
            "2025-13-01T10:13:04Z",
            "2025-02-30T10:13:04Z",
            "2025-07-01T10:13:04+0530",
            "1751364784",
            "yesterday",
        ] {
            assert_eq!(
                reason_of(&with("last_updated_at", json!(bad))),
                Some(Reason::InvalidTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn equal_instants_in_different_offsets_are_equal_and_truncated_to_micros() {
        let a = Timestamp::parse("2025-07-01T15:43:04.1234567+05:30").unwrap();
        let b = Timestamp::parse("2025-07-01T10:13:04.123456Z").unwrap();
        assert_eq!(a, b);
        assert!(Timestamp::parse("2025-07-01T10:13:04.123457Z").unwrap() > a);
    }

    #[test]
    fn email_rule() {
        let long_local = "a".repeat(64);
        let too_long_local = "a".repeat(65);
        let label63 = "d".repeat(63);
        let ok_long = format!("{long_local}@{label63}.example.com");
        for ok in [
            "a@b.co",
            "first.last@example.com",
            "x!#$%&'*+/=?^_`{|}~-y@sub-domain.example.org",
            "USER@EXAMPLE.COM",
            "u@1a.b2.example",
            ok_long.as_str(),
        ] {
            assert_eq!(reason_of(&with("email", json!(ok))), None, "{ok}");
        }
        let too_long_label = format!("a@{}.com", "d".repeat(64));
        let too_long_total = format!("a@{}.com", vec!["d".repeat(60); 5].join("."));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@@example.com",
            "a@b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "a b@example.com",
            "a\"b@example.com",
            "a@example",
            "a@-example.com",
            "a@example-.com",
            "a@exa_mple.com",
            "a@example..com",
            "a@example.c",
            "a@example.c0m",
            "a@example.com.",
            "ü@example.com",
            "a@exämple.com",
            too_long_local.as_str(),
            &format!("{too_long_local}@example.com"),
            too_long_label.as_str(),
            too_long_total.as_str(),
        ] {
            assert_eq!(
                reason_of(&with("email", json!(bad))),
                Some(Reason::InvalidEmail),
                "{bad}"
            );
        }
    }

    #[test]
    fn name_rule() {
        for ok in [
            "A",
            "Zoë Ångström",
            " padded ",
            &"n".repeat(255),
            &"é".repeat(255),
        ] {
            assert_eq!(reason_of(&with("name", json!(ok))), None, "{ok}");
        }
        for bad in [
            "",
            " ",
            "\t \u{3000}",
            "nul\u{0}inside",
            "bell\u{7}",
            "line\nbreak",
            "del\u{7f}",
            "c1\u{85}",
            &"n".repeat(256),
            &"n".repeat(10_000),
        ] {
            assert_eq!(
                reason_of(&with("name", json!(bad))),
                Some(Reason::InvalidName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mobile_rule() {
        for ok in ["123", "+123", "1234567890123456789", "+1234567890123456789"] {
            assert_eq!(reason_of(&with("mobile", json!(ok))), None, "{ok}");
        }
        for bad in [
            "",
            "12",
            "+12",
            "12345678901234567890",
            "++123",
            "123+",
            "123 456",
            "12a45",
            "١٢٣٤",
            &"9".repeat(10_000),
        ] {
            assert_eq!(
                reason_of(&with("mobile", json!(bad))),
                Some(Reason::InvalidMobile),
                "{bad}"
            );
        }
    }

    #[test]
    fn future_timestamps_beyond_the_skew_fail() {
        let limit = Utc::now() + Duration::seconds(300);
        let soon = (Utc::now() + Duration::seconds(100)).to_rfc3339();
        let later = (Utc::now() + Duration::seconds(3600)).to_rfc3339();
        assert!(Profile::parse(&with("last_updated_at", json!(soon)), limit).is_ok());
        let rejection = Profile::parse(&with("last_updated_at", json!(later)), limit).unwrap_err();
        assert_eq!(rejection.reason, Reason::FutureTimestamp);
    }

    #[test]
    fn only_active_and_pending_are_synced() {
        assert_eq!(reason_of(&with("status", json!("pending"))), None);
        for skipped in ["inactive", "Active", "ACTIVE", "", "deleted"] {
            let rejection =
                Profile::parse(&with("status", json!(skipped)), now_limit()).unwrap_err();
            assert_eq!(rejection.reason, Reason::InactiveStatus, "{skipped}");
            assert_eq!(rejection.outcome(), Outcome::Skipped);
        }
    }

    #[test]
    fn the_first_failing_rule_in_contract_order_decides() {
        let mut element = valid();
        element["id"] = json!("bad");
        element["last_updated_at"] = json!("bad");
        element["email"] = json!("bad");
        element["name"] = json!("");
        element["mobile"] = json!("bad");
        element["status"] = json!("inactive");
        let order = [
            (
                "id",
                Reason::InvalidId,
                json!("3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60"),
            ),
            (
                "last_updated_at",
                Reason::InvalidTimestamp,
                json!("2999-01-01T00:00:00Z"),
            ),
            ("email", Reason::InvalidEmail, json!("a@b.co")),
            ("name", Reason::InvalidName, json!("Ada")),
            ("mobile", Reason::InvalidMobile, json!("12345")),
            (
                "last_updated_at",
                Reason::FutureTimestamp,
                json!("2020-01-01T00:00:00Z"),
            ),
            ("status", Reason::InactiveStatus, json!("active")),
        ];
        for (field, expected, fix) in order {
            assert_eq!(reason_of(&element), Some(expected));
            element[field] = fix;
        }
        assert_eq!(reason_of(&element), None);
        // A missing field outranks everything else.
        element.as_object_mut().map(|o| o.remove("status"));
        element["id"] = json!("bad");
        assert_eq!(reason_of(&element), Some(Reason::Malformed));
    }

    #[test]
    fn every_reason_has_its_outcome() {
        let conflicts: Vec<_> = Reason::ALL
            .iter()
            .filter(|r| r.outcome() == Outcome::Conflict)
            .collect();
        assert_eq!(conflicts, [&Reason::EmailTaken, &Reason::MobileTaken]);
        assert_eq!(Reason::Stale.outcome().as_str(), "skipped");
        assert_eq!(Reason::InvalidEmail.outcome().as_str(), "failed_validation");
    }

    /// `parse_json` of `text` against `parse` of the same text read as a
    /// `Value`: the fast path must never change an outcome or a message.
    fn assert_agree(text: &str) -> Result<Profile, Rejection> {
        let limit = now_limit();
        let element: Value = serde_json::from_str(text).expect("the test element is valid JSON");
        let fast = Profile::parse_json(text, limit);
        assert_eq!(fast, Profile::parse(&element, limit), "{text}");
        fast
    }

    /// `value` as JSON text with every character of every string written
    /// as a `\uXXXX` escape, object members in reverse order if `reversed`.
    fn escaped(value: &Value, reversed: bool) -> String {
        fn string(text: &str) -> String {
            let units: String = text
                .encode_utf16()
                .map(|unit| format!("\\u{unit:04x}"))
                .collect();
            format!("\"{units}\"")
        }
        match value {
            Value::String(text) => string(text),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(|v| escaped(v, reversed)).collect();
                format!("[{}]", items.join(","))
            }
            Value::Object(members) => {
                let mut members: Vec<String> = members
                    .iter()
                    .map(|(key, v)| format!("{}:{}", string(key), escaped(v, reversed)))
                    .collect();
                if reversed {
                    members.reverse();
                }
                format!("{{{}}}", members.join(","))
            }
            other => other.to_string(),
        }
    }

    /// Elements for every row of the validation table and odd shapes
    /// around them.
    fn table() -> Vec<Value> {
        let mut elements = vec![
            valid(),
            with("status", json!("pending")),
            json!(null),
            json!(true),
            json!(42),
            json!(-1.5),
            json!("text"),
            json!([]),
            json!([valid()]),
            json!(["id", "name", "email", "mobile", "status", "last_updated_at"]),
            json!({}),
        ];
        for field in FIELDS {
            elements.push(without(field));
            for odd in [
                json!(null),
                json!(7),
                json!(-0.5),
                json!(true),
                json!([]),
                json!(["a@b.co"]),
                json!({}),
                json!({"nested": {"deeper": [1, "x", null]}}),
                json!(""),
                json!("x".repeat(10_000)),
                json!("A \"quoted\" / \\ name é \u{0} \u{1F600}"),
            ] {
                elements.push(with(field, odd));
            }
        }
        for (field, text) in [
            ("id", "not-a-uuid"),
            ("id", "3F1C2A9E-8B7D-4C6E-9A5F-1B2C3D4E5F60"),
            ("id", "{3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60}"),
            ("last_updated_at", "2025-07-01 10:13:04Z"),
            ("last_updated_at", "2025-02-30T10:13:04Z"),
            ("last_updated_at", "2025-07-01T10:13:04"),
            ("last_updated_at", "2025-07-01T15:43:04+05:30"),
            ("last_updated_at", "2025-07-01T10:13:04.123456789-08:00"),
            ("last_updated_at", "2025-07-01t10:13:04z"),
            ("last_updated_at", "2999-01-01T00:00:00Z"),
            ("email", "a..b@example.com"),
            ("email", "ü@example.com"),
            ("email", "USER@EXAMPLE.COM"),
            ("name", " "),
            ("name", "nul\u{0}inside"),
            ("name", "Zoë Ångström"),
            ("name", &"é".repeat(256)),
            ("mobile", "12"),
            ("mobile", "+1234567890123456789"),
            ("mobile", "١٢٣٤"),
            ("status", "inactive"),
            ("status", "Active"),
            ("nickname", "an extra field"),
            ("", "an empty key"),
        ] {
            elements.push(with(field, json!(text)));
        }
        elements.push(with("extra", json!({"nested": [1, 2, {"x": null}]})));
        elements.push(with("extra", json!(1e300)));
        elements.push(with("extra", json!(u64::MAX)));
        let mut every_rule_broken = valid();
        for field in FIELDS {
            every_rule_broken[field] = json!("bad");
        }
        elements.push(every_rule_broken);
        elements
    }

    #[test]
    fn parse_json_agrees_with_parse_for_every_row_and_odd_shape() {
        let mut reasons = HashSet::new();
        for element in table() {
            for text in [
                element.to_string(),
                serde_json::to_string_pretty(&element).unwrap(),
                escaped(&element, false),
                escaped(&element, true),
            ] {
                reasons.insert(assert_agree(&text).err().map(|r| r.reason));
            }
        }
        // Every outcome parsing can give was among them.
        for reason in &Reason::ALL[..8] {
            assert!(reasons.contains(&Some(*reason)), "{reason:?}");
        }
        assert!(reasons.contains(&None));
    }

    #[test]
    fn parse_json_agrees_with_parse_on_text_a_value_does_not_show() {
        let id = "3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60";
        let rest = r#""name":"Ada","email":"ada@example.com","mobile":"+447700900123","status":"active","last_updated_at":"2025-07-01T15:43:04+05:30""#;
        // Of duplicate keys a `Value` keeps the last.
        let last_id_good = assert_agree(&format!(r#"{{"id":"bad","id":"{id}",{rest}}}"#));
        assert!(last_id_good.is_ok());
        let last_id_bad = assert_agree(&format!(r#"{{"id":"{id}",{rest},"id":"bad"}}"#));
        assert_eq!(last_id_bad.unwrap_err().reason, Reason::InvalidId);
        let last_null = assert_agree(&format!(r#"{{"id":"{id}",{rest},"status":null}}"#));
        assert_eq!(last_null.unwrap_err().reason, Reason::Malformed);
        assert_agree(&format!(r#"{{"id":7,"id":"{id}",{rest}}}"#)).unwrap();
        assert_agree(&format!(r#"{{"id":"{id}","x":1,{rest},"x":"y"}}"#)).unwrap();
        // Escaped keys, escapes of every kind, white space everywhere.
        assert_agree(&format!(r#"{{"\u0069d":"{id}",{rest}}}"#)).unwrap();
        let quoted = assert_agree(&format!(
            r#"{{"id":"{id}",{rest},"name":"A \"q\" \/ \\ \u00e9 \ud83d\ude00"}}"#
        ));
        assert_eq!(quoted.unwrap().name.as_str(), "A \"q\" / \\ é 😀");
        let nul = assert_agree(&format!(r#"{{"id":"{id}",{rest},"name":"a\u0000b"}}"#));
        assert_eq!(nul.unwrap_err().reason, Reason::InvalidName);
        assert_agree(&format!(" \n\t{{ \"id\" :\r\n\"{id}\" , {rest} }} \n")).unwrap();
        // Extra members of any kind and depth a `Value` takes.
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        for extra in [
            deep.as_str(),
            "1.5e-400",
            "-0",
            "123456789012345678901234567890",
            r#"{"id":5,"name":null}"#,
            r#""\ud83d\ude00""#,
        ] {
            assert_agree(&format!(r#"{{"id":"{id}","extra":{extra},{rest}}}"#)).unwrap();
        }
    }

    /// The valid profile's members in order, with `extra` members spliced
    /// in as written.
    fn valid_text_with(extra: &str) -> String {
        format!(
            r#"{{"id":"3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60",{extra}"name":"Ada Lovelace","email":"ada@example.com","mobile":"+447700900123","status":"active","last_updated_at":"2025-07-01T15:43:04+05:30"}}"#
        )
    }

    /// Unknown members no `Value` takes: deep nesting, numbers beyond
    /// `f64`, lone surrogates in values and in keys.
    fn hostile_members() -> Vec<String> {
        let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects =
            |depth: usize| format!("{}null{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let digits = "7".repeat(400);
        [
            format!(r#""x":{},"#, nest(200)),
            format!(r#""x":{},"#, nest(100_000)),
            format!(r#""x":{},"#, objects(5_000)),
            r#""x":1e400,"#.to_owned(),
            r#""x":-1e-400,"#.to_owned(),
            format!(r#""x":{digits},"#),
            format!(r#""x":-{digits}.{digits}e{digits},"#),
            r#""x":"\ud800","#.to_owned(),
            r#""x":"\udc00x","#.to_owned(),
            r#""x":["\ud800",{"\udfff":"\ud800\ud800"}],"#.to_owned(),
            r#""\ud800":1,"#.to_owned(),
            r#""i\ud800d":"not the id","#.to_owned(),
            format!(r#""x":{{"id":{},"name":1e400}},"#, nest(300)),
        ]
        .into()
    }

    #[test]
    fn unknown_members_never_change_an_outcome_whatever_they_hold() {
        let limit = now_limit();
        let plain = valid_text_with("");
        let expected = Profile::parse(&serde_json::from_str(&plain).unwrap(), limit);
        assert!(expected.is_ok());
        for extra in hostile_members() {
            let text = valid_text_with(&extra);
            assert_eq!(Profile::parse_json(&text, limit), expected, "{:.80}", extra);
        }
        // Nor of an element that fails: the same rule fails, with the same
        // message, id and time.
        for (field, bad) in [
            ("id", json!("bad")),
            ("email", json!("bad")),
            ("status", json!("inactive")),
            ("mobile", json!(null)),
        ] {
            let base = with(field, bad);
            let expected = Profile::parse(&base, limit);
            assert!(expected.is_err());
            let base_text = base.to_string();
            for extra in hostile_members() {
                let text = base_text.replacen('{', &format!("{{{extra}"), 1);
                assert_eq!(Profile::parse_json(&text, limit), expected, "{field}");
            }
        }
    }

    #[test]
    fn a_lone_surrogate_in_a_profile_field_fails_that_fields_rule() {
        let limit = now_limit();
        let id = "3f1c2a9e-8b7d-4c6e-9a5f-1b2c3d4e5f60";
        let at = "2025-07-01T10:13:04.000000Z";
        for (field, reason, keeps_id, keeps_time) in [
            ("id", Reason::InvalidId, false, true),
            ("last_updated_at", Reason::InvalidTimestamp, true, false),
            ("email", Reason::InvalidEmail, true, true),
            ("name", Reason::InvalidName, true, true),
            ("mobile", Reason::InvalidMobile, true, true),
            ("status", Reason::InactiveStatus, true, true),
        ] {
            for lone in [r#""\ud800""#, r#""\udc00x""#, r#""Ada \udbff""#] {
                // The last of duplicate keys counts.
                let text = valid_text_with("").replacen('}', &format!(r#","{field}":{lone}}}"#), 1);
                let rejection = Profile::parse_json(&text, limit).unwrap_err();
                assert_eq!(rejection.reason, reason, "{text}");
                assert!(
                    rejection.message.contains("lone surrogate"),
                    "{}",
                    rejection.message
                );
                let got_id = rejection.profile_id.map(|u| u.to_string());
                assert_eq!(got_id.as_deref(), keeps_id.then_some(id), "{text}");
                let got_at = rejection.changed_at.map(|t| t.to_string());
                assert_eq!(got_at.as_deref(), keeps_time.then_some(at), "{text}");
            }
        }
        // A surrogate pair is a character like any other.
        let pair = valid_text_with("").replacen('}', r#","name":"Ada \ud83d\ude00"}"#, 1);
        assert_eq!(
            Profile::parse_json(&pair, limit).unwrap().name.as_str(),
            "Ada 😀"
        );
        // An earlier rule still comes first; a wrong type still outranks all.
        let both = valid_text_with("").replacen('}', r#","name":"\ud800","id":"bad"}"#, 1);
        assert_eq!(
            Profile::parse_json(&both, limit).unwrap_err().reason,
            Reason::InvalidId
        );
        let typed = valid_text_with("").replacen('}', r#","name":"\ud800","status":7}"#, 1);
        let rejection = Profile::parse_json(&typed, limit).unwrap_err();
        assert_eq!(rejection.reason, Reason::Malformed);
        assert_eq!(rejection.message, "field status is a number, not a string");
    }

    #[test]
    fn what_a_profile_field_holds_instead_of_a_string_is_malformed() {
        let limit = now_limit();
        let digits = "1".repeat(400);
        for field in FIELDS {
            for (value, kind) in [
                ("null".to_owned(), "null"),
                ("1e400".to_owned(), "a number"),
                (digits.clone(), "a number"),
                ("false".to_owned(), "a boolean"),
                (
                    format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
                    "an array",
                ),
                (r#"{"\ud800":1}"#.to_owned(), "an object"),
            ] {
                let text =
                    valid_text_with("").replacen('}', &format!(r#","{field}":{value}}}"#), 1);
                let rejection = Profile::parse_json(&text, limit).unwrap_err();
                assert_eq!(rejection.reason, Reason::Malformed);
                assert_eq!(
                    rejection.message,
                    format!("field {field} is {kind}, not a string")
                );
            }
        }
    }

    #[test]
    fn huge_strings_in_profile_fields_fail_their_rule_with_a_short_message() {
        let limit = now_limit();
        let huge = "9".repeat(4 * 1024 * 1024);
        for (field, reason) in [
            ("id", Reason::InvalidId),
            ("last_updated_at", Reason::InvalidTimestamp),
            ("email", Reason::InvalidEmail),
            ("name", Reason::InvalidName),
            ("mobile", Reason::InvalidMobile),
            ("status", Reason::InactiveStatus),
        ] {
            let text = valid_text_with("").replacen('}', &format!(r#","{field}":"{huge}"}}"#), 1);
            let rejection = Profile::parse_json(&text, limit).unwrap_err();
            assert_eq!(rejection.reason, reason, "{field}");
            assert!(
                rejection.message.len() < 200,
                "{field}: {}",
                rejection.message
            );
        }
        let escaped_name = "\\u0041".repeat(1_000_000);
        let text = valid_text_with("").replacen('}', &format!(r#","name":"{escaped_name}"}}"#), 1);
        let rejection = Profile::parse_json(&text, limit).unwrap_err();
        assert_eq!(rejection.reason, Reason::InvalidName);
        assert_eq!(
            rejection.message,
            "name has 1000000 characters, more than 255"
        );
    }

    #[test]
    fn text_that_is_not_one_json_value_is_malformed() {
        let limit = now_limit();
        for text in [
            "",
            "{",
            "[1,]",
            "{} {}",
            "\u{feff}{}",
            &valid_text_with(r#""x":01,"#),
            &valid_text_with(r#""x":[,"#),
        ] {
            let rejection = Profile::parse_json(text, limit).unwrap_err();
            assert_eq!(rejection.reason, Reason::Malformed, "{text}");
            assert!(rejection.message.starts_with("element is not valid JSON: "));
            assert_eq!((rejection.profile_id, rejection.changed_at), (None, None));
        }
    }

    #[test]
    fn a_second_of_60_is_second_00_of_the_next_minute() {
        let at = |text: &str| Timestamp::parse(text).map(|t| t.to_string());
        for (leap, next) in [
            ("2025-07-01T10:13:60Z", "2025-07-01T10:14:00.000000Z"),
            ("2025-07-01T10:13:60.5Z", "2025-07-01T10:14:00.500000Z"),
            (
                "2025-07-01T10:13:60.9999999Z",
                "2025-07-01T10:14:00.999999Z",
            ),
            ("2025-07-01T23:59:60Z", "2025-07-02T00:00:00.000000Z"),
            ("2025-06-30T23:59:60+05:30", "2025-06-30T18:30:00.000000Z"),
            ("2025-02-28T23:59:60Z", "2025-03-01T00:00:00.000000Z"),
            ("2024-02-28T23:59:60Z", "2024-02-29T00:00:00.000000Z"),
            ("2025-12-31T23:59:60Z", "2026-01-01T00:00:00.000000Z"),
            (
                "2025-12-31T23:59:60.0000004Z",
                "2026-01-01T00:00:00.000000Z",
            ),
            ("2025-12-31T23:59:60-01:00", "2026-01-01T01:00:00.000000Z"),
        ] {
            assert_eq!(at(leap).as_deref(), Ok(next), "{leap}");
        }
        // Compared as the instant it is: later than :59.999999, equal to :00.
        let leap = Timestamp::parse("2025-07-01T10:13:60.5Z").unwrap();
        assert!(leap > Timestamp::parse("2025-07-01T10:13:59.999999Z").unwrap());
        assert_eq!(leap, Timestamp::parse("2025-07-01T10:14:00.5Z").unwrap());
        assert_eq!(
            leap,
            Timestamp::parse("2025-07-01T15:44:00.5+05:30").unwrap()
        );
    }

    #[test]
    fn what_rfc3339_refuses_or_postgresql_reads_past_the_day_is_an_invalid_timestamp() {
        for bad in [
            "2025-07-01T10:13:61Z",
            "2025-07-01T10:60:00Z",
            "2025-07-01T24:00:00Z",
            "2025-12-31T23:59:60.5Z",
            "2025-12-31T23:59:60.000001Z",
            "2025-12-31T23:59:60.0000006Z",
            "2025-07-01T10:13:04+24:00",
            "2025-07-01T10:13:04-24:00",
            "2025-07-01T10:13:04+99:00",
            "2025-07-01T10:13:04+05:60",
            "2025-07-01T10:13:04-23:60",
            "2025-02-29T10:13:04Z",
            "2025-04-31T10:13:04Z",
            "2025-00-10T10:13:04Z",
            "2025-07-00T10:13:04Z",
            "0000-02-30T00:00:00Z",
        ] {
            let element = with("last_updated_at", json!(bad));
            assert_eq!(reason_of(&element), Some(Reason::InvalidTimestamp), "{bad}");
        }
        for good in [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "2025-07-01T10:13:04+15:59",
            "2025-07-01T10:13:04-15:59",
            "2025-07-01T10:13:04-00:00",
            "2024-02-29T10:13:04Z",
        ] {
            assert!(Timestamp::parse(good).is_ok(), "{good}");
        }
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:60-15:59")
                .unwrap()
                .to_string(),
            "+10000-01-01T15:59:00.000000Z"
        );
    }

    #[test]
    fn offsets_to_23_59_and_year_0000_are_the_utc_instants_they_name() {
        let at = |text: &str| Timestamp::parse(text).map(|t| t.to_string());
        for (text, instant) in [
            ("2025-07-01T10:13:04+16:00", "2025-06-30T18:13:04.000000Z"),
            ("2025-07-01T10:13:04-16:00", "2025-07-02T02:13:04.000000Z"),
            ("2025-07-01T10:13:04+23:59", "2025-06-30T10:14:04.000000Z"),
            (
                "2025-07-01T10:13:04.1234567-23:59",
                "2025-07-02T10:12:04.123456Z",
            ),
            ("2025-12-31T23:59:60+23:59", "2025-12-31T00:01:00.000000Z"),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000000Z"),
            ("0000-02-29T12:00:00+01:00", "0000-02-29T11:00:00.000000Z"),
            ("0000-12-31T23:59:59-23:59", "0001-01-01T23:58:59.000000Z"),
            // The earliest instant RFC 3339 can write lies in year -1 (2 BC).
            ("0000-01-01T00:00:00+23:59", "-0001-12-31T00:01:00.000000Z"),
            // And the latest, in year 10000.
            (
                "9999-12-31T23:59:59.999999-23:59",
                "+10000-01-01T23:58:59.999999Z",
            ),
        ] {
            assert_eq!(at(text).as_deref(), Ok(instant), "{text}");
            let element = with("last_updated_at", json!(text));
            let past = !instant.starts_with('+');
            let expected = if past {
                None
            } else {
                Some(Reason::FutureTimestamp)
            };
            assert_eq!(reason_of(&element), expected, "{text}");
        }
        assert_eq!(
            Timestamp::parse("2025-07-01T10:13:04+23:59").unwrap(),
            Timestamp::parse("2025-06-30T10:14:04Z").unwrap()
        );
    }

    #[test]
    fn a_leap_second_instant_is_the_next_minute_too() {
        let leap = Utc
            .with_ymd_and_hms(2016, 12, 31, 23, 59, 59)
            .unwrap()
            .with_nanosecond(1_500_000_999)
            .unwrap();
        assert_eq!(
            Timestamp::from_datetime(leap),
            Timestamp::parse("2017-01-01T00:00:00.500000Z").unwrap()
        );
    }
}
