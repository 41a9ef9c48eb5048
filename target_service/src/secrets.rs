//! The one place secrets are kept out of what the service shows: every log
//! line (through the logger), `/status` and every error message go through
//! [`redact`].
//!
//! Two rules, so that a secret is hidden however it is spelled:
//! - the user-info of anything that looks like a URL (`scheme://user:pw@`)
//!   is masked, up to the authority's *last* `@`, so a password with an
//!   unencoded `@` is masked whole;
//! - every registered secret (passwords, tokens), as written, percent-encoded
//!   and percent-decoded, is masked wherever it appears, which covers a
//!   password given in `DB_PASSWORD` and one a library quotes on its own.

use std::borrow::Cow;
use std::fmt;
use std::sync::RwLock;

/// What a secret is replaced by.
pub const MASK: &str = "***";

/// Secrets shorter than this are only masked inside URLs: masking every
/// occurrence of a two-letter password would garble every line.
const SHORTEST_MASKED: usize = 3;

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// A value that must never be shown: its `Debug` is the mask.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Adds secrets to those [`redact`] masks, in every spelling.
pub fn register<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let mut known = KNOWN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for secret in secrets {
        let decoded = percent_decode(secret);
        let (upper, lower) = (percent_encode(secret, true), percent_encode(secret, false));
        for form in [secret.to_owned(), upper, lower, decoded] {
            if form.len() >= SHORTEST_MASKED && !known.contains(&form) {
                known.push(form);
            }
        }
    }
    // Longest first, so a secret containing another is masked whole.
    known.sort_by_key(|form| std::cmp::Reverse(form.len()));
}

/// `text` with URL user-info and every registered secret masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = redact_urls(text);
    let known = KNOWN
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    out
}

/// Masks the user-info of every `scheme://user-info@host` in `text`.
pub fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the path, query, fragment or the end of
        // the URL in the surrounding text.
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#') || c.is_whitespace() || "\"'<>`,;)".contains(c)
            })
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(user_info_end) => {
                out.push_str(MASK);
                rest = &after[user_info_end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One URL, given on its own (a configuration value), fit to quote: all
/// between the first `//` and the value's *last* `@` masked. Unlike
/// [`redact_urls`], which must guess where a URL in running text ends, this
/// knows the whole value is the URL, so a password holding `/`, `?`, `#`
/// or a space, which no parser can place, is masked whole all the same.
pub fn mask_url_user_info(url: &str) -> String {
    let Some(slashes) = url.find("//") else {
        return url.to_owned();
    };
    let authority_start = slashes + 2;
    match url[authority_start..].rfind('@') {
        Some(at) => format!(
            "{}{MASK}{}",
            &url[..authority_start],
            &url[authority_start + at..]
        ),
        None => url.to_owned(),
    }
}

/// The user-info of a URL given on its own, read as [`mask_url_user_info`]
/// masks it (all between `//` and the last `@`), percent-decoded; `None`
/// without an `@`.
pub fn url_user_info(url: &str) -> Option<String> {
    let authority_start = url.find("//")? + 2;
    let at = url[authority_start..].rfind('@')?;
    Some(percent_decode(&url[authority_start..authority_start + at]))
}

/// Every byte but the unreserved ones as `%XX`, in upper- or lower-case hex.
fn percent_encode(text: &str, upper: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&if upper {
                format!("%{byte:02X}")
            } else {
                format!("%{byte:02x}")
            });
        }
    }
    out
}

/// `%XX` escapes decoded; anything else (a lone `%` included) kept as is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_user_info_is_masked_up_to_the_last_at() {
        assert_eq!(
            redact_urls("cannot reach https://user:secret@host:8443/users/changes: refused"),
            "cannot reach https://***@host:8443/users/changes: refused"
        );
        assert_eq!(
            redact_urls("postgres://u:p@ss@host/db and http://plain/x"),
            "postgres://***@host/db and http://plain/x"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("http://"), "http://");
    }

    #[test]
    fn a_url_given_alone_is_masked_up_to_its_last_at_whatever_the_password_holds() {
        for password in [
            "Sec/ret9", "Sec#ret9", "Sec?ret9", "Sec ret9", "Sec@ret9", "Secret9",
        ] {
            let url = format!("http://feed:{password}@127.0.0.1:1/users/changes");
            assert_eq!(
                mask_url_user_info(&url),
                "http://***@127.0.0.1:1/users/changes",
                "{url}"
            );
            assert_eq!(url_user_info(&url), Some(format!("feed:{password}")));
        }
        assert_eq!(
            mask_url_user_info("postgres://u:p/w@h/db?x=a@b"),
            "postgres://***@b"
        );
        assert_eq!(mask_url_user_info("http://h:1/x"), "http://h:1/x");
        assert_eq!(mask_url_user_info("no url"), "no url");
        assert_eq!(url_user_info("http://h/x"), None);
        assert_eq!(
            url_user_info("http://u:p%40w@h/x").as_deref(),
            Some("u:p@w")
        );
    }

    #[test]
    fn registered_secrets_are_masked_in_every_spelling() {
        register(["s3cr@t/pw", "ab"]);
        for text in ["pw s3cr@t/pw", "pw s3cr%40t%2Fpw", "pw s3cr%40t%2fpw"] {
            let shown = redact(text);
            assert!(!shown.contains("s3cr"), "{shown}");
        }
        // Too short to mask outside a URL.
        assert_eq!(redact("about"), "about");
        assert_eq!(format!("{:?}", Secret::new("tok")), "***");
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%40b%2"), "a@b%2");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }
}
