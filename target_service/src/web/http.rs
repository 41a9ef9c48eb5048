//! The target's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`,
//! `/status`, the status page at `/`, `/openapi.json` and `/rejections`, as
//! a plain function from an `http_server::Request` to an
//! `http_server::Response`, so it is tested
//! without sockets. The server itself (connections, limits, timeouts) is the
//! `http_server` crate, started in `lib.rs`.
//!
//! Handlers read atomics and a short-held lock only, except `/rejections`,
//! which reads PostgreSQL through a pool of its own with short timeouts
//! ([`crate::ops::rejections`]): a stuck database cannot stall a scrape.

use http_server::client_input::shorten;
use http_server::{Request, Response};
use serde_json::json;

use crate::metrics::Metrics;
use crate::ops::admin::{self, AdminToken};
use crate::ops::rejections::{self, AdminPool, BadParameter, Filter, ListError};
use crate::web::status::StatusBoard;
use crate::web::{openapi, status_page};

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
    request: &Request<'_>,
    metrics: &Metrics,
    status: &StatusBoard,
    admin: &Admin,
) -> Response {
    let url = request.origin_form();
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
        "/" => {
            let mut page = Response::new(200, HTML, status_page::PAGE.as_bytes().to_vec());
            page.headers.extend(status_page::headers());
            page
        }
        "/openapi.json" => Response::new(200, JSON, openapi::TARGET.as_bytes().to_vec()),
        "/rejections" => list_rejections(request, query, admin),
        "/metrics" => Response::new(200, PROMETHEUS_TEXT, metrics.render()),
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
fn list_rejections(request: &Request<'_>, query: &str, admin: &Admin) -> Response {
    let authorization = request.header("Authorization");
    if let Err(refusal) = admin::authorize(admin.token.as_ref(), authorization) {
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

fn json_reply(status: u16, body: serde_json::Value) -> Response {
    Response::new(status, JSON, body.to_string().into_bytes())
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

    /// The header fields of a request with this `Authorization`, if any.
    fn with_authorization(value: Option<&str>) -> Vec<(&'static str, &str)> {
        value
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect()
    }

    fn call(method: &str, url: &str, status: &StatusBoard) -> (u16, serde_json::Value) {
        let reply = route(
            &Request::new(method, url, &with_authorization(None)),
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
            &Request::new("POST", "/metrics", &with_authorization(None)),
            &Metrics::new(),
            &status,
            &admin(None),
        );
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("Allow"), Some("GET, HEAD"));
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
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
            &Request::new("GET", "/metrics", &with_authorization(None)),
            &Metrics::new(),
            &StatusBoard::default(),
            &admin(None),
        );
        assert_eq!(reply.status, 200);
        assert!(reply
            .header("Content-Type")
            .unwrap()
            .starts_with("text/plain"));
        assert!(String::from_utf8(reply.body)
            .unwrap()
            .contains("profiles_fetched_total"));
    }

    #[test]
    fn rejections_need_the_admin_token() {
        let status = StatusBoard::default();
        let metrics = Metrics::new();
        let closed = route(
            &Request::new("GET", "/rejections", &with_authorization(Some("Bearer x"))),
            &metrics,
            &status,
            &admin(None),
        );
        assert_eq!(closed.status, 403);
        assert!(String::from_utf8_lossy(&closed.body).contains("ADMIN_TOKEN"));
        let open = admin(Some("right"));
        for authorization in [None, Some("Bearer wrong"), Some("right")] {
            let reply = route(
                &Request::new("GET", "/rejections", &with_authorization(authorization)),
                &metrics,
                &status,
                &open,
            );
            assert_eq!(reply.status, 401, "{authorization:?}");
            assert_eq!(reply.header("WWW-Authenticate"), Some("Bearer"));
        }
        let bad = route(
            &Request::new(
                "GET",
                "/rejections?limit=0",
                &with_authorization(Some("Bearer right")),
            ),
            &metrics,
            &status,
            &open,
        );
        assert_eq!(bad.status, 400);
        let down = route(
            &Request::new(
                "GET",
                "/rejections",
                &with_authorization(Some("Bearer right")),
            ),
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
            &Request::new("GET", "/", &with_authorization(None)),
            &Metrics::new(),
            &status,
            &admin(None),
        );
        assert_eq!(page.status, 200);
        assert!(page
            .header("Content-Type")
            .unwrap()
            .starts_with("text/html"));
        let doc = route(
            &Request::new("GET", "/openapi.json", &with_authorization(None)),
            &Metrics::new(),
            &status,
            &admin(None),
        );
        let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
        assert!(doc["paths"]["/rejections"].is_object());
    }
}
