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
        #[serde(with = "crate::units::u128_compat")]
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
        #[serde(with = "crate::units::u128_compat")]
        fallback_systemic: u128,
        /// Level when the base compute is unknown otherwise.
        #[serde(with = "crate::units::u128_compat")]
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
    ///
    /// A fraction of the base is computed exactly (no rounding before the multiplication) and
    /// rounded so that [`Threshold::crossed`] on whole FLOP gives the exact answer: down for
    /// "greater than" (`t > b·n/d` ⇔ `t > ⌊b·n/d⌋` for integer `t`), up for "at least"
    /// (`t ≥ b·n/d` ⇔ `t ≥ ⌈b·n/d⌉`).
    pub fn level_flop(&self, base_flop: Option<u128>, base_systemic: bool) -> u128 {
        match self.level {
            Level::Absolute { flop } => flop,
            Level::FractionOfBase {
                numerator,
                denominator,
                fallback_systemic,
                fallback_other,
            } => match base_flop {
                Some(b) => {
                    let (n, d) = (u128::from(numerator), u128::from(denominator.max(1)));
                    let (q, r) = (b / d, b % d);
                    // b·n/d = q·n + r·n/d, with r·n < d·n: no overflow below 2^96 · n.
                    let floor = q.saturating_mul(n).saturating_add(r * n / d);
                    let exact = (r * n).is_multiple_of(d);
                    match self.comparison {
                        Comparison::GreaterThan => floor,
                        Comparison::AtLeast if exact => floor,
                        Comparison::AtLeast => floor.saturating_add(1),
                    }
                }
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

    /// The days allowed to notify, for a threshold that obliges a notification.
    pub fn notify_days(&self) -> Option<u32> {
        match self.obligation {
            Obligation::Notify { days } => Some(days),
            Obligation::Informational => None,
        }
    }

    /// Whether the level is relative to a base model (the downstream-modifier rule), which
    /// applies only to models registered as modifiers.
    pub fn is_relative(&self) -> bool {
        matches!(self.level, Level::FractionOfBase { .. })
    }

    /// Whether two thresholds define the same rule, ignoring the version number. Used to
    /// decide whether a configuration change deserves a new version.
    pub fn same_rule(&self, other: &Threshold) -> bool {
        self.id == other.id
            && self.jurisdiction == other.jurisdiction
            && self.legal_basis == other.legal_basis
            && self.level == other.level
            && self.comparison == other.comparison
            && self.obligation == other.obligation
    }
}

/// Whether `id` is a valid threshold id: non-empty, lowercase ASCII letters, digits and `-`.
/// Ids appear inside alert idempotency keys and metric labels, so `/`, spaces and uppercase
/// (which would make keys ambiguous or labels inconsistent) are refused.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The threshold with this id.
pub fn find<'a>(thresholds: &'a [Threshold], id: &str) -> Option<&'a Threshold> {
    thresholds.iter().find(|t| t.id == id)
}

/// The absolute levels of the default thresholds (10^23, 10^25, 10^26), sorted: what a table
/// without a model's own thresholds writes its figures against ([`crate::format::flop_near`]).
pub fn default_levels() -> Vec<u128> {
    let mut levels: Vec<u128> = defaults()
        .iter()
        .filter(|t| !t.is_relative())
        .map(|t| t.level_flop(None, false))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    levels
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
        // 1e25 / 3 is not whole: "greater than" rounds down, and t > floor is exact.
        assert_eq!(m.level_flop(Some(pow10(25)), true), pow10(25) / 3);
        let mut at_least = m.clone();
        at_least.comparison = Comparison::AtLeast;
        assert_eq!(
            at_least.level_flop(Some(pow10(25)), true),
            pow10(25) / 3 + 1
        );
        let mut two_thirds = m;
        two_thirds.level = Level::FractionOfBase {
            numerator: 2,
            denominator: 3,
            fallback_systemic: 0,
            fallback_other: 0,
        };
        assert_eq!(two_thirds.level_flop(Some(10), false), 6);
        assert_eq!(
            two_thirds.level_flop(Some(u128::MAX), false),
            u128::MAX / 3 * 2
        );
    }

    #[test]
    fn ids_and_helpers() {
        assert!(is_valid_id("eu-systemic-risk"));
        for bad in ["", "EU", "a/b", "a b"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        for t in defaults() {
            assert!(is_valid_id(&t.id), "{}", t.id);
        }
        let d = defaults();
        assert_eq!(
            find(&d, "eu-systemic-risk").unwrap().notify_days(),
            Some(14)
        );
        assert_eq!(find(&d, "us-ca-sb53").unwrap().notify_days(), None);
        assert!(find(&d, "eu-modifier").unwrap().is_relative());
        let mut bumped = get("eu-gpai-indicative");
        bumped.version = 7;
        assert!(bumped.same_rule(&get("eu-gpai-indicative")));
        bumped.legal_basis.push('!');
        assert!(!bumped.same_rule(&get("eu-gpai-indicative")));
    }
}
