//! Failures around the target: PostgreSQL going away, starting before the
//! database exists, two replicas, shutdown, and the binary's own contract
//! (exit codes, signals, what it logs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

#[test]
fn lost_connections_during_writes_lose_nothing() {
    let db = TestDb::new();
    let log = backlog(50_000);
    let source = log.source();
    let target = start_target(&db, &source.url, &[("FETCH_LIMIT", "500")]);
    wait_until("writing started", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM users") > 0
    });
    // Often enough that some kills land in the middle of a write, however
    // fast the writers are; once a good number have (the target counted
    // failed writes), the backlog is left to finish, so that the writers'
    // backoff does not stretch the test.
    let mut killed = 0;
    let started = Instant::now();
    while db.count("SELECT count(*) FROM users") < 50_000
        && started.elapsed() < Duration::from_secs(60)
        && !(killed >= 50 && target.metrics.db_errors.get() >= 10)
    {
        killed += db.kill_connections();
        thread::sleep(Duration::from_millis(20));
    }
    wait_until("cursor at the head", Duration::from_secs(60), || {
        db.count("SELECT cursor FROM sync_state") == 50_000
    });
    assert_eq!(db.count("SELECT count(*) FROM users"), 50_000);
    assert!(killed > 0, "the test must actually cut connections");
    assert!(
        target.metrics.db_errors.get() > 0,
        "lost connections are counted"
    );
    wait_rounds(&target, 1);
    assert_invariant(&target);
    target.shutdown();
}

#[test]
fn start_up_waits_for_the_database_and_readiness_says_so() {
    let db = TestDb::not_yet_created();
    let log = backlog(10);
    let source = log.source();
    let target = start_target(&db, &source.url, &[]);
    let readyz = format!("http://{}/readyz", target.addr);
    let status = format!("http://{}/status", target.addr);
    thread::sleep(Duration::from_millis(700));
    assert_eq!(get(&readyz).0, 503);
    assert_eq!(get(&format!("http://{}/healthz", target.addr)).0, 200);
    let body: Value = serde_json::from_str(&get(&status).1).unwrap();
    assert_eq!(body["state"], "waiting_for_database");
    assert!(target.metrics.db_errors.get() > 0);

    db.create();
    wait_until("ready", Duration::from_secs(20), || get(&readyz).0 == 200);
    wait_until("rows synced", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM users") == 10
    });
    target.shutdown();
}

#[test]
fn of_two_replicas_one_syncs_and_the_other_takes_over_when_it_stops() {
    let db = TestDb::new();
    let (log, source, first) = synced_backlog(&db, 100, &[], Duration::from_secs(10));
    let second = start_target(&db, &source.url, &[]);
    let state = |addr| -> String {
        let body: Value = serde_json::from_str(&get(&format!("http://{addr}/status")).1).unwrap();
        body["state"].as_str().unwrap_or_default().to_owned()
    };
    wait_until("second stands by", Duration::from_secs(10), || {
        state(second.addr) == "standby"
    });
    assert_ne!(state(first.addr), "standby");
    assert_eq!(second.metrics.fetched.get(), 0, "a standby fetches nothing");

    first.shutdown();
    log.changes
        .lock()
        .unwrap()
        .extend((101..=150).map(|n| profile(n, "2025-07-01T10:00:00Z")));
    wait_until("second took over", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM users") == 150
    });
    // The rows are visible once committed; the round that wrote them
    // counts them just after.
    wait_rounds(&second, 1);
    assert_eq!(
        second.metrics.synced.get(),
        50,
        "the second wrote the new changes"
    );
    second.shutdown();
}

/// A source with an endless backlog, each page a little slow, so a round
/// never ends by itself.
fn endless_source() -> ScriptedSource {
    ScriptedSource::new(|query| {
        let since: u64 = query.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit: u64 = query
            .get("limit")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        thread::sleep(Duration::from_millis(20));
        let page: Vec<Value> = (since + 1..=since + limit)
            .map(|n| profile(n as u32, "2025-07-01T10:00:00Z"))
            .collect();
        let mut reply = Reply::json(200, &Value::Array(page));
        reply.headers = vec![
            ("X-Next-Cursor", (since + limit).to_string()),
            ("X-Head-Cursor", (since + 1_000_000).to_string()),
            ("X-Source-Epoch", "endless".to_owned()),
        ];
        reply
    })
}

#[test]
fn a_replica_whose_lock_connection_ends_stops_fetching_and_stands_by_at_once() {
    let db = TestDb::new();
    let source = endless_source();
    let settings = [("FETCH_LIMIT", "50")];
    let first = start_target(&db, &source.url, &settings);
    wait_until("first syncs", Duration::from_secs(10), || {
        db.count("SELECT count(*) FROM users") > 0
    });
    let second = start_target(&db, &source.url, &settings);
    wait_until("second stands by", Duration::from_secs(10), || {
        state_of(&second) == "standby"
    });
    assert_eq!(state_of(&first), "syncing");

    // End only the first replica's lock connection.
    let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap();
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1",
            &[&db.name],
        )
        .unwrap()
        .len();
    assert_eq!(ended, 1, "one replica holds the lock");
    let cut = Instant::now();
    wait_until("first stands by", Duration::from_secs(2), || {
        state_of(&first) == "standby"
    });
    assert!(cut.elapsed() < Duration::from_secs(2));
    // From now on at most one replica syncs, and one does.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut someone_synced = false;
    while Instant::now() < deadline {
        let states = [state_of(&first), state_of(&second)];
        let syncing = states.iter().filter(|s| *s == "syncing").count();
        assert!(syncing <= 1, "both sync: {states:?}");
        someone_synced |= syncing == 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(someone_synced, "a replica takes over");
    first.shutdown();
    second.shutdown();
}

#[test]
fn shutdown_finishes_the_page_stores_its_cursor_and_returns_in_time() {
    let db = TestDb::new();
    let log = backlog(30_000);
    let source = log.source();
    let target = start_target(
        &db,
        &source.url,
        &[("FETCH_LIMIT", "1000"), ("SHUTDOWN_TIMEOUT_SECS", "5")],
    );
    wait_until("syncing", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM users") > 0
    });
    let started = Instant::now();
    target.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let cursor = db.count("SELECT cursor FROM sync_state");
    let rows = db.count("SELECT count(*) FROM users");
    assert!(
        cursor > 0 && cursor % 1000 == 0,
        "cursor {cursor} ends a page"
    );
    assert!(
        rows >= cursor,
        "every change up to the cursor ({cursor}) is written ({rows} rows)"
    );
}

#[test]
fn a_bad_setting_exits_2_with_one_line_naming_the_variable() {
    for (variable, value) in [
        ("WRITER_THREADS", "abc"),
        ("SYNC_INTERVAL", "0"),
        ("FETCH_LIMIT", "-1"),
        ("METRICS_ADDR", "nowhere"),
        ("MAX_CONNECTIONS", "0"),
        ("DATABASE_URL", "postgres://u:topsecret@h:notaport/db"),
    ] {
        let output = target_binary().env(variable, value).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
        assert!(!stderr.contains("topsecret"), "{stderr}");
    }
}

#[test]
fn a_dot_env_line_that_cannot_be_parsed_is_named_without_its_value() {
    let dir = std::env::temp_dir().join(format!("target_env_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "SYNC_INTERVAL=1\nDB_PASSWORD=\"topsecret\nLOG_LEVEL=debug\n",
    )
    .unwrap();
    let output = target_binary().current_dir(&dir).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(".env") && stderr.contains("DB_PASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("topsecret"), "{stderr}");
}

#[test]
fn proxy_variables_in_the_environment_are_not_used_to_reach_the_source() {
    let db = TestDb::new();
    let source = backlog(10).source();
    // Nothing listens on port 9: through any of these, nothing would sync
    // (and an https:// proxy would need TLS set up that is not there).
    let mut child = target_binary()
        .env("DATABASE_URL", &db.url)
        .env("SOURCE_SERVICE_URL", &source.url)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("SYNC_INTERVAL", "0.2")
        .env("ALL_PROXY", "https://127.0.0.1:9")
        .env("HTTPS_PROXY", "https://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let synced = Instant::now();
    while db.count("SELECT count(*) FROM users") < 10 && synced.elapsed() < Duration::from_secs(20)
    {
        thread::sleep(Duration::from_millis(50));
    }
    let rows = db.count("SELECT count(*) FROM users");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rows, 10, "synced straight from the source");
}

#[test]
fn a_flood_of_connections_past_the_descriptor_limit_leaves_health_answered() {
    let db = TestDb::new();
    let source = backlog(10).source();
    // The connection cap is three quarters of the descriptors (30 here),
    // and the target's own descriptors (database connections, the
    // listener, standard streams) take more than the other ten: accepting
    // runs out of descriptors before the cap is reached.
    let mut command = target_binary_with_descriptor_limit(40);
    /// Killed if the test fails, so that no target outlives it.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Child(
        command
            .env("DATABASE_URL", &db.url)
            .env("SOURCE_SERVICE_URL", &source.url)
            .env("METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the target logs its address");
        if let Some((_, rest)) = line.split_once("metrics and health on http://") {
            break rest.split(';').next().unwrap_or_default().to_owned();
        }
    };
    wait_until("rows synced", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM users") == 10
    });
    // Far more connections than descriptors: the target runs out, closes
    // the ones waiting longest, and drains what queues behind them.
    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let flood: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&socket, Duration::from_millis(200)).ok()
        })
        .collect();
    assert!(flood.len() > 500, "{} connections opened", flood.len());
    let started = Instant::now();
    let (status, _) = get(&format!("http://{addr}/healthz"));
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "healthz took {:?}",
        started.elapsed()
    );
    drop(flood);
    assert_eq!(
        child.0.try_wait().unwrap(),
        None,
        "the target keeps running"
    );
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    let logged: Vec<String> = lines.iter().collect();
    assert!(
        logged
            .iter()
            .any(|line| line.contains("accepting a connection failed")),
        "running out is logged: {logged:?}"
    );
}

#[test]
fn sigterm_stops_the_binary_with_exit_0_and_the_password_is_never_logged() {
    let db = TestDb::new();
    let source = backlog(50).source();
    let url = format!("{}?password=pa55word-in-url", db.url);
    let mut child = target_binary()
        .env("DATABASE_URL", &url)
        .env("SOURCE_SERVICE_URL", &source.url)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("SYNC_INTERVAL", "0.2")
        .env("LOG_LEVEL", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    wait_until("rows synced", Duration::from_secs(20), || {
        db.count("SELECT count(*) FROM users") == 50
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within SHUTDOWN_TIMEOUT_SECS"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let log = lines.join().unwrap().join("\n");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("pa55word"),
        "the password leaked into the log:\n{log}"
    );
}

#[test]
fn the_schema_applies_again_and_from_several_replicas_at_once() {
    let db = TestDb::new();
    let appliers: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url.clone();
            thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                target_service::apply_schema(&mut client)
            })
        })
        .collect();
    for applier in appliers {
        applier
            .join()
            .unwrap()
            .expect("concurrent schema application succeeds");
    }
    let mut client = db.client();
    target_service::apply_schema(&mut client).expect("applying again is a no-op");
    assert_eq!(
        db.count(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' \
             AND table_name IN ('users', 'sync_rejections', 'sync_state')"
        ),
        3
    );
}

#[test]
fn a_postgresql_crash_mid_catch_up_loses_no_change_the_cursor_covers() {
    let cluster = OwnCluster::start("crash");
    let log = backlog(20_000);
    let source = log.source();
    let config = target_config(&cluster.url, &source.url, &[("FETCH_LIMIT", "500")]);
    let target = target_service::App::start(config).expect("target starts");
    wait_until("40% written", Duration::from_secs(60), || {
        cluster.count("SELECT count(*) FROM users") >= 8_000
    });
    cluster.crash();
    thread::sleep(Duration::from_millis(500));
    cluster.start_again();
    wait_until("cursor at the head", Duration::from_secs(90), || {
        cluster.count("SELECT coalesce(max(cursor), 0) FROM sync_state") == 20_000
    });
    assert_eq!(cluster.count("SELECT count(*) FROM users"), 20_000);
    target.shutdown();
}
