//! Regulatory training-compute thresholds, as data.
//!
//! Each threshold is versioned and tagged with its jurisdiction and legal basis, so a report
//! can say exactly which rule it applied. The comparison is part of the data: the EU AI Act
//! says "greater than" (strict `>`), South Korea's Basic Act "10^26 or more" (`≥`).
//! Sources: `shared/reference/regulation.md`.

use serde::{Deserialize, Serialize};

/// 10^n as an exact integer.
pub const fn pow10(n: u32) -> u128 {
    10u128.pow(n)
}

/// How a total is compared with the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Comparison {
    /// Crossed when the total is strictly greater than the level.
    GreaterThan,
    /// Crossed when the total is at least the level.
    AtLeast,
}

/// What crossing obliges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Obligation {
    /// Notify the authority within `days` of meeting it or knowing it will be met.
    Notify {
        /// Days allowed.
        days: u32,
    },
    /// Worth knowing; no deadline.
    Informational,
}

/// The level a total is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Level {
    /// A fixed number of FLOP.
    Absolute {
        /// The level.
        flop: u128,
    },
    /// A fraction of the base model's compute (downstream modifiers), with fallbacks when
    /// that compute is unknown.
    FractionOfBase {
        /// Numerator of the fraction.
        numerator: u32,
        /// Denominator of the fraction.
        denominator: u32,
        /// Level when the base compute is unknown and the base is a systemic-risk model.
        fallback_systemic: u128,
        /// Level when the base compute is unknown otherwise.
        fallback_other: u128,
    },
}

/// One threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    /// Stable id, e.g. `eu-systemic-risk`.
    pub id: String,
    /// Version of this rule's definition; bumped when the level or basis changes.
    pub version: u32,
    /// Jurisdiction, e.g. `EU`.
    pub jurisdiction: String,
    /// Legal basis, e.g. `AI Act Art. 51(2), Art. 52(1)`.
    pub legal_basis: String,
    /// The level.
    pub level: Level,
    /// How totals are compared with the level.
    pub comparison: Comparison,
    /// What crossing obliges.
    pub obligation: Obligation,
}

impl Threshold {
    /// The level in FLOP for an absolute threshold; for a modifier threshold, given the base
    /// model's compute (if known) and whether the base is a systemic-risk model.
    pub fn level_flop(&self, base_flop: Option<u128>, base_systemic: bool) -> u128 {
        match self.level {
            Level::Absolute { flop } => flop,
            Level::FractionOfBase {
                numerator,
                denominator,
                fallback_systemic,
                fallback_other,
            } => match base_flop {
                Some(b) => b / u128::from(denominator.max(1)) * u128::from(numerator),
                None if base_systemic => fallback_systemic,
                None => fallback_other,
            },
        }
    }

    /// Whether `total` crosses `level`.
    pub fn crossed(&self, total: u128, level: u128) -> bool {
        match self.comparison {
            Comparison::GreaterThan => total > level,
            Comparison::AtLeast => total >= level,
        }
    }
}

/// The default thresholds.
pub fn defaults() -> Vec<Threshold> {
    let absolute = |id: &str, jur: &str, basis: &str, flop: u128, cmp, obligation| Threshold {
        id: id.to_string(),
        version: 1,
        jurisdiction: jur.to_string(),
        legal_basis: basis.to_string(),
        level: Level::Absolute { flop },
        comparison: cmp,
        obligation,
    };
    vec![
        absolute(
            "eu-gpai-indicative",
            "EU",
            "Commission GPAI guidelines C(2025) 5045 (indicative GPAI criterion)",
            pow10(23),
            Comparison::GreaterThan,
            Obligation::Informational,
        ),
        absolute(
            "eu-systemic-risk",
            "EU",
            "AI Act Art. 51(2) (presumption), Art. 52(1) (notify within two weeks)",
            pow10(25),
            Comparison::GreaterThan,
            Obligation::Notify { days: 14 },
        ),
        Threshold {
            id: "eu-modifier".to_string(),
            version: 1,
            jurisdiction: "EU".to_string(),
            legal_basis:
                "Commission GPAI guidelines: downstream modifier > 1/3 of the original's compute"
                    .to_string(),
            level: Level::FractionOfBase {
                numerator: 1,
                denominator: 3,
                fallback_systemic: pow10(25) / 3,
                fallback_other: pow10(23) / 3,
            },
            comparison: Comparison::GreaterThan,
            obligation: Obligation::Notify { days: 14 },
        },
        absolute(
            "us-ca-sb53",
            "US-CA",
            "California SB 53 (frontier model > 10^26 operations)",
            pow10(26),
            Comparison::GreaterThan,
            Obligation::Informational,
        ),
        absolute(
            "us-ny-raise",
            "US-NY",
            "New York RAISE Act (frontier model > 10^26 operations)",
            pow10(26),
            Comparison::GreaterThan,
            Obligation::Informational,
        ),
        absolute(
            "kr-basic-act",
            "KR",
            "South Korea AI Basic Act (10^26 FLOP or more)",
            pow10(26),
            Comparison::AtLeast,
            Obligation::Informational,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(id: &str) -> Threshold {
        defaults().into_iter().find(|t| t.id == id).unwrap()
    }

    #[test]
    fn exactly_the_level_does_not_cross_a_strict_threshold() {
        let eu = get("eu-systemic-risk");
        let level = eu.level_flop(None, false);
        assert!(!eu.crossed(pow10(25), level));
        assert!(eu.crossed(pow10(25) + 1, level));
        let kr = get("kr-basic-act");
        assert!(kr.crossed(pow10(26), kr.level_flop(None, false)));
    }

    #[test]
    fn modifier_level_from_base_or_fallback() {
        let m = get("eu-modifier");
        assert_eq!(m.level_flop(Some(3 * pow10(24)), true), pow10(24));
        assert_eq!(m.level_flop(None, true), 3_333_333_333_333_333_333_333_333);
        assert_eq!(m.level_flop(None, false), 33_333_333_333_333_333_333_333);
    }
}
