//! Reading one page element's JSON text without a `serde_json::Value`: the
//! six profile fields, each as its string (borrowed from the text wherever
//! no escape has to be decoded) or as the kind of value it holds instead;
//! every other member is skipped by its syntax alone.
//!
//! Skipping by syntax is what lets an unknown member hold anything a
//! `Value` would refuse — nesting of any depth, numbers beyond `f64`, lone
//! surrogate escapes — without changing what becomes of the element.
//! Elsewhere the text is read as a `Value` would read it: keys are compared
//! after decoding their escapes, and of duplicate keys the last counts.
//! This module decides only what the six fields hold, never what becomes of
//! them: that is [`super::Profile`]'s, for this reader and a `Value` alike.

use super::syntax::{self, Decoded, SyntaxError};
use super::{JsonKind, FIELDS};

/// What one of the six fields holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Field<'a> {
    Text(Decoded<'a>),
    /// Anything but a string.
    Other(JsonKind),
}

/// What a whole element is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Element<'a> {
    /// An object: the last value of each of the six fields, in [`FIELDS`]
    /// order, `None` where it is missing.
    Object([Option<Field<'a>>; 6]),
    /// Anything but an object.
    Other(JsonKind),
}

/// Reads `text`, which must be one JSON value with nothing but white space
/// around it.
pub(super) fn read(text: &str) -> Result<Element<'_>, SyntaxError> {
    let bytes = text.as_bytes();
    let start = syntax::skip_whitespace(bytes, 0);
    let (element, end) = match bytes.get(start) {
        Some(b'{') => {
            let (fields, end) = read_object(text, start)?;
            (Element::Object(fields), end)
        }
        _ => {
            let end = syntax::value_end(bytes, start)?;
            (Element::Other(kind_at(bytes, start)), end)
        }
    };
    let rest = syntax::skip_whitespace(bytes, end);
    if rest != bytes.len() {
        return Err(SyntaxError {
            at: rest,
            expected: "the end of the element",
        });
    }
    Ok(element)
}

/// The object whose `{` is at `at`, and the offset past its `}`.
fn read_object(text: &str, at: usize) -> Result<([Option<Field<'_>>; 6], usize), SyntaxError> {
    let bytes = text.as_bytes();
    let mut fields: [Option<Field<'_>>; 6] = Default::default();
    let mut at = syntax::skip_whitespace(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return Ok((fields, at + 1));
    }
    loop {
        if bytes.get(at) != Some(&b'"') {
            return Err(SyntaxError {
                at,
                expected: "a member name in quotes",
            });
        }
        let (key, after_key) = syntax::decode_string(text, at)?;
        at = syntax::skip_whitespace(bytes, after_key);
        at = syntax::expect(bytes, at, b':', "':' after a member name")?;
        at = syntax::skip_whitespace(bytes, at);
        // A key holding a lone surrogate names no field: FIELDS are ASCII.
        match FIELDS.iter().position(|field| *field == key.text) {
            Some(index) if bytes.get(at) == Some(&b'"') => {
                let (value, end) = syntax::decode_string(text, at)?;
                fields[index] = Some(Field::Text(value));
                at = end;
            }
            Some(index) => {
                let end = syntax::value_end(bytes, at)?;
                fields[index] = Some(Field::Other(kind_at(bytes, at)));
                at = end;
            }
            None => at = syntax::value_end(bytes, at)?,
        }
        at = syntax::skip_whitespace(bytes, at);
        match bytes.get(at) {
            Some(b',') => at = syntax::skip_whitespace(bytes, at + 1),
            Some(b'}') => return Ok((fields, at + 1)),
            _ => {
                return Err(SyntaxError {
                    at,
                    expected: "',' or '}'",
                })
            }
        }
    }
}

/// The kind of the valid JSON value that starts at `at`.
fn kind_at(bytes: &[u8], at: usize) -> JsonKind {
    match bytes.get(at) {
        Some(b'{') => JsonKind::Object,
        Some(b'[') => JsonKind::Array,
        Some(b'"') => JsonKind::String,
        Some(b't' | b'f') => JsonKind::Bool,
        Some(b'n') => JsonKind::Null,
        _ => JsonKind::Number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn text<'a>(field: &'a Option<Field<'_>>) -> Option<&'a str> {
        match field {
            Some(Field::Text(decoded)) => Some(&decoded.text),
            _ => None,
        }
    }

    #[test]
    fn the_six_fields_are_read_and_everything_else_skipped() {
        let element = r#" {"x":{"id":"no"},"id":"a","name":"b\u00e9","email":"c","mobile":7,"status":null,"extra":[1e400,"\ud800"]} "#;
        let Ok(Element::Object(fields)) = read(element) else {
            panic!("an object");
        };
        assert!(matches!(
            &fields[0],
            Some(Field::Text(Decoded {
                text: Cow::Borrowed("a"),
                lone_surrogate: false
            }))
        ));
        assert!(matches!(&fields[1], Some(Field::Text(d)) if matches!(d.text, Cow::Owned(_))));
        assert_eq!(text(&fields[1]), Some("bé"));
        assert_eq!(text(&fields[2]), Some("c"));
        assert_eq!(fields[3], Some(Field::Other(JsonKind::Number)));
        assert_eq!(fields[4], Some(Field::Other(JsonKind::Null)));
        assert_eq!(fields[5], None);
    }

    #[test]
    fn keys_are_decoded_and_the_last_of_duplicates_counts() {
        let Ok(Element::Object(fields)) =
            read(r#"{"id":"first","\u0069d":"second","na\u006de":"n","id":"third"}"#)
        else {
            panic!("an object");
        };
        assert_eq!(text(&fields[0]), Some("third"));
        assert_eq!(text(&fields[1]), Some("n"));
        let Ok(Element::Object(fields)) = read(r#"{"id":"good","id":[]}"#) else {
            panic!("an object");
        };
        assert_eq!(fields[0], Some(Field::Other(JsonKind::Array)));
        let Ok(Element::Object(fields)) = read(r#"{"i\ud800d":"x","id\u0000":"y"}"#) else {
            panic!("an object");
        };
        assert_eq!(fields[0], None, "neither key is id");
    }

    #[test]
    fn anything_but_an_object_is_its_kind() {
        for (element, kind) in [
            ("null", JsonKind::Null),
            (" true ", JsonKind::Bool),
            ("-1e400", JsonKind::Number),
            (r#""\ud800""#, JsonKind::String),
            ("[{}]", JsonKind::Array),
        ] {
            assert_eq!(read(element), Ok(Element::Other(kind)), "{element}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(read(&deep), Ok(Element::Other(JsonKind::Array)));
    }

    #[test]
    fn text_that_is_not_one_json_value_is_an_error() {
        for bad in [
            "",
            "{",
            "{\"id\":}",
            "{\"id\":\"a\",}",
            "{} {}",
            "[1,]",
            "{\"id\" \"a\"}",
            "\u{feff}{}",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
    }
}
