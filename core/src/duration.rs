//! Durations written as humans write them in flags and config files (`500ms`, `10s`, `5m`,
//! `12h`, `90d`), shared by the agent's and the collector's options. Pure parsing and
//! formatting; no clock.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::utc::{
    MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, MS_PER_SECOND, SECONDS_PER_DAY, SECONDS_PER_HOUR,
};

/// A duration written as humans do: `250ms`, `1s`, `10s`, `5m`, `12h`, `90d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No number in front.
    #[error("invalid duration {0:?}: expected e.g. 500ms, 1s, 5m, 12h")]
    Syntax(String),
    /// A unit other than ms, s, m, h, d.
    #[error("invalid duration unit {unit:?} in {text:?}: use ms, s, m, h or d")]
    Unit {
        /// The unit as written.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// Negative or beyond what a duration holds.
    #[error("invalid duration {0:?}")]
    OutOfRange(String),
}

/// `10s` → `(10.0, "s")`, `1.5 GiB` → `(1.5, "GiB")`: the leading decimal number and the
/// unit after it (trimmed), the one rule durations and sizes are read by. `None` without a
/// number in front.
pub(crate) fn split_number_unit(s: &str) -> Option<(f64, &str)> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (n, unit) = split_number_unit(s).ok_or_else(|| DurationError::Syntax(s.to_string()))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" | "" => n,
            "m" | "min" => n * 60.0,
            "h" => n * SECONDS_PER_HOUR as f64,
            "d" => n * SECONDS_PER_DAY as f64,
            other => {
                return Err(DurationError::Unit {
                    unit: other.to_string(),
                    text: s.to_string(),
                });
            }
        };
        // Finite is not enough: 1e308 s is finite and beyond any Duration, and
        // `Duration::MAX.as_secs_f64()` rounds up, so only the checked conversion decides.
        Duration::try_from_secs_f64(secs)
            .map(HumanDuration)
            .map_err(|_| DurationError::OutOfRange(s.to_string()))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (n, unit) = [
            (MS_PER_DAY, "d"),
            (MS_PER_HOUR, "h"),
            (MS_PER_MINUTE, "m"),
            (MS_PER_SECOND, "s"),
        ]
        .map(|(u, name)| (u as u128, name))
        .into_iter()
        .find(|(u, _)| ms >= *u && ms.is_multiple_of(*u))
        .map_or((ms, "ms"), |(u, name)| (ms / u, name));
        write!(f, "{n}{unit}")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for s in ["250ms", "1s", "10s", "5m", "12h", "90d"] {
            assert_eq!(s.parse::<HumanDuration>().unwrap().to_string(), s);
        }
        assert_eq!("1.5s".parse::<HumanDuration>().unwrap().0.as_millis(), 1500);
        assert!("5 weeks".parse::<HumanDuration>().is_err());
        // Finite but beyond any Duration: an error, not a panic (found by config_parse's
        // fuzzing with a per-run seed; corpus cli_duration_too_long.toml).
        let huge = format!("{}", 1e308_f64);
        let err = huge.parse::<HumanDuration>().unwrap_err();
        assert!(matches!(err, DurationError::OutOfRange(_)), "{err}");
        assert!("1e308".parse::<HumanDuration>().is_err());
        assert!("-1s".parse::<HumanDuration>().is_err());
        // Once a panic in Duration::from_secs_f64; now an error that names the text.
        assert_eq!(
            "99999999999999999999999d".parse::<HumanDuration>(),
            Err(DurationError::OutOfRange("99999999999999999999999d".into()))
        );
        assert!(matches!(
            "5 weeks".parse::<HumanDuration>(),
            Err(DurationError::Unit { .. })
        ));
    }
}
