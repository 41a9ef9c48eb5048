//! The r2d2 pool of PostgreSQL connections, whose connections carry their
//! session settings and, once a writer has used them, the writer's prepared
//! statements — so a batch costs one round trip per statement and PostgreSQL
//! parses and plans each statement once per connection, not once per batch.
//!
//! Every connection to PostgreSQL is opened here ([`connect`] for one of its
//! own, [`Manager`] for the pool's), over the TLS connector the
//! configuration built (`sslmode`, see [`crate::tls`]); and [`describe`]
//! is how a PostgreSQL error is told to an operator.

use std::error::Error as _;

use postgres::error::SqlState;
use postgres::Client;
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;
use crate::store::{self, Statements};

pub type DbPool = r2d2::Pool<Manager>;

/// A pooled connection.
pub struct Connection {
    pub client: Client,
    statements: Option<Statements>,
}

impl Connection {
    /// The client with the writer's statements, preparing them on first use.
    pub fn with_statements(&mut self) -> Result<(&mut Client, &Statements), postgres::Error> {
        let statements = match &mut self.statements {
            Some(statements) => statements,
            slot @ None => slot.insert(Statements::prepare(&mut self.client)?),
        };
        Ok((&mut self.client, statements))
    }

    /// Drops the prepared statements; they are prepared again when needed.
    pub fn forget_statements(&mut self) {
        self.statements = None;
    }
}

/// One connection of its own (not the pool's), as configured: TLS per
/// `sslmode`.
pub fn connect(database: &DatabaseConfig) -> Result<Client, postgres::Error> {
    database.connection.connect(database.tls.clone())
}

/// Opens connections with [`store::prepare_session`] applied.
pub struct Manager(PostgresConnectionManager<MakeRustlsConnect>);

impl Manager {
    pub fn new(database: &DatabaseConfig) -> Manager {
        Manager(PostgresConnectionManager::new(
            database.connection.clone(),
            database.tls.clone(),
        ))
    }
}

/// A PostgreSQL error as one line an operator can act on: the server's own
/// message (`database "x" does not exist`, `password authentication failed
/// for user "y"`), or the cause of a failed connection (refused, a
/// certificate not trusted), and, when retrying cannot fix it, what to fix.
pub fn describe(err: &postgres::Error) -> String {
    let mut text = err.to_string();
    if let Some(db) = err.as_db_error() {
        text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
    } else {
        let mut cause = err.source();
        while let Some(inner) = cause {
            let inner_text = inner.to_string();
            if !text.contains(&inner_text) {
                text.push_str(": ");
                text.push_str(&inner_text);
            }
            cause = inner.source();
        }
    }
    if let Some(fix) = lasting_cause(err) {
        text.push_str(&format!(" — retrying cannot fix this: {fix}"));
    }
    // One line, whatever the server sent.
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::secrets::redact(&one_line).into_owned()
}

/// What an operator must change when an error will not go away by itself.
pub fn lasting_cause(err: &postgres::Error) -> Option<&'static str> {
    if let Some(code) = err.code() {
        return match code {
            c if *c == SqlState::INVALID_CATALOG_NAME => {
                Some("create the database, or correct DB_NAME / the database in DATABASE_URL")
            }
            c if *c == SqlState::INVALID_PASSWORD => {
                Some("correct DB_PASSWORD / the password in DATABASE_URL")
            }
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => Some(
                "create the role, correct DB_USER / the user in DATABASE_URL, or allow it in the \
                 server's pg_hba.conf (which may ask for TLS: see sslmode)",
            ),
            c if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                Some("grant the user what it needs, or use another user")
            }
            _ => None,
        };
    }
    let text = err.to_string();
    if text.starts_with("error performing TLS handshake") {
        let cause = err.source().map(|c| c.to_string()).unwrap_or_default();
        if cause.contains("certificate") || cause.contains("Certificate") {
            return Some("check sslmode/sslrootcert against the server's certificate");
        }
        if cause.contains("does not support TLS") {
            return Some("turn ssl on at the server, or use sslmode=prefer or disable");
        }
    }
    if text.starts_with("invalid configuration") {
        return Some("correct the connection settings");
    }
    None
}

/// A PostgreSQL error that displays as [`describe`] tells it. The pool
/// quotes its manager's errors in its own (a checkout that timed out, a
/// connection it failed to open), and a `postgres::Error` displays as its
/// kind alone ("db error", "error connecting to server").
#[derive(Debug)]
pub struct Described(pub postgres::Error);

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = Described;

    fn connect(&self) -> Result<Connection, Described> {
        let mut client = self.0.connect().map_err(Described)?;
        store::prepare_session(&mut client).map_err(Described)?;
        Ok(Connection {
            client,
            statements: None,
        })
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), Described> {
        self.0.is_valid(&mut conn.client).map_err(Described)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}
