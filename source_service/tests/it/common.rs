//! Helpers shared by the integration tests: start the real app on
//! 127.0.0.1:0, make HTTP requests with ureq, page through the log, and judge
//! profiles against SPEC §1 with target_service's own parser.

use std::io::Read;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use source_service::{App, Config, Running};
use target_service::profile::{Profile, Reason};

/// A running app and its base URL; shuts down when dropped.
pub struct TestApp {
    pub running: Option<Running>,
    pub base: String,
    pub agent: ureq::Agent,
}

impl TestApp {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    pub fn get(&self, path_and_query: &str) -> Reply {
        get(&self.agent, &self.url(path_and_query))
    }

    pub fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
        }
    }
}

/// Starts the app with test defaults (fixed seed, no bad changes, two
/// threads), changed by `adjust`.
pub fn start(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        seed: Some(1),
        invalid_rate: 0.0,
        ..Config::default()
    };
    adjust(&mut config);
    let running = App::start(config).expect("app starts");
    let base = format!("http://{}", running.addr);
    TestApp {
        running: Some(running),
        base,
        agent: agent(),
    }
}

/// A client that takes any status as an answer, bounded by `timeout`.
pub fn agent_with_timeout(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

pub fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(30))
}

/// A response of any status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header that must be there and hold a number.
    pub fn cursor(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn array(&self) -> Vec<Value> {
        match self.json() {
            Value::Array(items) => items,
            other => panic!("expected a JSON array, got {other}"),
        }
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        self.json()["error"]
            .as_str()
            .expect("error is a string")
            .to_string()
    }
}

pub fn get(agent: &ureq::Agent, url: &str) -> Reply {
    let response = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    into_reply(response)
}

pub fn into_reply(response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let text =
        |value: &ureq::http::HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let content_type = response
        .headers()
        .get("Content-Type")
        .map(text)
        .unwrap_or_default();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), text(value)))
        .collect();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(64 * 1024 * 1024)
        .read_to_end(&mut body)
        .expect("body reads completely");
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

/// Pages through the log from `since` with `limit` until reaching the head
/// (without asking past it, which would generate); returns the changes,
/// checking cursors on the way.
pub fn page_all(app: &TestApp, mut since: u64, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let reply = app.get(&format!("/users/changes?since={since}&limit={limit}"));
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let page = reply.array();
        assert!(!page.is_empty() && page.len() <= limit);
        let head = reply.cursor("X-Head-Cursor");
        since += page.len() as u64;
        assert_eq!(reply.cursor("X-Next-Cursor"), since);
        assert!(head >= since);
        all.extend(page);
        if since == head {
            return all;
        }
    }
}

/// How a change measures up against SPEC §1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid by SPEC §1 (any status).
    Valid,
    /// Breaks a rule of SPEC §1; the target's reason code.
    Invalid(Reason),
}

/// Judges one change with target_service's parser. A status other than
/// active/pending is still valid by SPEC §1 (it is only not synced), and
/// timestamps are not judged for lying in the future here.
pub fn verdict(change: &Value) -> Verdict {
    let far_future = Utc::now() + chrono::Duration::days(365);
    match Profile::parse(change, far_future) {
        Ok(_) => Verdict::Valid,
        Err(rejection) if rejection.reason == Reason::InactiveStatus => Verdict::Valid,
        Err(rejection) => Verdict::Invalid(rejection.reason),
    }
}
