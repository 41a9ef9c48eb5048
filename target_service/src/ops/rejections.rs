//! `GET /rejections`: the recorded rejections, newest first, filtered and
//! paged by key (SPEC §5).
//!
//! Reading them is the only thing the metrics server asks of PostgreSQL, so
//! it goes through a small pool of its own with short timeouts (a checkout
//! waits at most 2 s, a statement runs at most 5 s): a database that is down
//! or stuck costs one request a `503`, never the other endpoints.
//!
//! Parameters: `reason`, `outcome`, `profile_id`, `resolved` (`true` or
//! `false`), `before` (a rejection id), `limit` (1–1000, default 100). A
//! parameter given twice, one with a bad value and one this endpoint does
//! not know are all `400`, naming the parameter: a misspelt filter that was
//! silently ignored would list rejections the operator did not ask for.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use http_server::client_input::shorten;
use r2d2_postgres::PostgresConnectionManager;
use serde_json::{json, Value};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use crate::profile::{Outcome, Reason};

pub type AdminPool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
const STATEMENT_TIMEOUT: &str = "5s";
const PARAMETERS: [&str; 6] = [
    "reason",
    "outcome",
    "profile_id",
    "resolved",
    "before",
    "limit",
];

/// A pool for the HTTP handlers: two connections at most, opened on demand,
/// a checkout given up after 2 s, with TLS as the service's own connections.
pub fn admin_pool(config: postgres::Config, tls: MakeRustlsConnect) -> AdminPool {
    r2d2::Pool::builder()
        .max_size(2)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(PostgresConnectionManager::new(config, tls))
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub reason: Option<String>,
    pub outcome: Option<String>,
    pub profile_id: Option<Uuid>,
    pub resolved: Option<bool>,
    pub before: Option<i64>,
    pub limit: i64,
}

/// A `400` naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParameter(pub String);

impl Filter {
    pub fn parse(query: &str) -> Result<Filter, BadParameter> {
        let mut filter = Filter {
            reason: None,
            outcome: None,
            profile_id: None,
            resolved: None,
            before: None,
            limit: DEFAULT_LIMIT,
        };
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)
                .ok_or_else(|| BadParameter("a parameter name is not valid UTF-8".to_owned()))?;
            let value = percent_decode(value)
                .ok_or_else(|| BadParameter(format!("{} is not valid UTF-8", shorten(&key))))?;
            if !PARAMETERS.contains(&key.as_str()) {
                return Err(BadParameter(format!(
                    "unknown parameter {}; this endpoint takes {}",
                    shorten(&key),
                    PARAMETERS.join(", ")
                )));
            }
            if seen.contains(&key) {
                return Err(BadParameter(format!("{key} is given more than once")));
            }
            seen.push(key.clone());
            let bad = |what: &str| {
                BadParameter(format!("{key} must be {what}, not {:?}", shorten(&value)))
            };
            match key.as_str() {
                "reason" => {
                    let known = Reason::ALL.iter().any(|r| r.as_str() == value);
                    if !known {
                        return Err(bad("a reason code such as email_taken"));
                    }
                    filter.reason = Some(value);
                }
                "outcome" => {
                    let outcomes = [
                        Outcome::FailedValidation,
                        Outcome::Skipped,
                        Outcome::Conflict,
                    ];
                    if !outcomes.iter().any(|o| o.as_str() == value) {
                        return Err(bad("failed_validation, skipped or conflict"));
                    }
                    filter.outcome = Some(value);
                }
                "profile_id" => {
                    let id = (value.len() == 36)
                        .then(|| Uuid::try_parse(&value).ok())
                        .flatten();
                    filter.profile_id = Some(id.ok_or_else(|| bad("a hyphenated UUID"))?);
                }
                "resolved" => {
                    filter.resolved = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("true or false")),
                    });
                }
                "before" => {
                    let id = whole_number(&value).filter(|&n| n >= 1);
                    filter.before =
                        Some(id.ok_or_else(|| bad("a rejection id (a whole number, 1 or more)"))?);
                }
                _ => {
                    let limit = whole_number(&value).filter(|n| (1..=MAX_LIMIT).contains(n));
                    filter.limit = limit
                        .ok_or_else(|| bad(&format!("a whole number from 1 to {MAX_LIMIT}")))?;
                }
            }
        }
        Ok(filter)
    }
}

/// Plain decimal digits that fit an `i64`.
fn whole_number(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `%XX` escapes and `+` for space, as forms send them; `None` when the
/// result is not UTF-8. A `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Why the list could not be read.
#[derive(Debug)]
pub enum ListError {
    /// No connection within the checkout timeout.
    Unreachable(String),
    /// A statement failed (timed out, say).
    Query(postgres::Error),
}

const LIST_SQL: &str = "\
    SELECT id, profile_id, outcome, reason, message, payload, changed_at, received_at, \
           resolved_at, resolution \
    FROM sync_rejections \
    WHERE ($1::text IS NULL OR reason = $1) \
      AND ($2::text IS NULL OR outcome = $2) \
      AND ($3::uuid IS NULL OR profile_id = $3) \
      AND ($4::bool IS NULL OR (resolved_at IS NOT NULL) = $4) \
      AND ($5::bigint IS NULL OR id < $5) \
    ORDER BY id DESC \
    LIMIT $6";

/// The body of a `200`: one page of rejections and where the next begins.
pub fn list(pool: &AdminPool, filter: &Filter) -> Result<Value, ListError> {
    let mut conn = pool
        .get()
        .map_err(|err| ListError::Unreachable(err.to_string()))?;
    let mut tx = conn.transaction().map_err(ListError::Query)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"
    ))
    .map_err(ListError::Query)?;
    // One more than asked tells whether another page follows.
    let rows = tx
        .query(
            LIST_SQL,
            &[
                &filter.reason,
                &filter.outcome,
                &filter.profile_id,
                &filter.resolved,
                &filter.before,
                &(filter.limit + 1),
            ],
        )
        .map_err(ListError::Query)?;
    let more = rows.len() as i64 > filter.limit;
    let mut rejections = Vec::with_capacity(rows.len());
    for row in rows.iter().take(filter.limit as usize) {
        rejections.push(row_json(row).map_err(ListError::Query)?);
    }
    let next_before = if more {
        rejections.last().and_then(|r| r["id"].as_i64())
    } else {
        None
    };
    Ok(json!({ "rejections": rejections, "next_before": next_before }))
}

fn time(at: Option<DateTime<Utc>>) -> Value {
    match at {
        Some(at) => Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true)),
        None => Value::Null,
    }
}

fn row_json(row: &postgres::Row) -> Result<Value, postgres::Error> {
    Ok(json!({
        "id": row.try_get::<_, i64>(0)?,
        "profile_id": row.try_get::<_, Option<Uuid>>(1)?.map(|id| id.to_string()),
        "outcome": row.try_get::<_, String>(2)?,
        "reason": row.try_get::<_, String>(3)?,
        "message": row.try_get::<_, String>(4)?,
        "payload": row.try_get::<_, String>(5)?,
        "changed_at": time(row.try_get(6)?),
        "received_at": time(Some(row.try_get(7)?)),
        "resolved_at": time(row.try_get(8)?),
        "resolution": row.try_get::<_, Option<String>>(9)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_filters_parse() {
        let filter = Filter::parse("").unwrap();
        assert_eq!(filter.limit, 100);
        assert_eq!(filter.reason, None);
        let filter = Filter::parse(
            "reason=email_taken&outcome=conflict&resolved=false&before=42&limit=1000\
             &profile_id=00000000-0000-4000-8000-000000000001",
        )
        .unwrap();
        assert_eq!(filter.reason.as_deref(), Some("email_taken"));
        assert_eq!(filter.outcome.as_deref(), Some("conflict"));
        assert_eq!(filter.resolved, Some(false));
        assert_eq!(filter.before, Some(42));
        assert_eq!(filter.limit, 1000);
        assert!(filter.profile_id.is_some());
        assert_eq!(
            Filter::parse("reason=email%5Ftaken")
                .unwrap()
                .reason
                .as_deref(),
            Some("email_taken")
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, named) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=abc", "limit"),
            ("limit=-1", "limit"),
            ("before=0", "before"),
            ("before=x", "before"),
            ("resolved=yes", "resolved"),
            ("reason=nope", "reason"),
            ("outcome=synced", "outcome"),
            ("profile_id=123", "profile_id"),
            ("colour=red", "colour"),
            ("limit=1&limit=2", "limit"),
            ("reason=%FF", "reason"),
        ] {
            let BadParameter(message) = Filter::parse(query).expect_err(query);
            assert!(message.contains(named), "{query}: {message}");
        }
    }

    #[test]
    fn percent_decoding_keeps_stray_percents() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%4").as_deref(), Some("%4"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
