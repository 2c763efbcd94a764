//! Durations as operators type them, and wall-clock helpers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Parses a duration given as `500ms`, `5s`, `2m`, `1h 30m`, or a bare number of seconds
/// (fractions allowed: `0.5`). Used for every duration flag and environment variable, so
/// `HEARTBEAT_TIMEOUT_SECONDS=30` and `--heartbeat-timeout 30s` both work.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::invalid(
            "empty duration: use e.g. 500ms, 5s, 2m or a number of seconds",
        ));
    }
    let parsed = match text.parse::<f64>() {
        Ok(secs) if (0.0..1e10).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        Ok(_) => Err(Error::invalid(format!(
            "'{text}' is not a usable number of seconds"
        ))),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            Error::invalid(format!(
                "'{text}' is not a duration ({e}): use e.g. 500ms, 5s, 2m"
            ))
        }),
    }?;
    if parsed.is_zero() {
        return Err(Error::invalid(format!(
            "'{text}': the duration must be greater than zero"
        )));
    }
    Ok(parsed)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A unix-ms timestamp as UTC, to the second: `2026-12-01T09:30:00Z`.
pub fn format_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// "0.4s ago", "3m ago", "2h ago", "never" — how long ago a unix-ms timestamp was.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let ms = (now_ms - then_ms).max(0);
    if ms < 10_000 {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{}s ago", ms / 1000)
    } else if ms < 2 * 3_600_000 {
        format!("{}m ago", ms / 60_000)
    } else if ms < 2 * 86_400_000 {
        format!("{}h ago", ms / 3_600_000)
    } else {
        format!("{}d ago", ms / 86_400_000)
    }
}

/// A short human form of a duration: `1.5s`, `30s`, `10m`.
pub fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn durations_reject_nonsense() {
        for bad in ["", "abc", "-1", "0", "0s", "NaN", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ago_reads_like_a_person_would_say_it() {
        assert_eq!(ago(0, 5_000), "never");
        assert_eq!(ago(1_000, 1_400), "0.4s ago");
        assert_eq!(ago(1, 30_001), "30s ago");
        assert_eq!(ago(1, 600_001), "10m ago");
    }
}
