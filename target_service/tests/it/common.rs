//! Shared test helpers: a fresh PostgreSQL database per test, a scripted
//! source on an ephemeral port, and a target started against both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde_json::{json, Value};
use target_service::{App, Config, Running};

/// The admin URL tests create their databases through.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = format!("profile_sync_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            Client::connect(&admin_url(), NoTls).expect("TEST_DATABASE_URL must reach PostgreSQL");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let mut config = postgres::Config::from_str(&admin_url()).expect("admin URL parses");
        config.dbname(&name);
        TestDb {
            url: url_for(&admin_url(), &name),
            name,
        }
    }

    /// A database of its own whose server-side encoding is `encoding`
    /// (`LATIN1`, say), so what it cannot hold can be tried.
    pub fn with_encoding(encoding: &str) -> TestDb {
        let db = TestDb::not_yet_created();
        let mut admin = Client::connect(&admin_url(), NoTls).expect("admin connection");
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
                db.name
            ))
            .expect("create test database");
        db
    }

    /// A URL for a database that does not exist yet (created later by `create`).
    pub fn not_yet_created() -> TestDb {
        let name = format!("profile_sync_test_{}", uuid::Uuid::new_v4().simple());
        TestDb {
            url: url_for(&admin_url(), &name),
            name,
        }
    }

    pub fn create(&self) {
        let mut admin = Client::connect(&admin_url(), NoTls).expect("admin connection");
        admin
            .batch_execute(&format!("CREATE DATABASE {}", self.name))
            .expect("create");
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to test database")
    }

    /// Ends every other session on this database (a lost connection).
    pub fn kill_connections(&self) -> u64 {
        let mut admin = Client::connect(&admin_url(), NoTls).expect("admin connection");
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .expect("terminate");
        rows.len() as u64
    }

    /// The single number `sql` selects; -1 while it cannot be read (no
    /// table yet, no row yet), so polling can wait for it.
    pub fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(sql, &[])
            .and_then(|row| row.try_get(0))
            .unwrap_or(-1)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn url_for(admin: &str, dbname: &str) -> String {
    // Replace the path of postgres://user@host:port/db?params.
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{dbname}{query}")
}

/// What the scripted source answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }
}

impl From<Reply> for http_server::Response {
    fn from(reply: Reply) -> http_server::Response {
        http_server::Response {
            status: reply.status,
            headers: reply.headers,
            body: reply.body,
        }
    }
}

type Handler = dyn Fn(&HashMap<String, String>) -> Reply + Send + Sync;

/// An HTTP source on 127.0.0.1:0 whose answers a test decides, served by
/// the services' own `http_server`; it stops when dropped.
pub struct ScriptedSource {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    handler: Arc<Mutex<Arc<Handler>>>,
    _server: http_server::Server,
}

impl ScriptedSource {
    pub fn new(
        handler: impl Fn(&HashMap<String, String>) -> Reply + Send + Sync + 'static,
    ) -> ScriptedSource {
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(handler)));
        let requests = Arc::new(AtomicUsize::new(0));
        let serve: Arc<http_server::Handler> = {
            let (handler, requests) = (Arc::clone(&handler), Arc::clone(&requests));
            Arc::new(move |request: &http_server::Request<'_>| {
                requests.fetch_add(1, Ordering::SeqCst);
                let current = Arc::clone(&handler.lock().unwrap());
                current(&parse_query(request.target)).into()
            })
        };
        let socket =
            http_server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind scripted source");
        let listener = http_server::listen(socket).expect("scripted source listens");
        let settings = http_server::Settings {
            name: "scripted-source",
            ..http_server::Settings::default()
        };
        let server =
            http_server::Server::start(listener, settings, serve).expect("scripted source starts");
        ScriptedSource {
            url: format!("http://{}/users/changes", server.addr()),
            requests,
            handler,
            _server: server,
        }
    }

    /// A source like the original: every request gets the same page, no headers.
    pub fn fixed_page(page: Value) -> ScriptedSource {
        ScriptedSource::new(move |_| Reply::json(200, &page))
    }

    pub fn set_handler(
        &self,
        handler: impl Fn(&HashMap<String, String>) -> Reply + Send + Sync + 'static,
    ) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }
}

fn parse_query(url: &str) -> HashMap<String, String> {
    url.split_once('?')
        .map(|(_, query)| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A change log served with cursors the way source_service does.
#[derive(Clone)]
pub struct CursorLog {
    pub changes: Arc<Mutex<Vec<Value>>>,
    pub epoch: Arc<Mutex<String>>,
    /// Changes up to this sequence number are no longer held (410 below it).
    pub dropped: Arc<Mutex<u64>>,
}

impl CursorLog {
    pub fn new(changes: Vec<Value>) -> CursorLog {
        CursorLog {
            changes: Arc::new(Mutex::new(changes)),
            epoch: Arc::new(Mutex::new("epoch-1".to_owned())),
            dropped: Arc::new(Mutex::new(0)),
        }
    }

    pub fn source(&self) -> ScriptedSource {
        let log = self.clone();
        ScriptedSource::new(move |query| log.answer(query))
    }

    pub fn answer(&self, query: &HashMap<String, String>) -> Reply {
        let changes = self.changes.lock().unwrap();
        let epoch = self.epoch.lock().unwrap().clone();
        let head = changes.len() as u64;
        let since: u64 = query
            .get("since")
            .and_then(|s| s.parse().ok())
            .unwrap_or(head);
        let limit: u64 = query
            .get("limit")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let dropped = *self.dropped.lock().unwrap();
        if since > head || since < dropped {
            let mut reply = Reply::json(410, &json!({"error": "cursor outside the log"}));
            reply.headers = vec![
                ("X-Min-Cursor", dropped.to_string()),
                ("X-Head-Cursor", head.to_string()),
                ("X-Source-Epoch", epoch),
            ];
            return reply;
        }
        let end = (since + limit).min(head);
        let page: Vec<Value> = changes[since as usize..end as usize].to_vec();
        let mut reply = Reply::json(200, &Value::Array(page));
        reply.headers = vec![
            ("X-Next-Cursor", end.to_string()),
            ("X-Head-Cursor", head.to_string()),
            ("X-Source-Epoch", epoch),
            ("Content-Type", "application/json".to_owned()),
        ];
        reply
    }
}

/// Configuration for a target on a free port, syncing fast.
pub fn target_config(db_url: &str, source_url: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", db_url),
        ("SOURCE_SERVICE_URL", source_url),
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("SYNC_INTERVAL", "0.1"),
        ("WRITER_THREADS", "4"),
        ("SHUTDOWN_TIMEOUT_SECS", "5"),
        ("HTTP_TIMEOUT_SECS", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).expect("test config is valid")
}

pub fn start_target(db: &TestDb, source_url: &str, extra: &[(&str, &str)]) -> Running {
    if std::env::var_os("TEST_LOG").is_some() {
        target_service::init_logging(log::LevelFilter::Debug);
    }
    App::start(target_config(&db.url, source_url, extra)).expect("target starts")
}

/// A log of `count` new users, ids 1 to `count`, all changed at one instant.
pub fn backlog(count: u32) -> CursorLog {
    CursorLog::new(
        (1..=count)
            .map(|n| profile(n, "2025-07-01T10:00:00Z"))
            .collect(),
    )
}

/// A source serving [`backlog`]`(count)` and a target started against it
/// with `extra`, once (within `timeout`) every row is written and the
/// cursor is stored past the last.
pub fn synced_backlog(
    db: &TestDb,
    count: u32,
    extra: &[(&str, &str)],
    timeout: Duration,
) -> (CursorLog, ScriptedSource, Running) {
    let log = backlog(count);
    let source = log.source();
    let target = start_target(db, &source.url, extra);
    let count = i64::from(count);
    wait_until("backlog synced", timeout, || {
        db.count("SELECT count(*) FROM users") == count
            && db.count("SELECT cursor FROM sync_state") == count
    });
    (log, source, target)
}

/// Polls until `check` holds, or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Waits for `rounds` more successful sync rounds.
pub fn wait_rounds(target: &Running, rounds: u64) {
    let start = target.metrics.batch_duration.get_sample_count();
    wait_until("sync rounds", Duration::from_secs(30), || {
        target.metrics.batch_duration.get_sample_count() >= start + rounds
    });
}

/// Fetched = synced + skipped whenever the target is idle. Rounds keep
/// running in the background, so this waits (briefly) for an idle moment.
pub fn assert_invariant(target: &Running) {
    let m = &target.metrics;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (fetched, synced, skipped) = (m.fetched.get(), m.synced.get(), m.skipped.get());
        if fetched == synced + skipped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "profiles_fetched_total {fetched} != profiles_synced_total {synced} + profiles_skipped_total {skipped}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn rejected(target: &Running, reason: &str) -> u64 {
    target.metrics.rejected.with_label_values(&[reason]).get()
}

/// An HTTP answer as a test reads it.
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// `GET url` with the request headers given; any status is an answer.
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

pub fn get(url: &str) -> (u16, String) {
    let answer = get_with(url, &[]);
    (answer.status, answer.body)
}

/// A valid profile with a fixed id seed, timestamp and contact details.
pub fn profile(n: u32, at: &str) -> Value {
    json!({
        "id": id(n),
        "name": format!("User {n}"),
        "email": format!("user{n}@example.com"),
        "mobile": format!("+1555{n:07}"),
        "status": "active",
        "last_updated_at": at,
    })
}

pub fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A users row as `(name, email, mobile, status, sync_status, sync_message)`.
pub fn user_row(
    db: &TestDb,
    n: u32,
) -> Option<(String, String, String, String, String, Option<String>)> {
    let id = uuid::Uuid::parse_str(&id(n)).unwrap();
    db.client()
        .query_opt(
            "SELECT name, email, mobile, status, sync_status, sync_message FROM users WHERE id = $1",
            &[&id],
        )
        .ok()
        .flatten()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
}

pub fn rejection_reasons(db: &TestDb) -> Vec<String> {
    db.client()
        .query("SELECT reason FROM sync_rejections ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What `/status` answers, as JSON (`null` if it is not JSON).
pub fn status_json(target: &Running) -> Value {
    serde_json::from_str(&get(&format!("http://{}/status", target.addr)).1).unwrap_or_default()
}

/// The state `/status` reports: `syncing`, `idle`, `standby`…
pub fn state_of(target: &Running) -> String {
    status_json(target)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// What `/status` reports as the last error, if any.
pub fn last_error(target: &Running) -> Option<String> {
    status_json(target)["last_error"]
        .as_str()
        .map(str::to_owned)
}

/// A valid profile of id `n` with the given email.
pub fn with_email(n: u32, at: &str, email: &str) -> Value {
    let mut p = profile(n, at);
    p["email"] = json!(email);
    p
}

/// The built `target_service` with nothing from the environment but `PATH`,
/// run from the temporary directory (so no `.env` of the working tree is
/// read): what it does then comes from what the test sets alone.
pub fn target_binary() -> Command {
    with_nothing_inherited(Command::new(env!("CARGO_BIN_EXE_target_service")))
}

/// As [`target_binary`], the binary run by `sh` with at most `descriptors`
/// open files (`ulimit -n`).
pub fn target_binary_with_descriptor_limit(descriptors: u32) -> Command {
    let mut command = with_nothing_inherited(Command::new("sh"));
    command
        .arg("-c")
        .arg(format!("ulimit -n {descriptors} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_target_service"));
    command
}

fn with_nothing_inherited(mut command: Command) -> Command {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    command
}

/// A PostgreSQL cluster of the test's own, made by `scripts/lib/pg.sh` (as
/// every throwaway cluster is), which the test may crash or reconfigure;
/// stopped and removed when dropped.
pub struct OwnCluster {
    /// `export PG_THROWAWAY_…` of this cluster, for pg.sh's functions.
    exports: String,
    pub port: u16,
    pub url: String,
}

impl OwnCluster {
    fn bash(script: &str) -> String {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("source ../scripts/lib/pg.sh && {script}"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs");
        assert!(output.status.success(), "{script} failed");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A fresh cluster under `target/pg-<what>-<random>`.
    pub fn start(what: &str) -> OwnCluster {
        let name = format!("{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let line = OwnCluster::bash(&format!(
            "pg_start_throwaway {name} >&2 && \
             echo \"$PG_THROWAWAY_DIR|$PG_THROWAWAY_DATA|$PG_THROWAWAY_LOG|$PG_THROWAWAY_PORT\""
        ));
        let parts: Vec<&str> = line.split('|').collect();
        let exports = format!(
            "export PG_THROWAWAY_DIR='{}' PG_THROWAWAY_DATA='{}' PG_THROWAWAY_LOG='{}';",
            parts[0], parts[1], parts[2]
        );
        let port = parts[3].parse().expect("pg.sh gives the port");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        OwnCluster { exports, port, url }
    }

    /// Runs `script` in bash with pg.sh's functions and this cluster's
    /// `PG_THROWAWAY_*`; its standard output, trimmed.
    pub fn run(&self, script: &str) -> String {
        OwnCluster::bash(&format!("{} {script}", self.exports))
    }

    /// `pg_ctl stop -m immediate`: what a power cut does to the server.
    pub fn crash(&self) {
        self.run("pg_throwaway_stop_server immediate");
    }

    pub fn start_again(&self) {
        self.run("pg_throwaway_start_server");
    }

    pub fn count(&self, sql: &str) -> i64 {
        postgres::Client::connect(&self.url, postgres::NoTls)
            .and_then(|mut c| c.query_one(sql, &[]))
            .and_then(|row| row.try_get(0))
            .unwrap_or(-1)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source ../scripts/lib/pg.sh && {} pg_stop_throwaway",
                self.exports
            ))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
}
