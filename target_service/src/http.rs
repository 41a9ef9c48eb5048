//! The metrics and health endpoints: `/metrics`, `/healthz`, `/readyz`,
//! `/status`, as a plain function from an `Incoming` request to a `Reply`,
//! so it is tested without sockets. The server itself (connections, limits,
//! timeouts) is the `http_server` crate, started in `lib.rs`.
//!
//! Handlers read atomics and a short-held lock only: they never wait on
//! PostgreSQL or the source, so a stuck database cannot stall a scrape.

use serde_json::json;

use crate::metrics::Metrics;
use crate::status::StatusBoard;

/// What a handler reads of a request.
pub struct Incoming<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub url: &'a str,
    /// The `Authorization` header, when present.
    pub authorization: Option<&'a str>,
}

/// What to send back.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For `405`: the methods the path takes.
    pub allow: Option<&'static str>,
}

const JSON: &str = "application/json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PATHS: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/status"];

pub fn route(request: &Incoming, metrics: &Metrics, status: &StatusBoard) -> Reply {
    let url = request.url;
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if !PATHS.contains(&path) {
        return json_reply(
            404,
            json!({ "error": format!(
                "no such path: {}; this service answers GET {}",
                shorten(path),
                PATHS.join(", ")
            ) }),
        );
    }
    let method = request.method;
    if method != "GET" && method != "HEAD" {
        let mut reply = json_reply(405, json!({ "error": format!("{path} only answers GET") }));
        reply.allow = Some("GET, HEAD");
        return reply;
    }
    match path {
        "/metrics" => Reply {
            status: 200,
            content_type: PROMETHEUS_TEXT,
            body: metrics.render(),
            allow: None,
        },
        "/healthz" => json_reply(200, json!({ "status": "ok" })),
        "/readyz" if status.is_ready() => json_reply(200, json!({ "status": "ready" })),
        "/readyz" => json_reply(
            503,
            json!({ "status": "not ready", "error": "the database is not reachable or the schema is not applied yet" }),
        ),
        _ => json_reply(200, status.to_json(metrics)),
    }
}

fn json_reply(status: u16, body: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: JSON,
        body: body.to_string().into_bytes(),
        allow: None,
    }
}

/// Echoed client input is cut short so error bodies stay small.
fn shorten(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The reply as the server sends it.
pub fn to_response(reply: Reply) -> http_server::Response {
    let mut headers = vec![("Content-Type", reply.content_type.to_string())];
    if let Some(allow) = reply.allow {
        headers.push(("Allow", allow.to_string()));
    }
    http_server::Response {
        status: reply.status,
        headers,
        body: reply.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(method: &'static str, url: &'static str) -> Incoming<'static> {
        Incoming {
            method,
            url,
            authorization: None,
        }
    }

    fn call(
        method: &'static str,
        url: &'static str,
        status: &StatusBoard,
    ) -> (u16, serde_json::Value) {
        let reply = route(&get(method, url), &Metrics::new(), status);
        let body = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
        (reply.status, body)
    }

    #[test]
    fn health_is_always_ok_readiness_follows_the_database() {
        let status = StatusBoard::default();
        assert_eq!(
            call("GET", "/healthz", &status),
            (200, json!({"status": "ok"}))
        );
        assert_eq!(call("GET", "/readyz", &status).0, 503);
        status.set_database_reachable(true);
        assert_eq!(
            call("GET", "/readyz", &status).0,
            503,
            "schema not applied yet"
        );
        status.set_schema_applied();
        assert_eq!(call("GET", "/readyz", &status).0, 200);
        status.set_database_reachable(false);
        assert_eq!(call("GET", "/readyz", &status).0, 503);
    }

    #[test]
    fn status_reports_state_cursor_and_totals() {
        let status = StatusBoard::default();
        let (code, body) = call("GET", "/status", &status);
        assert_eq!(code, 200);
        assert_eq!(body["state"], "waiting_for_database");
        status.set_database_reachable(true);
        status.set_schema_applied();
        status.set_position(42, Some("epoch-1"));
        let (_, body) = call("GET", "/status?verbose=1", &status);
        assert_eq!(body["state"], "idle");
        assert_eq!(body["cursor"], 42);
        assert_eq!(body["epoch"], "epoch-1");
        assert_eq!(body["totals"]["fetched"], 0);
        assert_eq!(body["totals"]["rejected"]["stale"], 0);
    }

    #[test]
    fn unknown_paths_and_methods_get_json_errors() {
        let status = StatusBoard::default();
        let (code, body) = call("GET", "/nope", &status);
        assert_eq!(code, 404);
        let error = body["error"].as_str().unwrap();
        for path in PATHS {
            assert!(error.contains(path), "{error}");
        }
        let reply = route(&get("POST", "/metrics"), &Metrics::new(), &status);
        assert_eq!(reply.status, 405);
        assert_eq!(reply.allow, Some("GET, HEAD"));
        assert_eq!(reply.content_type, "application/json");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let reply = route(
            &get("GET", "/metrics"),
            &Metrics::new(),
            &StatusBoard::default(),
        );
        assert_eq!(reply.status, 200);
        assert!(reply.content_type.starts_with("text/plain"));
        assert!(String::from_utf8(reply.body)
            .unwrap()
            .contains("profiles_fetched_total"));
    }
}
