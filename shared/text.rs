//! Bounding text that comes from outside before it is echoed back in an error or a log.

/// The most characters of a caller's input an error message repeats.
pub const MAX_ECHO: usize = 100;

/// `text` cut to [`MAX_ECHO`] characters, with `…` when something was cut.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO) {
        None => text.into(),
        Some((at, _)) => format!("{}…", &text[..at]).into(),
    }
}

/// An optional value for a log line or a message: the value, or `-` when there is none
/// (where `{:?}` would print `Some(0)` and `None`).
pub struct Maybe<'a, T>(pub &'a Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Maybe<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A text for a log line or a table: itself, or `-` when empty (where `name=` would look
/// like a field left out).
pub fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_cut_short_input_kept() {
        assert_eq!(clip("t-1"), "t-1");
        let long = "é".repeat(20_000);
        let cut = clip(&long);
        assert_eq!(cut.chars().count(), MAX_ECHO + 1);
        assert!(cut.ends_with('…'));
    }
}
