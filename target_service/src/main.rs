//! `target_service`: read the configuration, start the app, stop on SIGTERM
//! or SIGINT.

use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use target_service::config::Config;
use target_service::App;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    target_service::init_logging(config.log_level);
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(err) => {
            log::error!("cannot install the signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let running = match App::start(config) {
        Ok(running) => running,
        Err(err) => {
            log::error!("cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}; shutting down");
    }
    running.shutdown();
    ExitCode::SUCCESS
}
