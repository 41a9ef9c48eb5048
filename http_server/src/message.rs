//! What a handler sees and gives back: `Request` (a parsed head, or one a
//! caller builds, so that handlers can be called without a socket) and
//! `Response`, with how a response is written on the wire (`encode`) and
//! the JSON errors the server answers by itself.

use std::borrow::Cow;
use std::io::Write;
use std::time::SystemTime;

use crate::limits::COPY_BODY;

/// What a handler is given of a request: its head. Bodies are never read.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The method as sent (`GET`, `HEAD`, …).
    pub method: &'a str,
    /// The request target as sent (path and query, or absolute form).
    pub target: &'a str,
    fields: Fields<'a>,
}

/// The header fields of a request: as parsed off the wire, or as given to
/// `Request::new`.
#[derive(Clone, Copy)]
enum Fields<'a> {
    Parsed(&'a [httparse::Header<'a>]),
    Given(&'a [(&'a str, &'a str)]),
}

impl<'a> Request<'a> {
    /// A request with these header fields (name, value), as if it had come
    /// over a connection: for calling a handler without one.
    pub fn new(method: &'a str, target: &'a str, headers: &'a [(&'a str, &'a str)]) -> Self {
        Request {
            method,
            target,
            fields: Fields::Given(headers),
        }
    }

    /// A request parsed off a connection.
    pub(crate) fn parsed(
        method: &'a str,
        target: &'a str,
        headers: &'a [httparse::Header<'a>],
    ) -> Self {
        Request {
            method,
            target,
            fields: Fields::Parsed(headers),
        }
    }

    /// The header fields, name and raw value, in the order sent.
    fn fields(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        let (parsed, given) = match self.fields {
            Fields::Parsed(parsed) => (parsed, &[][..]),
            Fields::Given(given) => (&[][..], given),
        };
        let parsed = parsed.iter().map(|h| (h.name, h.value));
        parsed.chain(given.iter().map(|&(name, value)| (name, value.as_bytes())))
    }

    /// The first header field `name` (case-insensitive), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Whether header `name` lists `token` (as in `Connection: keep-alive, …`).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.fields().any(|(n, value)| {
            n.eq_ignore_ascii_case(name)
                && value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Whether the request announces a body (`Transfer-Encoding`, or a
    /// `Content-Length` other than `0`, whatever its value).
    pub(crate) fn announces_body(&self) -> bool {
        self.fields().any(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                || (name.eq_ignore_ascii_case("content-length") && value.trim_ascii() != b"0")
        })
    }

    /// The request target in origin form (`/path?query`). HTTP/1.1 servers
    /// must also accept the absolute form (`http://host:port/path?query`,
    /// RFC 9112 §3.2.2), which proxies send; its scheme and authority are
    /// dropped here (the service answers for any host). Anything else is
    /// returned unchanged.
    pub fn origin_form(&self) -> Cow<'a, str> {
        origin_form(self.target)
    }
}

fn origin_form(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Cow::Borrowed(url);
    }
    let path_and_query = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
    if path_and_query.starts_with('/') {
        Cow::Borrowed(path_and_query)
    } else {
        // `http://host` and `http://host?q` name the root path.
        Cow::Owned(format!("/{path_and_query}"))
    }
}

/// A response. `Content-Length`, `Date` and `Connection` are added by the
/// server; for `HEAD` the body is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response whose only header field is `Content-Type`.
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
        }
    }

    /// The value of header `name` (case-insensitive), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A JSON error the server answers by itself.
pub(crate) fn error(status: u16, message: &str) -> Response {
    // `message` is ours, never client input, so it needs no escaping.
    let body = format!("{{\"error\":\"{message}\"}}").into_bytes();
    Response::new(status, "application/json", body)
}

/// Serialises a response into `out` (cleared first): its head, and its body
/// when small (one write is one segment) and not for `HEAD`. Returns whether
/// the body went in.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    response: &Response,
    is_head: bool,
    connection: Option<&str>,
) -> bool {
    out.clear();
    let status = response.status;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    let _ = write!(
        out,
        "Date: {}\r\n",
        httpdate::HttpDate::from(SystemTime::now())
    );
    for (name, value) in &response.headers {
        // Values are ours, but a line break would split the response.
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    if let Some(connection) = connection {
        let _ = write!(out, "Connection: {connection}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let copy = !is_head && response.body.len() <= COPY_BODY;
    if copy {
        out.extend_from_slice(&response.body);
    }
    copy
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_absolute_form_is_read_as_the_origin_form() {
        assert_eq!(origin_form("/healthz?x=1"), "/healthz?x=1");
        assert_eq!(origin_form("http://127.0.0.1:8080/healthz"), "/healthz");
        assert_eq!(origin_form("HTTPS://[::1]:8080/a?b=c"), "/a?b=c");
        assert_eq!(origin_form("http://host?q"), "/?q");
        assert_eq!(origin_form("http://host"), "/");
        assert_eq!(origin_form("ftp://host/x"), "ftp://host/x");
    }

    #[test]
    fn a_built_request_is_read_like_a_parsed_one() {
        let fields = [("authorization", "Bearer x"), ("Connection", "a, Close")];
        let request = Request::new("GET", "http://h/x?y", &fields);
        assert_eq!(request.header("Authorization"), Some("Bearer x"));
        assert_eq!(request.header("Host"), None);
        assert!(request.has_token("connection", "close"));
        assert!(!request.announces_body());
        assert_eq!(request.origin_form(), "/x?y");
    }

    fn encoded(response: &Response, is_head: bool, close: bool) -> String {
        let mut out = Vec::new();
        encode(&mut out, response, is_head, close.then_some("close"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_response_has_its_length_and_head_leaves_the_body_out() {
        let response = Response::new(200, "application/json", b"{}".to_vec());
        assert_eq!(response.header("content-type"), Some("application/json"));
        let text = encoded(&response, false, false);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{text}");
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.ends_with("\r\nContent-Length: 2\r\n\r\n{}"), "{text}");
        let head = encoded(&response, true, true);
        assert!(
            head.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn a_header_value_with_a_line_break_is_left_out() {
        let response = Response {
            status: 404,
            headers: vec![("X-Bad", "a\r\nSet-Cookie: x".to_string())],
            body: Vec::new(),
        };
        assert!(!encoded(&response, false, false).contains("Set-Cookie"));
    }
}
