//! The r2d2 pool of PostgreSQL connections, whose connections carry their
//! session settings and, once a writer has used them, the writer's prepared
//! statements — so a batch costs one round trip per statement and PostgreSQL
//! parses and plans each statement once per connection, not once per batch.

use postgres::{Client, NoTls};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

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

/// Opens connections with [`store::prepare_session`] applied.
pub struct Manager(PostgresConnectionManager<NoTls>);

impl Manager {
    pub fn new(config: postgres::Config) -> Manager {
        Manager(PostgresConnectionManager::new(config, NoTls))
    }
}

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Connection, postgres::Error> {
        let mut client = self.0.connect()?;
        store::prepare_session(&mut client)?;
        Ok(Connection {
            client,
            statements: None,
        })
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}
