//! Sizes written as humans write them in flags and config files (`256MiB`, `1GiB`,
//! `500MB`, `1048576`), beside [`crate::duration`] and read by the same number-and-unit rule.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::duration::split_number_unit;

/// A size written as humans do: `256MiB`, `1GiB`, `500MB`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Why a text is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// No number in front.
    #[error("invalid size {0:?}: expected e.g. 256MiB, 1GiB")]
    Syntax(String),
    /// A unit other than B, KB, MB, GB, KiB, MiB, GiB.
    #[error("invalid size unit {unit:?} in {text:?}")]
    Unit {
        /// The unit as written.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// Beyond 64 bits.
    #[error("invalid size {0:?}")]
    OutOfRange(String),
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (n, unit) = split_number_unit(s).ok_or_else(|| ByteSizeError::Syntax(s.to_string()))?;
        let mult: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "m" | "mb" => 1e6,
            "g" | "gb" => 1e9,
            "ki" | "kib" => 1024.0,
            "mi" | "mib" => 1024.0 * 1024.0,
            "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(ByteSizeError::Unit {
                    unit: other.to_string(),
                    text: s.to_string(),
                });
            }
        };
        let bytes = n * mult;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(ByteSizeError::OutOfRange(s.to_string()));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (u, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if b >= u && b.is_multiple_of(u) {
                return write!(f, "{}{name}", b / u);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_print_as_written() {
        assert_eq!("256MiB".parse::<ByteSize>().unwrap(), ByteSize(256 << 20));
        assert_eq!("1GiB".parse::<ByteSize>().unwrap().to_string(), "1GiB");
        assert_eq!("500MB".parse::<ByteSize>().unwrap(), ByteSize(500_000_000));
        assert_eq!("1048576".parse::<ByteSize>().unwrap().to_string(), "1MiB");
        assert!(matches!(
            "1 parsec".parse::<ByteSize>(),
            Err(ByteSizeError::Unit { .. })
        ));
        assert!(matches!(
            "MiB".parse::<ByteSize>(),
            Err(ByteSizeError::Syntax(_))
        ));
        // No exponents: `1e30GiB` is 1 of a unit `e30GiB`.
        assert!(matches!(
            "1e30GiB".parse::<ByteSize>(),
            Err(ByteSizeError::Unit { .. })
        ));
        assert!(matches!(
            "99999999999999999999GiB".parse::<ByteSize>(),
            Err(ByteSizeError::OutOfRange(_))
        ));
    }
}
