//! Every SQL statement the target runs, each written out in full, so they
//! can be read in one sitting.
//!
//! Writes are set-based: one statement per kind of write for a whole batch,
//! with the rows passed as arrays and unpacked by `unnest`, so a batch of a
//! thousand changes costs a handful of round trips rather than a thousand.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::{Client, GenericClient, Statement};
use uuid::Uuid;

use crate::profile::Reason;
use crate::sync::change::ChangeKey;
use crate::sync::plan::{MarkWrite, RejectionWrite, Row, UserWrite};

/// The schema, embedded so the binary needs no file beside it.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// Advisory lock class of the schema migration (a transaction lock).
const SCHEMA_LOCK: (i32, i32) = (0x5052_4F46, 0);
/// Advisory lock class of "syncing this source" (a session lock).
const SYNC_LOCK_CLASS: i32 = 0x5052_4F47;

/// Applies `schema.sql`; idempotent, and serialised between replicas that
/// start at the same moment (concurrent `CREATE … IF NOT EXISTS` can fail).
pub fn apply_schema(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
    )?;
    tx.batch_execute(SCHEMA)?;
    tx.commit()
}

/// Settings for every pooled connection.
///
/// Every statement the writers run looks rows up by key; while a catch-up
/// grows `users` from empty, the table's statistics lag far behind it and
/// the planner would pick sequential scans that get slower with every batch.
/// Index paths are always right for these statements, so sequential scans
/// are ruled out.
///
/// Writers' commits do not wait for their WAL to reach disk
/// (`synchronous_commit = off`); a crash of the server may take the last of
/// them. That costs nothing because the cursor is stored only by
/// [`save_state`], whose commit does wait, and so flushes every commit
/// before it, and only while the server is the one that took those commits
/// (its start time unchanged since the round began). After a crash the
/// round is abandoned and what the crash took is fetched again.
pub fn prepare_session(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute("SET enable_seqscan = off; SET synchronous_commit = off")
}

/// A cheap round trip that proves the connection works.
pub fn ping(client: &mut impl GenericClient) -> Result<(), postgres::Error> {
    client.simple_query("SELECT 1").map(drop)
}

/// Tries to become the one replica syncing `source_url`. The lock belongs to
/// the session: it is released when the connection closes, so a replica
/// that dies hands over without anyone's help.
pub fn try_sync_lock(client: &mut Client, source_url: &str) -> Result<bool, postgres::Error> {
    let row = client.query_one(
        "SELECT pg_try_advisory_lock($1, hashtext($2))",
        &[&SYNC_LOCK_CLASS, &source_url],
    )?;
    row.try_get(0)
}

/// When the server started: a server that crashed and came back, or another
/// server after a failover, has another start time.
pub fn server_started(client: &mut impl GenericClient) -> Result<DateTime<Utc>, postgres::Error> {
    client
        .query_one("SELECT pg_postmaster_start_time()", &[])?
        .try_get(0)
}

/// Whether the server is still the one that started at `started`.
pub fn server_is(
    client: &mut impl GenericClient,
    started: DateTime<Utc>,
) -> Result<bool, postgres::Error> {
    client
        .query_one("SELECT pg_postmaster_start_time() = $1", &[&started])?
        .try_get(0)
}

/// Up to `limit` ids of unresolved rejections with one of `reasons`, after
/// `after`, oldest first: what `redrive` examines next.
pub fn unresolved_rejections(
    client: &mut impl GenericClient,
    reasons: &[&str],
    after: i64,
    limit: i64,
) -> Result<Vec<i64>, postgres::Error> {
    client
        .query(
            "SELECT id FROM sync_rejections \
             WHERE resolved_at IS NULL AND reason = ANY($1) AND id > $2 \
             ORDER BY id LIMIT $3",
            &[&reasons, &after, &limit],
        )?
        .iter()
        .map(|row| row.try_get(0))
        .collect()
}

/// The payload of rejection `id`, locked for the transaction, if it is
/// still unresolved and no other transaction holds it.
pub fn lock_unresolved_rejection(
    client: &mut impl GenericClient,
    id: i64,
) -> Result<Option<String>, postgres::Error> {
    client
        .query_opt(
            "SELECT payload FROM sync_rejections \
             WHERE id = $1 AND resolved_at IS NULL FOR UPDATE SKIP LOCKED",
            &[&id],
        )?
        .map(|row| row.try_get(0))
        .transpose()
}

/// Marks rejection `id` resolved now, as `resolution`.
pub fn resolve_rejection(
    client: &mut impl GenericClient,
    id: i64,
    resolution: &str,
) -> Result<(), postgres::Error> {
    client.execute(
        "UPDATE sync_rejections SET resolved_at = now(), resolution = $2 WHERE id = $1",
        &[&id, &resolution],
    )?;
    Ok(())
}

/// `last_updated_at` of the rows of `ids` that exist.
pub fn row_times(
    client: &mut impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DateTime<Utc>>, postgres::Error> {
    client
        .query(
            "SELECT id, last_updated_at FROM users WHERE id = ANY($1)",
            &[&ids],
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// `(profile_id, changed_at)` of every rejection of `ids` whose timestamp
/// parsed.
pub fn rejected_changes(
    client: &mut impl GenericClient,
    ids: &[Uuid],
) -> Result<HashSet<(Uuid, DateTime<Utc>)>, postgres::Error> {
    client
        .query(
            "SELECT profile_id, changed_at FROM sync_rejections \
             WHERE profile_id = ANY($1) AND changed_at IS NOT NULL",
            &[&ids],
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Which characters the database can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// UTF8 (or SQL_ASCII, which keeps bytes as they come): everything.
    Unicode,
    /// LATIN1: U+0000 to U+00FF.
    Latin1,
    /// Any other: ASCII for certain; the rest is asked ([`can_store`]).
    Other(String),
}

impl Encoding {
    /// Whether a text fits, when that is known without asking PostgreSQL.
    pub fn holds(&self, text: &str) -> Option<bool> {
        match self {
            // Checked first: it needs no look at the text.
            Encoding::Unicode => Some(true),
            _ if text.is_ascii() => Some(true),
            Encoding::Latin1 => Some(text.chars().all(|c| u32::from(c) <= 0xff)),
            Encoding::Other(_) => None,
        }
    }
}

pub fn server_encoding(client: &mut impl GenericClient) -> Result<Encoding, postgres::Error> {
    let name: String = client
        .query_one("SELECT current_setting('server_encoding')", &[])?
        .try_get(0)?;
    Ok(match name.to_ascii_uppercase().as_str() {
        "UTF8" | "SQL_ASCII" => Encoding::Unicode,
        "LATIN1" => Encoding::Latin1,
        _ => Encoding::Other(name),
    })
}

/// Asks PostgreSQL whether it can hold `text`: converting its UTF-8 bytes
/// to the database's encoding fails for a character it lacks. Run outside
/// any transaction of writes, so a refusal spoils nothing.
pub fn can_store(client: &mut impl GenericClient, text: &str) -> Result<bool, postgres::Error> {
    match client.query_one(
        "SELECT convert_from($1::bytea, 'UTF8')",
        &[&text.as_bytes()],
    ) {
        Ok(_) => Ok(true),
        Err(err) if classify(&err) == Failure::Data => Ok(false),
        Err(err) => Err(err),
    }
}

/// Where syncing a source stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncState {
    pub epoch: Option<String>,
    pub cursor: u64,
}

pub fn load_state(
    client: &mut impl GenericClient,
    source_url: &str,
) -> Result<SyncState, postgres::Error> {
    let row = client.query_opt(
        "SELECT source_epoch, cursor FROM sync_state WHERE source_url = $1",
        &[&source_url],
    )?;
    Ok(match row {
        Some(row) => SyncState {
            epoch: row.try_get(0)?,
            cursor: u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
        },
        None => SyncState::default(),
    })
}

/// Stores where syncing stands, durably, but only on the server that
/// started at `server_started`: the writes the cursor covers were committed
/// there, and a crash since may have taken some of them. Returns false
/// (nothing stored) when the server is another one.
pub fn save_state(
    client: &mut Client,
    source_url: &str,
    state: &SyncState,
    server_started: DateTime<Utc>,
) -> Result<bool, postgres::Error> {
    let cursor = i64::try_from(state.cursor).unwrap_or(i64::MAX);
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL synchronous_commit = on")?;
    let stored = tx.execute(
        "INSERT INTO sync_state (source_url, source_epoch, cursor, updated_at) \
         SELECT $1, $2, $3, now() WHERE pg_postmaster_start_time() = $4 \
         ON CONFLICT (source_url) DO UPDATE \
         SET source_epoch = excluded.source_epoch, cursor = excluded.cursor, updated_at = now()",
        &[&source_url, &state.epoch, &cursor, &server_started],
    )?;
    tx.commit()?;
    Ok(stored == 1)
}

/// The statements run for every page and batch, prepared once per connection.
pub struct Statements {
    read_rows: Statement,
    read_holders: Statement,
    read_recorded: Statement,
    upsert_users: Statement,
    insert_rejections: Statement,
    mark_users: Statement,
}

impl Statements {
    pub fn prepare(client: &mut impl GenericClient) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            read_rows: client.prepare(READ_ROWS)?,
            read_holders: client.prepare(READ_HOLDERS)?,
            read_recorded: client.prepare(READ_RECORDED)?,
            upsert_users: client.prepare(UPSERT_USERS)?,
            insert_rejections: client.prepare(INSERT_REJECTIONS)?,
            mark_users: client.prepare(MARK_USERS)?,
        })
    }
}

const READ_ROWS: &str = "SELECT id, last_updated_at, email, mobile FROM users WHERE id = ANY($1)";

/// Two index scans, one per unique index: cheaper than one scan of their
/// `OR`, and a row holding both an email and a mobile asked about comes
/// twice, which does no harm.
const READ_HOLDERS: &str =
    "SELECT id, last_updated_at, email, mobile FROM users WHERE email = ANY($1) \
     UNION ALL SELECT id, last_updated_at, email, mobile FROM users WHERE mobile = ANY($2)";

/// The records of `(id, key)` pairs, then of keys of texts without a UUID
/// id: each half is one look-up per pair in `sync_rejections_element`.
const READ_RECORDED: &str = "SELECT r.change_key, r.reason \
     FROM unnest($1::uuid[], $2::bytea[]) AS e(id, key) \
     JOIN sync_rejections r ON r.profile_id = e.id AND r.change_key = e.key \
     UNION ALL SELECT change_key, reason FROM sync_rejections \
     WHERE profile_id IS NULL AND change_key = ANY($3)";

const UPSERT_USERS: &str = "INSERT INTO users AS u (id, name, email, mobile, status, last_updated_at, sync_status, sync_message) \
     SELECT c.id, c.name, c.email, c.mobile, c.status, c.last_updated_at, 'synced', c.message \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[]) \
          AS c(id, name, email, mobile, status, last_updated_at, message) \
     ON CONFLICT (id) DO UPDATE SET \
          name = excluded.name, email = excluded.email, mobile = excluded.mobile, status = excluded.status, \
          last_updated_at = excluded.last_updated_at, sync_status = 'synced', sync_message = 'updated' \
     WHERE u.last_updated_at < excluded.last_updated_at \
     RETURNING u.id";

const INSERT_REJECTIONS: &str = "INSERT INTO sync_rejections \
          (profile_id, outcome, reason, message, payload, changed_at, change_key) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::bytea[]) \
     ON CONFLICT (profile_id, change_key) DO NOTHING";

const MARK_USERS: &str = "UPDATE users AS u SET sync_status = m.outcome, sync_message = m.message \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[]) AS m(id, changed_at, outcome, message) \
     WHERE u.id = m.id AND u.last_updated_at < m.changed_at \
       AND (u.sync_status, u.sync_message) IS DISTINCT FROM (m.outcome, m.message)";

/// The rows of `ids`. They are not locked: only the replica holding the
/// sync lock writes, and the guards of the write statements keep any other
/// writer's newer row.
pub fn read_rows(
    client: &mut impl GenericClient,
    statements: &Statements,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Row)>, postgres::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    rows_of(client.query(&statements.read_rows, &[&ids])?)
}

/// The rows holding any of `emails` or `mobiles`.
pub fn read_holders(
    client: &mut impl GenericClient,
    statements: &Statements,
    emails: &[String],
    mobiles: &[String],
) -> Result<Vec<(Uuid, Row)>, postgres::Error> {
    if emails.is_empty() && mobiles.is_empty() {
        return Ok(Vec::new());
    }
    rows_of(client.query(&statements.read_holders, &[&emails, &mobiles])?)
}

fn rows_of(rows: Vec<postgres::Row>) -> Result<Vec<(Uuid, Row)>, postgres::Error> {
    rows.iter()
        .map(|row| {
            let stored = Row {
                last_updated_at: row.try_get(1)?,
                email: row.try_get(2)?,
                mobile: row.try_get(3)?,
            };
            Ok((row.try_get(0)?, stored))
        })
        .collect()
}

/// Which of the texts `keys` name (by their id, when a UUID, and key) are
/// recorded, with the reason each was recorded with.
pub fn read_recorded(
    client: &mut impl GenericClient,
    statements: &Statements,
    keys: &[(Option<Uuid>, ChangeKey)],
) -> Result<Vec<(ChangeKey, Reason)>, postgres::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (mut ids, mut id_keys, mut idless_keys) = (Vec::new(), Vec::new(), Vec::new());
    for (id, key) in keys {
        match id {
            Some(id) => {
                ids.push(*id);
                id_keys.push(&key[..]);
            }
            None => idless_keys.push(&key[..]),
        }
    }
    let rows = client.query(&statements.read_recorded, &[&ids, &id_keys, &idless_keys])?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        let key: &[u8] = row.try_get(0)?;
        let reason: &str = row.try_get(1)?;
        let (Ok(key), Some(reason)) = (
            ChangeKey::try_from(key),
            Reason::ALL.into_iter().find(|r| r.as_str() == reason),
        ) else {
            continue;
        };
        recorded.push((key, reason));
    }
    Ok(recorded)
}

/// Inserts or updates `users` rows, each only if strictly newer than the
/// stored row, in the order given (so a row that gives up an email comes
/// before the row that claims it); returns the ids written. No id may occur
/// twice. The `WHERE` is the last line of defence against another writer.
pub fn upsert_users(
    client: &mut impl GenericClient,
    statements: &Statements,
    writes: &[&UserWrite],
) -> Result<Vec<Uuid>, postgres::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = writes.iter().map(|w| w.id).collect();
    let names: Vec<&str> = writes.iter().map(|w| w.name.as_str()).collect();
    let emails: Vec<&str> = writes.iter().map(|w| w.email.as_str()).collect();
    let mobiles: Vec<&str> = writes.iter().map(|w| w.mobile.as_str()).collect();
    let statuses: Vec<&str> = writes.iter().map(|w| w.status).collect();
    let times: Vec<DateTime<Utc>> = writes.iter().map(|w| w.last_updated_at).collect();
    let messages: Vec<&str> = writes.iter().map(|w| w.message).collect();
    let rows = client.query(
        &statements.upsert_users,
        &[
            &ids, &names, &emails, &mobiles, &statuses, &times, &messages,
        ],
    )?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// Records rejections; one whose element text is recorded already is left
/// alone, so a replay records nothing twice.
pub fn insert_rejections(
    client: &mut impl GenericClient,
    statements: &Statements,
    rejections: &[&RejectionWrite],
) -> Result<(), postgres::Error> {
    if rejections.is_empty() {
        return Ok(());
    }
    let ids: Vec<Option<Uuid>> = rejections.iter().map(|r| r.profile_id).collect();
    let outcomes: Vec<&str> = rejections.iter().map(|r| r.outcome).collect();
    let reasons: Vec<&str> = rejections.iter().map(|r| r.reason.as_str()).collect();
    let messages: Vec<&str> = rejections.iter().map(|r| r.message.as_str()).collect();
    let payloads: Vec<&str> = rejections.iter().map(|r| r.payload.text()).collect();
    let times: Vec<Option<DateTime<Utc>>> = rejections.iter().map(|r| r.changed_at).collect();
    let keys: Vec<&[u8]> = rejections.iter().map(|r| &r.key[..]).collect();
    client.execute(
        &statements.insert_rejections,
        &[
            &ids, &outcomes, &reasons, &messages, &payloads, &times, &keys,
        ],
    )?;
    Ok(())
}

/// Applies marks (at most one per id) to rows older than the mark's change;
/// a row already marked the same way is not rewritten.
pub fn mark_users(
    client: &mut impl GenericClient,
    statements: &Statements,
    marks: &[&MarkWrite],
) -> Result<(), postgres::Error> {
    if marks.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = marks.iter().map(|m| m.id).collect();
    let times: Vec<DateTime<Utc>> = marks.iter().map(|m| m.changed_at).collect();
    let outcomes: Vec<&str> = marks.iter().map(|m| m.outcome).collect();
    let messages: Vec<&str> = marks.iter().map(|m| m.message.as_str()).collect();
    client.execute(
        &statements.mark_users,
        &[&ids, &times, &outcomes, &messages],
    )?;
    Ok(())
}

/// What PostgreSQL said of a failed statement, for people: its message
/// and detail (a bare `postgres::Error` displays as "db error").
pub fn describe(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => err.to_string(),
    }
}

/// How a failed statement should be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection or the server's state: try the same work again later.
    Transient,
    /// A unique constraint refused a row; names the constraint when known.
    Unique(Option<String>),
    /// The data itself was refused (a value out of range, a check…).
    Data,
}

/// Sorts a PostgreSQL error into retry-or-record.
pub fn classify(err: &postgres::Error) -> Failure {
    let Some(db) = err.as_db_error() else {
        // No SQLSTATE: I/O, a closed connection, a protocol hiccup.
        return Failure::Transient;
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return Failure::Unique(db.constraint().map(str::to_owned));
    }
    let class = &code.code()[..2];
    match class {
        // connection exception, transaction rollback (serialization, deadlock),
        // insufficient resources, operator intervention (shutdown, crash), system error
        "08" | "40" | "53" | "57" | "58" | "XX" => Failure::Transient,
        // lock not available, object in use
        _ if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::OBJECT_IN_USE => {
            Failure::Transient
        }
        // data exception, integrity constraint violation
        "22" | "23" => Failure::Data,
        // Anything else (a missing table after someone dropped it, permissions)
        // will not fix itself by skipping a row; retrying keeps the data.
        _ => Failure::Transient,
    }
}
