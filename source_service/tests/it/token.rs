//! `SOURCE_TOKEN` end to end: the real source with a token, the real target
//! against it and a fresh PostgreSQL database of its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use source_service::config::Token;
use target_service::Config as TargetConfig;

use crate::common;

const TOKEN: &str = "tok-3f9a1c27e5";

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own, dropped afterwards.
struct Db {
    name: String,
    url: String,
}

impl Db {
    fn new() -> Db {
        let name = format!("profile_sync_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_url();
        Client::connect(&admin, NoTls)
            .expect("TEST_DATABASE_URL reaches PostgreSQL")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Db {
            url: format!("{base}/{name}"),
            name,
        }
    }

    fn users(&self) -> i64 {
        Client::connect(&self.url, NoTls)
            .and_then(|mut c| c.query_one("SELECT count(*) FROM users", &[]))
            .map(|row| row.get(0))
            .unwrap_or(-1)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn target(db: &Db, source_base: &str, token: &str) -> target_service::Running {
    let vars: HashMap<&str, String> = [
        ("DATABASE_URL", db.url.clone()),
        ("SOURCE_SERVICE_URL", format!("{source_base}/users/changes")),
        ("SOURCE_TOKEN", token.to_owned()),
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("SYNC_INTERVAL", "0.2".to_owned()),
        ("HTTP_TIMEOUT_SECS", "2".to_owned()),
        ("SHUTDOWN_TIMEOUT_SECS", "5".to_owned()),
    ]
    .into_iter()
    .collect();
    let config = TargetConfig::from_lookup(|name| vars.get(name).cloned()).expect("config");
    target_service::App::start(config).expect("target starts")
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn a_target_with_the_token_syncs_from_a_source_that_asks_for_it() {
    let source = common::start(|c| {
        c.token = Some(Token::new(TOKEN));
        c.preload = 200;
    });
    let open = source.get("/users/changes?since=0");
    assert_eq!(open.status, 401);
    assert_eq!(open.header("WWW-Authenticate"), Some("Bearer"));
    assert!(open.error().contains("Bearer"), "{}", open.error());
    assert_eq!(source.get("/healthz").status, 200, "health stays open");
    assert_eq!(source.get("/metrics").status, 200, "metrics stay open");

    let db = Db::new();
    let running = target(&db, &source.base, TOKEN);
    wait_until("the target to sync rows", || db.users() > 0);
    assert_eq!(running.metrics.fetch_errors.get(), 0);
    running.shutdown();
}

#[test]
fn a_wrong_token_is_a_counted_fetch_error_that_never_shows_a_token() {
    let source = common::start(|c| c.token = Some(Token::new(TOKEN)));
    let db = Db::new();
    let wrong = "wrong-token-77c1d0";
    let running = target(&db, &source.base, wrong);
    wait_until("a fetch error", || running.metrics.fetch_errors.get() >= 2);
    let status = running.status.to_json(&running.metrics).to_string();
    assert!(status.contains("401"), "{status}");
    assert!(
        !status.contains(wrong) && !status.contains(TOKEN),
        "{status}"
    );
    let metrics = source.get("/metrics");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains(r#"source_requests_total{code="401",path="/users/changes"}"#),
        "the source counts the refusals"
    );
    assert_eq!(db.users(), 0, "nothing is synced without the right token");
    running.shutdown();
}
