//! The status page at `GET /`: one self-contained HTML file (inline CSS,
//! script and SVG, nothing fetched from elsewhere, so it works offline) that
//! reads `/status` every few seconds and, once an admin token is typed in,
//! `/rejections`. It shows times relative ("12 s ago", the UTC instant on
//! hover), the source and database served (as `/status` masks them),
//! rejection reasons by count, and charts of throughput and lag that the
//! page keeps from its own polls, for the last 15 minutes.
//!
//! What the source sent is shown as text only: the script writes with
//! `textContent`, and the Content-Security-Policy below forbids loading
//! anything, so even markup that slipped through could not fetch or run
//! anything from outside.

/// The page, embedded so the binary needs no file beside it.
pub const PAGE: &str = include_str!("status.html");

/// The headers the page is served with.
pub fn headers() -> Vec<(&'static str, String)> {
    vec![
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
                .to_owned(),
        ),
        ("X-Content-Type-Options", "nosniff".to_owned()),
        ("Cache-Control", "no-store".to_owned()),
        ("Referrer-Policy", "no-referrer".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_needs_nothing_from_outside_and_writes_text_only() {
        for outside in ["http://", "https://", "//cdn", "src=\"", "@import"] {
            assert!(!PAGE.contains(outside), "{outside}");
        }
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
        assert!(!PAGE.contains("document.write"));
        assert!(PAGE.contains("textContent"));
    }
}
