//! `target_service`: read the command line and the configuration, then run
//! the service (stopping on SIGTERM or SIGINT) or an operator command
//! (`redrive`, `verify`; see [`target_service::cli`]).

use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use target_service::cli::{self, Command};
use target_service::{redrive, verify, App, Config};

/// glibc gives threads malloc arenas of their own, up to eight per core,
/// and each keeps the memory freed in it: pages parsed on the read-ahead
/// thread and freed on others grew the resident set by a fifth. Two arenas
/// hold it at what the data needs, no slower. An arena setting of the
/// operator's stands: `MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in
/// `GLIBC_TUNABLES` (its other tunables do not count).
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !arenas_set_by_operator(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    ) {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before any thread is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Whether the environment already sets glibc's arena count.
fn arenas_set_by_operator(malloc_arena_max: bool, glibc_tunables: Option<&str>) -> bool {
    malloc_arena_max
        || glibc_tunables.is_some_and(|tunables| {
            tunables
                .split(':')
                .any(|tunable| tunable.starts_with("glibc.malloc.arena_max="))
        })
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help(usage) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", cli::VERSION);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    for warning in target_service::variable_warnings() {
        eprintln!("{warning}");
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Redrive { reasons, dry_run } => match redrive::run(&config, &reasons, dry_run) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("redrive: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Verify { max_report } => match verify::run(&config) {
            Ok(report) => {
                for line in report.lines(max_report) {
                    println!("{line}");
                }
                if report.missing_or_behind.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(failure) => {
                eprintln!("{failure}");
                match failure {
                    verify::Failure::NoCursors => ExitCode::from(2),
                    verify::Failure::Error(_) => ExitCode::FAILURE,
                }
            }
        },
        Command::Serve | Command::Help(_) | Command::Version => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::arenas_set_by_operator;

    #[test]
    fn only_an_arena_setting_of_the_operators_keeps_the_cap_off() {
        assert!(!arenas_set_by_operator(false, None));
        assert!(arenas_set_by_operator(true, None));
        assert!(arenas_set_by_operator(
            false,
            Some("glibc.pthread.rseq=0:glibc.malloc.arena_max=8")
        ));
        assert!(!arenas_set_by_operator(false, Some("glibc.pthread.rseq=0")));
        assert!(!arenas_set_by_operator(
            false,
            Some("glibc.malloc.arena_test=4")
        ));
    }
}
