//! The target's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`,
//! `/status`, the status page at `/`, `/openapi.json` and `/rejections`, as
//! a plain function from an `Incoming` request to a `Reply`, so it is tested
//! without sockets. The server itself (connections, limits, timeouts) is the
//! `http_server` crate, started in `lib.rs`.
//!
//! Handlers read atomics and a short-held lock only, except `/rejections`,
//! which reads PostgreSQL through a pool of its own with short timeouts
//! ([`crate::rejections`]): a stuck database cannot stall a scrape.

use http_server::client_input::shorten;
use http_server::origin_form;
use serde_json::json;

use crate::admin::{self, AdminToken};
use crate::metrics::Metrics;
use crate::rejections::{self, AdminPool, BadParameter, Filter, ListError};
use crate::status::StatusBoard;
use crate::{openapi, status_page};

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
    /// Headers besides `Content-Type`: `Allow` on `405`, `WWW-Authenticate`
    /// on `401`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        if name.eq_ignore_ascii_case("content-type") {
            return Some(self.content_type);
        }
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What `/rejections` needs: the token it asks for and where it reads.
pub struct Admin {
    pub token: Option<AdminToken>,
    pub pool: AdminPool,
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Every path the router answers.
pub const PATHS: [&str; 7] = [
    "/",
    "/metrics",
    "/healthz",
    "/readyz",
    "/status",
    "/openapi.json",
    "/rejections",
];

pub fn route(
    request: &Incoming<'_>,
    metrics: &Metrics,
    status: &StatusBoard,
    admin: &Admin,
) -> Reply {
    let url = origin_form(request.url);
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let path = path.split('#').next().unwrap_or(path);
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
    if request.method != "GET" && request.method != "HEAD" {
        let mut reply = json_reply(
            405,
            json!({ "error": format!("{path} only answers GET and HEAD") }),
        );
        reply.headers.push(("Allow", "GET, HEAD".to_owned()));
        return reply;
    }
    match path {
        "/" => Reply {
            status: 200,
            content_type: HTML,
            headers: status_page::headers(),
            body: status_page::PAGE.as_bytes().to_vec(),
        },
        "/openapi.json" => Reply {
            status: 200,
            content_type: JSON,
            headers: Vec::new(),
            body: openapi::TARGET.as_bytes().to_vec(),
        },
        "/rejections" => list_rejections(request, query, admin),
        "/metrics" => Reply {
            status: 200,
            content_type: PROMETHEUS_TEXT,
            headers: Vec::new(),
            body: metrics.render(),
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

/// `GET /rejections`: authorization first, so nothing about the data (not
/// even whether a filter is valid) is told to a stranger.
fn list_rejections(request: &Incoming<'_>, query: &str, admin: &Admin) -> Reply {
    if let Err(refusal) = admin::authorize(admin.token.as_ref(), request.authorization) {
        let mut reply = json_reply(refusal.status(), json!({ "error": refusal.message() }));
        if refusal == admin::Refusal::Unauthorized {
            reply
                .headers
                .push(("WWW-Authenticate", "Bearer".to_owned()));
        }
        return reply;
    }
    let filter = match Filter::parse(query) {
        Ok(filter) => filter,
        Err(BadParameter(message)) => return json_reply(400, json!({ "error": message })),
    };
    match rejections::list(&admin.pool, &filter) {
        Ok(body) => json_reply(200, body),
        Err(err) => {
            let why = match err {
                ListError::Unreachable(why) => why,
                ListError::Query(err) => crate::store::describe(&err),
            };
            log::warn!("GET /rejections: cannot read sync_rejections: {why}");
            json_reply(
                503,
                json!({ "error": "the database did not answer in time; try again shortly" }),
            )
        }
    }
}

fn json_reply(status: u16, body: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: JSON,
        headers: Vec::new(),
        body: body.to_string().into_bytes(),
    }
}

/// The reply as the server sends it.
pub fn to_response(reply: Reply) -> http_server::Response {
    let mut headers = vec![("Content-Type", reply.content_type.to_string())];
    headers.extend(reply.headers);
    http_server::Response {
        status: reply.status,
        headers,
        body: reply.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin whose database is nowhere: only refusals and 400s answer.
    fn admin(token: Option<&str>) -> Admin {
        let mut config = postgres::Config::new();
        config.host("127.0.0.1").port(1).user("nobody");
        config.connect_timeout(std::time::Duration::from_millis(200));
        Admin {
            token: token.map(|t| AdminToken::new(t).unwrap()),
            pool: rejections::admin_pool(
                config,
                crate::config::Config::from_lookup(|_| None)
                    .expect("the defaults are a configuration")
                    .database
                    .tls,
            ),
        }
    }

    fn request<'a>(method: &'a str, url: &'a str, authorization: Option<&'a str>) -> Incoming<'a> {
        Incoming {
            method,
            url,
            authorization,
        }
    }

    fn call(method: &str, url: &str, status: &StatusBoard) -> (u16, serde_json::Value) {
        let reply = route(
            &request(method, url, None),
            &Metrics::new(),
            status,
            &admin(None),
        );
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
        let reply = route(
            &request("POST", "/metrics", None),
            &Metrics::new(),
            &status,
            &admin(None),
        );
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("Allow"), Some("GET, HEAD"));
        assert_eq!(reply.content_type, "application/json");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "/metrics only answers GET and HEAD");
    }

    #[test]
    fn absolute_form_targets_are_routed_by_their_path() {
        let status = StatusBoard::default();
        for url in [
            "http://127.0.0.1:2112/healthz",
            "HTTP://target.example/healthz?x=1",
        ] {
            assert_eq!(
                call("GET", url, &status),
                (200, json!({"status": "ok"})),
                "{url}"
            );
        }
        assert_eq!(call("GET", "http://target.example/nope", &status).0, 404);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let reply = route(
            &request("GET", "/metrics", None),
            &Metrics::new(),
            &StatusBoard::default(),
            &admin(None),
        );
        assert_eq!(reply.status, 200);
        assert!(reply.content_type.starts_with("text/plain"));
        assert!(String::from_utf8(reply.body)
            .unwrap()
            .contains("profiles_fetched_total"));
    }

    #[test]
    fn rejections_need_the_admin_token() {
        let status = StatusBoard::default();
        let metrics = Metrics::new();
        let closed = route(
            &request("GET", "/rejections", Some("Bearer x")),
            &metrics,
            &status,
            &admin(None),
        );
        assert_eq!(closed.status, 403);
        assert!(String::from_utf8_lossy(&closed.body).contains("ADMIN_TOKEN"));
        let open = admin(Some("right"));
        for authorization in [None, Some("Bearer wrong"), Some("right")] {
            let reply = route(
                &request("GET", "/rejections", authorization),
                &metrics,
                &status,
                &open,
            );
            assert_eq!(reply.status, 401, "{authorization:?}");
            assert_eq!(reply.header("WWW-Authenticate"), Some("Bearer"));
        }
        let bad = route(
            &request("GET", "/rejections?limit=0", Some("Bearer right")),
            &metrics,
            &status,
            &open,
        );
        assert_eq!(bad.status, 400);
        let down = route(
            &request("GET", "/rejections", Some("Bearer right")),
            &metrics,
            &status,
            &open,
        );
        assert_eq!(down.status, 503, "no database behind it");
    }

    #[test]
    fn the_page_and_the_document_are_served() {
        let status = StatusBoard::default();
        let page = route(
            &request("GET", "/", None),
            &Metrics::new(),
            &status,
            &admin(None),
        );
        assert_eq!(page.status, 200);
        assert!(page.content_type.starts_with("text/html"));
        let doc = route(
            &request("GET", "/openapi.json", None),
            &Metrics::new(),
            &status,
            &admin(None),
        );
        let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
        assert!(doc["paths"]["/rejections"].is_object());
    }
}
