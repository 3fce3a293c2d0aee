//! Durations written as humans write them in flags and config files (`500ms`, `10s`, `5m`,
//! `12h`, `90d`), shared by the agent's and the collector's options. Pure parsing and
//! formatting; no clock.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A duration written as humans do: `250ms`, `1s`, `10s`, `5m`, `12h`, `90d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 1s, 5m, 12h"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" | "" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86_400.0,
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {s:?}: use ms, s, m, h or d"
                ));
            }
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("invalid duration {s:?}"));
        }
        // Finite is not enough: 1e308 s is finite and beyond any Duration (which panics).
        Duration::try_from_secs_f64(secs)
            .map(HumanDuration)
            .map_err(|_| format!("invalid duration {s:?}: too long"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (n, unit) = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ]
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
        assert!(err.contains("too long"), "{err}");
        assert!("1e308".parse::<HumanDuration>().is_err());
        assert!("-1s".parse::<HumanDuration>().is_err());
    }
}
