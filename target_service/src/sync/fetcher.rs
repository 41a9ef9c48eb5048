//! Talks HTTP to the source: one GET, bounded in time and size, turned into
//! a [`Page`] of raw JSON elements and the cursor headers that came with it.
//!
//! The page keeps the body as it came and finds where each element of the
//! array lies in it, checking the JSON syntax and nothing more, without
//! recursion or depth limit ([`crate::profile::syntax`]); reading an
//! element is left to [`crate::profile`], so nothing an element holds
//! (nesting of any depth, numbers beyond `f64`, lone surrogate escapes) can
//! spoil its page. The client (TLS, token, timeout) is built from the
//! configuration in [`Fetcher::new`]. It knows nothing of PostgreSQL or of what a valid profile
//! is; deciding what to ask for next is the sync round's job.

use std::io::Read;
use std::ops::Range;
use std::time::Duration;

use crate::profile::syntax::{self, SyntaxError};

use crate::config::Config;
use crate::{secrets, tls};

/// The most elements taken from a source that sends no cursor (and so was
/// given no limit): the largest page a cursor source may be asked for.
const MAX_PAGE_WITHOUT_CURSOR: usize = 10_000;

/// The most memory reserved for a body on the strength of its declared
/// `Content-Length`; a longer body grows as it arrives.
const MAX_PREALLOCATION: u64 = 8 * 1024 * 1024;

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
    /// the oldest cursor the source still accepts (`X-Min-Cursor`), when it
    /// says.
    Gone { min_cursor: Option<u64> },
    /// Down, slow, non-2xx, too large, or not a JSON array.
    Failed(String),
}

impl Page {
    /// The elements' JSON text, exactly as the source sent it, in order,
    /// each with where it lies in [`Page::into_body`].
    pub fn elements(&self) -> impl ExactSizeIterator<Item = (Range<usize>, &str)> {
        // Every span lies on char boundaries of `body` (see `parse_page`).
        self.elements.iter().map(|span| {
            (
                span.clone(),
                self.body.get(span.clone()).unwrap_or_default(),
            )
        })
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

/// Cheap to clone: clones share the agent's connections.
#[derive(Clone)]
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
        let mut agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(0)
            // Every status is an answer to judge here, not a transport error.
            .http_status_as_error(false)
            // ureq would take ALL_PROXY, HTTPS_PROXY or HTTP_PROXY from the
            // environment; the source is reached directly, as configured.
            .proxy(None)
            .user_agent("target_service");
        if let Some(roots) = &config.source_roots {
            agent = agent.tls_config(tls::ureq_tls_config(roots));
        }
        Fetcher {
            agent: agent.build().into(),
            url: config.source_url.clone(),
            authorization: config
                .source_token
                .as_ref()
                .map(|token| format!("Bearer {}", token.expose())),
            max_response_bytes: config.max_response_bytes,
        }
    }

    /// `GET url`, with the token when there is one; `query` pairs are added.
    pub fn get(&self, query: &[(&str, &str)]) -> Result<Answer, FetchError> {
        let mut request = self.agent.get(&self.url);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        for (name, value) in query {
            request = request.query(*name, *value);
        }
        request.call().map(Answer).map_err(|err| {
            // The URL's user-info, and whatever the error quotes, masked.
            FetchError::Failed(format!(
                "cannot reach the source at {}: {}",
                secrets::redact(&self.url),
                secrets::redact(&err.to_string())
            ))
        })
    }

    /// `GET url?since=S&limit=L`, or the bare URL when `cursor` is `None`.
    pub fn fetch(&self, cursor: Option<(u64, usize)>) -> Result<Page, FetchError> {
        let answer = match cursor {
            Some((since, limit)) => {
                self.get(&[("since", &since.to_string()), ("limit", &limit.to_string())])?
            }
            None => self.get(&[])?,
        };
        let status = answer.status();
        if status == 410 {
            // Where to start again, when the source says.
            let min_cursor = answer.number("X-Min-Cursor").ok().flatten();
            return Err(FetchError::Gone { min_cursor });
        }
        // With redirects off, a 3xx is an answer too.
        if !(200..300).contains(&status) {
            return Err(FetchError::Failed(status_problem(status)));
        }
        let next_cursor = answer.number("X-Next-Cursor")?;
        let head_cursor = answer.number("X-Head-Cursor")?;
        let epoch = answer.header("X-Source-Epoch")?.map(str::to_owned);
        // A source without cursors was asked for no limit: it gets the
        // original's allowance, whatever FETCH_LIMIT is.
        let most = match (cursor, next_cursor) {
            (Some((_, limit)), Some(_)) => limit,
            _ => MAX_PAGE_WITHOUT_CURSOR,
        };
        let body = body_text(self.read_body(answer)?).map_err(|why| {
            FetchError::Failed(format!(
                "the source sent a body that is not UTF-8 text: {why}"
            ))
        })?;
        let elements = parse_page(&body, most).map_err(|why| {
            FetchError::Failed(format!("the source sent a body that is not {why}"))
        })?;
        Ok(Page {
            body,
            elements,
            next_cursor,
            head_cursor,
            epoch,
        })
    }

    fn read_body(&self, answer: Answer) -> Result<Vec<u8>, FetchError> {
        let too_large = || {
            FetchError::Failed(format!(
                "the source sent more than MAX_RESPONSE_BYTES ({} bytes)",
                self.max_response_bytes
            ))
        };
        let declared = answer.number("Content-Length").ok().flatten();
        if declared.is_some_and(|length| length > self.max_response_bytes) {
            return Err(too_large());
        }
        // What the source declares is only a hint: a body is never trusted
        // with more than MAX_PREALLOCATION before it has arrived.
        let capacity = (declared.unwrap_or(64 * 1024))
            .min(self.max_response_bytes)
            .min(MAX_PREALLOCATION) as usize;
        let mut body = Vec::with_capacity(capacity);
        // The chunked decoding below reads each chunk's size line into a
        // bounded buffer, so what arrives undecoded is bounded too.
        answer
            .0
            .into_body()
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

/// What an answer other than `2xx` or `410` says, for an operator: a `401`
/// or `403` is the source refusing the token, whatever was asked; a `404`
/// or a redirect, a URL that points elsewhere than the feed.
pub fn status_problem(status: u16) -> String {
    match status {
        300..=399 => format!(
            "the source answered HTTP {status}, a redirect, which is not followed: set \
             SOURCE_SERVICE_URL to where it leads"
        ),
        404 => "the source answered HTTP 404 Not Found: check the path of SOURCE_SERVICE_URL \
                (source_service serves /users/changes)"
            .to_owned(),
        401 => "the source answered HTTP 401 Unauthorized: it wants a token; set SOURCE_TOKEN \
                to the source's token, or correct it"
            .to_owned(),
        403 => "the source answered HTTP 403 Forbidden: it refuses this client; check \
                SOURCE_TOKEN and the source's access rules"
            .to_owned(),
        _ => format!("the source answered HTTP {status}"),
    }
}

/// A response of the source, its body not read yet.
pub struct Answer(ureq::http::Response<ureq::Body>);

impl Answer {
    pub fn status(&self) -> u16 {
        self.0.status().as_u16()
    }

    /// The first header of that name. One that is there but is not UTF-8
    /// text is an error, not an absent one (which, for a cursor, would
    /// switch to the original source's mode).
    pub fn header(&self, name: &str) -> Result<Option<&str>, FetchError> {
        match self.0.headers().get(name) {
            None => Ok(None),
            Some(value) => std::str::from_utf8(value.as_bytes())
                .map(Some)
                .map_err(|_| FetchError::Failed(format!("the source sent an unreadable {name}"))),
        }
    }

    /// A header that must be a whole number when it is there.
    pub fn number(&self, name: &str) -> Result<Option<u64>, FetchError> {
        match self.header(name)? {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| {
                FetchError::Failed(format!("the source sent {name}: {text:?}, not a number"))
            }),
        }
    }
}

/// The body as text. Bytes that are not UTF-8 inside a JSON string are
/// written as the lone surrogate escapes `\udc80`–`\udcff`, one per byte
/// (as Python's `surrogateescape` does): that keeps the page's syntax, lets
/// an unknown field hold them like any lone surrogate, fails the rule of a
/// profile field that holds them, and records the element as text that
/// PostgreSQL can store and that says which bytes came. Anywhere else
/// they break the JSON itself, and the body is refused.
fn body_text(bytes: Vec<u8>) -> Result<String, String> {
    let bytes = match String::from_utf8(bytes) {
        Ok(text) => return Ok(text),
        Err(err) => err.into_bytes(),
    };
    let mut text = String::with_capacity(bytes.len() + 64);
    let (mut in_string, mut after_backslash) = (false, false);
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        // Only ASCII quotes and backslashes change the state, and no byte of
        // a multi-byte character is ASCII.
        for b in valid.bytes() {
            if after_backslash {
                after_backslash = false;
            } else if in_string && b == b'\\' {
                after_backslash = true;
            } else if b == b'"' {
                in_string = !in_string;
            }
        }
        text.push_str(valid);
        if chunk.invalid().is_empty() {
            continue;
        }
        if !in_string || after_backslash {
            return Err(format!(
                "byte {} is not UTF-8, and not inside a JSON string",
                text.len()
            ));
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\u{:04x}", 0xDC00 | u16::from(*byte)));
        }
        // Six bytes of text for each: memory stays within a few times the
        // body only if such bytes are few.
        if text.len() > 2 * bytes.len() {
            return Err("too many of its bytes are not UTF-8".to_owned());
        }
    }
    Ok(text)
}

/// Finds the elements of a JSON array of at most `most` elements, failing
/// as soon as there are more, so a page never holds more than it was asked
/// for. Each element is checked for syntax only and comes back as where it
/// lies in `body`; as each starts and ends with an ASCII byte, the spans
/// are char boundaries. White space may surround the array, and a leading
/// byte order mark is allowed (RFC 8259 lets a reader ignore one).
fn parse_page(body: &str, most: usize) -> Result<Vec<Range<usize>>, String> {
    let bytes = body.as_bytes();
    let start = body
        .strip_prefix('\u{feff}')
        .map_or(0, |_| '\u{feff}'.len_utf8());
    let what = || format!("a JSON array of at most {most} elements");
    let broken = |err: SyntaxError| format!("{}: {err}", what());
    let mut at = syntax::skip_whitespace(bytes, start);
    at = syntax::expect(bytes, at, b'[', "'['").map_err(broken)?;
    at = syntax::skip_whitespace(bytes, at);
    let mut elements = Vec::new();
    if bytes.get(at) == Some(&b']') {
        at += 1;
    } else {
        loop {
            let end = syntax::value_end(bytes, at).map_err(broken)?;
            if elements.len() == most {
                return Err(format!("{} (it has more)", what()));
            }
            elements.push(at..end);
            at = syntax::skip_whitespace(bytes, end);
            match bytes.get(at) {
                Some(b',') => at = syntax::skip_whitespace(bytes, at + 1),
                Some(b']') => {
                    at += 1;
                    break;
                }
                _ => {
                    return Err(broken(SyntaxError {
                        at,
                        expected: "',' or ']'",
                    }))
                }
            }
        }
    }
    let rest = syntax::skip_whitespace(bytes, at);
    if rest != bytes.len() {
        return Err(format!(
            "a single JSON array: {}",
            SyntaxError {
                at: rest,
                expected: "nothing after the array"
            }
        ));
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::{body_text, parse_page, status_problem};

    #[test]
    fn a_status_is_told_for_what_it_means() {
        for (status, named) in [
            (
                401,
                "HTTP 401 Unauthorized: it wants a token; set SOURCE_TOKEN",
            ),
            (403, "HTTP 403 Forbidden"),
            (
                404,
                "HTTP 404 Not Found: check the path of SOURCE_SERVICE_URL",
            ),
            (301, "HTTP 301, a redirect, which is not followed"),
            (503, "the source answered HTTP 503"),
        ] {
            let told = status_problem(status);
            assert!(told.contains(named), "{status}: {told}");
        }
        assert!(!status_problem(500).contains("SOURCE_TOKEN"));
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// The elements' text as the page finds them.
    fn texts(body: &str, most: usize) -> Vec<&str> {
        parse_page(body, most)
            .unwrap()
            .into_iter()
            .map(|span| &body[span])
            .collect()
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
            "[1,]",
            "[,1]",
            "[1 2]",
            "[{\"a\" 1}]",
            "[\"unterminated]",
            "[\"bad escape \\x\"]",
            "[\"raw control \u{1}\"]",
            "[01]",
            "not json",
            "",
            "\u{feff}",
            "\u{feff}\u{feff}[]",
            " \u{feff}[]",
            "[]\u{feff}",
        ] {
            assert!(parse_page(not_a_page, 3).is_err(), "{not_a_page:?}");
        }
        let unclosed = format!("[{}", "[".repeat(100_000));
        assert!(parse_page(&unclosed, 3).is_err());
    }

    #[test]
    fn white_space_and_a_byte_order_mark_may_surround_the_array() {
        for body in [
            " \t\r\n[1,2] \n",
            "\u{feff}[1,2]",
            "\u{feff} \n[ 1 , 2 ]\r\n",
        ] {
            assert_eq!(texts(body, 3), ["1", "2"], "{body:?}");
        }
    }

    #[test]
    fn elements_are_the_text_the_source_sent() {
        let body = "[ {\"b\": 1,  \"a\": \"\\u00e9\"} ,\n\"x\",[ ],-1.50e3 ,\"é😀\"]";
        assert_eq!(
            texts(body, 10),
            [
                "{\"b\": 1,  \"a\": \"\\u00e9\"}",
                "\"x\"",
                "[ ]",
                "-1.50e3",
                "\"é😀\""
            ]
        );
    }

    #[test]
    fn no_depth_of_nesting_fails_a_page_or_overflows_the_stack() {
        for depth in [127, 128, 200, 10_000, 1_000_000] {
            let body = format!("[1, {}, 2]", nested(depth));
            assert_eq!(parse_page(&body, 3).unwrap().len(), 3, "{depth}");
        }
        let member = format!(
            "[{{\"id\": \"x\", \"extra\": {}}}]",
            "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000)
        );
        assert_eq!(parse_page(&member, 1).unwrap().len(), 1);
        // Brackets inside strings do not count.
        let in_strings = format!(
            "[{{\"a\": \"{}\\\"{}\"}}]",
            "[".repeat(500),
            "{".repeat(500)
        );
        assert_eq!(parse_page(&in_strings, 3).unwrap().len(), 1);
    }

    #[test]
    fn an_element_a_value_refuses_does_not_spoil_its_page() {
        // Checked for syntax only here; what each holds is the reader's.
        let body = format!(
            r#"[{{"name": "\ud800"}}, 1e400, {{"x": "\udc00x"}}, {}, -{}.5e-999]"#,
            "9".repeat(400),
            "1".repeat(400)
        );
        assert_eq!(parse_page(&body, 5).unwrap().len(), 5);
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
    }

    #[test]
    fn bytes_that_are_not_utf8_inside_strings_are_kept_as_lone_surrogates() {
        let body = b"[{\"name\": \"Ad\xe9\", \"x\": \"\xff\xfe \\\\\xc3\"}, \"\xc3\xa9\"]".to_vec();
        let text = body_text(body).unwrap();
        assert_eq!(
            text,
            r#"[{"name": "Ad\udce9", "x": "\udcff\udcfe \\\udcc3"}, "é"]"#
        );
        assert_eq!(parse_page(&text, 3).unwrap().len(), 2);
        assert_eq!(body_text(b"[\"plain\"]".to_vec()).unwrap(), "[\"plain\"]");
        for not_json in [
            b"[1, \xff]".to_vec(),
            b"\xef\xbb[]".to_vec(),
            b"[{\"a\xff\": 1}, \"\\\xff\"]".to_vec(),
        ] {
            assert!(body_text(not_json).is_err(), "outside a string, or escaped");
        }
        let mostly_junk = [b"[\"".to_vec(), vec![0xff; 1000], b"\"]".to_vec()].concat();
        assert!(body_text(mostly_junk).is_err(), "memory stays bounded");
        let escaped_quote = b"[\"\\\"\xff\"]".to_vec();
        assert_eq!(body_text(escaped_quote).unwrap(), r#"["\"\udcff"]"#);
    }
}
