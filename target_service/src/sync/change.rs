//! A change as the planner takes it: one element of a page, parsed, with
//! its exact text and the key that identifies it when it is recorded.
//!
//! [`ingest`] turns a fetched page into changes in sequence order and is
//! all the round needs from the fetcher's page; [`Change::from_text`] makes
//! one change of an element recorded earlier (a redrive).

use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::profile::{Profile, Reason, Rejection};
use crate::sync::fetcher::Page;

/// SHA-256 of an element's exact text: a rejection's identity. The same
/// text is the same change, wherever and however often it arrives.
pub type ChangeKey = [u8; 32];

pub fn change_key(text: &str) -> ChangeKey {
    Sha256::digest(text.as_bytes()).into()
}

/// An element's exact text, as a span of its page's body. Every change of
/// a page shares the body, so none is copied out of it.
#[derive(Debug, Clone)]
pub struct Element {
    body: Arc<str>,
    span: Range<usize>,
}

impl Element {
    /// A text of its own.
    pub fn new(text: impl Into<Arc<str>>) -> Element {
        let body: Arc<str> = text.into();
        let span = 0..body.len();
        Element { body, span }
    }

    /// The text, exactly as the source sent it. A span always lies inside
    /// its body (the fetcher found it there); one that did not would read as
    /// empty rather than panic.
    pub fn text(&self) -> &str {
        self.body.get(self.span.clone()).unwrap_or_default()
    }
}

/// What an element turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    Valid(Profile),
    /// Valid, but with a status other than `active`/`pending`: the source's
    /// business filter. It is skipped and counted, and nothing is written or
    /// read for it.
    Inactive,
    Invalid(Rejection),
}

#[derive(Debug, Clone)]
pub struct Change {
    pub parsed: Parsed,
    pub element: Element,
    pub key: ChangeKey,
}

impl Change {
    fn new(parsed: Result<Profile, Rejection>, element: Element) -> Change {
        let key = change_key(element.text());
        let parsed = match parsed {
            Ok(profile) => Parsed::Valid(profile),
            Err(rejection) if rejection.reason == Reason::InactiveStatus => Parsed::Inactive,
            Err(rejection) => Parsed::Invalid(rejection),
        };
        Change {
            parsed,
            element,
            key,
        }
    }

    /// One element's text, parsed as a fresh change.
    pub fn from_text(text: &str, latest_allowed: DateTime<Utc>) -> Change {
        Change::new(
            Profile::parse_json(text, latest_allowed),
            Element::new(text),
        )
    }

    /// The id of a change that can write something: none for an inactive
    /// one, which never does.
    pub fn id(&self) -> Option<Uuid> {
        match &self.parsed {
            Parsed::Valid(profile) => Some(profile.id),
            Parsed::Inactive => None,
            Parsed::Invalid(rejection) => rejection.profile_id,
        }
    }
}

/// The changes of a page, in sequence order.
pub fn ingest(page: Page, latest_allowed: DateTime<Utc>) -> Vec<Change> {
    let parsed: Vec<(Range<usize>, Result<Profile, Rejection>)> = page
        .elements()
        .map(|(span, text)| (span, Profile::parse_json(text, latest_allowed)))
        .collect();
    let body: Arc<str> = page.into_body().into();
    parsed
        .into_iter()
        .map(|(span, parsed)| {
            let element = Element {
                body: Arc::clone(&body),
                span,
            };
            Change::new(parsed, element)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_sha256_of_the_exact_text() {
        // sha256("42")
        let expected = "73475cb40a568e8da8a045ced110137e159f890ac4da883b6b17dc651b3a8049";
        let hex: String = change_key("42")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
        assert_ne!(change_key("{\"a\":1}"), change_key("{\"a\": 1}"));
    }

    #[test]
    fn a_change_of_its_own_text_keeps_that_text() {
        let change = Change::from_text("[1]", Utc::now());
        assert_eq!(change.element.text(), "[1]");
        assert!(matches!(change.parsed, Parsed::Invalid(_)));
        assert_eq!(change.key, change_key("[1]"));
    }

    #[test]
    fn an_inactive_change_is_filtered_not_rejected() {
        let text = r#"{"id":"7d0f0c3e-3f0a-4c4e-9a53-0b1e6d9c0a11","name":"N","email":"n@x.io","mobile":"1234","status":"inactive","last_updated_at":"2025-01-01T00:00:00Z"}"#;
        let change = Change::from_text(text, Utc::now());
        assert!(matches!(change.parsed, Parsed::Inactive));
        assert_eq!(change.id(), None, "it writes nothing, so it has no writer");
        let bad_email = text.replace("n@x.io", "bad");
        let change = Change::from_text(&bad_email, Utc::now());
        assert!(
            matches!(&change.parsed, Parsed::Invalid(r) if r.reason == Reason::InvalidEmail),
            "validation comes before the status filter"
        );
    }
}
