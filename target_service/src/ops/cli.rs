//! The command line: `target_service` runs the service; `redrive` and
//! `verify` are operator commands (SPEC §5). Parsing only: what a command
//! does lives in [`crate::ops::redrive`] and [`crate::ops::verify`].
//!
//! A bad argument is one line on standard error and exit code 2, like a bad
//! configuration value; `--help` prints usage and `--version` the version,
//! and both exit 0.

use crate::profile::Reason;

/// The reasons `redrive` decides again: those that can change with time or
/// with the table.
pub(crate) const REDRIVABLE: [Reason; 4] = [
    Reason::EmailTaken,
    Reason::MobileTaken,
    Reason::FutureTimestamp,
    Reason::DbError,
];

pub(crate) const DEFAULT_MAX_REPORT: usize = 20;

/// What `--version` prints: the crate's name and version.
pub const VERSION: &str = concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the service.
    Serve,
    /// Print this text and exit 0.
    Help(&'static str),
    /// Print [`VERSION`] and exit 0.
    Version,
    Redrive {
        reasons: Vec<Reason>,
        dry_run: bool,
    },
    Verify {
        max_report: usize,
    },
}

pub(crate) const USAGE: &str = "\
usage: target_service [COMMAND]

Without a command, runs the service: pulls changes from SOURCE_SERVICE_URL and
keeps the users table in step.

commands:
  redrive [--reason R]... [--dry-run]   decide recorded, unresolved rejections again
  verify [--max-report N]               compare the table with the source's log
  help, --help, -h                      print this text
  --version, -V                         print the name and version

Configuration is read from the environment (and .env), as for the service.
`target_service COMMAND --help` describes each command.";

pub(crate) const REDRIVE_USAGE: &str = "\
usage: target_service redrive [--reason R]... [--dry-run]

Decides again every recorded, unresolved rejection whose reason can change with
time or with the table (email_taken, mobile_taken, future_timestamp, db_error;
all four unless --reason names some). One that would sync now is written as a
fresh change (newest still wins) and its rejection is marked resolved (synced,
or stale when its row is already as new); one that still fails stays as it was.
Safe while the service syncs.

  --reason R   only rejections with reason R (repeatable)
  --dry-run    report what would happen, write nothing

prints: redrive: N examined, S synced, T stale, R still rejected
        (followed by \" (dry run)\" with --dry-run)
exit: 0 done; 1 the database failed; 2 bad argument or configuration";

pub(crate) const VERIFY_USAGE: &str = "\
usage: target_service verify [--max-report N]

Reads the source's retained change log up to the head it sees at the start
(never asking it to generate) and reports every id whose newest change that
passes every rule on its own (valid, active or pending, not in the future) and
has no rejection recorded for it is newer than the id's row, or has no row.

  --max-report N   list at most N such ids (default 20)

prints: verify: C changes read, U ids, M missing or behind, A rows ahead of the source
exit: 0 in step; 1 ids missing or behind, or an error; 2 a source without
cursors, a bad argument or configuration";

/// Reads the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Serve);
    };
    match command.as_str() {
        "--help" | "-h" | "help" => Ok(Command::Help(USAGE)),
        "--version" | "-V" => Ok(Command::Version),
        "redrive" => parse_redrive(rest),
        "verify" => parse_verify(rest),
        other => Err(format!(
            "unknown command {other:?}; use redrive, verify, --help or --version"
        )),
    }
}

fn parse_redrive(args: &[String]) -> Result<Command, String> {
    let mut reasons = Vec::new();
    let mut dry_run = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = split_flag(arg);
        match flag {
            "--help" | "-h" => return Ok(Command::Help(REDRIVE_USAGE)),
            "--dry-run" if inline.is_none() => dry_run = true,
            "--reason" => {
                let value = match inline {
                    Some(value) => value.to_owned(),
                    None => args
                        .next()
                        .cloned()
                        .ok_or("redrive: --reason needs a reason code")?,
                };
                let reason = (REDRIVABLE.iter())
                    .find(|r| r.as_str() == value)
                    .ok_or_else(|| {
                        format!(
                            "redrive: --reason {value:?} is not one of email_taken, mobile_taken, future_timestamp, db_error"
                        )
                    })?;
                if !reasons.contains(reason) {
                    reasons.push(*reason);
                }
            }
            _ => {
                return Err(format!(
                    "redrive: unknown argument {arg:?}; see target_service redrive --help"
                ))
            }
        }
    }
    if reasons.is_empty() {
        reasons = REDRIVABLE.to_vec();
    }
    Ok(Command::Redrive { reasons, dry_run })
}

fn parse_verify(args: &[String]) -> Result<Command, String> {
    let mut max_report = DEFAULT_MAX_REPORT;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = split_flag(arg);
        match flag {
            "--help" | "-h" => return Ok(Command::Help(VERIFY_USAGE)),
            "--max-report" => {
                let value = match inline {
                    Some(value) => value.to_owned(),
                    None => args
                        .next()
                        .cloned()
                        .ok_or("verify: --max-report needs a number")?,
                };
                max_report = value
                    .parse()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        format!("verify: --max-report {value:?} is not a whole number, 0 or more")
                    })?;
            }
            _ => {
                return Err(format!(
                    "verify: unknown argument {arg:?}; see target_service verify --help"
                ))
            }
        }
    }
    Ok(Command::Verify { max_report })
}

/// `--flag=value` as `("--flag", Some("value"))`.
fn split_flag(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
        _ => (arg, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse::<[&str; 0], &str>([]), Ok(Command::Serve));
        assert_eq!(parse(["--help"]), Ok(Command::Help(USAGE)));
        assert_eq!(parse(["--version"]), Ok(Command::Version));
        assert_eq!(parse(["-V"]), Ok(Command::Version));
        assert_eq!(
            parse(["redrive"]),
            Ok(Command::Redrive {
                reasons: REDRIVABLE.to_vec(),
                dry_run: false
            })
        );
        assert_eq!(
            parse([
                "redrive",
                "--reason",
                "email_taken",
                "--dry-run",
                "--reason=db_error"
            ]),
            Ok(Command::Redrive {
                reasons: vec![Reason::EmailTaken, Reason::DbError],
                dry_run: true
            })
        );
        assert_eq!(
            parse(["redrive", "--help"]),
            Ok(Command::Help(REDRIVE_USAGE))
        );
        assert_eq!(parse(["verify"]), Ok(Command::Verify { max_report: 20 }));
        assert_eq!(
            parse(["verify", "--max-report", "3"]),
            Ok(Command::Verify { max_report: 3 })
        );
        assert_eq!(parse(["verify", "-h"]), Ok(Command::Help(VERIFY_USAGE)));
    }

    #[test]
    fn bad_arguments_are_one_line() {
        for args in [
            vec!["nope"],
            vec!["redrive", "--reason"],
            vec!["redrive", "--reason", "stale"],
            vec!["redrive", "--dry-run=yes"],
            vec!["redrive", "extra"],
            vec!["verify", "--max-report", "-1"],
            vec!["verify", "--max-report"],
            vec!["verify", "--max-report=x"],
            vec!["verify", "--all"],
        ] {
            let err = parse(&args).expect_err(&format!("{args:?}"));
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
