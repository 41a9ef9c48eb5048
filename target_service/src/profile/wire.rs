//! Reading one page element's JSON text without a `serde_json::Value`: the
//! six string fields of a profile, borrowed from the text wherever no escape
//! has to be decoded, and nothing else kept.
//!
//! [`Fields::read`] takes only elements that [`Profile::parse`] would read
//! the same way: an object with each of the six fields exactly once and a
//! string, every other member valid JSON to `serde_json` (a lone surrogate,
//! a number out of range or nesting past its limit is not). Anything else is
//! declined, so [`Profile::parse_json`] falls back to a `Value` and the two
//! ways always agree; this module decides only *how* an element is read,
//! never what becomes of it.
//!
//! [`Profile::parse`]: super::Profile::parse
//! [`Profile::parse_json`]: super::Profile::parse_json

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::FIELDS;

/// The six fields of an element, in [`FIELDS`] order.
pub(super) struct Fields<'a>(pub [Cow<'a, str>; 6]);

impl<'a> Fields<'a> {
    /// The fields, or `None` when the element is anything but a plain
    /// object of six strings (and whatever else, valid) that a `Value`
    /// would read the same way.
    pub(super) fn read(text: &'a str) -> Option<Fields<'a>> {
        serde_json::from_str(text).ok()
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only a map: a derived struct would also take an array.
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of the six profile fields as strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut found: [Option<Cow<'de, str>>; 6] = Default::default();
        while let Some(Key(field)) = map.next_key()? {
            match field.and_then(|index| found.get_mut(index)) {
                // A `Value` keeps the last of duplicate keys; rather than
                // mimic that, leave such an element to it.
                Some(Some(_)) => return Err(de::Error::custom("a field appears twice")),
                Some(slot) => *slot = Some(map.next_value::<Text<'de>>()?.0),
                None => map.next_value::<Valid>().map(|Valid| ())?,
            }
        }
        let [Some(id), Some(name), Some(email), Some(mobile), Some(status), Some(at)] = found
        else {
            return Err(de::Error::custom("a field is missing"));
        };
        Ok(Fields([id, name, email, mobile, status, at]))
    }
}

/// An object's key: the index of the profile field it names, if any.
struct Key(Option<usize>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Key(FIELDS.iter().position(|field| *field == key)))
    }
}

/// A JSON string, borrowed from the text unless it holds an escape.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(text)))
    }
}

/// Any JSON value, checked as strictly as a `Value` is and then dropped.
///
/// `IgnoredAny` would not do: `serde_json` skips it by syntax alone, letting
/// through lone surrogates, numbers out of range and any depth of nesting,
/// all of which a `Value` refuses.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> Visitor<'de> for ValidVisitor {
    type Value = Valid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while let Some(Valid) = seq.next_element()? {}
        Ok(Valid)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while let Some(Valid) = map.next_key()? {
            map.next_value::<Valid>()?;
        }
        Ok(Valid)
    }
}

/// For an element that is not valid JSON to a `Value` (a lone surrogate, a
/// number out of range): the `id` and `last_updated_at` strings, if it is an
/// object whose keys and those two values can still be read. As with a
/// `Value`, the last of duplicate keys counts.
pub(super) fn id_and_time(text: &str) -> (Option<String>, Option<String>) {
    serde_json::from_str::<IdAndTime>(text)
        .map(|found| (found.id, found.at))
        .unwrap_or_default()
}

#[derive(Default)]
struct IdAndTime {
    id: Option<String>,
    at: Option<String>,
}

impl<'de> Deserialize<'de> for IdAndTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(IdAndTimeVisitor)
    }
}

struct IdAndTimeVisitor;

impl<'de> Visitor<'de> for IdAndTimeVisitor {
    type Value = IdAndTime;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdAndTime, A::Error> {
        // A string that is not valid (a lone surrogate) reads as none.
        let string = |raw: &RawValue| serde_json::from_str::<String>(raw.get()).ok();
        let mut found = IdAndTime::default();
        while let Some(Key(field)) = map.next_key()? {
            match field.and_then(|index| FIELDS.get(index)) {
                Some(&"id") => found.id = string(map.next_value::<&RawValue>()?),
                Some(&"last_updated_at") => found.at = string(map.next_value::<&RawValue>()?),
                _ => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        Ok(found)
    }
}
