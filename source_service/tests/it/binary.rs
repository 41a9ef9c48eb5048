//! The built `source_service` binary: exit codes and signals.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_source_service");

/// `GET url`: its status and body, or `None` when no answer came.
fn get(url: &str, timeout: Duration) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut response = agent.get(url).call().ok()?;
    let body = response.body_mut().read_to_string().ok()?;
    Some((response.status().as_u16(), body))
}

/// Runs the binary to completion with `vars` set and SOURCE_ADDR on a port
/// nobody uses, in case the configuration were accepted.
fn run_with(vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.env("SOURCE_ADDR", "127.0.0.1:0");
    for (k, v) in vars {
        command.env(k, v);
    }
    command.output().expect("binary runs")
}

#[test]
fn a_bad_variable_exits_2_with_one_line_naming_it() {
    for (var, value) in [
        ("SOURCE_THREADS", "abc"),
        ("SOURCE_INVALID_RATE", "2"),
        ("SOURCE_ADDR", "nowhere"),
        ("SOURCE_SEED", "-3"),
        ("SOURCE_PRELOAD", "many"),
        ("SOURCE_LOG_CAPACITY", "0"),
        ("SOURCE_MAX_CONNECTIONS", "0"),
        ("LOG_LEVEL", "chatty"),
    ] {
        let output = run_with(&[(var, value)]);
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {var}={value}: {stderr:?}");
        assert!(lines[0].contains(var), "{stderr}");
        assert!(lines[0].contains(" is not "), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    let output = run_with(&[("SOURCE_THREADS", "abc")]);
    assert_eq!(
        String::from_utf8(output.stderr).unwrap().trim_end(),
        r#"invalid configuration: SOURCE_THREADS: "abc" is not a whole number from 1 to 1024"#
    );
}

/// The binary, started on a free port; killed if a test fails.
struct Service {
    child: Child,
    addr: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(vars: &[(&str, &str)]) -> Service {
    spawn_command(Command::new(BIN), vars)
}

/// Like `spawn`, with `command` running the binary.
fn spawn_command(mut command: Command, vars: &[(&str, &str)]) -> Service {
    command
        .env("SOURCE_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    // The service logs its real address once it listens.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the service reports its address");
    Service { child, addr }
}

fn signal(service: &Service, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(service.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait_for_exit(service: &mut Service) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = service.child.try_wait().expect("wait works") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the service did not exit within 10 s");
}

#[test]
fn sigterm_and_sigint_stop_the_service_with_exit_0() {
    for name in ["TERM", "INT"] {
        let mut service = spawn(&[("SOURCE_PRELOAD", "1000")]);
        let url = format!("http://{}/healthz", service.addr);
        assert_eq!(
            get(&url, Duration::from_secs(30)),
            Some((200, r#"{"status":"ok"}"#.to_owned())),
            "healthz answers"
        );

        signal(&service, name);
        assert_eq!(wait_for_exit(&mut service), Some(0), "SIG{name}");
        assert!(
            get(&url, Duration::from_secs(5)).is_none(),
            "nothing listens after exit"
        );
    }
}

#[test]
fn sigterm_during_a_long_preload_exits_0_at_once() {
    let mut child = Command::new(BIN)
        .env("SOURCE_ADDR", "127.0.0.1:0")
        .env("SOURCE_PRELOAD", "1000000000")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The seed is logged after the signal handlers are installed and just
    // before the preload, which would take minutes.
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the service logs its seed");
    assert!(first.contains("generator seed"), "{first}");
    std::thread::sleep(Duration::from_millis(200));
    let mut service = Service {
        child,
        addr: String::new(),
    };
    signal(&service, "TERM");
    let started = Instant::now();
    assert_eq!(wait_for_exit(&mut service), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The reader ends at end of file, which came with the exit.
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|line| line.contains("preload stopped at")),
        "{rest:?}"
    );
    assert!(!rest.iter().any(|line| line.contains("listening on")));
}

#[test]
fn running_out_of_file_descriptors_is_survived() {
    // Out of descriptors, accept fails (or the connection cap is reached,
    // depending on how many are left): the service closes the connections
    // waiting longest, keeps accepting, and serves again once there is room.
    for limit in [24, 25] {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\""))
            .arg(BIN);
        let mut service = spawn_command(command, &[]);
        let held: Vec<TcpStream> = (0..40)
            .filter_map(|_| TcpStream::connect(&service.addr).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(service.child.try_wait().unwrap(), None, "limit {limit}");
        let url = format!("http://{}/healthz", service.addr);
        let status = || get(&url, Duration::from_secs(5)).map(|(status, _)| status);
        assert_eq!(status(), Some(200));
        drop(held);
        assert_eq!(status(), Some(200));
        signal(&service, "TERM");
        assert_eq!(wait_for_exit(&mut service), Some(0), "limit {limit}");
    }
}

#[test]
fn an_address_in_use_fails_start_up_before_the_preload() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let started = Instant::now();
    let output = Command::new(BIN)
        .env("SOURCE_ADDR", &addr)
        .env("SOURCE_PRELOAD", "100000000")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no preload first"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("[ERROR]")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].ends_with(&format!(
            "cannot start: cannot listen on SOURCE_ADDR {addr}: Address already in use (os error 98)"
        )),
        "{stderr}"
    );
}

#[test]
fn version_and_help_are_printed_with_exit_0() {
    for flag in ["--version", "-V"] {
        let output = Command::new(BIN).arg(flag).output().expect("binary runs");
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            format!("source_service {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    let output = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(0));
    let usage = String::from_utf8(output.stdout).unwrap();
    assert!(usage.starts_with("usage: source_service"), "{usage}");
    assert!(usage.contains("--version"), "{usage}");
    let output = Command::new(BIN)
        .arg("--verbose")
        .env("SOURCE_ADDR", "127.0.0.1:0")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--verbose"), "{stderr}");
}

#[test]
fn a_misspelt_variable_is_warned_about_by_name_and_an_unrelated_one_is_not() {
    // SOURCE_THREADS=abc ends start-up at once, after the warnings.
    let output = run_with(&[
        ("SOURCE_ADR", "127.0.0.1:9999-hidden-value"),
        ("APP_MODE", "unrelated"),
        ("SOURCE_THREADS", "abc"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "warning: SOURCE_ADR is not a variable of source_service; did you mean SOURCE_ADDR?",
            r#"invalid configuration: SOURCE_THREADS: "abc" is not a whole number from 1 to 1024"#,
        ]
    );
}
