//! Waiting for PostgreSQL at start-up: one attempt at a time to connect and
//! apply the schema, each bounded by the connect timeout even when the
//! server accepts the connection and never answers, and the line the
//! operator sees while it does not answer.
//!
//! The client's connect timeout covers only the TCP connection, so an
//! attempt runs on a thread of its own (`db-connect`) and is waited for at
//! most that long; one still unanswered is waited for again at the next
//! retry instead of being started anew, so at most one such thread exists.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::DatabaseConfig;
use crate::{pool, store};

/// Why an attempt failed, as the operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub why: String,
    /// Retrying cannot fix it (a wrong password, a missing database).
    pub lasting: bool,
}

/// The start-up attempts, at most one of them under way.
#[derive(Default)]
pub struct Attempts {
    under_way: Option<Receiver<Result<(), Failure>>>,
}

impl Attempts {
    /// Connects and applies the schema, or says why not within the
    /// connect timeout.
    pub fn try_once(&mut self, database: &DatabaseConfig) -> Result<(), Failure> {
        let answer = match self.under_way.take() {
            Some(answer) => answer,
            None => start(database)?,
        };
        let patience = *database
            .connection
            .get_connect_timeout()
            .unwrap_or(&Duration::from_secs(5));
        match answer.recv_timeout(patience) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                self.under_way = Some(answer);
                Err(Failure {
                    why: format!("no answer within {}", seconds(patience)),
                    lasting: false,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Failure {
                why: "the connection attempt ended without an answer".to_owned(),
                lasting: false,
            }),
        }
    }
}

fn start(database: &DatabaseConfig) -> Result<Receiver<Result<(), Failure>>, Failure> {
    let (tell, answer) = crossbeam_channel::bounded(1);
    let database = database.clone();
    std::thread::Builder::new()
        .name("db-connect".to_owned())
        .spawn(move || {
            let result = pool::connect(&database)
                .and_then(|mut client| store::apply_schema(&mut client))
                .map_err(|err| Failure {
                    why: pool::describe(&err),
                    lasting: pool::lasting_cause(&err).is_some(),
                });
            let _ = tell.send(result);
        })
        .map_err(|err| Failure {
            why: format!("cannot start a thread to connect: {err}"),
            lasting: false,
        })?;
    Ok(answer)
}

/// The line logged for each failed attempt; never the password.
pub fn waiting_line(database: &DatabaseConfig, why: &str, retry_in: Duration) -> String {
    format!(
        "waiting for PostgreSQL at {} ({why}); retrying in {}",
        database.address(),
        seconds(retry_in)
    )
}

/// `0.25 s`, `5 s`.
fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_line_names_the_database_given_and_not_the_password() {
        let config = Config::from_lookup(|name| {
            (name == "DATABASE_URL")
                .then(|| "postgres://app:s3cret@db.internal:6543/profiles".to_owned())
        })
        .unwrap();
        assert_eq!(
            waiting_line(
                &config.database,
                "Connection refused",
                Duration::from_millis(250)
            ),
            "waiting for PostgreSQL at db.internal:6543/profiles (Connection refused); retrying in 0.25 s"
        );
        assert_eq!(seconds(Duration::from_secs(5)), "5 s");
    }
}
