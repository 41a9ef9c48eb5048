//! The one place configuration is read: every variable of SPEC §3, its
//! default, and the message an operator sees when a value is bad.
//!
//! `Config::from_env` loads `.env` (the real environment wins) and reads the
//! process environment; `Config::from_lookup` takes any lookup so tests need
//! not touch the environment. Nothing else in the crate reads variables.
//!
//! A secret (`DB_PASSWORD`, `SOURCE_TOKEN`, …) is read with
//! [`Vars::secret`], held as a [`Secret`] and listed by
//! [`Config::secrets`], so that [`crate::secrets`] masks it everywhere.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::secrets::{mask_url_user_info, percent_decode, redact_urls, url_user_info, Secret};
use crate::tls::{self, Roots, SslMode};

/// Where and how to reach PostgreSQL, plus a description safe to log.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Everything but how to check the server's certificate; its
    /// `ssl_mode` says only whether TLS is asked for.
    pub connection: postgres::Config,
    /// `sslmode` as libpq reads it (`require` with trusted roots at hand
    /// already turned into `verify-ca`, as libpq does).
    pub ssl_mode: SslMode,
    /// The TLS connector every connection uses (see [`crate::pool`]).
    pub tls: MakeRustlsConnect,
    /// `host:port/dbname as user`, never the password.
    pub description: String,
}

impl DatabaseConfig {
    /// `host:port/dbname`: where the service looks for its database.
    pub fn address(&self) -> String {
        address(&self.connection)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// `SOURCE_SERVICE_URL` as given (it may hold user-info: log it only
    /// through [`crate::secrets::redact`]).
    pub source_url: String,
    /// `SOURCE_TOKEN`: sent as `Authorization: Bearer` when set.
    pub source_token: Option<Secret>,
    /// How an `https://` source is verified (`SOURCE_CA_FILE` or the
    /// system's roots); `None` for `http://`.
    pub source_roots: Option<Roots>,
    pub sync_interval: Duration,
    pub metrics_addr: SocketAddr,
    /// `MAX_CONNECTIONS`: most connections the metrics server keeps open
    /// (never more than the descriptor limit allows); at the cap, idle ones
    /// are closed to make room for new ones.
    pub max_connections: usize,
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
    pub admin_token: Option<crate::ops::admin::AdminToken>,
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
    /// environment, which wins over the file. A bad value that came from
    /// `.env` says so, with its line.
    pub fn from_env() -> Result<Config, ConfigError> {
        // Only the working directory's .env, not one further up the tree.
        let dotenv = read_dotenv(Path::new(".env"))?;
        // A value that is not UTF-8 is reported as bad rather than ignored.
        let from_process =
            |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
        let config = Config::from_lookup(|name| {
            from_process(name).or_else(|| dotenv.get(name).map(|(value, _)| value.clone()))
        })
        .map_err(|mut err| {
            if from_process(err.variable).is_none() {
                if let Some((_, line)) = dotenv.get(err.variable) {
                    err.problem.push_str(&format!(" (set in .env line {line})"));
                }
            }
            err
        })?;
        // Whatever runs with this configuration (the service or a command)
        // masks its secrets from the first log line on.
        crate::secrets::register(config.secrets().iter().map(String::as_str));
        Ok(config)
    }

    /// Builds the configuration from a lookup; unset and empty values take
    /// their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars(&lookup);
        let writer_threads = vars.number("WRITER_THREADS", 4, 1, MAX_THREADS)?;
        let default_pool = u32::try_from(writer_threads + 2).unwrap_or(u32::MAX);
        let source_url = source_url(&vars)?;
        Ok(Config {
            database: database_config(&vars)?,
            source_roots: source_roots(&vars, &source_url)?,
            source_url,
            source_token: vars.secret("SOURCE_TOKEN"),
            sync_interval: vars.seconds("SYNC_INTERVAL", 15.0, 0.001, DAY)?,
            metrics_addr: vars.socket_addr("METRICS_ADDR", "0.0.0.0:2112")?,
            max_connections: vars.number(
                "MAX_CONNECTIONS",
                http_server::DEFAULT_MAX_CONNECTIONS,
                1,
                16_384,
            )?,
            writer_threads,
            db_pool_size: vars.number("DB_POOL_SIZE", default_pool, 2, 1024)?,
            fetch_limit: vars.number("FETCH_LIMIT", 5000, 1, 10_000)?,
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
                .map(crate::ops::admin::AdminToken::new)
                .transpose()
                .map_err(|problem| ConfigError {
                    variable: "ADMIN_TOKEN",
                    problem,
                })?,
        })
    }

    /// Every secret of the configuration, for [`crate::secrets::register`].
    /// A new secret variable belongs here too.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        if let Some(password) = self.database.connection.get_password() {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
        if let Ok(url) = url::Url::parse(&self.source_url) {
            if let Some(password) = url.password() {
                secrets.push(percent_decode(password));
            }
            if !url.username().is_empty() {
                secrets.push(percent_decode(url.username()));
            }
        }
        secrets.extend(self.source_token.iter().map(|t| t.expose().to_owned()));
        secrets.extend(self.admin_token.iter().map(|t| t.expose().to_owned()));
        secrets
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
/// misspelling of ours, and for each key of `.env` (ours alone) that is not
/// one of ours. Names only, never a value. Never fatal: a `.env` that
/// cannot be read is reported by [`Config::from_env`].
pub fn variable_warnings() -> Vec<String> {
    let environment: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    let mut dotenv: Vec<(String, usize)> = read_dotenv(Path::new(".env"))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, (_, line))| (name, line))
        .collect();
    dotenv.sort_by_key(|(_, line)| *line);
    warnings_for(&variable_names(), &environment, &dotenv)
}

fn warnings_for(
    ours: &[String],
    environment: &[String],
    dotenv: &[(String, usize)],
) -> Vec<String> {
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    let not_ours = "is not a variable of target_service";
    let mut lines = Vec::new();
    for name in environment {
        if let Some(meant) = http_server::misspelling::meant(name, &ours) {
            lines.push(format!("warning: {name} {not_ours}; did you mean {meant}?"));
        }
    }
    for (name, line) in dotenv {
        if ours.contains(&name.as_str()) {
            continue;
        }
        let hint = http_server::misspelling::meant(name, &ours)
            .map_or(String::new(), |meant| format!("; did you mean {meant}?"));
        lines.push(format!(
            "warning: .env line {line}: {name} {not_ours}{hint}"
        ));
    }
    lines
}

/// The variables `.env` sets, each with its value and the line that sets
/// it (the first such line: the first one wins, as the real environment
/// would keep it).
fn read_dotenv(path: &Path) -> Result<HashMap<String, (String, usize)>, ConfigError> {
    let bad = |problem: String| ConfigError {
        variable: ".env",
        problem,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(err) => return Err(bad(format!("the file cannot be read: {err}"))),
    };
    let line_setting = |name: &str| {
        text.lines()
            .position(|line| env_line_variable(line) == Some(name))
            .map_or(0, |index| index + 1)
    };
    let mut vars = HashMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((name, value)) => {
                let line = line_setting(&name);
                vars.entry(name).or_insert((value, line));
            }
            Err(dotenvy::Error::LineParse(bad_line, _)) => {
                // The parser's own message quotes the line, which may hold
                // the password: name its number and variable at most.
                let first = bad_line.lines().next().unwrap_or("").trim();
                let number = text
                    .lines()
                    .position(|line| line.trim() == first)
                    .map_or(String::new(), |index| format!("line {}", index + 1));
                let what = match env_line_variable(&bad_line) {
                    Some(name) => format!("the line setting {name}"),
                    None => "a line".to_owned(),
                };
                let at = if number.is_empty() {
                    String::new()
                } else {
                    format!("{number}: ")
                };
                return Err(bad(format!(
                    "{at}{what} cannot be parsed (expected NAME=value)"
                )));
            }
            Err(err) => return Err(bad(format!("the file cannot be read: {err}"))),
        }
    }
    Ok(vars)
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
    // Which variables the TLS settings came from, for messages.
    let (mut connection, tls_params, mode_var, root_var) =
        if let Some(url) = vars.get("DATABASE_URL") {
            check_database_url_form(&url)?;
            let (rest, params) = split_tls_params(&url);
            // The URL may hold the password, so it is never echoed back.
            let connection = postgres::Config::from_str(&rest).map_err(|err| ConfigError {
                variable: "DATABASE_URL",
                problem: format!(
                    "not a PostgreSQL URL such as postgres://user:password@host:5432/dbname ({})",
                    redact_urls(&err.to_string())
                ),
            })?;
            (connection, params, "DATABASE_URL", "DATABASE_URL")
        } else {
            let mut connection = postgres::Config::new();
            db_servers(vars, &mut connection)?;
            connection
                .user(&vars.get("DB_USER").unwrap_or_else(|| "postgres".to_owned()))
                .dbname(
                    &vars
                        .get("DB_NAME")
                        .unwrap_or_else(|| "target_service".to_owned()),
                );
            if let Some(password) = vars.secret("DB_PASSWORD") {
                connection.password(password.expose());
            }
            let params = TlsParams {
                mode: vars.get("DB_SSLMODE"),
                root_cert: vars.get("DB_SSLROOTCERT"),
            };
            (connection, params, "DB_SSLMODE", "DB_SSLROOTCERT")
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

    let (ssl_mode, roots) = resolve_tls(vars, &tls_params, mode_var, root_var)?;
    connection.ssl_mode(ssl_mode.for_postgres());
    let client =
        tls::postgres_client_config(ssl_mode, roots.as_ref()).map_err(|problem| ConfigError {
            variable: root_var,
            problem,
        })?;
    let mut description = describe(&connection);
    if ssl_mode != SslMode::Prefer {
        description.push_str(&format!(", sslmode={}", ssl_mode.as_str()));
    }
    Ok(DatabaseConfig {
        connection,
        ssl_mode,
        tls: MakeRustlsConnect::new(client),
        description,
    })
}

/// The servers of the `DB_*` form: `DB_HOST` may name several, comma
/// separated, as libpq's `host` does, and `DB_PORT` is then one port for
/// all of them or one per host. With several servers the target asks for
/// the one that accepts writes (`target_session_attrs=read-write`), since
/// a standby can take none of its writes.
fn db_servers(vars: &Vars<'_>, connection: &mut postgres::Config) -> Result<(), ConfigError> {
    let hosts_text = vars
        .get("DB_HOST")
        .unwrap_or_else(|| "localhost".to_owned());
    let hosts: Vec<&str> = hosts_text.split(',').map(str::trim).collect();
    if hosts.iter().any(|host| host.is_empty()) {
        return Err(ConfigError {
            variable: "DB_HOST",
            problem: format!(
                "{hosts_text:?} has an empty host name (several servers are written host1,host2)"
            ),
        });
    }
    let ports_text = vars.get("DB_PORT").unwrap_or_else(|| "5432".to_owned());
    let ports = ports_text
        .split(',')
        .map(|port| match port.trim().parse::<u16>() {
            Ok(port) if port >= 1 => Ok(port),
            _ => Err(ConfigError {
                variable: "DB_PORT",
                problem: format!(
                    "{ports_text:?} is not a whole number from 1 to 65535, nor one per DB_HOST server, comma separated"
                ),
            }),
        })
        .collect::<Result<Vec<u16>, ConfigError>>()?;
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(ConfigError {
            variable: "DB_PORT",
            problem: format!(
                "{ports_text:?} names {} ports for {} DB_HOST servers: give one port, or one per server",
                ports.len(),
                hosts.len()
            ),
        });
    }
    for host in &hosts {
        connection.host(host);
    }
    for port in ports {
        connection.port(port);
    }
    if hosts.len() > 1 {
        connection.target_session_attrs(postgres::config::TargetSessionAttrs::ReadWrite);
    }
    Ok(())
}

/// A `DATABASE_URL` is a `postgres://` or `postgresql://` URL, or libpq's
/// `key=value` form (`host=… dbname=…`); anything else (`localhost:5432/db`,
/// `mysql://…`) is refused for what it lacks, without echoing it, since it
/// may hold the password.
fn check_database_url_form(text: &str) -> Result<(), ConfigError> {
    let text = text.trim();
    let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
    let is_key_value = !text.contains("://") && text.contains('=');
    if is_url || is_key_value {
        return Ok(());
    }
    Err(ConfigError {
        variable: "DATABASE_URL",
        problem: "must start with postgres:// or postgresql://".to_owned(),
    })
}

/// libpq's TLS parameters as found in a connection string or `DB_*`.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, whose
/// parser knows only some of libpq's values, and percent-encodes the
/// user-info of a URL, so that a password with an unencoded `@` or `/`
/// reads as it was meant: user-info ends at the authority's last `@`.
fn split_tls_params(text: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let text = text.trim();
    let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
    if !is_url {
        // The key=value form: `host=… sslmode=verify-full …`.
        let mut kept = Vec::new();
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("sslmode", value)) => params.mode = Some(value.to_owned()),
                Some(("sslrootcert", value)) => params.root_cert = Some(value.to_owned()),
                _ => kept.push(word),
            }
        }
        return (kept.join(" "), params);
    }
    let scheme_end = text.find("://").map_or(0, |at| at + 3);
    let (scheme, rest) = text.split_at(scheme_end);
    let query_at = rest.find('?').unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_at);
    let mut out = scheme.to_owned();
    let host_part = match before_query.rfind('@') {
        Some(at) => {
            for c in before_query[..at].chars() {
                match c {
                    '@' | '/' | '#' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
                    _ => out.push(c),
                }
            }
            out.push('@');
            &before_query[at + 1..]
        }
        None => before_query,
    };
    out.push_str(host_part);
    let kept: Vec<&str> = query
        .trim_start_matches('?')
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", value)) => {
                params.mode = Some(percent_decode(value));
                false
            }
            Some(("sslrootcert", value)) => {
                params.root_cert = Some(percent_decode(value));
                false
            }
            _ => true,
        })
        .collect();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    (out, params)
}

/// Decides `sslmode` and the trusted roots as libpq does: `prefer` by
/// default; `sslrootcert=system` means the system's roots (and
/// `verify-full` unless told otherwise); `verify-ca`/`verify-full` without
/// `sslrootcert` use `~/.postgresql/root.crt`; `require` with trusted
/// roots at hand checks the chain, like `verify-ca`.
fn resolve_tls(
    vars: &Vars<'_>,
    params: &TlsParams,
    mode_var: &'static str,
    root_var: &'static str,
) -> Result<(SslMode, Option<Roots>), ConfigError> {
    let bad = |variable, problem| ConfigError { variable, problem };
    let named_root = params.root_cert.as_deref().map(str::trim);
    let mut mode = match params.mode.as_deref() {
        Some(text) => SslMode::parse(text).ok_or_else(|| {
            bad(
                mode_var,
                format!("sslmode {text:?} is not one of {}", SslMode::ACCEPTED),
            )
        })?,
        None if named_root == Some("system") => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    let mut roots = match named_root {
        Some("system") => Some(Roots::system().map_err(|why| bad(root_var, why))?),
        Some(path) => Some(
            Roots::from_pem_file(Path::new(path))
                .map_err(|why| bad(root_var, format!("sslrootcert: {why}")))?,
        ),
        None => None,
    };
    let checks = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if roots.is_none() && (checks || mode == SslMode::Require) {
        let default = vars
            .get("HOME")
            .map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
        match default {
            Some(path) if path.exists() => {
                roots = Some(
                    Roots::from_pem_file(&path)
                        .map_err(|why| bad(root_var, format!("sslrootcert: {why}")))?,
                );
            }
            _ if checks => {
                return Err(bad(
                    mode_var,
                    format!(
                        "sslmode={} needs sslrootcert: a PEM file of the CA that signed the \
                         server's certificate, or `system` for the system's roots \
                         (~/.postgresql/root.crt does not exist either)",
                        mode.as_str()
                    ),
                ))
            }
            _ => {}
        }
    }
    if mode == SslMode::Require && roots.is_some() {
        mode = SslMode::VerifyCa;
    }
    if mode == SslMode::Disable || mode == SslMode::Prefer {
        roots = None;
    }
    Ok((mode, roots))
}

fn describe(connection: &postgres::Config) -> String {
    let user = connection.get_user().unwrap_or("postgres");
    format!("{} as {user}", address(connection))
}

/// `host:port/dbname` (`host1:port1,host2:port2/dbname` for several
/// servers), the database defaulting to the user's name as in PostgreSQL.
fn address(connection: &postgres::Config) -> String {
    let ports = connection.get_ports();
    let port_of = |at: usize| match ports {
        [one] => *one,
        _ => ports.get(at).copied().unwrap_or(5432),
    };
    let servers: Vec<String> = connection
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(at, host)| {
            let name = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            format!("{name}:{}", port_of(at))
        })
        .collect();
    let servers = match servers.is_empty() {
        true => format!("localhost:{}", port_of(0)),
        false => servers.join(","),
    };
    let user = connection.get_user().unwrap_or("postgres");
    let dbname = connection.get_dbname().unwrap_or(user);
    format!("{servers}/{dbname}")
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
        http_server::listen_addr(text.trim()).ok_or_else(problem)
    }

    /// A secret: never echoed in a message, masked in logs once registered.
    fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }
}

/// `SOURCE_SERVICE_URL`: an `http://` or `https://` URL with a host.
fn source_url(vars: &Vars<'_>) -> Result<String, ConfigError> {
    const NAME: &str = "SOURCE_SERVICE_URL";
    let text = vars
        .get(NAME)
        .unwrap_or_else(|| "http://localhost:8080/users/changes".to_owned());
    let text = text.trim().to_owned();
    let problem = |why: &str| ConfigError {
        variable: NAME,
        // User-info in the URL is a credential: never shown, however the
        // URL is broken.
        problem: format!("{:?} {why}", mask_url_user_info(&text)),
    };
    let parsed = url::Url::parse(&text)
        .map_err(|err| problem(&format!("is not an http:// or https:// URL ({err})")))?;
    // What the URL's parser takes as user-info must be all up to the last
    // `@` (a password in `http://u:12#pw@host/` would be a fragment, shown
    // and never masked).
    if let Some(user_info) = url_user_info(&text) {
        let parsed_user_info = match parsed.password() {
            Some(password) => format!("{}:{password}", parsed.username()),
            None => parsed.username().to_owned(),
        };
        // `u:@host` has an empty password, which the parser drops.
        let user_info = user_info.strip_suffix(':').unwrap_or(&user_info);
        if percent_decode(&parsed_user_info) != user_info {
            return Err(problem(
                "cannot be read safely: all up to its last @ is the user name and password, \
                 which must write @ / ? # and spaces as %40 %2F %3F %23 %20 (an @ in the path \
                 or query, too)",
            ));
        }
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(problem(&format!(
            "is not an http:// or https:// URL (scheme {:?})",
            parsed.scheme()
        )));
    }
    // `http:///x` would read as host `x`: a host must follow `//`.
    let after_slashes = text.split_once("://").map_or("", |(_, rest)| rest);
    if parsed.host_str().is_none_or(str::is_empty)
        || after_slashes.starts_with('/')
        || text.contains(char::is_whitespace)
    {
        return Err(problem("is not an http:// or https:// URL with a host"));
    }
    // What the HTTP client reads: a host of ASCII only, say.
    if let Err(err) = text.parse::<ureq::http::Uri>() {
        return Err(problem(&format!(
            "cannot be fetched ({err}; write a host that is not ASCII in punycode, xn--…, and other characters as %XX)"
        )));
    }
    Ok(text)
}

/// How an `https://` source is checked: against `SOURCE_CA_FILE` when set,
/// else the system's roots. The file is read (and must hold a certificate)
/// even for an `http://` source, so a mistake in it shows at once.
fn source_roots(vars: &Vars<'_>, url: &str) -> Result<Option<Roots>, ConfigError> {
    let ca_file = match vars.get("SOURCE_CA_FILE") {
        Some(path) => Some(
            Roots::from_pem_file(Path::new(path.trim())).map_err(|problem| ConfigError {
                variable: "SOURCE_CA_FILE",
                problem,
            })?,
        ),
        None => None,
    };
    if !url.to_ascii_lowercase().starts_with("https://") {
        return Ok(None);
    }
    match ca_file {
        Some(roots) => Ok(Some(roots)),
        None => Roots::system().map(Some).map_err(|why| ConfigError {
            variable: "SOURCE_SERVICE_URL",
            problem: format!(
                "an https:// source needs trusted roots: {why}; or set SOURCE_CA_FILE"
            ),
        }),
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
        assert_eq!(c.fetch_limit, 5000);
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
    fn db_host_may_name_several_servers_and_then_asks_for_the_writable_one() {
        let c = config(&[("DB_HOST", "db1, db2"), ("DB_PORT", "5433,5434")]).unwrap();
        let connection = &c.database.connection;
        assert_eq!(connection.get_hosts().len(), 2);
        assert_eq!(connection.get_ports(), [5433, 5434]);
        assert_eq!(
            connection.get_target_session_attrs(),
            postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            c.database.description,
            "db1:5433,db2:5434/target_service as postgres"
        );
        let one_port = config(&[("DB_HOST", "db1,db2"), ("DB_PORT", "6000")]).unwrap();
        assert_eq!(one_port.database.connection.get_ports(), [6000]);
        assert_eq!(
            one_port.database.description,
            "db1:6000,db2:6000/target_service as postgres"
        );
        let single = config(&[("DB_HOST", "db1")]).unwrap();
        assert_eq!(
            single.database.connection.get_target_session_attrs(),
            postgres::config::TargetSessionAttrs::Any
        );
        for (vars, named) in [
            (&[("DB_HOST", "db1,,db2")][..], "DB_HOST"),
            (
                &[("DB_HOST", "db1,db2"), ("DB_PORT", "1,2,3")][..],
                "DB_PORT",
            ),
            (&[("DB_HOST", "db1,db2"), ("DB_PORT", "1,x")][..], "DB_PORT"),
        ] {
            let err = config(vars).unwrap_err();
            assert_eq!(err.variable, named, "{vars:?}: {err}");
        }
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
    fn max_connections_is_read_within_its_bounds() {
        assert_eq!(config(&[]).unwrap().max_connections, 512);
        let c = config(&[("MAX_CONNECTIONS", " 64 ")]).unwrap();
        assert_eq!(c.max_connections, 64);
        for bad in ["0", "16385", "lots", "-1"] {
            let err = config(&[("MAX_CONNECTIONS", bad)]).unwrap_err();
            assert_eq!(err.variable, "MAX_CONNECTIONS", "{bad}");
            assert!(err
                .to_string()
                .ends_with("is not a whole number from 1 to 16384"));
        }
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
            ("SOURCE_SERVICE_URL", "http://bücher.example/users/changes"),
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
    fn a_database_url_without_its_scheme_says_so() {
        for url in [
            "localhost:5432/db",
            "user:s3cret@localhost:5432/db",
            "mysql://user:s3cret@h/db?x=1",
            "Postgres://user:s3cret@h/db",
        ] {
            let err = config(&[("DATABASE_URL", url)]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid configuration: DATABASE_URL: must start with postgres:// or postgresql://",
                "{url}"
            );
        }
        for accepted in [
            "postgres://u@h/db",
            "postgresql://u@h/db",
            "host=h user=u dbname=db",
        ] {
            assert!(config(&[("DATABASE_URL", accepted)]).is_ok(), "{accepted}");
        }
    }

    #[test]
    fn empty_values_take_their_defaults() {
        let c = config(&[("WRITER_THREADS", ""), ("LOG_LEVEL", " ")]).unwrap();
        assert_eq!(c.writer_threads, 4);
        assert_eq!(c.log_level, LevelFilter::Info);
    }

    fn ca_file() -> (PathBuf, String) {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let path = std::env::temp_dir().join(format!("ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, ca.cert.pem()).unwrap();
        let shown = path.display().to_string();
        (path, shown)
    }

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let mode = |url: &str| config(&[("DATABASE_URL", url)]).map(|c| c.database.ssl_mode);
        assert_eq!(mode("postgres://u@h/db").unwrap(), SslMode::Prefer);
        assert_eq!(
            mode("postgres://u@h/db?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://u@h/db?sslmode=require").unwrap(),
            SslMode::Require
        );
        let (ca, shown) = ca_file();
        for (query, expected) in [
            ("sslmode=verify-full", SslMode::VerifyFull),
            ("sslmode=verify-ca", SslMode::VerifyCa),
            // require with a root certificate checks the chain, as in libpq.
            ("sslmode=require", SslMode::VerifyCa),
            ("sslmode=prefer", SslMode::Prefer),
        ] {
            let url = format!("postgres://u@h/db?{query}&sslrootcert={shown}&connect_timeout=3");
            let c = config(&[("DATABASE_URL", &url)]).unwrap();
            assert_eq!(c.database.ssl_mode, expected, "{query}");
            assert_eq!(
                c.database.connection.get_connect_timeout(),
                Some(&Duration::from_secs(3)),
                "other parameters are kept"
            );
        }
        let c = config(&[("DB_SSLMODE", "verify-full"), ("DB_SSLROOTCERT", &shown)]).unwrap();
        assert_eq!(c.database.ssl_mode, SslMode::VerifyFull);
        assert!(c.database.description.ends_with(", sslmode=verify-full"));
        let c = config(&[(
            "DATABASE_URL",
            &format!("host=h user=u sslmode=verify-ca sslrootcert={shown}"),
        )])
        .unwrap();
        assert_eq!(c.database.ssl_mode, SslMode::VerifyCa);
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn tls_settings_that_cannot_work_stop_start_up() {
        let err =
            config(&[("DATABASE_URL", "postgres://u:pw@h/db?sslmode=verify-full")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(err.problem.contains("needs sslrootcert"), "{err}");
        let err = config(&[("DB_SSLMODE", "verify-ca")]).unwrap_err();
        assert_eq!(err.variable, "DB_SSLMODE");
        let err = config(&[("DB_SSLMODE", "sometimes")]).unwrap_err();
        assert!(err.problem.contains("disable, prefer, require"), "{err}");
        let err = config(&[
            ("DB_SSLMODE", "require"),
            ("DB_SSLROOTCERT", "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "DB_SSLROOTCERT");
        assert!(err.problem.contains("/nonexistent/ca.pem"), "{err}");
        let err = config(&[("SOURCE_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert_eq!(err.variable, "SOURCE_CA_FILE");
        for url in [
            "ftp://h/x",
            "file:///etc/passwd",
            "gopher://h",
            "https://",
            "http:///x",
        ] {
            assert_eq!(
                error_variable(&[("SOURCE_SERVICE_URL", url)]),
                "SOURCE_SERVICE_URL",
                "{url}"
            );
        }
    }

    #[test]
    fn an_https_source_is_checked_against_the_ca_file() {
        let (ca, shown) = ca_file();
        let c = config(&[
            (
                "SOURCE_SERVICE_URL",
                "https://source.test:8443/users/changes",
            ),
            ("SOURCE_CA_FILE", &shown),
            ("SOURCE_TOKEN", "t0ken-value"),
        ])
        .unwrap();
        assert!(c.source_roots.is_some());
        assert_eq!(
            c.source_token.as_ref().map(Secret::expose),
            Some("t0ken-value")
        );
        assert!(!format!("{c:?}").contains("t0ken-value"));
        assert!(
            config(&[]).unwrap().source_roots.is_none(),
            "http needs none"
        );
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn an_unencoded_at_in_the_password_is_part_of_the_password() {
        let c = config(&[(
            "DATABASE_URL",
            "postgres://u:p@ss@db.internal:6543/profiles",
        )])
        .unwrap();
        assert_eq!(c.database.connection.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(c.database.description, "db.internal:6543/profiles as u");
        let c = config(&[("DATABASE_URL", "postgres://u:p%40ss@h/db")]).unwrap();
        assert_eq!(c.database.connection.get_password(), Some(&b"p@ss"[..]));
        assert!(c.secrets().contains(&"p@ss".to_owned()));
    }

    #[test]
    fn secrets_are_listed_and_never_shown_in_a_config_error() {
        let c = config(&[
            ("DB_PASSWORD", "db-secret"),
            (
                "SOURCE_SERVICE_URL",
                "https://user:url-secret@h/users/changes",
            ),
            ("SOURCE_TOKEN", "token-secret"),
        ])
        .unwrap();
        let secrets = c.secrets();
        for secret in ["db-secret", "url-secret", "user", "token-secret"] {
            assert!(secrets.contains(&secret.to_owned()), "{secret}");
        }
        let err = config(&[("SOURCE_SERVICE_URL", "ftp://user:url-secret@h/x")]).unwrap_err();
        assert!(!err.to_string().contains("url-secret"), "{err}");
        for accepted in [
            "http://u:@h/x",
            "http://u@h/x",
            "http://u:p%40w@h/x",
            "http://u:p@w@h/x",
        ] {
            assert!(
                config(&[("SOURCE_SERVICE_URL", accepted)]).is_ok(),
                "{accepted}"
            );
        }
    }

    #[test]
    fn every_variable_read_is_known() {
        let names = variable_names();
        for name in [
            "DATABASE_URL",
            "DB_HOST",
            "DB_PASSWORD",
            "DB_SSLMODE",
            "SOURCE_SERVICE_URL",
            "SOURCE_TOKEN",
            "SOURCE_CA_FILE",
            "METRICS_ADDR",
            "SHUTDOWN_TIMEOUT_SECS",
            "LOG_LEVEL",
            "ADMIN_TOKEN",
        ] {
            assert!(names.iter().any(|n| n == name), "{name}: {names:?}");
        }
        assert!(!names.iter().any(|n| n == "HOME"), "{names:?}");
    }

    #[test]
    fn misspelt_variables_and_unknown_dotenv_keys_are_warned_about_by_name() {
        let ours = variable_names();
        let environment = [
            "METRIC_ADDR",
            "PATH",
            "HOME",
            "APP_MODE",
            "DB_HOST",
            "databse_url",
        ]
        .map(str::to_owned);
        let dotenv = [
            ("WRITER_THREADS".to_owned(), 1),
            ("SYNC_INTERVALL".to_owned(), 2),
            ("APP_MODE".to_owned(), 3),
        ];
        assert_eq!(
            warnings_for(&ours, &environment, &dotenv),
            [
                "warning: METRIC_ADDR is not a variable of target_service; did you mean METRICS_ADDR?",
                "warning: databse_url is not a variable of target_service; did you mean DATABASE_URL?",
                "warning: .env line 2: SYNC_INTERVALL is not a variable of target_service; did you mean SYNC_INTERVAL?",
                "warning: .env line 3: APP_MODE is not a variable of target_service",
            ]
        );
    }

    #[test]
    fn dotenv_errors_name_their_line() {
        let dir = std::env::temp_dir().join(format!("dotenv-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(
            &path,
            "# settings\nWRITER_THREADS=2\nDB_PASSWORD='unclosed\n",
        )
        .unwrap();
        let err = read_dotenv(&path).unwrap_err();
        assert_eq!(err.variable, ".env");
        assert!(
            err.problem
                .starts_with("line 3: the line setting DB_PASSWORD"),
            "{err}"
        );
        assert!(!err.to_string().contains("unclosed"));
        std::fs::write(&path, "# settings\n\nWRITER_THREADS=abc\n").unwrap();
        let vars = read_dotenv(&path).unwrap();
        assert_eq!(vars.get("WRITER_THREADS"), Some(&("abc".to_owned(), 3)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
