//! Pages through the whole change log of a running source_service and prints
//! how fast that went. Used by scripts/bench-source.sh.
//!
//! Usage: cargo run --release --example page_all -- http://127.0.0.1:8080 [limit]

use std::io::Read;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(base) = args.next() else {
        eprintln!("usage: page_all BASE_URL [LIMIT]");
        return ExitCode::from(2);
    };
    let limit: u64 = match args.next().map(|s| s.parse()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("LIMIT: {e}");
            return ExitCode::from(2);
        }
    };
    match page_all(&base, limit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("page_all: {e}");
            ExitCode::FAILURE
        }
    }
}

fn page_all(base: &str, limit: u64) -> Result<(), Box<dyn std::error::Error>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    // Start at the oldest change kept: since=0 is gone once the log is full.
    let first = agent
        .get(&format!("{base}/users/changes?since=0&limit=1"))
        .call()?;
    let mut since = match first.status().as_u16() {
        200 => 0,
        410 => {
            let body: serde_json::Value = serde_json::from_reader(first.into_body().into_reader())?;
            body["min_since"].as_u64().ok_or("410 without min_since")?
        }
        code => return Err(format!("the source answered HTTP {code}").into()),
    };
    let start_since = since;
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut requests = 0usize;
    let mut body = Vec::with_capacity(4 << 20);
    loop {
        let url = format!("{base}/users/changes?since={since}&limit={limit}");
        let response = agent.get(&url).call()?;
        if response.status() != 200 {
            return Err(format!("the source answered HTTP {}", response.status()).into());
        }
        let header = |name: &str| -> Result<u64, Box<dyn std::error::Error>> {
            let value = response.headers().get(name).ok_or(format!("no {name}"))?;
            Ok(value.to_str()?.parse()?)
        };
        let next = header("X-Next-Cursor")?;
        let head = header("X-Head-Cursor")?;
        body.clear();
        response.into_body().into_reader().read_to_end(&mut body)?;
        if body.first() != Some(&b'[') || body.last() != Some(&b']') {
            return Err("body is not a JSON array".into());
        }
        bytes += body.len();
        requests += 1;
        since = next;
        if next >= head {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let profiles = since - start_since;
    println!(
        "paged {profiles} profiles in {requests} requests of limit {limit} in {elapsed:.3} s: \
         {:.0} profiles/s, {:.0} MiB/s",
        profiles as f64 / elapsed,
        bytes as f64 / elapsed / (1024.0 * 1024.0)
    );
    Ok(())
}
