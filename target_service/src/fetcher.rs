//! Talks HTTP to the source: one GET, bounded in time and size, turned into
//! a [`Page`] of raw JSON elements and the cursor headers that came with it.
//!
//! The page keeps the body as it came and finds where each element of the
//! array lies in it, checking the JSON syntax and nothing more; reading an
//! element is left to [`crate::profile`], so an element that only a
//! `serde_json::Value` refuses (a lone surrogate escape) cannot spoil its
//! page. Nesting deeper than a `Value` takes still fails the page, as it
//! always did. The client (TLS, token, timeout) is built from the
//! configuration in [`Fetcher::new`]. It knows nothing of PostgreSQL or of what a valid profile is;
//! deciding what to ask for next is the sync round's job.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::Config;
use crate::secrets;

/// The most elements taken from a source that sends no cursor (and so was
/// given no limit): the largest page a cursor source may be asked for.
const MAX_PAGE_WITHOUT_CURSOR: usize = 10_000;

/// The most memory reserved for a body on the strength of its declared
/// `Content-Length`; a longer body grows as it arrives.
const MAX_PREALLOCATION: u64 = 8 * 1024 * 1024;

/// The deepest nesting of arrays and objects a `serde_json::Value` takes
/// (its recursion limit); a deeper page is refused as it always was.
const MAX_DEPTH: usize = 127;

/// One response of the source.
#[derive(Debug)]
pub struct Page {
    /// The body as the source sent it.
    body: String,
    /// Where each element of the array lies in `body`: char-boundary spans
    /// inside it, so slicing by them cannot fail.
    elements: Vec<Range<usize>>,
    /// `X-Next-Cursor`; absent from a source like the original.
    pub next_cursor: Option<u64>,
    /// `X-Head-Cursor`.
    pub head_cursor: Option<u64>,
    /// `X-Source-Epoch`.
    pub epoch: Option<String>,
}

#[derive(Debug)]
pub enum FetchError {
    /// `410 Gone`: the cursor means nothing to the source any more. Carries
    /// the oldest cursor the source still accepts, when it says.
    Gone { min_since: Option<u64> },
    /// Down, slow, non-2xx, too large, or not a JSON array.
    Failed(String),
}

impl Page {
    /// The elements' JSON text, exactly as the source sent it, in order,
    /// each with where it lies in [`Page::into_body`].
    pub fn elements(&self) -> impl ExactSizeIterator<Item = (Range<usize>, &str)> {
        // Every span was checked against `body` when the page was made.
        self.elements
            .iter()
            .map(|span| (span.clone(), &self.body[span.clone()]))
    }

    /// The body as the source sent it.
    pub fn into_body(self) -> String {
        self.body
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Gone { .. } => f.write_str("the source answered 410 Gone for the cursor"),
            FetchError::Failed(why) => f.write_str(why),
        }
    }
}

pub struct Fetcher {
    agent: ureq::Agent,
    url: String,
    /// `Bearer <SOURCE_TOKEN>`, when set.
    authorization: Option<String>,
    max_response_bytes: u64,
}

impl Fetcher {
    /// A client for `SOURCE_SERVICE_URL`: bounded by `HTTP_TIMEOUT_SECS`,
    /// no redirects, an `https://` source checked against `SOURCE_CA_FILE`
    /// or the system's roots, `SOURCE_TOKEN` sent as a bearer token.
    pub fn new(config: &Config) -> Fetcher {
        Fetcher::with_timeout(config, config.http_timeout)
    }

    /// As [`Fetcher::new`], with a timeout of its own.
    pub fn with_timeout(config: &Config, timeout: Duration) -> Fetcher {
        let mut agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .user_agent("target_service");
        if let Some(tls) = &config.source_tls {
            agent = agent.tls_config(Arc::clone(tls));
        }
        Fetcher {
            agent: agent.build(),
            url: config.source_url.clone(),
            authorization: config
                .source_token
                .as_ref()
                .map(|token| format!("Bearer {}", token.expose())),
            max_response_bytes: config.max_response_bytes,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET url?since=S&limit=L`, or the bare URL when `cursor` is `None`.
    pub fn fetch(&self, cursor: Option<(u64, usize)>) -> Result<Page, FetchError> {
        let mut request = self.agent.get(&self.url);
        if let Some(authorization) = &self.authorization {
            request = request.set("Authorization", authorization);
        }
        if let Some((since, limit)) = cursor {
            request = request
                .query("since", &since.to_string())
                .query("limit", &limit.to_string());
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(410, response)) => {
                // Where to start again: `X-Min-Cursor`, or `min_since` in the
                // body as earlier versions of the source sent it.
                let header = response
                    .header("X-Min-Cursor")
                    .and_then(|value| value.trim().parse().ok());
                let min_since = header.or_else(|| {
                    self.read_body(response)
                        .ok()
                        .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                        .and_then(|body| body.get("min_since").and_then(Value::as_u64))
                });
                return Err(FetchError::Gone { min_since });
            }
            Err(ureq::Error::Status(code, _)) => {
                return Err(FetchError::Failed(format!(
                    "the source answered HTTP {code}"
                )));
            }
            Err(ureq::Error::Transport(err)) => {
                // ureq names the URL, user-info and all.
                return Err(FetchError::Failed(format!(
                    "cannot reach the source: {}",
                    secrets::redact(&err.to_string())
                )));
            }
        };
        // With redirects off, ureq hands a 3xx back as an answer.
        let status = response.status();
        if !(200..300).contains(&status) {
            return Err(FetchError::Failed(format!(
                "the source answered HTTP {status}"
            )));
        }
        // A header that is there but cannot be read as text is an error, not
        // an absent one (which would switch to the original source's mode).
        let header_text = |name: &str| -> Result<Option<&str>, FetchError> {
            match response.header(name) {
                Some(text) => Ok(Some(text)),
                None if response
                    .headers_names()
                    .iter()
                    .any(|present| present.eq_ignore_ascii_case(name)) =>
                {
                    Err(FetchError::Failed(format!(
                        "the source sent an unreadable {name}"
                    )))
                }
                None => Ok(None),
            }
        };
        let header_number = |name: &str| -> Result<Option<u64>, FetchError> {
            match header_text(name)? {
                None => Ok(None),
                Some(text) => text.trim().parse().map(Some).map_err(|_| {
                    FetchError::Failed(format!("the source sent {name}: {text:?}, not a number"))
                }),
            }
        };
        let next_cursor = header_number("X-Next-Cursor")?;
        let head_cursor = header_number("X-Head-Cursor")?;
        let epoch = header_text("X-Source-Epoch")?.map(str::to_owned);
        // A source without cursors was asked for no limit: it gets the
        // original's allowance, whatever FETCH_LIMIT is.
        let most = match (cursor, next_cursor) {
            (Some((_, limit)), Some(_)) => limit,
            _ => MAX_PAGE_WITHOUT_CURSOR,
        };
        let body = String::from_utf8(self.read_body(response)?).map_err(|_| {
            FetchError::Failed("the source sent a body that is not UTF-8 text".to_owned())
        })?;
        let elements = parse_page(&body, most)
            .map_err(|why| FetchError::Failed(format!("the source sent a body that is not {why}")))?
            .into_iter()
            .map(|element| span_in(&body, element.get()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                FetchError::Failed(
                    "internal error: a page element lies outside its body".to_owned(),
                )
            })?;
        Ok(Page {
            body,
            elements,
            next_cursor,
            head_cursor,
            epoch,
        })
    }

    fn read_body(&self, response: ureq::Response) -> Result<Vec<u8>, FetchError> {
        let too_large = || {
            FetchError::Failed(format!(
                "the source sent more than MAX_RESPONSE_BYTES ({} bytes)",
                self.max_response_bytes
            ))
        };
        let declared: Option<u64> = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        if declared.is_some_and(|length| length > self.max_response_bytes) {
            return Err(too_large());
        }
        // What the source declares is only a hint: a body is never trusted
        // with more than MAX_PREALLOCATION before it has arrived.
        let capacity = (declared.unwrap_or(64 * 1024))
            .min(self.max_response_bytes)
            .min(MAX_PREALLOCATION) as usize;
        let mut body = Vec::with_capacity(capacity);
        response
            .into_reader()
            .take(self.max_response_bytes + 1)
            .read_to_end(&mut body)
            .map_err(|err| {
                FetchError::Failed(format!("reading the source's answer failed: {err}"))
            })?;
        if body.len() as u64 > self.max_response_bytes {
            return Err(too_large());
        }
        Ok(body)
    }
}

/// Parses a JSON array of at most `most` elements, failing as soon as there
/// are more, so a page never holds more than it was asked for. Each element
/// is checked for syntax only and comes back as its text in `body`.
fn parse_page(body: &str, most: usize) -> Result<Vec<&RawValue>, String> {
    struct Page(usize);

    impl<'de> Visitor<'de> for Page {
        type Value = Vec<&'de RawValue>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a JSON array of at most {} elements", self.0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
            while let Some(element) = seq.next_element::<&RawValue>()? {
                if elements.len() == self.0 {
                    return Err(de::Error::custom(format!(
                        "a JSON array of at most {} elements (it has more)",
                        self.0
                    )));
                }
                // The array itself is one level.
                if nests_deeper_than(element.get(), MAX_DEPTH - 1) {
                    return Err(de::Error::custom(format!(
                        "a JSON array nested at most {MAX_DEPTH} levels deep"
                    )));
                }
                elements.push(element);
            }
            Ok(elements)
        }
    }

    impl<'de> DeserializeSeed<'de> for Page {
        type Value = Vec<&'de RawValue>;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_str(body);
    let elements = Page(most)
        .deserialize(&mut deserializer)
        .map_err(|err| format!("a JSON array of at most {most} elements: {err}"))?;
    deserializer
        .end()
        .map_err(|err| format!("a single JSON array: {err}"))?;
    Ok(elements)
}

/// Where `part`, a slice of `body`, lies in it; `None` if it is not one.
fn span_in(body: &str, part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let span = start..start + part.len();
    let found = body.get(span.clone())?;
    (found.as_ptr() == part.as_ptr()).then_some(span)
}

/// Whether arrays and objects nest more than `limit` levels deep in `text`,
/// which is valid JSON. `serde_json` reads a `RawValue` without limiting its
/// nesting, as reading a `Value` did; this keeps that limit.
fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    // Nothing nests deeper than it has brackets: the usual element is
    // settled by this one quick count.
    if bytes.iter().filter(|&&b| b == b'[' || b == b'{').count() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{parse_page, span_in, MAX_DEPTH};
    use serde_json::Value;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn a_page_is_a_json_array_of_at_most_the_limit() {
        assert_eq!(parse_page("[1, {\"a\": null}, \"x\"]", 3).unwrap().len(), 3);
        assert_eq!(parse_page(" [] ", 3).unwrap().len(), 0);
        assert!(parse_page("[1, 2, 3, 4]", 3)
            .unwrap_err()
            .contains("at most 3"));
        for not_a_page in [
            "{}",
            "42",
            "null",
            "\"[1]\"",
            "[1] [2]",
            "[1,",
            "[1 2]",
            "[{\"a\" 1}]",
            "[\"unterminated]",
            "[\"bad escape \\x\"]",
            "[\"raw control \u{1}\"]",
            "[01]",
            "not json",
            "",
        ] {
            assert!(parse_page(not_a_page, 3).is_err(), "{not_a_page}");
        }
        let deep = format!("[{}]", nested(10_000));
        assert!(
            parse_page(&deep, 3).is_err(),
            "deep nesting is an error, not a crash"
        );
    }

    #[test]
    fn elements_are_the_text_the_source_sent() {
        let body = "[ {\"b\": 1,  \"a\": \"\\u00e9\"} ,\n\"x\",[ ],-1.50e3 ]";
        let elements = parse_page(body, 10).unwrap();
        let texts: Vec<&str> = elements.iter().map(|e| e.get()).collect();
        assert_eq!(
            texts,
            ["{\"b\": 1,  \"a\": \"\\u00e9\"}", "\"x\"", "[ ]", "-1.50e3"]
        );
        for element in elements {
            let span = span_in(body, element.get()).unwrap();
            assert_eq!(&body[span], element.get());
        }
        assert_eq!(span_in(body, "x"), None, "not a slice of the body");
    }

    #[test]
    fn nesting_is_limited_exactly_as_a_value_limits_it() {
        // The limit is serde_json's own; if it changes, so must MAX_DEPTH.
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH + 1)).is_err());
        // The page's array is one of the levels.
        let page = |depth| format!("[1, {}]", nested(depth - 1));
        assert!(parse_page(&page(MAX_DEPTH), 3).is_ok());
        assert!(parse_page(&page(MAX_DEPTH + 1), 3).is_err());
        let objects = |depth: usize| {
            format!(
                "[{}{}]",
                "{\"a\":".repeat(depth - 1),
                "}".repeat(depth - 1).replacen('}', "1}", 1)
            )
        };
        assert!(parse_page(&objects(MAX_DEPTH), 3).is_ok());
        assert!(parse_page(&objects(MAX_DEPTH + 1), 3).is_err());
        // Brackets inside strings do not count.
        let in_strings = format!(
            "[{{\"a\": \"{}\\\"{}\"}}]",
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(parse_page(&in_strings, 3).is_ok());
    }

    #[test]
    fn an_element_a_value_refuses_does_not_spoil_its_page() {
        // Checked for syntax only here; each becomes a malformed change.
        let body = r#"[{"name": "\ud800"}, 1e400, {"id": "x"}]"#;
        assert_eq!(parse_page(body, 3).unwrap().len(), 3);
        assert!(serde_json::from_str::<Value>(body).is_err());
    }
}
