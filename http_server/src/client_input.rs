//! What the handlers of both services do with what a client sends: compare
//! a token it presents in constant time (`constant_time_eq`) and echo its
//! input, cut short, in an error body (`shorten`). The server itself uses
//! neither; they live here because this is the one crate both services
//! share.

/// Whether `given` is `expected`, in a time that depends on the length of
/// `expected` only (not a secret worth hiding), not on where the two first
/// differ: for comparing bearer tokens.
pub fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut difference = u8::from(expected.len() != given.len());
    for (i, &byte) in expected.iter().enumerate() {
        let other = given.get(i).copied().unwrap_or(!byte);
        difference |= byte ^ other;
    }
    // Keeps the compiler from cutting the loop short at the first difference.
    std::hint::black_box(difference) == 0
}

/// Client input echoed in an error body, cut to 100 characters so error
/// bodies stay small.
pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn echoed_input_is_cut_at_100_characters() {
        assert_eq!(shorten("short"), "short");
        let long = "é".repeat(150);
        assert_eq!(shorten(&long), format!("{}...", "é".repeat(100)));
    }
}
