//! Arbitrary bytes, cut at arbitrary points, through one connection over an
//! in-memory stream (`http_server::serve_stream`): request heads of every
//! kind the server tells apart (methods, versions, `Host` fields, bodies
//! announced, `Connection`, heads over 8 KiB or with too many fields) mixed
//! with garbage. Whatever comes, the connection code does not panic, writes
//! at most one response per request (the handler's, or one refusal that
//! ends the connection), and had read no further than the 8 KiB a head may
//! take when it refused one.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_server::{Request, Response, Settings, Stream, MAX_HEAD};
use proptest::prelude::*;

/// What the server reads, and what it did with the stream.
#[derive(Default)]
struct Script {
    /// What each read returns, in order (a read with a smaller buffer
    /// takes the front of a chunk and leaves the rest).
    chunks: VecDeque<Vec<u8>>,
    /// After the chunks: the client times out (`true`) or closes.
    times_out: bool,
    /// Bytes the server has read.
    read: usize,
    written: Vec<u8>,
    /// Where each write began in `written`, and how much had been read then.
    writes: Vec<(usize, usize)>,
}

struct Scripted(Mutex<Script>);

impl Scripted {
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stream for &Scripted {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut script = self.lock();
        let Some(chunk) = script.chunks.front_mut() else {
            return match script.times_out {
                true => Err(io::ErrorKind::TimedOut.into()),
                false => Ok(0),
            };
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            script.chunks.pop_front();
        }
        script.read += n;
        Ok(n)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut script = self.lock();
        let at = (script.written.len(), script.read);
        script.writes.push(at);
        script.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn shutdown(&self, _: Shutdown) -> io::Result<()> {
        Ok(())
    }
}

/// A request head as the server reads it: what it asks, and its length.
struct Head {
    method: String,
    target: String,
    length: usize,
}

/// The heads in `input`, one after the other, as long as each is whole
/// within the 8 KiB a head may take: what the server can hand its handler.
fn heads(input: &[u8]) -> Vec<Head> {
    let mut heads = Vec::new();
    let mut at = 0;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut fields);
        let window = &input[at..input.len().min(at + MAX_HEAD)];
        let Ok(httparse::Status::Complete(length)) = parsed.parse(window) else {
            return heads;
        };
        heads.push(Head {
            method: parsed.method.unwrap_or("").to_owned(),
            target: parsed.path.unwrap_or("").to_owned(),
            length,
        });
        at += length;
    }
}

/// A response as written: its status, where it began, and whether it
/// closes the connection.
struct Written {
    status: u16,
    start: usize,
    closes: bool,
}

/// Cuts the output into responses, the `i`th answering a `HEAD` (so
/// without its body) when `no_body(i, status)`. Fails the case unless the
/// output is whole responses and nothing else.
fn responses(
    out: &[u8],
    no_body: impl Fn(usize, u16) -> bool,
) -> Result<Vec<Written>, TestCaseError> {
    let mut written = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(length)) = parsed.parse(&out[at..]) else {
            return Err(TestCaseError::fail(format!("not a response at {at}")));
        };
        let status = parsed.code.unwrap_or(0);
        let field = |name: &str| {
            (parsed.headers.iter())
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let content_length: usize = field("Content-Length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| TestCaseError::fail("a response without Content-Length"))?;
        let closes = field("Connection").as_deref() == Some("close");
        let body = if no_body(written.len(), status) {
            0
        } else {
            content_length
        };
        written.push(Written {
            status,
            start: at,
            closes,
        });
        at += length + body;
    }
    prop_assert_eq!(at, out.len(), "a response cut short");
    Ok(written)
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("Connection: close".to_owned()),
        1 => Just("Connection: keep-alive".to_owned()),
        1 => Just("Content-Length: 0".to_owned()),
        1 => Just("Content-Length: 5".to_owned()),
        1 => Just("Transfer-Encoding: chunked".to_owned()),
        1 => Just(format!("X-Long: {}", "a".repeat(MAX_HEAD))),
        6 => "[A-Za-z-]{1,8}: [ -~]{0,12}",
    ]
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    let method =
        prop_oneof![4 => Just("GET"), 2 => Just("HEAD"), 1 => Just("POST"), 1 => Just("G T")];
    let version = prop_oneof![6 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/2")];
    let hosts = prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)];
    let fields = prop::collection::vec(field(), 0..4);
    let many = prop_oneof![12 => Just(0usize), 1 => Just(70usize)];
    let parts = (method, "/[a-z?=]{0,6}", version, hosts, fields, many);
    parts.prop_map(|(method, target, version, hosts, fields, many)| {
        let hosts = (0..hosts).map(|_| "Host: h".to_owned());
        let many = (0..many).map(|i| format!("X-{i}: y"));
        let mut head = format!("{method} {target} {version}\r\n");
        for field in hosts.chain(fields).chain(many) {
            head.push_str(&field);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    })
}

/// Heads mostly, some garbage, some bytes of a head's prefix.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        12 => head(),
        1 => prop::collection::vec(any::<u8>(), 0..32),
        1 => Just(b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec()),
    ];
    prop::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat())
}

/// `input` in chunks cut at `cuts` (fractions of its length).
fn chunks(input: &[u8], cuts: &[prop::sample::Index]) -> VecDeque<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    let cut = points.windows(2).map(|w| input[w[0]..w[1]].to_vec());
    cut.collect()
}

fn run(
    input: &[u8],
    cuts: &[prop::sample::Index],
    times_out: bool,
    handlers: Option<usize>,
) -> Result<(), TestCaseError> {
    let stream = Scripted(Mutex::new(Script {
        chunks: chunks(input, cuts),
        times_out,
        ..Script::default()
    }));
    let calls = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let handler = {
        let calls = Arc::clone(&calls);
        move |request: &Request| {
            let asked = (request.method.to_owned(), request.target.to_owned());
            calls.lock().unwrap().push(asked);
            Response::new(200, "text/plain", request.target.as_bytes().to_vec())
        }
    };
    let settings = Settings {
        handlers,
        ..Settings::default()
    };
    http_server::serve_stream(&stream, settings, Arc::new(handler));
    let script = stream.lock();
    let calls = calls.lock().unwrap();
    let heads = heads(input);
    // The handler is given the heads that came, in order.
    prop_assert!(calls.len() <= heads.len());
    for (call, head) in calls.iter().zip(&heads) {
        prop_assert_eq!(call, &(head.method.clone(), head.target.clone()));
    }
    let no_body = |i: usize, status: u16| {
        // A HEAD's answer has no body, whether the handler's or a `400`
        // for its `Host` fields; a refusal of a head that never came whole
        // has one.
        let head = heads.get(i).filter(|_| i < calls.len() || status == 400);
        head.is_some_and(|head| head.method == "HEAD")
    };
    let written = responses(&script.written, no_body)?;
    // One response per handled request, and at most one more: a refusal,
    // after which nothing is written or handled.
    prop_assert!(
        written.len() <= calls.len() + 1,
        "{} responses for {} requests",
        written.len(),
        calls.len()
    );
    for response in &written[..written.len().min(calls.len())] {
        prop_assert_eq!(response.status, 200);
    }
    if let Some(refusal) = written.get(calls.len()) {
        prop_assert!(
            [400, 408, 431].contains(&refusal.status),
            "{}",
            refusal.status
        );
        prop_assert!(refusal.closes, "a refusal leaves the connection open");
        let consumed: usize = heads[..calls.len()].iter().map(|h| h.length).sum();
        let read_then = (script.writes.iter())
            .find(|(at, _)| *at == refusal.start)
            .map(|(_, read)| *read);
        prop_assert!(read_then.is_some(), "a response begun within a write");
        prop_assert!(
            read_then.unwrap_or(0) <= consumed + MAX_HEAD,
            "read {:?} bytes before refusing a head at {consumed}",
            read_then
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_bytes_in_any_cuts_get_one_answer_per_request(
        input in input(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        times_out in any::<bool>(),
        handlers in prop_oneof![Just(None), Just(Some(1))],
    ) {
        run(&input, &cuts, times_out, handlers)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_connection(
        input in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        times_out in any::<bool>(),
    ) {
        run(&input, &cuts, times_out, None)?;
    }
}
