//! Properties of parsing that must hold for any input from outside: nothing
//! panics, the same instant compares equal in any offset, and what the rules
//! allow is accepted.

use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use target_service::profile::{Email, Mobile, Name, Profile, Timestamp};

fn latest_allowed() -> DateTime<Utc> {
    Utc::now() + Duration::seconds(300)
}

/// Arbitrary JSON, nested a few levels, with strings of any characters.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("name".to_owned()),
                    Just("email".to_owned()),
                    Just("mobile".to_owned()),
                    Just("status".to_owned()),
                    Just("last_updated_at".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_any_json_never_panics(element in any_json()) {
        let _ = Profile::parse(&element, latest_allowed());
    }

    #[test]
    fn parsing_any_strings_in_every_field_never_panics(
        id in ".{0,40}", name in ".{0,300}", email in ".{0,300}",
        mobile in ".{0,30}", status in ".{0,10}", at in ".{0,40}",
    ) {
        let element = json!({
            "id": id, "name": name, "email": email, "mobile": mobile,
            "status": status, "last_updated_at": at,
        });
        let _ = Profile::parse(&element, latest_allowed());
    }

    #[test]
    fn one_instant_in_any_offset_is_the_same_timestamp(
        seconds in 0i64..4_000_000_000, micros in 0u32..1_000_000,
        offset_minutes in -(23 * 60 + 59)..(23 * 60 + 59),
    ) {
        let utc = Utc.timestamp_opt(seconds, micros * 1000).single().unwrap();
        let offset = FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let local = utc.with_timezone(&offset).to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        let zulu = utc.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        prop_assert_eq!(Timestamp::parse(&local).unwrap(), Timestamp::parse(&zulu).unwrap());
    }

    #[test]
    fn digits_below_a_microsecond_never_change_the_order(
        seconds in 0i64..4_000_000_000, micros in 0u32..999_999, extra in 0u32..1000,
    ) {
        let base = Utc.timestamp_opt(seconds, micros * 1000).single().unwrap();
        let finer = format!("{}{:03}Z", base.format("%Y-%m-%dT%H:%M:%S%.6f"), extra);
        let next = Utc.timestamp_opt(seconds, (micros + 1) * 1000).single().unwrap();
        let finer = Timestamp::parse(&finer).unwrap();
        prop_assert_eq!(finer, Timestamp::from_datetime(base));
        prop_assert!(finer < Timestamp::from_datetime(next));
    }

    #[test]
    fn emails_built_by_the_rule_are_accepted(
        local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_-]{1,10}){0,2}",
        labels in prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 1..4),
        top in "[a-zA-Z]{2,10}",
    ) {
        let email = format!("{local}@{}.{top}", labels.join("."));
        prop_assert!(Email::parse(&email).is_ok(), "{}", email);
    }

    #[test]
    fn mobiles_are_exactly_the_pattern(text in "\\+?[0-9]{0,25}") {
        let digits = text.trim_start_matches('+').len();
        prop_assert_eq!(Mobile::parse(&text).is_ok(), (3..=19).contains(&digits));
    }

    #[test]
    fn names_with_a_control_character_are_refused(
        before in "[a-zA-Z ]{0,20}", control in prop::char::range('\u{0}', '\u{1f}'), after in "[a-z]{0,20}",
    ) {
        let name = format!("{before}{control}{after}");
        prop_assert!(Name::parse(&name).is_err());
    }
}
