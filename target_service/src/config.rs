//! The one place configuration is read: every variable of SPEC §3, its
//! default, and the message an operator sees when a value is bad.
//!
//! `Config::from_env` loads `.env` (the real environment wins) and reads the
//! process environment; `Config::from_lookup` takes any lookup so tests need
//! not touch the environment. Nothing else in the crate reads variables.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

/// Where and how to reach PostgreSQL, plus a description safe to log.
#[derive(Clone)]
pub struct DatabaseConfig {
    pub connection: postgres::Config,
    /// `host:port/dbname as user`, never the password.
    pub description: String,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub source_url: String,
    pub sync_interval: Duration,
    pub metrics_addr: SocketAddr,
    pub writer_threads: usize,
    pub db_pool_size: u32,
    pub fetch_limit: usize,
    pub channel_capacity: usize,
    pub http_timeout: Duration,
    pub max_response_bytes: u64,
    pub max_future_skew: Duration,
    pub shutdown_timeout: Duration,
    pub log_level: LevelFilter,
    /// `ADMIN_TOKEN`: the bearer token `GET /rejections` asks for; unset
    /// (the default) keeps the endpoint closed.
    pub admin_token: Option<crate::admin::AdminToken>,
}

/// A variable whose value cannot be used; displays as one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}: {}",
            self.variable, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

/// The variable a `.env` line sets (`NAME=…` or `export NAME=…`), if it
/// reads as one.
fn env_line_variable(line: &str) -> Option<&str> {
    let (name, _) = line.split_once('=')?;
    let name = name.trim();
    let name = name.strip_prefix("export ").unwrap_or(name).trim();
    let plausible = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    plausible.then_some(name)
}

const MAX_THREADS: usize = 256;
const HOUR: f64 = 3600.0;
const DAY: f64 = 24.0 * HOUR;

impl Config {
    /// Reads `.env` from the working directory (if present) and then the
    /// environment, which wins over the file.
    pub fn from_env() -> Result<Config, ConfigError> {
        // Only the working directory's .env, not one further up the tree.
        match dotenvy::from_path(".env") {
            Ok(_) => {}
            Err(err) if err.not_found() => {}
            Err(dotenvy::Error::LineParse(line, _)) => {
                // The parser's own message quotes the line, which may hold
                // the password: name its variable at most.
                return Err(ConfigError {
                    variable: ".env",
                    problem: match env_line_variable(&line) {
                        Some(name) => format!("the line setting {name} cannot be parsed"),
                        None => "a line cannot be parsed".to_owned(),
                    },
                });
            }
            Err(err) => {
                return Err(ConfigError {
                    variable: ".env",
                    problem: format!("the file cannot be read: {err}"),
                })
            }
        }
        // A value that is not UTF-8 is reported as bad rather than ignored.
        Config::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Builds the configuration from a lookup; unset and empty values take
    /// their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars(&lookup);
        let writer_threads = vars.number("WRITER_THREADS", 4, 1, MAX_THREADS)?;
        let default_pool = u32::try_from(writer_threads + 2).unwrap_or(u32::MAX);
        Ok(Config {
            database: database_config(&vars)?,
            source_url: vars
                .http_url("SOURCE_SERVICE_URL", "http://localhost:8080/users/changes")?,
            sync_interval: vars.seconds("SYNC_INTERVAL", 15.0, 0.001, DAY)?,
            metrics_addr: vars.socket_addr("METRICS_ADDR", "0.0.0.0:2112")?,
            writer_threads,
            db_pool_size: vars.number("DB_POOL_SIZE", default_pool, 2, 1024)?,
            fetch_limit: vars.number("FETCH_LIMIT", 1000, 1, 10_000)?,
            channel_capacity: vars.number("CHANNEL_CAPACITY", 4096, 1, 1 << 24)?,
            http_timeout: vars.seconds("HTTP_TIMEOUT_SECS", 10.0, 0.001, HOUR)?,
            max_response_bytes: vars.number("MAX_RESPONSE_BYTES", 64 << 20, 1, 1 << 40)?,
            max_future_skew: vars.seconds(
                "MAX_FUTURE_SKEW_SECS",
                300.0,
                0.0,
                10.0 * 365.0 * DAY,
            )?,
            shutdown_timeout: vars.seconds("SHUTDOWN_TIMEOUT_SECS", 10.0, 0.001, HOUR)?,
            log_level: log_level(&vars)?,
            admin_token: (vars.get("ADMIN_TOKEN").as_deref())
                .map(crate::admin::AdminToken::new)
                .transpose()
                .map_err(|problem| ConfigError {
                    variable: "ADMIN_TOKEN",
                    problem,
                })?,
        })
    }
}

/// Reads `LOG_LEVEL` the same way both services do.
pub fn log_level_from(value: Option<&str>) -> Result<LevelFilter, ConfigError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(LevelFilter::Info),
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "error" => Ok(LevelFilter::Error),
            "warn" => Ok(LevelFilter::Warn),
            "info" => Ok(LevelFilter::Info),
            "debug" => Ok(LevelFilter::Debug),
            "trace" => Ok(LevelFilter::Trace),
            _ => Err(ConfigError {
                variable: "LOG_LEVEL",
                problem: format!("{text:?} is not one of error, warn, info, debug, trace"),
            }),
        },
    }
}

fn log_level(vars: &Vars<'_>) -> Result<LevelFilter, ConfigError> {
    log_level_from(vars.get("LOG_LEVEL").as_deref())
}

fn database_config(vars: &Vars<'_>) -> Result<DatabaseConfig, ConfigError> {
    let mut connection = if let Some(url) = vars.get("DATABASE_URL") {
        // The URL may hold the password, so it is never echoed back.
        postgres::Config::from_str(&url).map_err(|err| ConfigError {
            variable: "DATABASE_URL",
            problem: format!(
                "not a PostgreSQL URL such as postgres://user:password@host:5432/dbname ({err})"
            ),
        })?
    } else {
        let mut connection = postgres::Config::new();
        connection
            .host(
                &vars
                    .get("DB_HOST")
                    .unwrap_or_else(|| "localhost".to_owned()),
            )
            .port(vars.number("DB_PORT", 5432u16, 1, u16::MAX)?)
            .user(&vars.get("DB_USER").unwrap_or_else(|| "postgres".to_owned()))
            .dbname(
                &vars
                    .get("DB_NAME")
                    .unwrap_or_else(|| "target_service".to_owned()),
            );
        if let Some(password) = vars.get("DB_PASSWORD") {
            connection.password(password);
        }
        connection
    };
    if connection.get_hosts().is_empty() {
        connection.host("localhost");
    }
    if connection.get_user().is_none() {
        connection.user("postgres");
    }
    if connection.get_connect_timeout().is_none() {
        connection.connect_timeout(Duration::from_secs(5));
    }
    connection.application_name("target_service");
    let description = describe(&connection);
    Ok(DatabaseConfig {
        connection,
        description,
    })
}

fn describe(connection: &postgres::Config) -> String {
    let host = match connection.get_hosts().first() {
        Some(postgres::config::Host::Tcp(name)) => name.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = connection.get_ports().first().copied().unwrap_or(5432);
    let user = connection.get_user().unwrap_or("postgres");
    let dbname = connection.get_dbname().unwrap_or(user);
    format!("{host}:{port}/{dbname} as {user}")
}

struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    fn number<T>(&self, name: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.trim().parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(ConfigError {
                variable: name,
                problem: format!("{text:?} is not a whole number from {min} to {max}"),
            }),
        }
    }

    /// A number of seconds within `min..=max` (fractions allowed). The
    /// bounds keep every later use of the duration (timers, deadlines,
    /// clock arithmetic) far from overflow.
    fn seconds(
        &self,
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = self.get(name) else {
            return Ok(Duration::from_secs_f64(default));
        };
        match text.trim().parse::<f64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(Duration::from_secs_f64(value)),
            _ => Err(ConfigError {
                variable: name,
                problem: format!(
                    "{text:?} is not a number of seconds from {min} to {max} (fractions allowed)"
                ),
            }),
        }
    }

    fn socket_addr(&self, name: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let text = self.get(name).unwrap_or_else(|| default.to_owned());
        let problem = || ConfigError {
            variable: name,
            problem: format!(
                "{text:?} is not a listen address such as 0.0.0.0:2112 (or :2112 for every address)"
            ),
        };
        let text = text.trim();
        // `:2112`, as Go services write it, listens on every address.
        let every_address;
        let text = match text.strip_prefix(':') {
            Some(port) => {
                every_address = format!("0.0.0.0:{port}");
                &every_address
            }
            None => text,
        };
        text.to_socket_addrs()
            .map_err(|_| problem())?
            .next()
            .ok_or_else(problem)
    }

    fn http_url(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let text = self.get(name).unwrap_or_else(|| default.to_owned());
        let text = text.trim().to_owned();
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"));
        match rest {
            Some(rest)
                if !rest.is_empty()
                    && !rest.starts_with('/')
                    && !text.contains(char::is_whitespace) =>
            {
                Ok(text)
            }
            _ => Err(ConfigError {
                variable: name,
                problem: format!("{text:?} is not an http:// or https:// URL"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn error_variable(pairs: &[(&str, &str)]) -> &'static str {
        config(pairs).expect_err("should be rejected").variable
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.source_url, "http://localhost:8080/users/changes");
        assert_eq!(c.sync_interval, Duration::from_secs(15));
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:2112");
        assert_eq!(c.writer_threads, 4);
        assert_eq!(c.db_pool_size, 6);
        assert_eq!(c.fetch_limit, 1000);
        assert_eq!(c.channel_capacity, 4096);
        assert_eq!(c.http_timeout, Duration::from_secs(10));
        assert_eq!(c.max_response_bytes, 67_108_864);
        assert_eq!(c.max_future_skew, Duration::from_secs(300));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(
            c.database.description,
            "localhost:5432/target_service as postgres"
        );
    }

    #[test]
    fn pool_size_follows_writer_threads_unless_set() {
        assert_eq!(config(&[("WRITER_THREADS", "8")]).unwrap().db_pool_size, 10);
        assert_eq!(
            config(&[("WRITER_THREADS", "8"), ("DB_POOL_SIZE", "3")])
                .unwrap()
                .db_pool_size,
            3
        );
    }

    #[test]
    fn database_url_wins_over_db_variables() {
        let c = config(&[
            (
                "DATABASE_URL",
                "postgres://app:secret@db.internal:6543/profiles",
            ),
            ("DB_HOST", "ignored"),
            ("DB_NAME", "ignored"),
        ])
        .unwrap();
        assert_eq!(c.database.description, "db.internal:6543/profiles as app");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn db_variables_build_the_connection_without_showing_the_password() {
        let c = config(&[
            ("DB_HOST", "pg"),
            ("DB_PORT", "5433"),
            ("DB_PASSWORD", "hunter2"),
            ("DB_NAME", "x"),
        ])
        .unwrap();
        assert_eq!(c.database.description, "pg:5433/x as postgres");
        assert_eq!(c.database.connection.get_password(), Some(&b"hunter2"[..]));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn fractional_intervals_are_allowed() {
        let c = config(&[("SYNC_INTERVAL", "0.25")]).unwrap();
        assert_eq!(c.sync_interval, Duration::from_millis(250));
    }

    #[test]
    fn a_port_alone_listens_on_every_address() {
        let c = config(&[("METRICS_ADDR", ":9090")]).unwrap();
        assert_eq!(c.metrics_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(error_variable(&[("METRICS_ADDR", ":")]), "METRICS_ADDR");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (variable, value) in [
            ("SYNC_INTERVAL", "0"),
            ("SYNC_INTERVAL", "-1"),
            ("SYNC_INTERVAL", "abc"),
            ("SYNC_INTERVAL", "NaN"),
            ("SYNC_INTERVAL", "1e19"),
            ("SYNC_INTERVAL", "1e-12"),
            ("MAX_FUTURE_SKEW_SECS", "1e13"),
            ("SHUTDOWN_TIMEOUT_SECS", "1e19"),
            ("WRITER_THREADS", "abc"),
            ("WRITER_THREADS", "0"),
            ("WRITER_THREADS", "-2"),
            ("DB_POOL_SIZE", "1"),
            ("DB_PORT", "70000"),
            ("FETCH_LIMIT", "0"),
            ("FETCH_LIMIT", "10001"),
            ("CHANNEL_CAPACITY", "0"),
            ("HTTP_TIMEOUT_SECS", "0"),
            ("MAX_RESPONSE_BYTES", "lots"),
            ("MAX_FUTURE_SKEW_SECS", "-5"),
            ("SHUTDOWN_TIMEOUT_SECS", "soon"),
            ("METRICS_ADDR", "not an address"),
            ("SOURCE_SERVICE_URL", "ftp://example.com/x"),
            ("SOURCE_SERVICE_URL", "localhost:8080"),
            ("DATABASE_URL", "postgres://user:pw@host:notaport/db"),
            ("LOG_LEVEL", "verbose"),
        ] {
            assert_eq!(
                error_variable(&[(variable, value)]),
                variable,
                "{variable}={value}"
            );
        }
    }

    #[test]
    fn a_bad_database_url_is_reported_without_its_password() {
        let err =
            config(&[("DATABASE_URL", "postgres://user:s3cret@host:notaport/db")]).unwrap_err();
        let line = err.to_string();
        assert!(
            line.starts_with("invalid configuration: DATABASE_URL: "),
            "{line}"
        );
        assert!(!line.contains("s3cret"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn empty_values_take_their_defaults() {
        let c = config(&[("WRITER_THREADS", ""), ("LOG_LEVEL", " ")]).unwrap();
        assert_eq!(c.writer_threads, 4);
        assert_eq!(c.log_level, LevelFilter::Info);
    }
}
