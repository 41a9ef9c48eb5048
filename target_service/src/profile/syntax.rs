//! JSON syntax (RFC 8259), checked byte by byte in a loop rather than by
//! recursion, so that no nesting depth can overflow the stack or hit a
//! recursion limit: a page whose elements hold a million levels of `[` is
//! read as well as one that holds none.
//!
//! Only syntax is checked. A number is digits in the grammar's shape, however
//! many (`1e400` and a 400-digit integer are numbers); a `\uXXXX` escape is
//! four hex digits, whether or not it pairs with another into a character (a
//! lone surrogate is syntax like any other escape). What a value *means* is
//! left to the reader: [`crate::profile`] decodes only the six profile fields
//! and skips every other value by its syntax alone.
//!
//! Memory is a bit per open array or object, so at most an eighth of the
//! text however deep it nests.

use std::borrow::Cow;
use std::fmt;

/// Where and why a text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the first byte that does not fit.
    pub at: usize,
    pub expected: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {} at byte {}", self.expected, self.at)
    }
}

impl std::error::Error for SyntaxError {}

fn error<T>(at: usize, expected: &'static str) -> Result<T, SyntaxError> {
    Err(SyntaxError { at, expected })
}

/// The first byte at or after `at` that is not JSON white space.
pub fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// Checks `expected` at `at` and steps past it.
pub fn expect(
    bytes: &[u8],
    at: usize,
    expected: u8,
    what: &'static str,
) -> Result<usize, SyntaxError> {
    if bytes.get(at) == Some(&expected) {
        Ok(at + 1)
    } else {
        error(at, what)
    }
}

/// Which containers are open, innermost last: one bit each, set for an
/// object.
#[derive(Default)]
struct Open {
    bits: Vec<u64>,
    depth: usize,
}

impl Open {
    fn push(&mut self, object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if word == self.bits.len() {
            self.bits.push(0);
        }
        if object {
            self.bits[word] |= 1 << bit;
        } else {
            self.bits[word] &= !(1 << bit);
        }
        self.depth += 1;
    }

    /// Whether the innermost open container is an object; `None` when none is
    /// open.
    fn innermost_is_object(&self) -> Option<bool> {
        let top = self.depth.checked_sub(1)?;
        Some(self.bits[top / 64] & (1 << (top % 64)) != 0)
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }
}

/// The end of the one JSON value that starts at `at` (after any white space):
/// the offset just past its last byte. Never recurses.
pub fn value_end(bytes: &[u8], at: usize) -> Result<usize, SyntaxError> {
    let mut open = Open::default();
    let mut at = at;
    loop {
        // A value is expected here.
        at = skip_whitespace(bytes, at);
        match bytes.get(at) {
            Some(b'{') => {
                at = skip_whitespace(bytes, at + 1);
                if bytes.get(at) == Some(&b'}') {
                    at += 1;
                } else {
                    open.push(true);
                    at = member_name_end(bytes, at)?;
                    continue;
                }
            }
            Some(b'[') => {
                at = skip_whitespace(bytes, at + 1);
                if bytes.get(at) == Some(&b']') {
                    at += 1;
                } else {
                    open.push(false);
                    continue;
                }
            }
            Some(b'"') => at = string_end(bytes, at)?,
            Some(b'-' | b'0'..=b'9') => at = number_end(bytes, at)?,
            Some(b't') => at = literal_end(bytes, at, b"true")?,
            Some(b'f') => at = literal_end(bytes, at, b"false")?,
            Some(b'n') => at = literal_end(bytes, at, b"null")?,
            _ => return error(at, "a JSON value"),
        }
        // A value ended: close what it ends, then expect the next one.
        loop {
            let Some(object) = open.innermost_is_object() else {
                return Ok(at);
            };
            at = skip_whitespace(bytes, at);
            match (bytes.get(at), object) {
                (Some(b','), true) => {
                    at = member_name_end(bytes, skip_whitespace(bytes, at + 1))?;
                    break;
                }
                (Some(b','), false) => {
                    at += 1;
                    break;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    open.pop();
                    at += 1;
                }
                (_, true) => return error(at, "',' or '}'"),
                (_, false) => return error(at, "',' or ']'"),
            }
        }
    }
}

/// Past a member's name and its colon, from the name's opening quote.
fn member_name_end(bytes: &[u8], at: usize) -> Result<usize, SyntaxError> {
    if bytes.get(at) != Some(&b'"') {
        return error(at, "a member name in quotes");
    }
    let at = skip_whitespace(bytes, string_end(bytes, at)?);
    expect(bytes, at, b':', "':' after a member name")
}

/// The end of the string whose opening quote is at `at`.
pub fn string_end(bytes: &[u8], at: usize) -> Result<usize, SyntaxError> {
    let mut at = at + 1;
    loop {
        match bytes.get(at) {
            Some(b'"') => return Ok(at + 1),
            Some(b'\\') => at = escape_end(bytes, at)?,
            Some(0x00..=0x1f) => return error(at, "no raw control character in a string"),
            Some(_) => at += 1,
            None => return error(at, "the end of a string"),
        }
    }
}

/// The end of the escape whose backslash is at `at`.
fn escape_end(bytes: &[u8], at: usize) -> Result<usize, SyntaxError> {
    match bytes.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
        Some(b'u') => hex4(bytes, at + 2).map(|_| at + 6),
        _ => error(
            at + 1,
            "an escape: one of \"\\/bfnrt or u and four hex digits",
        ),
    }
}

/// The four hex digits at `at` as a number.
fn hex4(bytes: &[u8], at: usize) -> Result<u16, SyntaxError> {
    let digits = bytes.get(at..at + 4).unwrap_or_default();
    if digits.len() == 4 && digits.iter().all(u8::is_ascii_hexdigit) {
        // Four ASCII hex digits always read as a u16.
        let text = std::str::from_utf8(digits).unwrap_or("0");
        Ok(u16::from_str_radix(text, 16).unwrap_or(0))
    } else {
        error(at, "four hex digits after \\u")
    }
}

/// The end of the number that starts at `at`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_end(bytes: &[u8], at: usize) -> Result<usize, SyntaxError> {
    let digits_from = |at: usize| {
        let mut end = at;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        end
    };
    let mut at = if bytes.get(at) == Some(&b'-') {
        at + 1
    } else {
        at
    };
    at = match bytes.get(at) {
        Some(b'0') => at + 1,
        Some(b'1'..=b'9') => digits_from(at),
        _ => return error(at, "a digit"),
    };
    if bytes.get(at) == Some(&b'.') {
        let end = digits_from(at + 1);
        if end == at + 1 {
            return error(end, "a digit after '.'");
        }
        at = end;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        let end = digits_from(at);
        if end == at {
            return error(end, "a digit in the exponent");
        }
        at = end;
    }
    Ok(at)
}

fn literal_end(bytes: &[u8], at: usize, literal: &'static [u8]) -> Result<usize, SyntaxError> {
    if bytes[at..].starts_with(literal) {
        Ok(at + literal.len())
    } else {
        error(
            at,
            match literal {
                b"true" => "true",
                b"false" => "false",
                _ => "null",
            },
        )
    }
}

/// A JSON string's content, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The characters, borrowed from the text unless an escape had to be
    /// decoded. A lone surrogate escape, which is no character, is read as
    /// U+FFFD REPLACEMENT CHARACTER.
    pub text: Cow<'a, str>,
    /// Whether the string held a lone surrogate escape.
    pub lone_surrogate: bool,
}

impl Decoded<'_> {
    /// The empty string.
    pub const EMPTY: Decoded<'static> = Decoded {
        text: Cow::Borrowed(""),
        lone_surrogate: false,
    };
}

/// Decodes the string whose opening quote is at `at` in `text`; returns it
/// and the offset just past its closing quote.
pub fn decode_string(text: &str, at: usize) -> Result<(Decoded<'_>, usize), SyntaxError> {
    let bytes = text.as_bytes();
    let start = at + 1;
    let mut end = start;
    // The usual string has no escape: borrow it.
    loop {
        match bytes.get(end) {
            Some(b'"') => {
                let decoded = Decoded {
                    text: Cow::Borrowed(&text[start..end]),
                    lone_surrogate: false,
                };
                return Ok((decoded, end + 1));
            }
            Some(b'\\') => break,
            Some(0x00..=0x1f) => return error(end, "no raw control character in a string"),
            Some(_) => end += 1,
            None => return error(end, "the end of a string"),
        }
    }
    let mut out = String::with_capacity(end - start + 16);
    out.push_str(&text[start..end]);
    let mut lone_surrogate = false;
    let mut at = end;
    loop {
        // Copy the run of plain characters up to the next quote or escape.
        let run = at;
        while let Some(&b) = bytes.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            at += 1;
        }
        // `run..at` ends before an ASCII byte (or at the end): char boundaries.
        out.push_str(&text[run..at]);
        match bytes.get(at) {
            Some(b'"') => {
                let decoded = Decoded {
                    text: Cow::Owned(out),
                    lone_surrogate,
                };
                return Ok((decoded, at + 1));
            }
            Some(b'\\') => {}
            Some(_) => return error(at, "no raw control character in a string"),
            None => return error(at, "the end of a string"),
        }
        let simple = match bytes.get(at + 1) {
            Some(b'"') => Some('"'),
            Some(b'\\') => Some('\\'),
            Some(b'/') => Some('/'),
            Some(b'b') => Some('\u{8}'),
            Some(b'f') => Some('\u{c}'),
            Some(b'n') => Some('\n'),
            Some(b'r') => Some('\r'),
            Some(b't') => Some('\t'),
            Some(b'u') => None,
            _ => {
                return error(
                    at + 1,
                    "an escape: one of \"\\/bfnrt or u and four hex digits",
                )
            }
        };
        if let Some(c) = simple {
            out.push(c);
            at += 2;
            continue;
        }
        let unit = hex4(bytes, at + 2)?;
        at += 6;
        let c = match unit {
            0xD800..=0xDBFF => {
                // A high surrogate is a character only with a low one next.
                let low = match (bytes.get(at..at + 2), hex4(bytes, at + 2)) {
                    (Some(b"\\u"), Ok(low @ 0xDC00..=0xDFFF)) => Some(low),
                    _ => None,
                };
                match low {
                    Some(low) => {
                        at += 6;
                        let code = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code)
                    }
                    None => None,
                }
            }
            _ => char::from_u32(u32::from(unit)),
        };
        match c {
            Some(c) => out.push(c),
            None => {
                lone_surrogate = true;
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    fn valid(text: &str) -> bool {
        let bytes = text.as_bytes();
        value_end(bytes, 0).is_ok_and(|end| skip_whitespace(bytes, end) == bytes.len())
    }

    #[test]
    fn values_of_every_kind_are_measured_to_their_end() {
        for (text, end) in [
            ("null,", 4),
            ("true]", 4),
            ("false}", 5),
            ("0 ", 1),
            ("-0.5e+10,", 8),
            ("12E3", 4),
            (r#""a\"b\\" x"#, 8),
            (r#""\u00e9\ud800""#, 14),
            ("[ 1 , [ ] , { } ] 2", 17),
            (r#"{ "a" : [ { "b" : null } ] , "c":1}x"#, 35),
            ("[[[]]]]", 6),
        ] {
            assert_eq!(value_end(text.as_bytes(), 0), Ok(end), "{text}");
        }
    }

    #[test]
    fn what_is_not_json_is_refused() {
        for text in [
            "",
            " ",
            "nul",
            "tru",
            "+1",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "-",
            "--1",
            "0x1",
            "[",
            "]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{",
            "{}}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{1:1}",
            "{\"a\" 1}",
            "[1}",
            "{\"a\":1]",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"tab\there\"",
            "\"nl\n\"",
            "NaN",
            "Infinity",
            "'a'",
            "[1] [2]",
            "\u{feff}[]",
        ] {
            assert!(!valid(text), "{text:?}");
        }
    }

    #[test]
    fn numbers_and_escapes_are_syntax_whatever_they_mean() {
        let digits = "9".repeat(400);
        for text in [
            "1e400".to_owned(),
            "-1e-999".to_owned(),
            digits.clone(),
            format!("-{digits}.{digits}E+{digits}"),
            r#""\ud800""#.to_owned(),
            r#""\udc00x""#.to_owned(),
            r#"{"\ud800":1}"#.to_owned(),
        ] {
            assert!(valid(&text), "{text}");
        }
    }

    #[test]
    fn a_million_levels_neither_recurse_nor_overflow() {
        let depth = 1_000_000;
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(valid(&deep));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(valid(&objects));
        let mixed = format!(
            "{}1{}",
            "[{\"a\":".repeat(depth / 2),
            "}]".repeat(depth / 2)
        );
        assert!(valid(&mixed));
        let unclosed = "[".repeat(depth);
        assert_eq!(value_end(unclosed.as_bytes(), 0).unwrap_err().at, depth);
        let crossed = format!("{}{}", "[{\"a\":".repeat(1000), "]}".repeat(1000));
        assert!(!valid(&crossed));
    }

    #[test]
    fn syntax_agrees_with_serde_json_within_its_depth() {
        // serde_json skips a value by syntax alone too; where both read, they
        // must agree on what is JSON.
        let samples = [
            "[1,{\"a\":[true,false,null]},\"x\\n\",-0.0e-0]",
            "{\"\\u0041\":\"\\ud83d\\ude00\"}",
            " { } ",
            "[\"\u{7f}\u{80}\u{10ffff}\"]",
            "[1,]",
            "{\"a\":1,,\"b\":2}",
            "[00]",
            "[-]",
            "\"\\/\"",
            "[1.0E+2, 3e-1, 0.0]",
        ];
        for text in samples {
            let theirs = serde_json::from_str::<IgnoredAny>(text).is_ok();
            assert_eq!(valid(text), theirs, "{text}");
        }
    }

    #[test]
    fn strings_decode_borrowed_unless_escaped() {
        let (plain, end) = decode_string(r#""plain é" rest"#, 0).unwrap();
        assert!(matches!(plain.text, Cow::Borrowed("plain é")));
        assert_eq!(end, 10);
        let (escaped, _) =
            decode_string(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\u0000\ud83d\ude00z""#, 0).unwrap();
        assert_eq!(escaped.text, "a\"b\\c/d\u{8}\u{c}\n\r\té\u{0}😀z");
        assert!(!escaped.lone_surrogate);
        for (text, decoded) in [
            (r#""\ud800""#, "\u{fffd}"),
            (r#""\udc00x""#, "\u{fffd}x"),
            (r#""\ud800\ud800\udc00""#, "\u{fffd}\u{10000}"),
            (r#""\ud800\u0041""#, "\u{fffd}A"),
            (r#""a\udfffb""#, "a\u{fffd}b"),
        ] {
            let (got, _) = decode_string(text, 0).unwrap();
            assert_eq!(got.text, decoded, "{text}");
            assert!(got.lone_surrogate, "{text}");
        }
        for bad in [r#""\x""#, r#""\u12""#, "\"tab\t\"", "\"open"] {
            assert!(decode_string(bad, 0).is_err(), "{bad}");
        }
    }
}
