//! Properties of parsing that must hold for any input from outside: nothing
//! panics, the same instant compares equal in any offset, what the rules
//! allow is accepted, reading an element's text directly decides exactly
//! as reading it into a `Value` first, an unknown member never changes an
//! outcome whatever it holds, JSON syntax is what serde_json says it is,
//! and a timestamp is read as PostgreSQL reads it.

use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};
use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use target_service::profile::{syntax, Email, Mobile, Name, Profile, Rejection, Timestamp};

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

const FIELDS: [&str; 6] = ["id", "name", "email", "mobile", "status", "last_updated_at"];

/// A value for `field`: mostly a string close to its rule (on either side
/// of it), sometimes any JSON at all.
fn value_for(field: &str) -> BoxedStrategy<Value> {
    let plausible: BoxedStrategy<String> = match field {
        "id" => "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-gA-F]{11,13}"
            .boxed(),
        "name" => "[ a-zA-Zé\u{0}\t\"\\\\/]{0,12}".boxed(),
        "email" => "[a-z.\"]{0,6}@[a-z-]{1,6}\\.[a-z0-9]{1,3}".boxed(),
        "mobile" => "\\+?[0-9]{1,21}".boxed(),
        "status" => "active|pending|inactive|Active|".boxed(),
        _ => "20[0-9]{2}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-][01][0-9]:[0-5][0-9])?"
            .boxed(),
    };
    prop_oneof![6 => plausible.prop_map(Value::String), 1 => any_json()].boxed()
}

/// A JSON string with every character written as a `\uXXXX` escape.
fn escaped_string(text: &str) -> String {
    let units: String = text
        .encode_utf16()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect();
    format!("\"{units}\"")
}

/// `value` as JSON text, its strings escaped character by character if
/// `escape`.
fn render(value: &Value, escape: bool) -> String {
    match value {
        Value::String(text) if escape => escaped_string(text),
        Value::Array(items) if escape => {
            let items: Vec<String> = items.iter().map(|v| render(v, escape)).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(members) if escape => {
            let members: Vec<(String, Value)> = members
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            render_object(&members, escape)
        }
        other => other.to_string(),
    }
}

/// An object with these members in this order, duplicates and all, which a
/// `Value` cannot hold.
fn render_object(members: &[(String, Value)], escape: bool) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(key, value)| {
            let key = if escape {
                escaped_string(key)
            } else {
                Value::String(key.clone()).to_string()
            };
            format!("{key}:{}", render(value, escape))
        })
        .collect();
    let gap = if escape { ", " } else { "," };
    format!("{{{}}}", members.join(gap))
}

/// The text of a page element near a valid profile: each field close to
/// its rule or any JSON, some fields missing or given twice, extra members,
/// members in any order, strings escaped or not.
fn element_text() -> impl Strategy<Value = String> {
    let fields: Vec<BoxedStrategy<(String, Value)>> = FIELDS
        .iter()
        .map(|field| {
            value_for(field)
                .prop_map(move |value| (field.to_string(), value))
                .boxed()
        })
        .collect();
    let key = prop_oneof![
        (0..FIELDS.len()).prop_map(|i| FIELDS[i].to_owned()),
        "[a-z_]{0,8}",
    ];
    (
        fields,
        prop::collection::vec(0..FIELDS.len(), 0..2),
        prop::collection::vec((key, any_json()), 0..3),
        any::<bool>(),
    )
        .prop_flat_map(|(fields, missing, extra, escape)| {
            let members: Vec<(String, Value)> = fields
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !missing.contains(i))
                .map(|(_, member)| member)
                .chain(extra)
                .collect();
            Just(members)
                .prop_shuffle()
                .prop_map(move |members| render_object(&members, escape))
        })
}

/// Nesting `depth` levels deep, of arrays or of objects.
fn nested(depth: usize, objects: bool) -> String {
    if objects {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

/// An unknown member holding what no `Value` takes (nesting past its
/// limit, numbers beyond `f64`, lone surrogates, in values and keys) or
/// anything a `Value` does take.
fn unknown_member() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        "[a-z_]{0,8}"
            .prop_filter("not a profile field", |key| !FIELDS.contains(&key.as_str()))
            .prop_map(|key| format!("\"{key}\"")),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""i\ud800d""#.to_owned()),
        Just(r#""\u0069dx""#.to_owned()),
    ];
    let value = prop_oneof![
        (1usize..3000, any::<bool>()).prop_map(|(depth, objects)| nested(depth, objects)),
        "-?[1-9][0-9]{300,420}(\\.[0-9]{1,400})?",
        "-?[1-9](\\.[0-9]{1,5})?[eE][+-]?[3-9][0-9]{2,5}",
        prop_oneof![
            Just(r#""\ud800""#),
            Just(r#""\udc00x""#),
            Just(r#""a\udbff\udbff""#),
            Just(r#"["\udfff",{"\ud800":"x"}]"#),
        ]
        .prop_map(str::to_owned),
        (any_json(), any::<bool>()).prop_map(|(value, escape)| render(&value, escape)),
    ];
    (key, value).prop_map(|(key, value)| format!("{key}:{value}"))
}

/// `member` added to the object `text` (never empty), first or last.
fn with_member(text: &str, member: &str, first: bool) -> String {
    if first {
        text.replacen('{', &format!("{{{member},"), 1)
    } else {
        format!("{},{member}}}", &text[..text.len() - 1])
    }
}

/// What a rejection says of the change, but its words.
fn gist(
    decided: Result<Profile, Rejection>,
) -> Result<Profile, (String, Option<String>, Option<String>)> {
    decided.map_err(|r| {
        (
            r.reason.as_str().to_owned(),
            r.profile_id.map(|u| u.to_string()),
            r.changed_at.map(|t| t.to_string()),
        )
    })
}

/// Text built of JSON's own characters, so that some of it is JSON.
fn json_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\\[\\]{}:,\" 0-9eE+.\\-tfrulnsa\\\\/u\t\n]{0,24}",
        (
            any_json(),
            any::<bool>(),
            any::<usize>(),
            "[\\[\\]{}:,\"0-9.\\\\]?"
        )
            .prop_map(|(value, escape, at, splice)| {
                // A valid text, one character replaced (or removed).
                let text = render(&value, escape);
                let chars: Vec<char> = text.chars().collect();
                let at = at % chars.len().max(1);
                let mut out: String = chars.iter().take(at).collect();
                out.push_str(&splice);
                out.extend(chars.iter().skip(at + 1));
                out
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn an_unknown_member_never_changes_an_outcome_whatever_it_holds(
        text in element_text(), member in unknown_member(), first in any::<bool>(),
    ) {
        let limit = latest_allowed();
        let element: Value = serde_json::from_str(&text).unwrap();
        let hostile = with_member(&text, &member, first);
        prop_assert_eq!(Profile::parse_json(&hostile, limit), Profile::parse(&element, limit), "{:.300}", hostile);
    }

    #[test]
    fn a_lone_surrogate_in_a_profile_field_fails_as_a_control_character_would(
        text in element_text(), field in 0..FIELDS.len(),
        around in ("[a-z]{0,3}", "[a-z]{0,3}"),
        lone in prop_oneof![Just("\\ud800"), Just("\\udbff"), Just("\\udc00"), Just("\\udfff")],
    ) {
        // Given last, the field counts (the last of duplicate keys does).
        let (before, after) = around;
        let field = FIELDS[field];
        let hostile = with_member(&text, &format!(r#""{field}":"{before}{lone}{after}""#), false);
        let control = with_member(&text, &format!(r#""{field}":"{before}\u0001{after}""#), false);
        let limit = latest_allowed();
        let reference = Profile::parse(&serde_json::from_str(&control).unwrap(), limit);
        prop_assert!(reference.is_err());
        prop_assert_eq!(gist(Profile::parse_json(&hostile, limit)), gist(reference), "{}", hostile);
    }

    #[test]
    fn json_syntax_is_what_serde_json_says_it_is(text in json_ish()) {
        let bytes = text.as_bytes();
        let ours = syntax::value_end(bytes, syntax::skip_whitespace(bytes, 0))
            .is_ok_and(|end| syntax::skip_whitespace(bytes, end) == bytes.len());
        let theirs = serde_json::from_str::<IgnoredAny>(&text).is_ok();
        prop_assert_eq!(ours, theirs, "{:?}", text);
    }

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
    fn reading_the_text_decides_as_reading_a_value_first(text in element_text()) {
        let limit = latest_allowed();
        let element: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Profile::parse_json(&text, limit), Profile::parse(&element, limit), "{}", text);
    }

    #[test]
    fn reading_any_json_text_decides_as_reading_a_value_first(
        element in any_json(), escape in any::<bool>(),
    ) {
        let limit = latest_allowed();
        let text = render(&element, escape);
        prop_assert_eq!(Profile::parse_json(&text, limit), Profile::parse(&element, limit), "{}", text);
    }

    #[test]
    fn reading_any_text_never_panics(text in "\\PC{0,200}") {
        let _ = Profile::parse_json(&text, latest_allowed());
    }

    #[test]
    fn one_instant_in_any_offset_is_the_same_timestamp(
        seconds in 0i64..4_000_000_000, micros in 0u32..1_000_000,
        // RFC 3339 takes offsets up to ±23:59.
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59),
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

/// One connection to PostgreSQL for the timestamp oracle; it only runs
/// `SELECT`s, so it needs no database of its own.
fn postgres() -> &'static Mutex<postgres::Client> {
    static CLIENT: OnceLock<Mutex<postgres::Client>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let client = postgres::Client::connect(&url, postgres::NoTls)
            .expect("TEST_DATABASE_URL must reach PostgreSQL");
        Mutex::new(client)
    })
}

/// What PostgreSQL reads `text` as, or `None` if it refuses it as a date
/// and time.
fn postgres_reads(text: &str) -> Option<DateTime<Utc>> {
    let mut client = postgres()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match client.query_one("SELECT $1::text::timestamptz", &[&text]) {
        Ok(row) => Some(row.get(0)),
        Err(err) => {
            let code = err.code().map(|code| code.code().to_owned());
            // Class 22, data exception: the text, not the connection.
            assert!(
                code.as_deref().is_some_and(|c| c.starts_with("22")),
                "{err}"
            );
            None
        }
    }
}

/// What the contract reads `text` (of [`edge_timestamp`]'s shape) as, with
/// PostgreSQL as the judge of the calendar and the clock: its date and time
/// of day as PostgreSQL reads them in UTC, less the offset. Year `0000` and
/// offsets past ±15:59, which RFC 3339 allows and PostgreSQL's text input
/// lacks, are read through year 2000 (the same place in the 400-year cycle
/// of leap years) and `Z`.
fn contract_reads(text: &str) -> Option<DateTime<Utc>> {
    let (local, offset_minutes) = match text.strip_suffix(['Z', 'z']) {
        Some(local) => (local, 0),
        None => {
            let (local, offset) = text.split_at(text.len() - 6);
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (local, sign * (hours * 60 + minutes))
        }
    };
    // 2000 years of the proleptic Gregorian calendar: five 400-year cycles.
    let (local, years_back) = match local.strip_prefix("0000") {
        Some(rest) => (format!("2000{rest}"), Duration::days(5 * 146_097)),
        None => (local.to_owned(), Duration::zero()),
    };
    let utc = postgres_reads(&format!("{local}Z"))?;
    Some(utc - years_back - Duration::minutes(offset_minutes))
}

/// RFC 3339 timestamps near every edge: year 0000 and 9999, days past a
/// month's end, seconds 59 to 61, fractions, offsets near and past ±15:59
/// and ±23:59.
/// (Hour 24, which PostgreSQL takes but RFC 3339 does not, is left out.)
fn edge_timestamp() -> impl Strategy<Value = String> {
    let year = prop_oneof![0u32..3, 1999u32..2001, 9998u32..=9999];
    let date = (year, 0u32..=13, prop_oneof![0u32..=3, 27u32..=32]);
    let time = (
        prop_oneof![0u32..=1, 22u32..=23],
        prop_oneof![0u32..=1, 58u32..=60],
        prop_oneof![0u32..=1, 58u32..=61],
        prop::option::of("[0-9]{1,9}"),
    );
    let offset = prop_oneof![
        Just("Z".to_owned()),
        Just("z".to_owned()),
        (
            any::<bool>(),
            prop_oneof![0u32..=1, 13u32..=17, 22u32..=25],
            prop_oneof![0u32..=1, 58u32..=60]
        )
            .prop_map(|(east, hours, minutes)| format!(
                "{}{hours:02}:{minutes:02}",
                if east { '+' } else { '-' }
            )),
    ];
    (date, time, offset, any::<bool>()).prop_map(
        |((y, mo, d), (h, mi, s, fraction), offset, upper)| {
            let fraction = fraction
                .map(|digits| format!(".{digits}"))
                .unwrap_or_default();
            let t = if upper { 'T' } else { 't' };
            format!("{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn a_timestamp_is_read_as_postgresql_reads_it(text in edge_timestamp()) {
        let ours = Timestamp::parse(&text);
        let theirs = contract_reads(&text);
        prop_assert_eq!(ours.is_ok(), theirs.is_some(), "{} {:?} {:?}", text, ours, theirs);
        // What PostgreSQL's text input takes, it reads as the same instant.
        if let Some(direct) = postgres_reads(&text) {
            prop_assert!(ours.is_ok(), "{} {:?}", text, direct);
        }
        if let Ok(ours) = ours {
            // PostgreSQL rounds what it reads to microseconds; the contract
            // truncates, so compare with the text cut to six digits.
            let cut = match text.find('.') {
                Some(dot) => {
                    let digits = text[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
                    format!("{}{}", &text[..dot + 1 + digits.min(6)], &text[dot + 1 + digits..])
                }
                None => text.clone(),
            };
            prop_assert_eq!(Some(ours.as_datetime()), contract_reads(&cut), "{}", text);
            if let Some(direct) = postgres_reads(&cut) {
                prop_assert_eq!(ours.as_datetime(), direct, "{}", text);
            }
        }
    }
}
