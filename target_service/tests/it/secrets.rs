//! Secrets stay secret: the real binary, given a password (with an
//! unencoded `@`), URL user-info and a token, shows none of them in its log
//! (at debug level), `/status`, `/metrics` or its error messages, while the
//! errors still say what went wrong, down to the start-up wait for a
//! PostgreSQL that refuses or never answers.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, admin_url, get, wait_until, TestDb};

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
        .find(|line| {
            line.contains(&format!(
                "waiting for PostgreSQL at {host}:{port}/{missing} ("
            ))
        })
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

/// The configuration error the binary gives for these variables: its exit
/// code and what it printed, standard output and error together.
fn config_error(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = common::target_binary();
    command.arg("verify");
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().expect("target_service runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

/// Passwords no URL parser can place, each with its two halves.
const UNPLACEABLE: &[(&str, &str, &str)] = &[
    ("pw4k/zq8x", "pw4k", "zq8x"),
    ("pw4k#zq8x", "pw4k", "zq8x"),
    ("pw4k?zq8x", "pw4k", "zq8x"),
    ("pw4k zq8x", "pw4k", "zq8x"),
    ("pw4k@zq8x", "pw4k", "zq8x"),
];

#[test]
fn a_source_url_that_cannot_be_parsed_is_quoted_without_its_password() {
    for (password, first, second) in UNPLACEABLE {
        for url in [
            format!("http://feed:{password}@127.0.0.1:1/users/changes"),
            format!("http://feed:{password}@127.0.0.1:notaport/users/changes"),
            format!("ftp://feed:{password}@127.0.0.1:1/users/changes"),
        ] {
            let (code, printed) = config_error(&[
                ("SOURCE_SERVICE_URL", &url),
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
            ]);
            if code == Some(1) {
                // A URL read as meant goes on, to fail reaching the source.
                assert!(printed.contains("cannot reach the source"), "{printed}");
            } else {
                assert_eq!(code, Some(2), "{url}: {printed}");
                assert!(
                    printed.starts_with("invalid configuration: SOURCE_SERVICE_URL: "),
                    "{printed}"
                );
                assert_eq!(printed.lines().count(), 1, "{printed}");
            }
            for part in [*password, first, second] {
                assert!(!printed.contains(part), "{url} shows {part:?}: {printed}");
            }
        }
    }
    // A password cut off as a fragment is refused, not sent in the clear.
    let (code, printed) = config_error(&[
        (
            "SOURCE_SERVICE_URL",
            "http://feed:12#zq8x@127.0.0.1:1/users/changes",
        ),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
    ]);
    assert_eq!(code, Some(2), "{printed}");
    assert!(
        printed.contains("http://***@127.0.0.1:1/users/changes"),
        "{printed}"
    );
    assert!(!printed.contains("zq8x"), "{printed}");
}

#[test]
fn a_database_url_that_cannot_be_parsed_is_reported_without_its_password() {
    for (password, first, second) in UNPLACEABLE {
        for url in [
            format!("postgres://u:{password}@127.0.0.1:notaport/db"),
            format!("postgres://u:{password}@127.0.0.1:5432/db?sslmode=nosuchmode"),
            format!("postgresql://u:{password}@/db?port=x"),
        ] {
            let (code, printed) = config_error(&[
                ("DATABASE_URL", &url),
                ("SOURCE_SERVICE_URL", "http://127.0.0.1:1/users/changes"),
            ]);
            assert_eq!(code, Some(2), "{url}: {printed}");
            assert!(
                printed.starts_with("invalid configuration: DATABASE_URL: "),
                "{printed}"
            );
            assert_eq!(printed.lines().count(), 1, "{printed}");
            for part in [*password, first, second] {
                assert!(!printed.contains(part), "{url} shows {part:?}: {printed}");
            }
        }
    }
}

/// The value of an unlabelled metric in `/metrics` text, 0 when absent.
fn metric(base: &str, name: &str) -> f64 {
    get(&format!("{base}/metrics"))
        .1
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_password_refused_mid_run_is_named_in_the_log_without_the_password() {
    let cluster = common::OwnCluster::start("repassword");
    let admin_with = |password: &str| {
        postgres::Client::connect(&with_password(&cluster.url, password), postgres::NoTls)
    };
    postgres::Client::connect(&cluster.url, postgres::NoTls)
        .and_then(|mut admin| admin.batch_execute("ALTER ROLE postgres PASSWORD 'first-pw-3kd'"))
        .expect("set the password");
    cluster.run(
        r#"echo 'host all all 127.0.0.1/32 scram-sha-256' >"$PG_THROWAWAY_DATA/pg_hba.conf" &&
        pg_throwaway_restart_server >&2"#,
    );
    let log = common::CursorLog::new(vec![common::profile(1, "2025-07-01T10:00:00Z")]);
    let source = log.source();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{metrics_addr}");
    let target = Target::spawn(&[
        ("DATABASE_URL", &with_password(&cluster.url, "first-pw-3kd")),
        ("SOURCE_SERVICE_URL", &source.url),
        ("METRICS_ADDR", &metrics_addr),
    ]);
    let synced = || {
        admin_with("first-pw-3kd")
            .and_then(|mut c| c.query_one("SELECT count(*) FROM users", &[]))
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    wait_until("the first change synced", Duration::from_secs(20), || {
        synced() == 1
    });
    // The password changes, and every connection but the sync lock's ends:
    // the pool must open new ones, which the server refuses.
    let mut admin = admin_with("first-pw-3kd").expect("admin connection");
    admin
        .batch_execute(
            "ALTER ROLE postgres PASSWORD 'second-pw-6mn';
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
               AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')",
        )
        .expect("change the password");
    let errors_before = metric(&base, "sync_db_errors_total");
    log.changes
        .lock()
        .unwrap()
        .push(common::profile(2, "2025-07-01T10:00:00Z"));
    wait_until(
        "a database error in a round",
        Duration::from_secs(30),
        || metric(&base, "sync_db_errors_total") > errors_before,
    );
    let log_text = target.stop();
    let refused = log_text
        .lines()
        .find(|line| line.contains("timed out waiting for connection"))
        .unwrap_or_else(|| panic!("a pool error in the log:\n{log_text}"));
    assert!(
        refused.contains(r#"password authentication failed for user "postgres""#),
        "{refused}"
    );
    for password in ["first-pw-3kd", "second-pw-6mn"] {
        assert!(!log_text.contains(password), "{log_text}");
    }
}

#[test]
fn a_database_url_without_a_scheme_says_what_it_lacks_and_exits_2() {
    let output = common::target_binary()
        .env(
            "DATABASE_URL",
            "postgres:dbpw-s3cret-2ab@localhost:5432/profiles",
        )
        .output()
        .expect("target_service runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        "invalid configuration: DATABASE_URL: must start with postgres:// or postgresql://\n"
    );
}

/// Starts the target against `database_url`, waits until it has logged
/// two lines containing `waiting`, and returns its log.
fn log_while_waiting(database_url: &str, waiting: &str) -> String {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let target = Target::spawn(&[
        ("DATABASE_URL", database_url),
        ("METRICS_ADDR", &metrics_addr),
        ("SOURCE_SERVICE_URL", "http://127.0.0.1:9/users/changes"),
    ]);
    let base = format!("http://{metrics_addr}");
    wait_until("a second attempt", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&metrics_addr).is_ok()
            && get(&format!("{base}/metrics"))
                .1
                .contains("sync_db_errors_total 2")
    });
    let log = target.stop();
    let waits = log.lines().filter(|line| line.contains(waiting)).count();
    assert!(waits >= 2, "each retry is logged:\n{log}");
    log
}

#[test]
fn a_postgresql_that_refuses_is_waited_for_naming_the_database_given() {
    let port = free_port();
    let log = log_while_waiting(
        &format!("postgres://app:dbpw-s3cret-2ab@127.0.0.1:{port}/profiles_here"),
        &format!("waiting for PostgreSQL at 127.0.0.1:{port}/profiles_here ("),
    );
    let first = log
        .lines()
        .find(|line| line.contains("waiting for PostgreSQL"))
        .unwrap_or_default();
    assert!(first.contains("[WARN]"), "{first}");
    assert!(first.contains("Connection refused"), "{first}");
    assert!(first.ends_with("); retrying in 0.25 s"), "{first}");
    assert_no_secret("the log", &log);
}

#[test]
fn a_postgresql_that_never_answers_is_waited_for_without_hanging() {
    // Takes connections and says nothing, as a server behind a stalled
    // proxy does.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    let log = log_while_waiting(
        &format!("postgres://app:dbpw-s3cret-2ab@127.0.0.1:{port}/profiles_here?connect_timeout=1"),
        &format!("waiting for PostgreSQL at 127.0.0.1:{port}/profiles_here (no answer within 1 s)"),
    );
    assert_no_secret("the log", &log);
}
