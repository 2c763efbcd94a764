//! Placement constraints: what a task requires of a worker's labels. `KEY=VALUE` (the label
//! has that value), `KEY!=VALUE` (it has not: missing counts as different) and `KEY` (the
//! label is there). A task's constraints must all hold.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Error;

/// Most constraints one task may carry.
pub const MAX_CONSTRAINTS: usize = 32;

/// One requirement on a worker's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    Equals(String, String),
    NotEquals(String, String),
    Present(String),
}

/// What a constraint looks like: a label key ([`LABEL_KEY_PATTERN`]), then nothing, or
/// `=` or `!=` and a value without control characters, each part at most
/// [`MAX_LABEL_LEN`] characters (what [`Constraint::parse`] takes).
///
/// [`LABEL_KEY_PATTERN`]: crate::domain::limits::LABEL_KEY_PATTERN
/// [`MAX_LABEL_LEN`]: crate::domain::limits::MAX_LABEL_LEN
pub const CONSTRAINT_PATTERN: &str =
    "^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}(!?=[^\\x00-\\x1f\\x7f-\\x9f]{0,256})?$";

impl Constraint {
    /// Parses `KEY=VALUE`, `KEY!=VALUE` or `KEY` ([`CONSTRAINT_PATTERN`]).
    pub fn parse(text: &str) -> Result<Constraint, Error> {
        use crate::domain::limits::{MAX_LABEL_LEN, is_label_key};
        let bad = |why: &str| {
            Error::invalid(format!(
                "constraint '{}' {why}: use KEY=VALUE, KEY!=VALUE or KEY (keys: letters, \
                 digits, '.', '_', '/', '-')",
                crate::text::clip(&text.escape_debug().to_string())
            ))
        };
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
            .unwrap_or(text.len());
        let (key, rest) = text.split_at(end);
        if key.is_empty() || !is_label_key(key) {
            return Err(bad("does not start with a label key"));
        }
        if key.chars().count() > MAX_LABEL_LEN {
            return Err(bad("has a key that is too long"));
        }
        let (value, constraint): (&str, fn(String, String) -> Constraint) =
            if let Some(value) = rest.strip_prefix("!=") {
                (value, Constraint::NotEquals)
            } else if let Some(value) = rest.strip_prefix('=') {
                (value, Constraint::Equals)
            } else if rest.is_empty() {
                return Ok(Constraint::Present(key.into()));
            } else {
                return Err(bad("has something other than = or != after its key"));
            };
        if value.chars().count() > MAX_LABEL_LEN {
            return Err(bad("has a value that is too long"));
        }
        if value.chars().any(char::is_control) {
            return Err(bad("has control characters"));
        }
        Ok(constraint(key.into(), value.into()))
    }

    pub fn key(&self) -> &str {
        match self {
            Constraint::Equals(k, _) | Constraint::NotEquals(k, _) | Constraint::Present(k) => k,
        }
    }

    /// Whether a worker with `labels` meets it.
    pub fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Equals(k, v) => labels.get(k) == Some(v),
            Constraint::NotEquals(k, v) => labels.get(k) != Some(v),
            Constraint::Present(k) => labels.contains_key(k),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Equals(k, v) => write!(f, "{k}={v}"),
            Constraint::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Constraint::Present(k) => write!(f, "{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_the_three_forms() {
        let labels: BTreeMap<String, String> = [
            ("zone".to_string(), "eu".to_string()),
            ("gpu".into(), "a100".into()),
        ]
        .into();
        let holds = |t: &str| Constraint::parse(t).unwrap().holds(&labels);
        assert!(holds("zone=eu"));
        assert!(!holds("zone=us"));
        assert!(holds("zone!=us"));
        assert!(!holds("zone!=eu"));
        assert!(holds("rack!=r1"), "missing counts as different");
        assert!(holds("gpu"));
        assert!(!holds("ssd"));
        for bad in ["", "=x", "!=x", "a b=c", " a=b", "a!b", "a\u{1}", "a=\n"] {
            assert!(Constraint::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Constraint::parse("zone!=us").unwrap().to_string(),
            "zone!=us"
        );
    }
}
