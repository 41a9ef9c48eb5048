//! Talks HTTP to the source: one GET, bounded in time and size, turned into
//! a [`Page`] of raw JSON elements and the cursor headers that came with it.
//!
//! It knows nothing of PostgreSQL or of what a valid profile is; deciding
//! what to ask for next is the sync round's job.

use std::io::Read;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

/// The most elements taken from a source that sends no cursor (and so was
/// given no limit): the largest page a cursor source may be asked for.
const MAX_PAGE_WITHOUT_CURSOR: usize = 10_000;

/// One response of the source.
#[derive(Debug)]
pub struct Page {
    pub elements: Vec<Value>,
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
    max_response_bytes: u64,
}

impl Fetcher {
    pub fn new(url: &str, timeout: Duration, max_response_bytes: u64) -> Fetcher {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .user_agent("target_service")
            .build();
        Fetcher {
            agent,
            url: url.to_owned(),
            max_response_bytes,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET url?since=S&limit=L`, or the bare URL when `cursor` is `None`.
    pub fn fetch(&self, cursor: Option<(u64, usize)>) -> Result<Page, FetchError> {
        let mut request = self.agent.get(&self.url);
        if let Some((since, limit)) = cursor {
            request = request
                .query("since", &since.to_string())
                .query("limit", &limit.to_string());
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(410, response)) => {
                let min_since = self
                    .read_body(response)
                    .ok()
                    .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                    .and_then(|body| body.get("min_since").and_then(Value::as_u64));
                return Err(FetchError::Gone { min_since });
            }
            Err(ureq::Error::Status(code, _)) => {
                return Err(FetchError::Failed(format!(
                    "the source answered HTTP {code}"
                )));
            }
            Err(ureq::Error::Transport(err)) => {
                return Err(FetchError::Failed(format!(
                    "cannot reach the source: {err}"
                )));
            }
        };
        let header_number = |name: &str| -> Result<Option<u64>, FetchError> {
            match response.header(name) {
                None => Ok(None),
                Some(text) => text.trim().parse().map(Some).map_err(|_| {
                    FetchError::Failed(format!("the source sent {name}: {text:?}, not a number"))
                }),
            }
        };
        let next_cursor = header_number("X-Next-Cursor")?;
        let head_cursor = header_number("X-Head-Cursor")?;
        let epoch = response.header("X-Source-Epoch").map(str::to_owned);
        let most = cursor.map_or(MAX_PAGE_WITHOUT_CURSOR, |(_, limit)| limit);
        let body = self.read_body(response)?;
        let elements = parse_page(&body, most).map_err(|why| {
            FetchError::Failed(format!("the source sent a body that is not {why}"))
        })?;
        Ok(Page {
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
        let capacity = declared.unwrap_or(64 * 1024).min(self.max_response_bytes) as usize;
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
/// are more, so a page never holds more than it was asked for.
fn parse_page(body: &[u8], most: usize) -> Result<Vec<Value>, String> {
    struct Page(usize);

    impl<'de> Visitor<'de> for Page {
        type Value = Vec<Value>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a JSON array of at most {} elements", self.0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
            let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
            while let Some(element) = seq.next_element::<Value>()? {
                if elements.len() == self.0 {
                    return Err(de::Error::custom(format!(
                        "a JSON array of at most {} elements (it has more)",
                        self.0
                    )));
                }
                elements.push(element);
            }
            Ok(elements)
        }
    }

    impl<'de> DeserializeSeed<'de> for Page {
        type Value = Vec<Value>;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Vec<Value>, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let elements = Page(most)
        .deserialize(&mut deserializer)
        .map_err(|err| format!("a JSON array of at most {most} elements: {err}"))?;
    deserializer
        .end()
        .map_err(|err| format!("a single JSON array: {err}"))?;
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::parse_page;

    #[test]
    fn a_page_is_a_json_array_of_at_most_the_limit() {
        assert_eq!(
            parse_page(b"[1, {\"a\": null}, \"x\"]", 3).unwrap().len(),
            3
        );
        assert_eq!(parse_page(b" [] ", 3).unwrap().len(), 0);
        assert!(parse_page(b"[1, 2, 3, 4]", 3)
            .unwrap_err()
            .contains("at most 3"));
        for not_a_page in [
            &b"{}"[..],
            b"42",
            b"null",
            b"\"[1]\"",
            b"[1] [2]",
            b"[1,",
            b"not json",
            b"",
        ] {
            assert!(
                parse_page(not_a_page, 3).is_err(),
                "{}",
                String::from_utf8_lossy(not_a_page)
            );
        }
        let deep = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            parse_page(deep.as_bytes(), 3).is_err(),
            "deep nesting is an error, not a crash"
        );
    }
}
