//! The `source_service` binary: configuration from the environment, start the
//! app, serve until SIGTERM or SIGINT, shut down gracefully.
//!
//! Exit codes: 0 after a signal (or `--help`, `--version`), 2 for a bad
//! configuration (one line on stderr naming the variable) or argument, 1
//! when the service cannot start or stops accepting connections (so that a
//! supervisor restarts it).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use signal_hook::iterator::Signals;
use simplelog::{ConfigBuilder, WriteLogger};
use source_service::{App, Config};

const USAGE: &str = "\
usage: source_service [--help | --version]

Serves generated user-profile changes at GET /users/changes on SOURCE_ADDR
(default 0.0.0.0:8080) until SIGTERM or SIGINT. Configuration is read from the
environment: SOURCE_ADDR, the other SOURCE_* variables and LOG_LEVEL (see the
README).

  --help, -h      print this text
  --version, -V   print the name and version";

const VERSION: &str = concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"));

/// What the arguments ask to be printed instead of serving (`None`: serve),
/// or why they cannot be read.
fn printed_instead(mut args: impl Iterator<Item = String>) -> Result<Option<&'static str>, String> {
    let Some(first) = args.next() else {
        return Ok(None);
    };
    let text = match first.as_str() {
        "--help" | "-h" | "help" => USAGE,
        "--version" | "-V" => VERSION,
        other => {
            return Err(format!(
                "unknown argument {other:?}; source_service takes none but --help or --version \
                 (configuration comes from the environment)"
            ))
        }
    };
    match args.next() {
        None => Ok(Some(text)),
        Some(extra) => Err(format!("unknown argument {extra:?} after {first}")),
    }
}

fn main() -> ExitCode {
    match printed_instead(std::env::args().skip(1)) {
        Ok(None) => {}
        Ok(Some(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    }
    for warning in source_service::config::variable_warnings() {
        eprintln!("{warning}");
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let log_config = ConfigBuilder::new().set_time_format_rfc3339().build();
    // Only fails if a logger is already set, which cannot happen here.
    let _ = WriteLogger::init(config.log_level, log_config, std::io::stderr());

    // Registered before start-up, so a signal during a long preload is not
    // lost (nor fatal): `stop` ends the preload, and a signal after it is
    // still waiting in `signals` when the app is up.
    let stop = Arc::new(AtomicBool::new(false));
    let registered = [SIGTERM, SIGINT]
        .into_iter()
        .try_for_each(|signal| flag::register(signal, Arc::clone(&stop)).map(drop))
        .and_then(|()| Signals::new([SIGTERM, SIGINT]));
    let mut signals = match registered {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match App::start_unless(config, &stop) {
        Ok(Some(running)) => running,
        Ok(None) => {
            log::info!("received a signal during the preload; stopped");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A fault ends the wait for a signal: `forever()` returns once closed.
    let handle = signals.handle();
    running.on_fault(move || handle.close());
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    let fault = running.fault();
    running.shutdown();
    if fault.is_some() {
        log::error!("exiting with status 1 so that the service is restarted");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
