//! The metrics and health endpoints: `/metrics`, `/healthz`, `/readyz`,
//! `/status`, as a plain function from method and path to a response, so it
//! is tested without sockets and the server loop stays trivial.
//!
//! Handlers read atomics and a short-held lock only: they never wait on
//! PostgreSQL or the source, so a stuck database cannot stall a scrape.

use serde_json::json;

use crate::metrics::Metrics;
use crate::status::StatusBoard;

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

pub fn route(method: &str, url: &str, metrics: &Metrics, status: &StatusBoard) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if !PATHS.contains(&path) {
        return json_reply(404, json!({ "error": format!("no such path: {path}") }));
    }
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

/// Answers one request on the socket; a client that hung up is not an error.
pub fn respond(request: tiny_http::Request, metrics: &Metrics, status: &StatusBoard) {
    let reply = route(request.method().as_str(), request.url(), metrics, status);
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    let headers = [
        ("Content-Type", Some(reply.content_type)),
        ("Allow", reply.allow),
    ];
    for (name, value) in headers {
        if let Some(value) = value {
            if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(header);
            }
        }
    }
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, url: &str, status: &StatusBoard) -> (u16, serde_json::Value) {
        let reply = route(method, url, &Metrics::new(), status);
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
        assert!(body["error"].is_string());
        let reply = route("POST", "/metrics", &Metrics::new(), &status);
        assert_eq!(reply.status, 405);
        assert_eq!(reply.allow, Some("GET, HEAD"));
        assert_eq!(reply.content_type, "application/json");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let reply = route("GET", "/metrics", &Metrics::new(), &StatusBoard::default());
        assert_eq!(reply.status, 200);
        assert!(reply.content_type.starts_with("text/plain"));
        assert!(String::from_utf8(reply.body)
            .unwrap()
            .contains("profiles_fetched_total"));
    }
}
