//! Who may read personal data over HTTP: the `ADMIN_TOKEN` bearer token and
//! its check. Rejections hold emails and mobiles, so `GET /rejections`
//! answers only a request carrying `Authorization: Bearer <ADMIN_TOKEN>`.
//!
//! The token never appears in `Debug` output, logs or error messages, and
//! is compared in constant time, so neither timing nor a log line gives it
//! away.

use std::fmt;

/// The configured admin token. `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The longest token taken; a request head is at most 8 KiB anyway.
const MAX_TOKEN: usize = 1024;

impl AdminToken {
    /// A token as an `Authorization: Bearer` header can carry it: visible
    /// ASCII, no spaces. The error names the rule, never the value.
    pub fn new(text: &str) -> Result<AdminToken, String> {
        let text = text.trim();
        if text.len() > MAX_TOKEN {
            return Err(format!("longer than {MAX_TOKEN} characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "must be visible ASCII without spaces (it is sent as a bearer token)".to_owned(),
            );
        }
        Ok(AdminToken(text.to_owned()))
    }

    /// The token itself, for the one place that masks secrets in output.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time that depends on the
    /// token's length only, not on where the two first differ.
    pub fn matches(&self, presented: &str) -> bool {
        http_server::client_input::constant_time_eq(self.0.as_bytes(), presented.as_bytes())
    }
}

/// Why a request may not read rejections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `ADMIN_TOKEN` is unset: the endpoint is off (`403`).
    Disabled,
    /// No bearer token, or a wrong one (`401`).
    Unauthorized,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Disabled => 403,
            Refusal::Unauthorized => 401,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Disabled => {
                "rejections hold personal data and are not served while ADMIN_TOKEN is unset; \
                 set ADMIN_TOKEN in the target's environment and send Authorization: Bearer <ADMIN_TOKEN>"
            }
            Refusal::Unauthorized => {
                "send the target's ADMIN_TOKEN as Authorization: Bearer <ADMIN_TOKEN>"
            }
        }
    }
}

/// Checks an `Authorization` header against the configured token.
pub fn authorize(token: Option<&AdminToken>, authorization: Option<&str>) -> Result<(), Refusal> {
    let Some(token) = token else {
        return Err(Refusal::Disabled);
    };
    let presented = authorization.and_then(|value| {
        let (scheme, credentials) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim())
    });
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        _ => Err(Refusal::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let token = AdminToken::new("s3cret-token").unwrap();
        assert!(token.matches("s3cret-token"));
        for wrong in ["", "s3cret-toke", "s3cret-token!", "S3cret-token", "x"] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn authorization_needs_a_bearer_token() {
        let token = AdminToken::new("abc").unwrap();
        assert_eq!(authorize(None, Some("Bearer abc")), Err(Refusal::Disabled));
        assert_eq!(authorize(Some(&token), Some("Bearer abc")), Ok(()));
        assert_eq!(authorize(Some(&token), Some("bearer  abc ")), Ok(()));
        for bad in [None, Some("abc"), Some("Basic abc"), Some("Bearer abd")] {
            assert_eq!(authorize(Some(&token), bad), Err(Refusal::Unauthorized));
        }
    }

    #[test]
    fn admin_token_is_read_from_the_configuration() {
        use crate::config::Config;
        let with = |value: &'static str| {
            Config::from_lookup(move |name| (name == "ADMIN_TOKEN").then(|| value.to_owned()))
        };
        assert_eq!(with("").unwrap().admin_token, None, "unset by default");
        let token = with("t0ken").unwrap().admin_token.unwrap();
        assert!(token.matches("t0ken"));
        let err = with("two words").unwrap_err();
        assert_eq!(err.variable, "ADMIN_TOKEN");
        assert!(!err.to_string().contains("two words"), "{err}");
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        assert!(AdminToken::new("has space").is_err());
        assert!(AdminToken::new(&"a".repeat(2000)).is_err());
        let token = AdminToken::new("visible").unwrap();
        assert!(!format!("{token:?}").contains("visible"));
    }
}
