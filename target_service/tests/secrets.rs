//! Secrets stay secret: the real binary, given a password (with an
//! unencoded `@`), URL user-info and a token, shows none of them in its log
//! (at debug level), `/status`, `/metrics` or its error messages, while the
//! errors still say what went wrong.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_url, get, wait_until, TestDb};

/// Every spelling of every secret given to the target in these tests.
const SECRETS: &[&str] = &[
    "p@ss-w0rd-9xq",
    "ss-w0rd-9xq",
    "p%40ss-w0rd-9xq",
    "url-s3cret-4kd",
    "tok-s3cret-7fe",
    "dbpw-s3cret-2ab",
];

/// `url` with user-info `user:password` (the password written as given).
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user_info, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let user = user_info.split(':').next().unwrap_or("postgres");
    format!("{scheme}://{user}:{password}@{host}")
}

struct Target {
    child: Child,
}

impl Target {
    fn spawn(vars: &[(&str, &str)]) -> Target {
        let mut command = common::target_binary();
        command
            .env("LOG_LEVEL", "debug")
            .env("SYNC_INTERVAL", "0.2")
            .env("HTTP_TIMEOUT_SECS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        Target {
            child: command.spawn().expect("target_service runs"),
        }
    }

    /// SIGTERM, then everything it wrote to stderr.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        log
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

#[test]
fn passwords_url_user_info_and_tokens_appear_nowhere() {
    let db = TestDb::new();
    // Trust authentication ignores the password, so the target connects
    // and goes on to fetch from a source that is not there.
    let database_url = with_password(&db.url, "p@ss-w0rd-9xq");
    let closed = free_port();
    let source = format!("http://reader:url-s3cret-4kd@127.0.0.1:{closed}/users/changes");
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let target = Target::spawn(&[
        ("DATABASE_URL", &database_url),
        ("SOURCE_SERVICE_URL", &source),
        ("SOURCE_TOKEN", "tok-s3cret-7fe"),
        ("METRICS_ADDR", &metrics_addr),
    ]);
    let base = format!("http://{metrics_addr}");
    wait_until("fetch errors", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&metrics_addr).is_ok()
            && get(&format!("{base}/status"))
                .1
                .contains("cannot reach the source")
    });
    let (_, status) = get(&format!("{base}/status"));
    let (_, metrics) = get(&format!("{base}/metrics"));
    let log = target.stop();
    assert!(
        status.contains("***@127.0.0.1"),
        "the URL is shown masked: {status}"
    );
    assert_no_secret("/status", &status);
    let shown: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    assert_eq!(
        shown["source"],
        format!("http://***@127.0.0.1:{closed}/users/changes"),
        "/status names the source, user-info masked"
    );
    let (server, dbname) = db.url.rsplit_once('/').expect("a database URL");
    let server = server.rsplit_once('@').map_or(server, |(_, host)| host);
    let server = server.split_once("://").map_or(server, |(_, host)| host);
    assert_eq!(
        shown["database"],
        format!("{server}/{dbname}"),
        "/status names the database, without user or password"
    );
    assert_no_secret("/metrics", &metrics);
    assert_no_secret("the log", &log);
    assert!(log.contains("cannot reach the source"), "{log}");
    assert!(
        !log.contains("reader"),
        "URL user names are masked too:\n{log}"
    );
}

#[test]
fn a_database_that_does_not_exist_is_named_in_every_retry_without_the_password() {
    let admin = admin_url();
    let (_, rest) = admin.split_once("://").unwrap();
    let host_port = rest
        .split_once('@')
        .map_or(rest, |(_, host)| host)
        .split('/')
        .next()
        .unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    let missing = format!("no_such_db_{}", uuid::Uuid::new_v4().simple());
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let target = Target::spawn(&[
        ("DB_HOST", host),
        ("DB_PORT", port),
        ("DB_PASSWORD", "dbpw-s3cret-2ab"),
        ("DB_NAME", &missing),
        ("METRICS_ADDR", &metrics_addr),
        ("SOURCE_SERVICE_URL", "http://127.0.0.1:9/users/changes"),
    ]);
    let base = format!("http://{metrics_addr}");
    wait_until("the cause in /status", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&metrics_addr).is_ok()
            && get(&format!("{base}/status")).1.contains("does not exist")
    });
    let (ready, _) = get(&format!("{base}/readyz"));
    let (_, status) = get(&format!("{base}/status"));
    let log = target.stop();
    assert_eq!(ready, 503);
    assert!(
        status.contains(&format!("database \\\"{missing}\\\" does not exist")),
        "{status}"
    );
    assert!(status.contains("retrying cannot fix this"), "{status}");
    let retry = log
        .lines()
        .find(|line| line.contains("is not ready (attempt 1)"))
        .unwrap_or_else(|| panic!("a retry line:\n{log}"));
    assert!(
        retry.contains(&format!("database \"{missing}\" does not exist")),
        "{retry}"
    );
    assert!(
        retry.contains("create the database"),
        "says what to do: {retry}"
    );
    assert_no_secret("/status", &status);
    assert_no_secret("the log", &log);
}
