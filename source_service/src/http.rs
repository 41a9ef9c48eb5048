//! HTTP routing as plain functions: from an `http_server::Request` to an
//! `http_server::Response`.
//!
//! Nothing here touches a socket, so every answer the service gives can be
//! unit-tested by calling `Handler::handle`. `SOURCE_TOKEN` is checked here,
//! first, for `/users/changes`. `lib.rs` owns the server (the
//! `http_server` crate) that turns requests into calls here and replies into
//! responses. Every error body is JSON `{"error": "..."}` saying what was
//! wrong.
//!
//! `HEAD` is answered like `GET` on `/healthz` and `/metrics` (the server
//! leaves the body out). On `/users/changes` it is `405`: the headers of that
//! `GET` describe the batch it generates for a reader that is caught up, so a
//! `HEAD` could only tell the truth by generating, which a `HEAD` must not do.

use std::time::Instant;

use http_server::client_input::{constant_time_eq, shorten};
use http_server::{Request, Response};
use serde_json::json;

use crate::change_log::{Gone, Page};
use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::route::Route;

/// Default and largest page size for `?since=`.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

const JSON: &str = "application/json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenAPI 3 document of this service, served at `/openapi.json`;
/// `scripts/test.sh` runs schemathesis against it.
pub const OPENAPI: &str = include_str!("web/openapi.json");

fn json_reply(status: u16, body: Vec<u8>) -> Response {
    Response::new(status, JSON, body)
}

fn error_reply(status: u16, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into() }).to_string().into_bytes();
    json_reply(status, body)
}

/// Answers requests; shared by all server threads.
pub struct Handler {
    feed: Feed,
    metrics: Metrics,
    epoch: String,
    /// `Bearer <SOURCE_TOKEN>`: what `/users/changes` asks for, when set.
    expected_authorization: Option<String>,
}

impl Handler {
    /// `epoch` is sent as `X-Source-Epoch`; it must differ between process starts.
    pub fn new(feed: Feed, metrics: Metrics, epoch: String) -> Handler {
        Handler {
            feed,
            metrics,
            epoch,
            expected_authorization: None,
        }
    }

    /// Makes `/users/changes` answer only `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: Option<&str>) -> Handler {
        self.expected_authorization = token.map(|token| format!("Bearer {token}"));
        self
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Answers one request, counting it in `source_requests_total` and
    /// `source_request_duration_seconds`.
    pub fn handle(&self, request: &Request) -> Response {
        let started = Instant::now();
        let (route, reply) = self.answer(request);
        self.metrics.count_request(route, reply.status);
        self.metrics.observe_duration(route, started.elapsed());
        reply
    }

    /// The answer to a request. Its target is as sent: a path with an
    /// optional query string, or the same after `http://host:port`.
    fn answer(&self, request: &Request) -> (Route, Response) {
        let method = request.method;
        let url = request.origin_form();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let route = Route::from_path(path);
        if route == Route::Changes {
            if let Some(refused) = self.refuse_unauthorized(request.header("Authorization")) {
                return (route, refused);
            }
        }
        let reply = match route {
            Route::Other => error_reply(
                404,
                format!(
                    "no such path: {}; this service answers GET /users/changes, /healthz, /metrics and /openapi.json",
                    shorten(path)
                ),
            ),
            _ if !(method == "GET" || method == "HEAD" && route != Route::Changes) => {
                let allow = if route == Route::Changes {
                    "GET"
                } else {
                    "GET, HEAD"
                };
                let mut reply = error_reply(
                    405,
                    format!(
                        "method {} is not allowed on {}; use {allow}",
                        shorten(method),
                        route.label()
                    ),
                );
                reply.headers.push(("Allow", allow.to_string()));
                reply
            }
            Route::Changes => self.changes(query),
            Route::Healthz => json_reply(200, br#"{"status":"ok"}"#.to_vec()),
            Route::OpenApi => json_reply(200, OPENAPI.as_bytes().to_vec()),
            Route::Metrics => match self.metrics.render() {
                Ok(body) => Response::new(200, PROMETHEUS_TEXT, body),
                Err(e) => error_reply(500, format!("could not render metrics: {e}")),
            },
        };
        (route, reply)
    }

    /// `401` unless the request carries the token (when one is set). The
    /// comparison takes the same time wherever the two first differ.
    fn refuse_unauthorized(&self, authorization: Option<&str>) -> Option<Response> {
        let expected = self.expected_authorization.as_deref()?;
        let given = authorization.unwrap_or("").trim();
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        let given = match given.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                format!("Bearer {}", token.trim())
            }
            _ => given.to_owned(),
        };
        if constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return None;
        }
        let mut reply = error_reply(
            401,
            if authorization.is_none() {
                "this source asks for a token: send Authorization: Bearer <SOURCE_TOKEN>"
            } else {
                "the token is not the one this source asks for"
            },
        );
        reply
            .headers
            .push(("WWW-Authenticate", "Bearer".to_string()));
        Some(reply)
    }

    fn changes(&self, query: &str) -> Response {
        let query = match ChangesQuery::parse(query) {
            Ok(q) => q,
            Err(message) => return error_reply(400, message),
        };
        let page = match query.since {
            None => self.feed.fresh_batch(&self.metrics),
            Some((since, sent)) => match self.feed.since(since, query.limit, &self.metrics) {
                Ok(page) => page,
                Err(gone) => return self.gone_reply(gone, &sent),
            },
        };
        let Page {
            body,
            next_cursor,
            head,
            ..
        } = page;
        let mut reply = json_reply(200, body);
        reply.headers.extend([
            ("X-Next-Cursor", next_cursor.to_string()),
            ("X-Head-Cursor", head.to_string()),
            ("X-Source-Epoch", self.epoch.clone()),
        ]);
        reply
    }

    /// `410` for a cursor outside the log. The body is the contract's
    /// `{"error": …}`; where to start again rides in headers:
    /// `X-Min-Cursor` (the smallest `since` still accepted), `X-Head-Cursor`
    /// and `X-Source-Epoch`. `sent` is `since` as the client wrote it, which
    /// `gone.since` is not when it was too large for a `u64`.
    fn gone_reply(&self, gone: Gone, sent: &str) -> Response {
        let message = if gone.since > gone.head {
            // The restart point is `min_since`, not 0: once the log has
            // dropped its oldest changes, `since=0` is itself gone.
            format!(
                "since={} is newer than the newest change ({}); the cursor is from another \
                 epoch of this service, restart from since={}",
                shorten(sent),
                gone.head,
                gone.min_since
            )
        } else {
            format!(
                "since={} is older than the oldest change kept; restart from since={}",
                shorten(sent),
                gone.min_since
            )
        };
        let mut reply = error_reply(410, message);
        reply.headers.extend([
            ("X-Min-Cursor", gone.min_since.to_string()),
            ("X-Head-Cursor", gone.head.to_string()),
            ("X-Source-Epoch", self.epoch.clone()),
        ]);
        reply
    }
}

/// The query of `GET /users/changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChangesQuery {
    /// The cursor, and its text as sent (for error messages).
    since: Option<(u64, String)>,
    limit: usize,
}

impl ChangesQuery {
    /// Reads `since` and `limit`. Every parameter given is read or refused,
    /// never silently dropped: a misspelt name, a repeated one, or `limit`
    /// without `since` (where no limit applies: a fresh batch is returned
    /// whole) is a `400` naming it, because answering as if it were not there
    /// would hand out, and generate, something the client did not ask for.
    /// Names and values are percent-decoded first (`%31` is `1`, `+` a
    /// space); numbers are plain decimal digits, leading zeros allowed.
    fn parse(query: &str) -> Result<ChangesQuery, String> {
        let mut since = None;
        let mut limit = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, slot) = match percent_decode(key).as_deref() {
                Some("since") => ("since", &mut since),
                Some("limit") => ("limit", &mut limit),
                _ => {
                    return Err(format!(
                        "unknown parameter {:?}; /users/changes reads only since and limit",
                        shorten(key)
                    ))
                }
            };
            if slot.is_some() {
                return Err(format!("{name} is given more than once; give it once"));
            }
            *slot = Some(percent_decode(value).unwrap_or_else(|| value.to_string()));
        }
        if limit.is_some() && since.is_none() {
            return Err(
                "limit is only read together with since; without since, a fresh batch is \
                 returned whole"
                    .to_owned(),
            );
        }
        let since = match since {
            None => None,
            Some(text) => match cursor(&text) {
                Some(since) => Some((since, text)),
                None => {
                    return Err(format!(
                        "since must be a whole number, 0 or more (a cursor from X-Next-Cursor), not {:?}",
                        shorten(&text)
                    ))
                }
            },
        };
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => whole_number(&text)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, not {:?}",
                        shorten(&text)
                    )
                })?,
        };
        Ok(ChangesQuery { since, limit })
    }
}

/// Plain decimal digits only: no sign, no spaces, no leading `+`.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A whole number that fits a `u64`.
fn whole_number(text: &str) -> Option<u64> {
    if !is_digits(text) {
        return None;
    }
    text.parse().ok()
}

/// A `since` cursor. Digits past `u64::MAX` are a well-formed cursor newer
/// than any head (SPEC: `410`, not `400`), so they saturate to `u64::MAX`,
/// which no head reaches.
fn cursor(text: &str) -> Option<u64> {
    if !is_digits(text) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

/// Decodes `%XX` escapes and `+` (as space); `None` if the result is not UTF-8
/// or an escape is broken.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change_log::ChangeLog;
    use crate::generator::Generator;
    use serde_json::Value;

    #[test]
    fn the_openapi_document_names_every_route() {
        let h = handler(10, 0);
        let (route, reply) = call(&h, "GET", "/openapi.json");
        assert_eq!(route, Route::OpenApi);
        assert_eq!(reply.status, 200);
        let doc: Value = serde_json::from_slice(&reply.body).unwrap();
        for route in Route::ALL.into_iter().filter(|r| *r != Route::Other) {
            assert!(doc["paths"][route.label()]["get"].is_object(), "{route:?}");
        }
    }

    #[test]
    fn the_documented_400_is_what_limit_without_since_gets() {
        let h = handler(10, 0);
        let (_, reply) = call(&h, "GET", "/users/changes?limit=1");
        assert_eq!(reply.status, 400);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let operation = &doc["paths"]["/users/changes"]["get"];
        let documented = &operation["responses"]["400"]["content"]["application/json"];
        assert_eq!(documented["example"], body);
        let limit = (operation["parameters"].as_array().unwrap().iter())
            .find(|p| p["name"] == "limit")
            .unwrap();
        let description = limit["description"].as_str().unwrap_or("");
        assert!(
            description.contains("Only read together with since"),
            "{description}"
        );
    }

    fn handler(capacity: u64, preload: u64) -> Handler {
        let metrics = Metrics::new().unwrap();
        let feed = Feed::new(Generator::new(1, 0.05), ChangeLog::new(capacity));
        feed.preload(preload, &metrics);
        Handler::new(feed, metrics, "epoch-1".to_string())
    }

    fn call(h: &Handler, method: &str, url: &str) -> (Route, Response) {
        h.answer(&Request::new(method, url, &[]))
    }

    fn body(reply: &Response) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    fn error_of(reply: &Response) -> String {
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
        body(reply)["error"].as_str().unwrap().to_string()
    }

    fn header(reply: &Response, name: &str) -> u64 {
        reply.header(name).unwrap().parse().unwrap()
    }

    #[test]
    fn fresh_batch_without_parameters() {
        let h = handler(100, 0);
        let (route, reply) = call(&h, "GET", "/users/changes");
        assert_eq!(route, Route::Changes);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
        let n = body(&reply).as_array().unwrap().len() as u64;
        assert!((2..=5).contains(&n));
        assert_eq!(header(&reply, "X-Next-Cursor"), n);
        assert_eq!(header(&reply, "X-Head-Cursor"), n);
        assert_eq!(reply.header("X-Source-Epoch"), Some("epoch-1"));
    }

    #[test]
    fn since_pages_through_the_log() {
        let h = handler(1000, 100);
        let head = h.feed().head();
        let (_, reply) = call(&h, "GET", "/users/changes?since=10&limit=20");
        assert_eq!(reply.status, 200);
        assert_eq!(body(&reply).as_array().unwrap().len(), 20);
        assert_eq!(header(&reply, "X-Next-Cursor"), 30);
        assert_eq!(header(&reply, "X-Head-Cursor"), head);
        let (_, reply) = call(&h, "GET", "/users/changes?since=30");
        assert_eq!(header(&reply, "X-Next-Cursor"), head);
        assert_eq!(body(&reply).as_array().unwrap().len() as u64, head - 30);
        // Caught up: a fresh batch.
        let (_, reply) = call(&h, "GET", &format!("/users/changes?since={head}"));
        let n = body(&reply).as_array().unwrap().len() as u64;
        assert!(n >= 2);
        assert_eq!(header(&reply, "X-Next-Cursor"), head + n);
        assert_eq!(header(&reply, "X-Head-Cursor"), head + n);
    }

    #[test]
    fn malformed_parameters_are_400() {
        let h = handler(100, 0);
        for query in [
            "since=abc",
            "since=-1",
            "since=",
            "since",
            "since=+5",
            "since=1.0",
            "since=%20",
            "since=1&since=2",
            "since=0&limit=0",
            "since=0&limit=10001",
            "since=0&limit=-1",
            "since=0&limit=abc",
            "since=0&limit=",
            "limit=0",
        ] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?{query}"));
            assert_eq!(reply.status, 400, "{query}");
            let error = error_of(&reply);
            assert!(
                error.contains("since") || error.contains("limit"),
                "{error}"
            );
        }
        let (_, reply) = call(&h, "GET", "/users/changes?since=0&limit=10000");
        assert_eq!(reply.status, 200);
        let (_, reply) = call(&h, "GET", "/users/changes?since=%30");
        assert_eq!(reply.status, 200, "percent-encoded digits are digits");
    }

    #[test]
    fn every_parameter_is_read_or_refused() {
        let h = handler(1000, 100);
        let head = h.feed().head();
        for (query, error) in [
            ("limit=3", "limit is only read together with since"),
            ("limit=0", "limit is only read together with since"),
            ("since=1&since=1", "since is given more than once"),
            ("since=1&limit=1&limit=1", "limit is given more than once"),
            ("since=1&%73ince=2", "since is given more than once"),
            ("since=", "since must be a whole number"),
            ("since=+1", "not \" 1\""),
            ("since=%2B1", "not \"+1\""),
            ("since=1%", "not \"1%\""),
            ("since=0x1", "since must be a whole number"),
            ("since=1&limit=%2B1", "limit must be a whole number"),
            ("sinse=1", "unknown parameter \"sinse\""),
            ("since=1&foo=bar", "unknown parameter \"foo\""),
            ("SINCE=1", "unknown parameter \"SINCE\""),
            ("=1", "unknown parameter \"\""),
            ("%zz=1", "unknown parameter \"%zz\""),
            ("foo", "unknown parameter \"foo\""),
        ] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?{query}"));
            assert_eq!(reply.status, 400, "{query}");
            let message = error_of(&reply);
            assert!(message.contains(error), "{query}: {message}");
            assert!(reply.header("X-Next-Cursor").is_none());
        }
        assert_eq!(h.feed().head(), head, "a refused request generates nothing");
        for (query, next) in [
            ("since=01&limit=1", 2),
            ("since=0000000000000000000000001&limit=001", 2),
            ("since=%31&limit=%32", 3),
            ("%73ince=1&%6cimit=1", 2),
            ("since=1&&limit=1&", 2),
            ("limit=1&since=1", 2),
        ] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?{query}"));
            assert_eq!(reply.status, 200, "{query}");
            assert_eq!(header(&reply, "X-Next-Cursor"), next, "{query}");
        }
        // No parameters at all, however written: a fresh batch.
        for url in ["/users/changes?", "/users/changes?&", "/users/changes?&&"] {
            let before = h.feed().head();
            let (_, reply) = call(&h, "GET", url);
            assert_eq!(reply.status, 200, "{url}");
            assert_eq!(
                header(&reply, "X-Head-Cursor"),
                before + body(&reply).as_array().unwrap().len() as u64
            );
        }
    }

    #[test]
    fn cursors_outside_the_log_are_410() {
        let h = handler(50, 200);
        let head = h.feed().head();
        for since in [head + 1, u64::MAX, 0, head - 51] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?since={since}"));
            assert_eq!(reply.status, 410, "since={since}");
            let value = body(&reply);
            assert!(value["error"].is_string());
            assert_eq!(value.as_object().map(|members| members.len()), Some(1));
            assert_eq!(
                reply.header("X-Min-Cursor"),
                Some(&*(head - 50).to_string())
            );
            assert_eq!(reply.header("X-Head-Cursor"), Some(&*head.to_string()));
        }
        let (_, reply) = call(&h, "GET", &format!("/users/changes?since={}", head - 50));
        assert_eq!(reply.status, 200);
        assert_eq!(body(&reply).as_array().unwrap().len(), 50);
    }

    #[test]
    fn digits_past_u64_are_a_cursor_newer_than_the_head() {
        let h = handler(1000, 200);
        let head = h.feed().head();
        let (_, max) = call(&h, "GET", &format!("/users/changes?since={}", u64::MAX));
        assert_eq!(max.status, 410);
        for since in [
            "18446744073709551616",
            "99999999999999999999",
            &"9".repeat(1000),
            "%31%38446744073709551616",
        ] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?since={since}&limit=5"));
            assert_eq!(reply.status, 410, "since={since}");
            let error = error_of(&reply);
            assert!(error.contains("newer than the newest change"), "{error}");
            assert!(
                !error.contains(&u64::MAX.to_string()),
                "echoes what was sent: {error}"
            );
            assert!(reply.body.len() < 400);
            assert_eq!(reply.headers.len(), max.headers.len());
            assert_eq!(reply.header("X-Min-Cursor"), Some("0"));
            assert_eq!(reply.header("X-Head-Cursor"), Some(&*head.to_string()));
            assert_eq!(reply.header("X-Source-Epoch"), Some("epoch-1"));
        }
        assert!(
            error_of(&call(&h, "GET", "/users/changes?since=18446744073709551616").1)
                .starts_with("since=18446744073709551616 is newer")
        );
        // Still 400: a number too large for limit, and digits with a sign.
        for query in [
            "since=0&limit=18446744073709551616",
            "since=-18446744073709551616",
        ] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?{query}"));
            assert_eq!(reply.status, 400, "{query}");
        }
        assert_eq!(h.feed().head(), head, "nothing was generated");
    }

    #[test]
    fn a_gone_cursor_is_told_the_real_restart_point() {
        // The log has dropped its oldest changes, so since=0 is gone too:
        // both kinds of 410 name the smallest since still served.
        let h = handler(50, 200);
        let head = h.feed().head();
        let min_since = head - 50;
        for since in [head + 1, 99_999_999, 0] {
            let (_, reply) = call(&h, "GET", &format!("/users/changes?since={since}"));
            assert_eq!(reply.status, 410, "since={since}");
            let error = error_of(&reply);
            assert!(
                error.ends_with(&format!("restart from since={min_since}")),
                "since={since}: {error}"
            );
            assert_eq!(reply.header("X-Min-Cursor"), Some(&*min_since.to_string()));
        }
        // While nothing is dropped, the restart point of a too-new cursor is 0.
        let h = handler(1000, 200);
        let (_, reply) = call(&h, "GET", "/users/changes?since=99999999");
        assert_eq!(reply.status, 410);
        assert!(error_of(&reply).ends_with("restart from since=0"));
    }

    #[test]
    fn since_zero_is_valid_on_an_empty_log() {
        let h = handler(100, 0);
        let (_, reply) = call(&h, "GET", "/users/changes?since=0");
        assert_eq!(reply.status, 200);
        assert!(body(&reply).as_array().unwrap().len() >= 2);
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let h = handler(100, 0);
        for url in [
            "/",
            "/users",
            "/users/changes/",
            "/healthz/x",
            "/nope?since=1",
        ] {
            let (route, reply) = call(&h, "GET", url);
            assert_eq!((route, reply.status), (Route::Other, 404), "{url}");
            assert!(error_of(&reply).contains("no such path"));
        }
        for (method, url) in [
            ("POST", "/users/changes"),
            ("DELETE", "/healthz"),
            ("PUT", "/metrics"),
            ("HEAD", "/users/changes"),
        ] {
            let (_, reply) = call(&h, method, url);
            assert_eq!(reply.status, 405, "{method} {url}");
            let allow = if url == "/users/changes" {
                "GET"
            } else {
                "GET, HEAD"
            };
            assert_eq!(reply.header("Allow"), Some(allow), "{method} {url}");
            assert!(error_of(&reply).contains(method));
        }
        let (_, reply) = call(&h, "POST", "/elsewhere");
        assert_eq!(reply.status, 404);
    }

    #[test]
    fn head_is_answered_like_get_except_where_get_generates() {
        let h = handler(100, 0);
        for url in ["/healthz", "/metrics"] {
            let (_, get) = call(&h, "GET", url);
            let (_, head) = call(&h, "HEAD", url);
            let content_type = |r: &Response| r.header("Content-Type").map(str::to_owned);
            assert_eq!(
                (head.status, content_type(&head)),
                (200, content_type(&get))
            );
        }
        let (_, reply) = call(&h, "HEAD", "/users/changes?since=0");
        assert_eq!(reply.status, 405);
        assert_eq!(h.feed().head(), 0, "a HEAD generates nothing");
    }

    #[test]
    fn handle_counts_the_request() {
        let h = handler(100, 0);
        assert_eq!(h.handle(&Request::new("GET", "/healthz", &[])).status, 200);
        let absolute = Request::new("GET", "http://host/healthz?x=1", &[]);
        assert_eq!(Route::of(&absolute), Route::Healthz);
        let text = String::from_utf8(call(&h, "GET", "/metrics").1.body).unwrap();
        assert!(
            text.contains(r#"source_requests_total{code="200",path="/healthz"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn absolute_form_targets_are_routed_by_their_path() {
        let h = handler(1000, 200);
        let head = h.feed().head();
        for url in [
            "http://127.0.0.1:8080/healthz",
            "HTTP://localhost/healthz",
            "https://[::1]:8080/healthz",
        ] {
            let (route, reply) = call(&h, "GET", url);
            assert_eq!((route, reply.status), (Route::Healthz, 200), "{url}");
        }
        let (route, reply) = call(
            &h,
            "GET",
            "http://source.example:8080/users/changes?since=10&limit=20",
        );
        assert_eq!((route, reply.status), (Route::Changes, 200));
        assert_eq!(body(&reply).as_array().unwrap().len(), 20);
        assert_eq!(header(&reply, "X-Next-Cursor"), 30);
        assert_eq!(h.feed().head(), head);
        for url in [
            "http://host",
            "http://host?since=1",
            "http://host/nope",
            "http://host/users/changes/",
            "ftp://host/healthz",
            "healthz",
            "*",
        ] {
            let (route, reply) = call(&h, "GET", url);
            assert_eq!((route, reply.status), (Route::Other, 404), "{url}");
        }
        assert!(error_of(&call(&h, "GET", "http://host?x=1").1).contains("no such path: /;"));
        let (_, reply) = call(&h, "POST", "http://host/healthz");
        assert_eq!(reply.status, 405);
    }

    #[test]
    fn healthz_and_metrics() {
        let h = handler(100, 0);
        let (_, reply) = call(&h, "GET", "/healthz");
        assert_eq!(reply.status, 200);
        assert_eq!(body(&reply), serde_json::json!({"status": "ok"}));
        let (_, reply) = call(&h, "GET", "/metrics");
        assert_eq!(reply.status, 200);
        assert!(reply
            .header("Content-Type")
            .unwrap()
            .starts_with("text/plain"));
        let text = String::from_utf8(reply.body).unwrap();
        assert!(text.contains("source_change_log_entries"));
    }

    #[test]
    fn long_input_is_not_echoed_whole() {
        let h = handler(100, 0);
        let long = "x".repeat(10_000);
        let (_, reply) = call(&h, "GET", &format!("/{long}"));
        assert!(reply.body.len() < 400);
        let (_, reply) = call(&h, "GET", &format!("/users/changes?since={long}"));
        assert!(reply.body.len() < 400);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn a_token_guards_the_changes_and_nothing_else() {
        let h = handler(100, 10).with_token(Some("s3cret"));
        let ask = |url: &str, authorization: Option<&str>| {
            let fields = authorization.map(|value| ("Authorization", value));
            h.handle(&Request::new("GET", url, fields.as_slice()))
        };
        for authorization in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
        ] {
            let reply = ask("/users/changes?since=0", authorization);
            assert_eq!(reply.status, 401, "{authorization:?}");
            assert_eq!(reply.header("WWW-Authenticate"), Some("Bearer"));
            assert!(!error_of(&reply).contains("s3cret"));
        }
        for authorization in ["Bearer s3cret", "bearer s3cret", "Bearer  s3cret "] {
            assert_eq!(
                ask("/users/changes?since=0", Some(authorization)).status,
                200
            );
        }
        assert_eq!(ask("/healthz", None).status, 200);
        assert_eq!(ask("/metrics", None).status, 200);
        assert_eq!(ask("/nowhere", None).status, 404);
        // Without a token set, nothing is asked for.
        assert_eq!(
            call(&handler(100, 10), "GET", "/users/changes").1.status,
            200
        );
    }
}
