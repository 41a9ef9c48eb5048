//! Every SQL statement the target runs, so they can be read in one sitting.
//!
//! Writes are set-based: one statement per kind of write for a whole batch,
//! with the rows passed as arrays and unpacked by `unnest`, so a batch of a
//! thousand changes costs a handful of round trips rather than a thousand.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Statement};
use uuid::Uuid;

use crate::profile::Reason;

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
/// Commits do not wait for their WAL to reach disk (`synchronous_commit =
/// off`). Nothing can be lost by it: PostgreSQL flushes WAL in order, and
/// the cursor is stored only after every batch before it has committed, so
/// its commit record comes after theirs. If a crash of the server takes the
/// last commits with it, it takes the cursor update that covered them too,
/// and those changes are simply fetched again. The process itself dying
/// loses nothing either way: a commit the server acknowledged survives it.
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

pub fn save_state(
    client: &mut impl GenericClient,
    source_url: &str,
    state: &SyncState,
) -> Result<(), postgres::Error> {
    let cursor = i64::try_from(state.cursor).unwrap_or(i64::MAX);
    client.execute(
        "INSERT INTO sync_state (source_url, source_epoch, cursor, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (source_url) DO UPDATE \
         SET source_epoch = excluded.source_epoch, cursor = excluded.cursor, updated_at = now()",
        &[&source_url, &state.epoch, &cursor],
    )?;
    Ok(())
}

/// What inserting a rejection does when the same change is already
/// recorded (its `(profile_id, change_key)` is in `sync_rejections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The insert skips it (`ON CONFLICT (profile_id, change_key) DO
    /// NOTHING`), so a replay records nothing twice.
    Skip,
    /// The statement fails with a unique violation. PostgreSQL then need
    /// not look each key up before inserting it, which makes this cheaper
    /// for batches that are not expected to repeat anything (a catch-up);
    /// the writer writes a refused batch again with `Skip`.
    Refuse,
}

/// The statements a writer runs for every batch, prepared once per connection.
pub struct Statements {
    read_users: Statement,
    owners_of: Statement,
    read_recorded: Statement,
    any_valid_change_decided: Statement,
    upsert_users: Statement,
    insert_rejections: Statement,
    mark_users: Statement,
    write_plan_skipping_recorded: Statement,
    write_plan_refusing_recorded: Statement,
}

impl Statements {
    pub fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            read_users: client.prepare(READ_USERS)?,
            owners_of: client.prepare(OWNERS_OF)?,
            read_recorded: client.prepare(READ_RECORDED)?,
            any_valid_change_decided: client.prepare(ANY_VALID_CHANGE_DECIDED)?,
            upsert_users: client.prepare(UPSERT_USERS)?,
            insert_rejections: client.prepare(&format!("{INSERT_REJECTIONS}{SKIP_RECORDED}"))?,
            mark_users: client.prepare(MARK_USERS)?,
            write_plan_skipping_recorded: client.prepare(&write_plan_sql(Recorded::Skip))?,
            write_plan_refusing_recorded: client.prepare(&write_plan_sql(Recorded::Refuse))?,
        })
    }
}

const READ_USERS: &str = "SELECT id, last_updated_at, email, mobile FROM users WHERE id = ANY($1)";

const OWNERS_OF: &str =
    "SELECT id, email, mobile FROM users WHERE email = ANY($1) OR mobile = ANY($2)";

const READ_RECORDED: &str =
    "SELECT r.profile_id, r.change_key, r.reason FROM sync_rejections AS r \
         JOIN unnest($1::uuid[], $2::uuid[]) AS k(id, key) \
           ON r.profile_id = k.id AND r.change_key = k.key";

/// Its condition on `reason` is the predicate of the partial index
/// `sync_rejections_valid_change_decisions` (schema.sql), word for word, so
/// that PostgreSQL uses it.
const ANY_VALID_CHANGE_DECIDED: &str = "SELECT EXISTS (SELECT 1 FROM sync_rejections \
         WHERE profile_id = ANY($1) AND reason IN ('email_taken', 'mobile_taken', 'db_error'))";

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
              (profile_id, outcome, reason, message, payload, changed_at, payload_copy, change_key) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::int4[], $8::uuid[])";

/// Appended to [`INSERT_REJECTIONS`] for [`Recorded::Skip`].
const SKIP_RECORDED: &str = " ON CONFLICT (profile_id, change_key) DO NOTHING";

const MARK_USERS: &str = "UPDATE users AS u SET sync_status = m.outcome, sync_message = m.message \
         FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[]) AS m(id, changed_at, outcome, message) \
         WHERE u.id = m.id AND u.last_updated_at < m.changed_at \
           AND (u.sync_status, u.sync_message) IS DISTINCT FROM (m.outcome, m.message)";

/// The upsert, the rejections and the marks of a batch as one statement:
/// one round trip instead of three. The marks must be of ids the upsert does
/// not write, for all parts see the same snapshot of `users`. Its result is
/// the ids the upsert did not write (usually none, so a batch does not
/// send back every id it wrote).
fn write_plan_sql(recorded: Recorded) -> String {
    let on_recorded = match recorded {
        Recorded::Skip => SKIP_RECORDED,
        Recorded::Refuse => "",
    };
    format!(
        "WITH written AS ({UPSERT_USERS}), \
              recorded AS ({}{on_recorded}), \
              marked AS ({}) \
         SELECT c.id FROM unnest($1::uuid[]) AS c(id) \
         WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = c.id)",
        shift_parameters(INSERT_REJECTIONS, 7),
        shift_parameters(MARK_USERS, 15),
    )
}

/// Renumbers `$1`, `$2`… of `sql` to `$(1 + by)`, `$(2 + by)`….
fn shift_parameters(sql: &str, by: usize) -> String {
    let parameter = regex::Regex::new(r"\$([0-9]+)").expect("a valid pattern");
    parameter
        .replace_all(sql, |captures: &regex::Captures<'_>| {
            let number: usize = captures[1].parse().expect("digits");
            format!("${}", number + by)
        })
        .into_owned()
}

/// A `users` row as the writer needs to see it before deciding, its text
/// borrowed from the row as PostgreSQL sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser<'r> {
    pub last_updated_at: DateTime<Utc>,
    pub email: &'r str,
    pub mobile: &'r str,
}

/// Stored rows by id.
pub type StoredUsers<'r> = foldhash::HashMap<Uuid, StoredUser<'r>>;

/// Reads the rows of `ids`, as sent; [`stored_users`] reads them without
/// copying their text. They are not locked: all changes to one id go to
/// one writer, and the guards in [`upsert_users`] and [`mark_users`] keep a
/// stale decision (possible only while two replicas overlap) from ever
/// overwriting newer data.
pub fn read_users(
    client: &mut impl GenericClient,
    statements: &Statements,
    ids: &[Uuid],
) -> Result<Vec<Row>, postgres::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    client.query(&statements.read_users, &[&ids])
}

/// The rows [`read_users`] returned, by id.
pub fn stored_users(rows: &[Row]) -> Result<StoredUsers<'_>, postgres::Error> {
    let mut stored = StoredUsers::with_capacity_and_hasher(rows.len(), Default::default());
    for row in rows {
        let user = StoredUser {
            last_updated_at: row.try_get(1)?,
            email: row.try_get(2)?,
            mobile: row.try_get(3)?,
        };
        stored.insert(row.try_get(0)?, user);
    }
    Ok(stored)
}

/// The rows that hold any of these emails or mobiles: `(id, email, mobile)`.
pub fn owners_of(
    client: &mut impl GenericClient,
    statements: &Statements,
    emails: &[&str],
    mobiles: &[&str],
) -> Result<Vec<(Uuid, String, String)>, postgres::Error> {
    let rows = client.query(&statements.owners_of, &[&emails, &mobiles])?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// Which of `keys` (profile id, [`change_key`]) are recorded already, each
/// with whether its reason is one a valid change can get
/// ([`Reason::befalls_a_valid_change`]). A replayed rejection that is
/// recorded had its effect when it was first recorded.
pub fn recorded_changes(
    client: &mut impl GenericClient,
    statements: &Statements,
    keys: &[(Uuid, Uuid)],
) -> Result<HashMap<(Uuid, Uuid), bool>, postgres::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = keys.iter().map(|(id, _)| *id).collect();
    let change_keys: Vec<Uuid> = keys.iter().map(|(_, key)| *key).collect();
    let rows = client.query(&statements.read_recorded, &[&ids, &change_keys])?;
    rows.iter()
        .map(|row| {
            let reason: &str = row.try_get(2)?;
            let of_a_valid_change = (Reason::ALL.iter())
                .any(|known| known.befalls_a_valid_change() && known.as_str() == reason);
            Ok(((row.try_get(0)?, row.try_get(1)?), of_a_valid_change))
        })
        .collect()
}

/// Whether any of `ids` has a recorded conflict or refused row: a change
/// to one of them may be the replay of such a decision.
pub fn any_valid_change_decided(
    client: &mut impl GenericClient,
    statements: &Statements,
    ids: &[Uuid],
) -> Result<bool, postgres::Error> {
    if ids.is_empty() {
        return Ok(false);
    }
    client
        .query_one(&statements.any_valid_change_decided, &[&ids])?
        .try_get(0)
}

/// One row to insert or update in `users`.
#[derive(Debug, Clone, PartialEq)]
pub struct UserWrite<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub email: &'a str,
    pub mobile: &'a str,
    pub status: &'a str,
    pub last_updated_at: DateTime<Utc>,
    /// `created` or `updated`, for a row that is inserted (one that already
    /// existed is always `updated`).
    pub message: &'static str,
}

/// Inserts or updates `users` rows, each only if it is strictly newer than
/// the stored row, and returns the ids actually written. The `WHERE` decides
/// for rows the writer did not read, and is the last line of defence for "a
/// stale change never overwrites data" for the rest. An email or mobile held
/// by a row outside `writes` fails the whole statement (a unique violation).
pub fn upsert_users(
    client: &mut impl GenericClient,
    statements: &Statements,
    writes: &[UserWrite<'_>],
) -> Result<Vec<Uuid>, postgres::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let columns = UserColumns::of(writes);
    let rows = client.query(&statements.upsert_users, &columns.parameters())?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// [`UserWrite`]s as the parallel arrays the statements take.
struct UserColumns<'a> {
    ids: Vec<Uuid>,
    names: Vec<&'a str>,
    emails: Vec<&'a str>,
    mobiles: Vec<&'a str>,
    statuses: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
    messages: Vec<&'a str>,
}

impl<'a> UserColumns<'a> {
    fn of(writes: &[UserWrite<'a>]) -> UserColumns<'a> {
        UserColumns {
            ids: writes.iter().map(|w| w.id).collect(),
            names: writes.iter().map(|w| w.name).collect(),
            emails: writes.iter().map(|w| w.email).collect(),
            mobiles: writes.iter().map(|w| w.mobile).collect(),
            statuses: writes.iter().map(|w| w.status).collect(),
            times: writes.iter().map(|w| w.last_updated_at).collect(),
            messages: writes.iter().map(|w| w.message).collect(),
        }
    }

    fn parameters(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.ids,
            &self.names,
            &self.emails,
            &self.mobiles,
            &self.statuses,
            &self.times,
            &self.messages,
        ]
    }
}

/// One row for `sync_rejections`, borrowing its text from the batch where
/// it can.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectionWrite<'a> {
    pub profile_id: Option<Uuid>,
    pub outcome: &'static str,
    pub reason: &'static str,
    pub message: Cow<'a, str>,
    pub payload: &'a str,
    /// Identical payloads before this one in its page.
    pub copy: i32,
    pub changed_at: Option<DateTime<Utc>>,
}

/// The key that tells one recorded change from another: the MD5 digest of
/// its payload, a colon and its copy number (identical payloads before it
/// in its page), as a UUID. Earlier versions had PostgreSQL compute the same
/// digest (`md5(payload || ':' || payload_copy::text)::uuid`), so the rows
/// they recorded keep matching their replays.
pub fn change_key(payload: &str, copy: i32) -> Uuid {
    let mut digest = Md5::new();
    digest.update(payload.as_bytes());
    digest.update(b":");
    digest.update(copy.to_string().as_bytes());
    Uuid::from_bytes(digest.finalize().into())
}

/// Records rejections; one already recorded (same payload, same place
/// among identical payloads of its page) is left alone, so a replayed
/// change records nothing twice.
pub fn insert_rejections(
    client: &mut impl GenericClient,
    statements: &Statements,
    rejections: &[RejectionWrite<'_>],
) -> Result<(), postgres::Error> {
    if rejections.is_empty() {
        return Ok(());
    }
    let columns = RejectionColumns::of(rejections);
    client.execute(&statements.insert_rejections, &columns.parameters())?;
    Ok(())
}

/// [`RejectionWrite`]s as the parallel arrays the statements take.
struct RejectionColumns<'a> {
    ids: Vec<Option<Uuid>>,
    outcomes: Vec<&'a str>,
    reasons: Vec<&'a str>,
    messages: Vec<&'a str>,
    payloads: Vec<&'a str>,
    times: Vec<Option<DateTime<Utc>>>,
    copies: Vec<i32>,
    keys: Vec<Uuid>,
}

impl<'a> RejectionColumns<'a> {
    fn of(rejections: &'a [RejectionWrite<'_>]) -> RejectionColumns<'a> {
        RejectionColumns {
            ids: rejections.iter().map(|r| r.profile_id).collect(),
            outcomes: rejections.iter().map(|r| r.outcome).collect(),
            reasons: rejections.iter().map(|r| r.reason).collect(),
            messages: rejections.iter().map(|r| r.message.as_ref()).collect(),
            payloads: rejections.iter().map(|r| r.payload).collect(),
            times: rejections.iter().map(|r| r.changed_at).collect(),
            copies: rejections.iter().map(|r| r.copy).collect(),
            keys: (rejections.iter())
                .map(|r| change_key(r.payload, r.copy))
                .collect(),
        }
    }

    fn parameters(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.ids,
            &self.outcomes,
            &self.reasons,
            &self.messages,
            &self.payloads,
            &self.times,
            &self.copies,
            &self.keys,
        ]
    }
}

/// A rejected change that is newer than its row: the row's sync columns
/// say so, its data columns stay as they were.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMark<'a> {
    pub id: Uuid,
    pub changed_at: DateTime<Utc>,
    pub outcome: &'static str,
    pub message: Cow<'a, str>,
}

/// Applies marks (at most one per id) to rows older than the mark's change;
/// a row already marked the same way is not rewritten, so a replay costs no
/// writes. A mark for an id without a row changes nothing.
pub fn mark_users(
    client: &mut impl GenericClient,
    statements: &Statements,
    marks: &[StatusMark<'_>],
) -> Result<(), postgres::Error> {
    if marks.is_empty() {
        return Ok(());
    }
    let columns = MarkColumns::of(marks);
    client.execute(&statements.mark_users, &columns.parameters())?;
    Ok(())
}

/// [`StatusMark`]s as the parallel arrays the statements take.
struct MarkColumns<'a> {
    ids: Vec<Uuid>,
    times: Vec<DateTime<Utc>>,
    outcomes: Vec<&'a str>,
    messages: Vec<&'a str>,
}

impl<'a> MarkColumns<'a> {
    fn of(marks: &'a [StatusMark<'_>]) -> MarkColumns<'a> {
        MarkColumns {
            ids: marks.iter().map(|m| m.id).collect(),
            times: marks.iter().map(|m| m.changed_at).collect(),
            outcomes: marks.iter().map(|m| m.outcome).collect(),
            messages: marks.iter().map(|m| m.message.as_ref()).collect(),
        }
    }

    fn parameters(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.ids, &self.times, &self.outcomes, &self.messages]
    }
}

/// Writes a batch's plan in one statement (see [`write_plan_sql`]): the
/// upsert of `writes`, `rejections` (meeting recorded ones as `recorded`
/// says), and `marks`, which must not mark an id that `writes` writes.
/// Returns the ids of `writes` the upsert did not write, their rows being
/// as new already.
pub fn write_plan(
    client: &mut impl GenericClient,
    statements: &Statements,
    recorded: Recorded,
    writes: &[UserWrite<'_>],
    rejections: &[RejectionWrite<'_>],
    marks: &[StatusMark<'_>],
) -> Result<Vec<Uuid>, postgres::Error> {
    let users = UserColumns::of(writes);
    let rejections = RejectionColumns::of(rejections);
    let marks = MarkColumns::of(marks);
    let parameters: Vec<&(dyn ToSql + Sync)> = users
        .parameters()
        .into_iter()
        .chain(rejections.parameters())
        .chain(marks.parameters())
        .collect();
    let statement = match recorded {
        Recorded::Skip => &statements.write_plan_skipping_recorded,
        Recorded::Refuse => &statements.write_plan_refusing_recorded,
    };
    let rows = client.query(statement, &parameters)?;
    rows.iter().map(|row| row.try_get(0)).collect()
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
