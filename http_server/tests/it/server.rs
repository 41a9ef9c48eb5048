//! The server in-process over real sockets: keep-alive and pipelining, what
//! closes a connection, `HEAD`, the head limit, `Host`, the connection cap
//! and shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_server::{Request, Response, Server, Settings};

fn start(settings: Settings) -> Server {
    let listener =
        http_server::listen(http_server::bind(([127, 0, 0, 1], 0).into()).unwrap()).unwrap();
    let handler = |request: &Request| Response {
        status: 200,
        headers: vec![("Content-Type", "text/plain".to_string())],
        body: match request.target {
            "/big" => vec![b'x'; 100_000],
            "/slow" => {
                std::thread::sleep(Duration::from_secs(2));
                b"slow".to_vec()
            }
            target => format!("{} {target}", request.method).into_bytes(),
        },
    };
    Server::start(listener, settings, Arc::new(handler)).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Reads one response whose body is `body_len` bytes long.
fn read_response(stream: &mut TcpStream, body_len: usize) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "{got:?}");
        got.push(byte[0]);
    }
    let mut body = vec![0u8; body_len];
    stream.read_exact(&mut body).unwrap();
    got.extend_from_slice(&body);
    String::from_utf8(got).unwrap()
}

fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let server = start(Settings::default());
    let mut stream = connect(server.addr());
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /bb HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let first = read_response(&mut stream, 6);
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("Content-Length: 6\r\n") && first.ends_with("GET /a"));
    assert!(!first.contains("Connection: close"));
    assert!(read_response(&mut stream, 7).ends_with("GET /bb"));
    stream
        .write_all(b"HEAD /c HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = read_response(&mut stream, 0);
    assert!(head.contains("Content-Length: 7\r\n"), "{head}");
    // A large body is sent after its head, not copied behind it.
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nHEAD /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let big = read_response(&mut stream, 100_000);
    assert!(big.contains("Content-Length: 100000\r\n") && big.ends_with("xxxx"));
    let head = read_response(&mut stream, 0);
    assert!(head.contains("Content-Length: 100000\r\n"), "{head}");
    stream
        .write_all(b"GET /d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let last = read_to_close(&mut stream);
    assert!(last.contains("Connection: close\r\n") && last.ends_with("GET /d"));
    server.shutdown();
}

#[test]
fn a_request_with_a_body_is_answered_and_its_connection_closed() {
    let server = start(Settings::default());
    for framing in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
        let mut stream = connect(server.addr());
        let request = format!("POST /x HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\nhello");
        stream.write_all(request.as_bytes()).unwrap();
        let response = read_to_close(&mut stream);
        assert!(
            response.starts_with("HTTP/1.1 200 "),
            "{framing}: {response}"
        );
        assert!(response.contains("Connection: close\r\n"), "{response}");
    }
}

#[test]
fn a_head_over_8_kib_is_431_and_garbage_is_400() {
    let server = start(Settings::default());
    let mut stream = connect(server.addr());
    let long = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(9000)
    );
    stream.write_all(long.as_bytes()).unwrap();
    let response = read_to_close(&mut stream);
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    assert!(response.contains(r#"{"error":"#), "{response}");
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let mut stream = connect(server.addr());
    write!(stream, "GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").unwrap();
    assert!(read_to_close(&mut stream).starts_with("HTTP/1.1 431 "));
    let mut stream = connect(server.addr());
    stream.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    assert!(read_to_close(&mut stream).starts_with("HTTP/1.1 400 "));
}

#[test]
fn at_the_cap_the_connection_waiting_longest_makes_room() {
    let server = start(Settings {
        max_connections: 4,
        ..Settings::default()
    });
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            // Apart in time, so that which waited longest is clear.
            std::thread::sleep(Duration::from_millis(20));
            connect(server.addr())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..3 {
        let mut stream = connect(server.addr());
        stream
            .write_all(b"GET /new HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let response = read_to_close(&mut stream);
        assert!(response.ends_with("GET /new"), "round {round}: {response}");
    }
    // The oldest idle connection was closed for the first newcomer.
    let mut byte = [0u8; 1];
    assert_eq!(idle[0].read(&mut byte).unwrap_or(0), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.open_connections() <= 4);
    idle.clear();
    server.shutdown();
}

#[test]
fn shutdown_closes_idle_connections_at_once() {
    let server = start(Settings::default());
    let mut streams: Vec<TcpStream> = (0..20).map(|_| connect(server.addr())).collect();
    // One that sent half a head.
    streams[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.open_connections(), 20);
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for stream in &mut streams {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).unwrap_or(0), 0);
    }
}

#[test]
fn a_slow_handler_holds_the_others_back_no_longer_than_the_patience() {
    let server = start(Settings {
        handlers: Some(1),
        handler_patience: Some(Duration::from_millis(50)),
        ..Settings::default()
    });
    let mut slow = connect(server.addr());
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut fast = connect(server.addr());
    fast.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_to_close(&mut fast).ends_with("GET /fast"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(read_response(&mut slow, 4).ends_with("slow"));
}

#[test]
fn an_http_1_0_client_is_told_whether_its_connection_is_kept() {
    let server = start(Settings::default());
    let mut kept = connect(server.addr());
    for n in 0..2 {
        kept.write_all(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let response = read_response(&mut kept, "GET /x".len());
        assert!(
            response.contains("Connection: keep-alive\r\n"),
            "{n}: {response}"
        );
        assert!(response.ends_with("GET /x"), "{n}: {response}");
    }
    let mut closed = connect(server.addr());
    closed.write_all(b"GET /y HTTP/1.0\r\n\r\n").unwrap();
    let started = Instant::now();
    let response = read_to_close(&mut closed);
    assert!(response.contains("Connection: close\r\n"), "{response}");
    assert!(response.ends_with("GET /y"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
}

#[test]
fn a_request_without_host_or_with_two_is_400_and_its_connection_closed() {
    let server = start(Settings::default());
    for request in [
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n",
        "GET /x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let mut stream = connect(server.addr());
        // Pipelined behind it: never answered, the connection is closed.
        write!(stream, "{request}GET /after HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let response = read_to_close(&mut stream);
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{request:?}: {response}"
        );
        assert!(response.contains("Content-Type: application/json\r\n"));
        assert!(response.contains("Connection: close\r\n"), "{response}");
        assert!(
            response.contains(r#"{"error":"the request has "#),
            "{response}"
        );
        assert!(!response.contains("GET /after"), "{response}");
    }
    let mut stream = connect(server.addr());
    stream.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    assert!(read_to_close(&mut stream).ends_with("GET /old"));
    server.shutdown();
}

/// Whether the server closed `stream`: a read gives end of file or a reset
/// (not the 5 s read timeout).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn at_the_cap_idle_kept_alive_connections_make_room_first() {
    let server = start(Settings {
        max_connections: 4,
        ..Settings::default()
    });
    assert_eq!(server.connection_cap(), 4);
    // Two that have sent nothing yet, then two kept alive after a request.
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            connect(server.addr())
        })
        .collect();
    let mut kept: Vec<TcpStream> = (0..2)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let mut stream = connect(server.addr());
            stream
                .write_all(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert!(read_response(&mut stream, "GET /k".len()).ends_with("GET /k"));
            stream
        })
        .collect();
    let four_open = || server.open_connections() == 4;
    crate::wait_until("four open", Duration::from_secs(5), four_open);
    // Newcomers that send nothing yet: the idle kept-alive ones make room
    // first, the one idle longest first,
    let mut newcomers = vec![connect(server.addr())];
    assert!(closed_by_server(&mut kept[0]));
    newcomers.push(connect(server.addr()));
    assert!(closed_by_server(&mut kept[1]));
    // then, with none idle, the one waiting longest for its first request.
    newcomers.push(connect(server.addr()));
    assert!(closed_by_server(&mut silent[0]));
    // The others were kept all along and are served.
    silent[1]
        .write_all(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut silent[1], "GET /s".len()).ends_with("GET /s"));
    for (n, newcomer) in newcomers.iter_mut().enumerate() {
        newcomer
            .write_all(b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let response = read_response(newcomer, "GET /n".len());
        assert!(response.ends_with("GET /n"), "newcomer {n}: {response}");
    }
    assert_eq!(server.peak_connections(), 4);
    server.shutdown();
}

#[test]
fn a_flood_of_idle_connections_never_opens_more_than_the_cap() {
    let server = start(Settings {
        max_connections: 8,
        ..Settings::default()
    });
    let flood: Vec<TcpStream> = (0..8 + 200).map(|_| connect(server.addr())).collect();
    let mut probe = connect(server.addr());
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_to_close(&mut probe).ends_with("GET /healthz"));
    assert_eq!(server.peak_connections(), 8);
    // The newest of the flood are the ones still open.
    let mut last = flood.into_iter().last().unwrap();
    last.write_all(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut last, "GET /last".len()).ends_with("GET /last"));
    server.shutdown();
}
