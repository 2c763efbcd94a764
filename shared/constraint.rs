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

impl Constraint {
    /// Parses `KEY=VALUE`, `KEY!=VALUE` or `KEY`.
    pub fn parse(text: &str) -> Result<Constraint, Error> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "constraint '{}' {why}: use KEY=VALUE, KEY!=VALUE or KEY",
                crate::text::clip(text)
            ))
        };
        if text.chars().count() > 2 * crate::domain::limits::MAX_LABEL_LEN + 2 {
            return Err(bad("is too long"));
        }
        let (constraint, key) = if let Some((k, v)) = text.split_once("!=") {
            (
                Constraint::NotEquals(k.trim().into(), v.trim().into()),
                k.trim(),
            )
        } else if let Some((k, v)) = text.split_once('=') {
            (
                Constraint::Equals(k.trim().into(), v.trim().into()),
                k.trim(),
            )
        } else {
            (Constraint::Present(text.trim().into()), text.trim())
        };
        if key.is_empty() {
            return Err(bad("has no key"));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("has a key with spaces or control characters"));
        }
        Ok(constraint)
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
        for bad in ["", "=x", "!=x", "a b=c"] {
            assert!(Constraint::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Constraint::parse("zone!=us").unwrap().to_string(),
            "zone!=us"
        );
    }
}
