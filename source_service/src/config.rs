//! Configuration: the one place that knows the environment variables, their
//! defaults and what each of them accepts.
//!
//! `Config::from_env` reads the real environment; it is a thin wrapper over
//! `Config::from_lookup`, which takes any lookup function so that every rule
//! here can be unit-tested without touching the process environment. Nothing
//! else in the crate reads environment variables.
//!
//! A variable that is set but empty (or only white space) counts as unset, so
//! `SOURCE_SEED=` in a compose file means "use the default", not an error.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use log::LevelFilter;

/// Most worker threads we accept; more would only waste memory on stacks.
pub const MAX_THREADS: usize = 1024;

/// How long a client has to send a request head, and to take a response,
/// before its connection is dropped (SPEC §6: a client that sends or reads
/// too slowly is cut off after 10 s). Both are deadlines, not idle times, so
/// a client that trickles a byte at a time is cut off all the same; a
/// keep-alive connection with no request for that long is closed too.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the service needs to start, already checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `SOURCE_ADDR`: where the HTTP server listens.
    pub addr: SocketAddr,
    /// `SOURCE_THREADS`: worker threads answering requests.
    pub threads: usize,
    /// `SOURCE_SEED`: generator seed; `None` means pick one at random at start.
    pub seed: Option<u64>,
    /// `SOURCE_INVALID_RATE`: fraction of generated changes made bad on purpose.
    pub invalid_rate: f64,
    /// `SOURCE_PRELOAD`: changes generated before the server starts listening.
    pub preload: u64,
    /// `SOURCE_LOG_CAPACITY`: changes kept for replay.
    pub log_capacity: u64,
    /// `LOG_LEVEL`: how much the service logs.
    pub log_level: LevelFilter,
    /// `SOURCE_TOKEN`: when set, `/users/changes` answers only
    /// `Authorization: Bearer <token>`.
    pub token: Option<Token>,
    /// `SOURCE_MAX_CONNECTIONS`: most client connections open at once (never
    /// more than the descriptor limit allows); at the cap, idle ones are
    /// closed to make room for new ones.
    pub max_connections: usize,
    /// Not read from the environment: always `WRITE_TIMEOUT`, except in
    /// tests that need a stalled client dropped sooner. It bounds reading a
    /// request head as well as sending a response.
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: 8,
            seed: None,
            invalid_rate: 0.05,
            preload: 0,
            log_capacity: 1_000_000,
            log_level: LevelFilter::Info,
            token: None,
            max_connections: http_server::DEFAULT_MAX_CONNECTIONS,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// `SOURCE_TOKEN`'s value; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Token {
        Token(value.into())
    }

    /// The value itself, for the one comparison that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A variable whose value the service cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable's name, e.g. `SOURCE_THREADS`.
    pub var: &'static str,
    /// The value as it was found.
    pub value: String,
    /// What the variable accepts, phrased for the operator.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` quotes the value and escapes control characters, so the
        // message stays on one line whatever was in the variable. Worded
        // as target_service words its own.
        write!(
            f,
            "invalid configuration: {}: {:?} is not {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

const ADDR_EXPECTED: &str =
    "a listen address such as 0.0.0.0:8080, localhost:8080 or 127.0.0.1:0 (or :8080 for every address)";

const THREADS_EXPECTED: &str = "a whole number from 1 to 1024";
const SEED_EXPECTED: &str =
    "a whole number from 0 to 18446744073709551615, or unset for a random seed";
const RATE_EXPECTED: &str = "a number from 0 to 1, such as 0.05";
const PRELOAD_EXPECTED: &str = "a whole number of changes, 0 or more";
const CAPACITY_EXPECTED: &str = "a whole number of changes, 1 or more";
const LEVEL_EXPECTED: &str = "one of error, warn, info, debug, trace";
const CONNECTIONS_EXPECTED: &str = "a whole number of connections from 1 to 16384";

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        // A value that is not valid UTF-8 is passed on (lossily) so that it
        // fails validation with a message instead of silently counting as unset.
        Config::from_lookup(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Builds the configuration from `lookup`, which maps a variable name to
    /// its value (or `None` when unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |var: &'static str| Raw {
            var,
            value: lookup(var).filter(|v| !v.trim().is_empty()),
        };
        let defaults = Config::default();
        Ok(Config {
            addr: get("SOURCE_ADDR").parse_or(
                defaults.addr,
                ADDR_EXPECTED,
                http_server::listen_addr,
            )?,
            threads: get("SOURCE_THREADS").parse_or(defaults.threads, THREADS_EXPECTED, |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_THREADS).contains(n))
            })?,
            seed: get("SOURCE_SEED").parse_or(defaults.seed, SEED_EXPECTED, |s| {
                s.parse::<u64>().ok().map(Some)
            })?,
            invalid_rate: get("SOURCE_INVALID_RATE").parse_or(
                defaults.invalid_rate,
                RATE_EXPECTED,
                // `contains` is false for NaN, so "NaN" is refused too.
                |s| s.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)),
            )?,
            preload: get("SOURCE_PRELOAD").parse_or(defaults.preload, PRELOAD_EXPECTED, |s| {
                s.parse::<u64>().ok()
            })?,
            log_capacity: get("SOURCE_LOG_CAPACITY").parse_or(
                defaults.log_capacity,
                CAPACITY_EXPECTED,
                |s| s.parse::<u64>().ok().filter(|n| *n >= 1),
            )?,
            log_level: get("LOG_LEVEL").parse_or(
                defaults.log_level,
                LEVEL_EXPECTED,
                |s| match s.to_ascii_lowercase().as_str() {
                    "error" => Some(LevelFilter::Error),
                    "warn" => Some(LevelFilter::Warn),
                    "info" => Some(LevelFilter::Info),
                    "debug" => Some(LevelFilter::Debug),
                    "trace" => Some(LevelFilter::Trace),
                    _ => None,
                },
            )?,
            token: lookup("SOURCE_TOKEN")
                .map(|token| token.trim().to_owned())
                .filter(|token| !token.is_empty())
                .map(Token::new),
            max_connections: get("SOURCE_MAX_CONNECTIONS").parse_or(
                defaults.max_connections,
                CONNECTIONS_EXPECTED,
                |s| s.parse::<usize>().ok().filter(|n| (1..=16_384).contains(n)),
            )?,
            write_timeout: defaults.write_timeout,
        })
    }
}

/// Every variable the configuration reads: the names
/// [`Config::from_lookup`] asks for when nothing is set, so the list is the
/// code that reads them and cannot drift from it.
pub fn variable_names() -> Vec<String> {
    http_server::misspelling::names_asked(|lookup| {
        let _ = Config::from_lookup(lookup);
    })
}

/// One line for each variable of the environment that looks like a
/// misspelling of ours (names only, never a value); never fatal.
pub fn variable_warnings() -> Vec<String> {
    let environment: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    warnings_for(&variable_names(), &environment)
}

fn warnings_for(ours: &[String], environment: &[String]) -> Vec<String> {
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    environment
        .iter()
        .filter_map(|name| {
            http_server::misspelling::meant(name, &ours).map(|meant| {
                format!(
                    "warning: {name} is not a variable of source_service; did you mean {meant}?"
                )
            })
        })
        .collect()
}

/// One variable as found in the environment, before parsing.
struct Raw {
    var: &'static str,
    value: Option<String>,
}

impl Raw {
    /// Parses the value with `parse` (surrounding white space ignored), or
    /// returns `default` when the variable is unset.
    fn parse_or<T>(
        self,
        default: T,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        match self.value {
            None => Ok(default),
            Some(value) => parse(value.trim()).ok_or(ConfigError {
                var: self.var,
                value,
                expected,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn misspelt_variables_are_warned_about_by_name_and_others_left_alone() {
        let ours = variable_names();
        for name in ["SOURCE_ADDR", "SOURCE_SEED", "SOURCE_TOKEN", "LOG_LEVEL"] {
            assert!(ours.iter().any(|n| n == name), "{name}: {ours:?}");
        }
        let environment = [
            "SOURCE_ADR",
            "PATH",
            "HOME",
            "SOURCE_SEED",
            "APP_MODE",
            "LOGLEVEL",
        ]
        .map(str::to_owned);
        assert_eq!(
            warnings_for(&ours, &environment),
            [
                "warning: SOURCE_ADR is not a variable of source_service; did you mean SOURCE_ADDR?",
                "warning: LOGLEVEL is not a variable of source_service; did you mean LOG_LEVEL?",
            ]
        );
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn error_var(vars: &[(&str, &str)]) -> &'static str {
        match config(vars) {
            Ok(c) => panic!("expected an error for {vars:?}, got {c:?}"),
            Err(e) => e.var,
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.threads, 8);
        assert_eq!(c.seed, None);
        assert_eq!(c.invalid_rate, 0.05);
        assert_eq!(c.preload, 0);
        assert_eq!(c.log_capacity, 1_000_000);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.max_connections, 512);
    }

    #[test]
    fn every_variable_is_read() {
        let c = config(&[
            ("SOURCE_ADDR", "127.0.0.1:0"),
            ("SOURCE_THREADS", "2"),
            ("SOURCE_SEED", "18446744073709551615"),
            ("SOURCE_INVALID_RATE", "1"),
            ("SOURCE_PRELOAD", "1000000"),
            ("SOURCE_LOG_CAPACITY", "1"),
            ("LOG_LEVEL", "TRACE"),
            ("SOURCE_MAX_CONNECTIONS", "16384"),
        ])
        .unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:0");
        assert_eq!(c.threads, 2);
        assert_eq!(c.seed, Some(u64::MAX));
        assert_eq!(c.invalid_rate, 1.0);
        assert_eq!(c.preload, 1_000_000);
        assert_eq!(c.log_capacity, 1);
        assert_eq!(c.log_level, LevelFilter::Trace);
        assert_eq!(c.max_connections, 16_384);
    }

    #[test]
    fn empty_values_mean_unset() {
        let c = config(&[("SOURCE_SEED", ""), ("SOURCE_THREADS", "  ")]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn a_port_alone_listens_on_every_address() {
        let c = config(&[("SOURCE_ADDR", ":9090")]).unwrap();
        assert_eq!(c.addr, "0.0.0.0:9090".parse().unwrap());
        assert!(config(&[("SOURCE_ADDR", ":")]).is_err());
        assert!(config(&[("SOURCE_ADDR", ":http")]).is_err());
    }

    #[test]
    fn a_host_name_is_resolved_like_the_target_s_metrics_addr() {
        let c = config(&[("SOURCE_ADDR", "localhost:8082")]).unwrap();
        assert_eq!(c.addr.port(), 8082);
        assert!(c.addr.ip().is_loopback());
    }

    #[test]
    fn the_token_is_read_and_never_shown() {
        let c = config(&[("SOURCE_TOKEN", " s3cret-token ")]).unwrap();
        assert_eq!(c.token.as_ref().map(Token::expose), Some("s3cret-token"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(config(&[("SOURCE_TOKEN", "")]).unwrap().token, None);
    }

    #[test]
    fn surrounding_white_space_is_ignored() {
        let c = config(&[("SOURCE_THREADS", " 4 "), ("SOURCE_INVALID_RATE", "0 ")]).unwrap();
        assert_eq!(c.threads, 4);
        assert_eq!(c.invalid_rate, 0.0);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&str, &str)] = &[
            ("SOURCE_ADDR", "localhost"),
            ("SOURCE_ADDR", "no-such-host.invalid:8080"),
            ("SOURCE_ADDR", "0.0.0.0"),
            ("SOURCE_ADDR", "0.0.0.0:99999"),
            ("SOURCE_THREADS", "abc"),
            ("SOURCE_THREADS", "0"),
            ("SOURCE_THREADS", "1025"),
            ("SOURCE_THREADS", "-1"),
            ("SOURCE_THREADS", "2.5"),
            ("SOURCE_SEED", "-1"),
            ("SOURCE_SEED", "18446744073709551616"),
            ("SOURCE_SEED", "0x10"),
            ("SOURCE_INVALID_RATE", "2"),
            ("SOURCE_INVALID_RATE", "-0.1"),
            ("SOURCE_INVALID_RATE", "NaN"),
            ("SOURCE_INVALID_RATE", "inf"),
            ("SOURCE_INVALID_RATE", "5%"),
            ("SOURCE_PRELOAD", "-5"),
            ("SOURCE_PRELOAD", "lots"),
            ("SOURCE_LOG_CAPACITY", "0"),
            ("SOURCE_LOG_CAPACITY", "1e6"),
            ("LOG_LEVEL", "verbose"),
            ("LOG_LEVEL", "off"),
            ("SOURCE_MAX_CONNECTIONS", "0"),
            ("SOURCE_MAX_CONNECTIONS", "16385"),
            ("SOURCE_MAX_CONNECTIONS", "many"),
        ];
        for (var, value) in cases {
            assert_eq!(error_var(&[(var, value)]), *var, "{var}={value}");
        }
    }

    #[test]
    fn error_message_is_one_line_naming_variable_value_and_what_is_accepted() {
        let e = config(&[("SOURCE_THREADS", "abc")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid configuration: SOURCE_THREADS: "abc" is not a whole number from 1 to 1024"#
        );
        let e = config(&[("SOURCE_INVALID_RATE", "2\nrm -rf")]).unwrap_err();
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.starts_with("invalid configuration: SOURCE_INVALID_RATE: "));
        assert!(text.ends_with("is not a number from 0 to 1, such as 0.05"));
    }

    #[test]
    fn first_bad_variable_in_a_fixed_order_is_reported() {
        // Deterministic reporting: the same environment always gives the same line.
        let e = config(&[("LOG_LEVEL", "loud"), ("SOURCE_THREADS", "x")]).unwrap_err();
        assert_eq!(e.var, "SOURCE_THREADS");
    }
}
