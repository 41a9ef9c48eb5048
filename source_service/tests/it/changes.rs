//! What the generated changes contain, judged from the outside: validity by
//! SPEC §1 (with target_service's own parser), uniqueness, and the ways
//! deliberately bad changes are bad.

use std::collections::HashMap;

use crate::common::{page_all, start, verdict, Verdict};
use chrono::{DateTime, Utc};
use serde_json::Value;
use target_service::profile::Reason;

fn text<'a>(change: &'a Value, field: &str) -> Option<&'a str> {
    change.get(field).and_then(Value::as_str)
}

fn instant(change: &Value) -> Option<DateTime<Utc>> {
    let text = text(change, "last_updated_at")?;
    Some(DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc))
}

#[test]
fn without_bad_changes_every_profile_is_valid_and_emails_and_mobiles_are_unique() {
    let app = start(|c| {
        c.invalid_rate = 0.0;
        c.preload = 100_000;
        c.seed = Some(2024);
    });
    let mut changes = page_all(&app, 0, 10_000);
    for _ in 0..200 {
        changes.extend(app.get("/users/changes").array());
    }
    assert!(changes.len() >= 100_000);
    let now = Utc::now();

    let mut email_owner: HashMap<String, String> = HashMap::new();
    let mut mobile_owner: HashMap<String, String> = HashMap::new();
    let mut last_at: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut offsets: HashMap<String, usize> = HashMap::new();
    for change in &changes {
        assert_eq!(verdict(change), Verdict::Valid, "{change}");
        let id = text(change, "id").unwrap().to_string();
        let email = text(change, "email").unwrap().to_string();
        let mobile = text(change, "mobile").unwrap().to_string();
        // An email or mobile belongs to one user, for the whole run.
        let owner = email_owner.entry(email.clone()).or_insert(id.clone());
        assert_eq!(owner, &id, "email {email} used by two users");
        let owner = mobile_owner.entry(mobile.clone()).or_insert(id.clone());
        assert_eq!(owner, &id, "mobile {mobile} used by two users");

        let stamp = text(change, "last_updated_at").unwrap();
        assert_eq!(&stamp[19..20], ".", "six fractional digits: {stamp}");
        assert!(stamp[20..26].bytes().all(|b| b.is_ascii_digit()), "{stamp}");
        *offsets.entry(stamp[26..].to_string()).or_default() += 1;
        let at = instant(change).unwrap();
        assert!(at <= now, "{stamp} lies in the future");
        if let Some(previous) = last_at.insert(id.clone(), at) {
            assert!(at > previous, "{id}: {stamp} is not after {previous}");
        }
        *statuses
            .entry(text(change, "status").unwrap().to_string())
            .or_default() += 1;
    }
    let mut names: Vec<_> = statuses.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["active", "inactive", "pending"]);
    assert!(offsets.len() >= 5, "a mix of UTC offsets: {offsets:?}");
    assert!(offsets.contains_key("Z"));
    assert!(last_at.len() < changes.len(), "some changes are updates");
}

/// The listed ways a change can be bad (SPEC §2, SOURCE_INVALID_RATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Way {
    InvalidEmail,
    EmptyName,
    BadMobile,
    BadTimestamp,
    MissingTimestamp,
    NonUuidId,
    OlderTimestamp,
    EmailOfAnother,
    MobileOfAnother,
    WrongType,
}

/// Decides how `change` is bad, given what earlier changes showed.
struct Judge {
    newest: HashMap<String, DateTime<Utc>>,
    email_owner: HashMap<String, String>,
    mobile_owner: HashMap<String, String>,
}

impl Judge {
    fn new() -> Judge {
        Judge {
            newest: HashMap::new(),
            email_owner: HashMap::new(),
            mobile_owner: HashMap::new(),
        }
    }

    fn judge(&mut self, change: &Value) -> Option<Way> {
        let way = match verdict(change) {
            Verdict::Invalid(Reason::Malformed) => {
                if change.get("last_updated_at").is_none() {
                    Some(Way::MissingTimestamp)
                } else {
                    Some(Way::WrongType)
                }
            }
            Verdict::Invalid(Reason::InvalidId) => Some(Way::NonUuidId),
            Verdict::Invalid(Reason::InvalidTimestamp) => Some(Way::BadTimestamp),
            Verdict::Invalid(Reason::InvalidEmail) => Some(Way::InvalidEmail),
            Verdict::Invalid(Reason::InvalidName) => {
                assert!(text(change, "name").unwrap().trim().is_empty(), "{change}");
                Some(Way::EmptyName)
            }
            Verdict::Invalid(Reason::InvalidMobile) => Some(Way::BadMobile),
            Verdict::Invalid(other) => panic!("unexpected {other:?}: {change}"),
            Verdict::Valid => self.against_history(change),
        };
        self.remember(change);
        way
    }

    /// A change valid on its own is bad only against what came before.
    fn against_history(&self, change: &Value) -> Option<Way> {
        let id = text(change, "id")?;
        if let (Some(at), Some(newest)) = (instant(change), self.newest.get(id)) {
            if at < *newest {
                return Some(Way::OlderTimestamp);
            }
        }
        let email = text(change, "email")?;
        if self.email_owner.get(email).is_some_and(|owner| owner != id) {
            return Some(Way::EmailOfAnother);
        }
        let mobile = text(change, "mobile")?;
        if self
            .mobile_owner
            .get(mobile)
            .is_some_and(|owner| owner != id)
        {
            return Some(Way::MobileOfAnother);
        }
        None
    }

    fn remember(&mut self, change: &Value) {
        let Some(id) = text(change, "id").filter(|id| id.len() == 36) else {
            return;
        };
        if let Some(at) = instant(change) {
            let newest = self.newest.entry(id.to_string()).or_insert(at);
            *newest = (*newest).max(at);
        }
        // The first user seen with an email or mobile owns it.
        if let Some(email) = text(change, "email") {
            self.email_owner
                .entry(email.to_string())
                .or_insert(id.to_string());
        }
        if let Some(mobile) = text(change, "mobile") {
            self.mobile_owner
                .entry(mobile.to_string())
                .or_insert(id.to_string());
        }
    }
}

#[test]
fn at_rate_one_every_change_is_bad_in_a_listed_way_and_every_way_occurs() {
    let app = start(|c| {
        c.invalid_rate = 1.0;
        c.preload = 30_000;
    });
    let changes = page_all(&app, 0, 10_000);
    let mut judge = Judge::new();
    let mut counts: HashMap<Way, usize> = HashMap::new();
    for change in &changes {
        let way = judge
            .judge(change)
            .unwrap_or_else(|| panic!("a good change at rate 1: {change}"));
        *counts.entry(way).or_default() += 1;
    }
    let mut ways: Vec<_> = counts.iter().collect();
    ways.sort();
    assert_eq!(counts.len(), 10, "every way occurs: {ways:?}");
    assert!(counts.values().all(|&n| n >= 100), "{ways:?}");
}

#[test]
fn at_a_low_rate_bad_changes_contradict_what_good_changes_established() {
    // A consumer that applied every good change sees each bad one as bad:
    // older than the stored row, or an email/mobile its owner still holds.
    let app = start(|c| {
        c.invalid_rate = 0.2;
        c.preload = 60_000;
        c.seed = Some(5);
    });
    let changes = page_all(&app, 0, 10_000);
    // State as a consumer applying only good changes would keep it.
    let mut rows: HashMap<String, (String, String, DateTime<Utc>)> = HashMap::new();
    let mut email_owner: HashMap<String, String> = HashMap::new();
    let mut mobile_owner: HashMap<String, String> = HashMap::new();
    let mut bad = 0;
    for change in &changes {
        if verdict(change) != Verdict::Valid {
            bad += 1;
            continue;
        }
        let id = text(change, "id").unwrap().to_string();
        let email = text(change, "email").unwrap().to_string();
        let mobile = text(change, "mobile").unwrap().to_string();
        let at = instant(change).unwrap();
        let stale = rows.get(&id).is_some_and(|(_, _, stored)| at <= *stored);
        let email_taken = email_owner.get(&email).is_some_and(|o| *o != id);
        let mobile_taken = mobile_owner.get(&mobile).is_some_and(|o| *o != id);
        if stale || email_taken || mobile_taken {
            assert_eq!(
                u8::from(stale) + u8::from(email_taken) + u8::from(mobile_taken),
                1,
                "bad in exactly one way: {change}"
            );
            bad += 1;
            continue;
        }
        if let Some((old_email, old_mobile, _)) =
            rows.insert(id.clone(), (email.clone(), mobile.clone(), at))
        {
            email_owner.remove(&old_email);
            mobile_owner.remove(&old_mobile);
        }
        email_owner.insert(email, id.clone());
        mobile_owner.insert(mobile, id);
    }
    let rate = bad as f64 / changes.len() as f64;
    assert!((0.18..0.22).contains(&rate), "bad fraction {rate}");
}
