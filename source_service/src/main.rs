//! The `source_service` binary: configuration from the environment, start the
//! app, serve until SIGTERM or SIGINT, shut down gracefully.
//!
//! Exit codes: 0 after a signal, 2 for a bad configuration (one line on
//! stderr naming the variable), 1 when the service cannot start or stops
//! accepting connections (so that a supervisor restarts it).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use signal_hook::iterator::Signals;
use simplelog::{ConfigBuilder, WriteLogger};
use source_service::{App, Config};

fn main() -> ExitCode {
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
