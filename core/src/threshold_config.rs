//! Threshold configuration: the operator's changes on top of [`threshold::defaults`].
//!
//! The collector config can add thresholds, change a default one (level, comparison,
//! obligation, legal basis, jurisdiction), disable one, and choose which bound of a band decides
//! (default [`Bound::High`], so that undercounting can never hide a crossing). The shape is
//! TOML-friendly: a table per threshold id.
//!
//! ```toml
//! decision_bound = "high"
//!
//! [thresholds.eu-systemic-risk]
//! level = "1e25"                       # strings keep every digit; see `FlopAmount`
//!
//! [thresholds.us-ny-raise]
//! enabled = false
//!
//! [thresholds.internal-review]
//! jurisdiction = "internal"
//! legal_basis = "Company policy: review above 5e24"
//! level = "5e24"
//! comparison = "at-least"
//! obligation = { kind = "notify", days = 7 }
//! ```
//!
//! Versioning: a threshold's version changes whenever its rule changes, so every report and
//! audit entry names exactly the rule it applied. Versions are computed, never typed by hand:
//! a default keeps version 1 until the config changes it (then 2), and against the previously
//! applied set a changed rule gets `previous + 1` while an unchanged one keeps its version.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::threshold::{self, Comparison, Level, Obligation, Threshold};
use crate::units::Bound;

/// A number of FLOP as written in a config file, held exactly: the one exact FLOP type of
/// the workspace, [`crate::units::FlopAmount`], re-exported where thresholds always found it.
///
/// Why not a plain integer: TOML integers are 64-bit and 10^25 does not fit, and a TOML float
/// `1e25` is the binary double 10000000000000000905969664, not 10^25. So a level is best written
/// as a string (`"1e25"`, `"3.33e24"`, `"2_100_000_000_000_000_000_000_000"`), which is parsed as
/// an exact decimal. Integers are accepted, and floats are accepted through their shortest
/// decimal form (`1e25` → `"1e25"` → exactly 10^25), which is what the author wrote.
pub use crate::units::{FlopAmount, FlopAmountError};

/// A fraction of the base model's compute, written `"1/3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    /// Numerator, at least 1.
    pub numerator: u32,
    /// Denominator, at least 1.
    pub denominator: u32,
}

impl Serialize for Fraction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.numerator, self.denominator))
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parsed = s.split_once('/').and_then(|(n, d)| {
            Some(Fraction {
                numerator: n.trim().parse().ok()?,
                denominator: d.trim().parse().ok()?,
            })
        });
        match parsed {
            Some(f) if f.numerator >= 1 && f.denominator >= 1 => Ok(f),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not a fraction: write it as \"1/3\" (both parts whole and at least 1)"
            ))),
        }
    }
}

/// The operator's changes to one threshold. Every field is optional; fields not given keep the
/// default's value. For a new id, `jurisdiction`, `legal_basis` and a level are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdPatch {
    /// `false` disables the threshold (it is not evaluated at all); `true` or absent keeps it.
    pub enabled: Option<bool>,
    /// Jurisdiction tag, e.g. `EU`.
    pub jurisdiction: Option<String>,
    /// Legal basis shown in alerts and reports.
    pub legal_basis: Option<String>,
    /// An absolute level in FLOP.
    pub level: Option<FlopAmount>,
    /// A level relative to the base model's compute (downstream-modifier rule).
    pub fraction_of_base: Option<Fraction>,
    /// For a relative level: the level when the base compute is unknown and the base is a
    /// systemic-risk model.
    pub fallback_systemic: Option<FlopAmount>,
    /// For a relative level: the level when the base compute is unknown otherwise.
    pub fallback_other: Option<FlopAmount>,
    /// `greater-than` (strict, the EU wording) or `at-least`.
    pub comparison: Option<Comparison>,
    /// `{ kind = "notify", days = 14 }` or `{ kind = "informational" }`.
    pub obligation: Option<Obligation>,
}

/// The threshold part of the collector config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdConfig {
    /// Which bound of a band decides whether a threshold is crossed. Default `high`.
    pub decision_bound: Bound,
    /// Changes per threshold id (existing ids are patched, new ids are added).
    pub thresholds: BTreeMap<String, ThresholdPatch>,
}

/// Why a threshold configuration was refused. The message names the threshold and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdConfigError {
    /// The id has characters other than lowercase letters, digits and `-`.
    #[error("threshold id {0:?} is invalid: use lowercase letters, digits and '-'")]
    InvalidId(String),
    /// A new threshold lacks a field it needs.
    #[error("new threshold {id:?} needs {field}")]
    Missing {
        /// The threshold id.
        id: String,
        /// The missing field.
        field: &'static str,
    },
    /// Both an absolute and a relative level were given.
    #[error("threshold {0:?}: give either `level` or `fraction_of_base`, not both")]
    TwoLevels(String),
    /// Fallbacks were given for an absolute level.
    #[error(
        "threshold {0:?}: `fallback_systemic`/`fallback_other` apply only with `fraction_of_base`"
    )]
    FallbackWithoutFraction(String),
    /// A notify obligation with zero days.
    #[error("threshold {0:?}: a notify obligation needs at least 1 day")]
    ZeroDays(String),
    /// `enabled = false` for an id that is neither a default nor added here: most likely a typo.
    #[error("threshold {0:?} is not a known threshold, so it cannot be disabled")]
    UnknownDisabled(String),
}

/// A change between the previously applied thresholds and the newly resolved ones, for the
/// audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "change")]
pub enum ThresholdChange {
    /// A threshold is now evaluated that was not before.
    Added {
        /// Id.
        id: String,
        /// Its version.
        version: u32,
    },
    /// A threshold's rule changed.
    Changed {
        /// Id.
        id: String,
        /// Version before.
        from_version: u32,
        /// Version now.
        to_version: u32,
    },
    /// A threshold is no longer evaluated (disabled or removed from the config).
    Removed {
        /// Id.
        id: String,
        /// Its last version.
        version: u32,
    },
}

/// The thresholds in force after applying a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedThresholds {
    /// The bound that decides.
    pub decision_bound: Bound,
    /// Enabled thresholds: the defaults in their order, then added ones by id.
    pub thresholds: Vec<Threshold>,
    /// Ids disabled by the config.
    pub disabled: Vec<String>,
    /// What changed against the previous set (all `Added` when there was none).
    pub changes: Vec<ThresholdChange>,
}

impl ThresholdConfig {
    /// Applies this config to [`threshold::defaults`], versioning against `previous` (the set
    /// applied before; empty on first start).
    pub fn resolve(
        &self,
        previous: &[Threshold],
    ) -> Result<ResolvedThresholds, ThresholdConfigError> {
        let mut out: Vec<Threshold> = Vec::new();
        let mut disabled = Vec::new();
        let mut defaults = threshold::defaults();
        // Defaults first, in their order; then new ids in key order (BTreeMap).
        let added: Vec<(String, Threshold)> = self
            .thresholds
            .keys()
            .filter(|id| threshold::find(&defaults, id).is_none())
            .map(|id| (id.clone(), blank(id)))
            .collect();
        let is_new: Vec<bool> = std::iter::repeat_n(false, defaults.len())
            .chain(std::iter::repeat_n(true, added.len()))
            .collect();
        defaults.extend(added.into_iter().map(|(_, t)| t));
        for (base, new) in defaults.into_iter().zip(is_new) {
            let Some(patch) = self.thresholds.get(&base.id) else {
                out.push(base);
                continue;
            };
            if !threshold::is_valid_id(&base.id) {
                return Err(ThresholdConfigError::InvalidId(base.id));
            }
            if new && patch.enabled == Some(false) && patch == &disabled_only() {
                return Err(ThresholdConfigError::UnknownDisabled(base.id));
            }
            let patched = apply(&base, patch, new)?;
            if patch.enabled == Some(false) {
                disabled.push(patched.id);
            } else {
                out.push(patched);
            }
        }
        let mut changes = Vec::new();
        for t in &mut out {
            match threshold::find(previous, &t.id) {
                Some(p) if p.same_rule(t) => t.version = p.version,
                Some(p) => {
                    t.version = t.version.max(p.version.saturating_add(1));
                    changes.push(ThresholdChange::Changed {
                        id: t.id.clone(),
                        from_version: p.version,
                        to_version: t.version,
                    });
                }
                None => changes.push(ThresholdChange::Added {
                    id: t.id.clone(),
                    version: t.version,
                }),
            }
        }
        for p in previous {
            if threshold::find(&out, &p.id).is_none() {
                changes.push(ThresholdChange::Removed {
                    id: p.id.clone(),
                    version: p.version,
                });
            }
        }
        Ok(ResolvedThresholds {
            decision_bound: self.decision_bound,
            thresholds: out,
            disabled,
            changes,
        })
    }
}

fn disabled_only() -> ThresholdPatch {
    ThresholdPatch {
        enabled: Some(false),
        ..ThresholdPatch::default()
    }
}

/// A placeholder for a new id; `apply` fills it and checks the required fields.
fn blank(id: &str) -> Threshold {
    Threshold {
        id: id.to_string(),
        version: 0,
        jurisdiction: String::new(),
        legal_basis: String::new(),
        level: Level::Absolute { flop: 0 },
        comparison: Comparison::GreaterThan,
        obligation: Obligation::Informational,
    }
}

fn apply(
    base: &Threshold,
    patch: &ThresholdPatch,
    new: bool,
) -> Result<Threshold, ThresholdConfigError> {
    let id = base.id.clone();
    let missing = |field| ThresholdConfigError::Missing {
        id: id.clone(),
        field,
    };
    if new {
        if patch.jurisdiction.is_none() {
            return Err(missing("`jurisdiction`"));
        }
        if patch.legal_basis.is_none() {
            return Err(missing("`legal_basis`"));
        }
        if patch.level.is_none() && patch.fraction_of_base.is_none() {
            return Err(missing("`level` or `fraction_of_base`"));
        }
    }
    let mut t = base.clone();
    if let Some(j) = &patch.jurisdiction {
        t.jurisdiction = j.clone();
    }
    if let Some(b) = &patch.legal_basis {
        t.legal_basis = b.clone();
    }
    if let Some(c) = patch.comparison {
        t.comparison = c;
    }
    if let Some(o) = patch.obligation {
        if o == (Obligation::Notify { days: 0 }) {
            return Err(ThresholdConfigError::ZeroDays(id));
        }
        t.obligation = o;
    }
    let fallbacks = patch.fallback_systemic.is_some() || patch.fallback_other.is_some();
    t.level = match (patch.level, patch.fraction_of_base, base.level) {
        (Some(_), Some(_), _) => return Err(ThresholdConfigError::TwoLevels(id)),
        (Some(l), None, _) if !fallbacks => Level::Absolute { flop: l.0 },
        (Some(_), None, _) => return Err(ThresholdConfigError::FallbackWithoutFraction(id)),
        (None, Some(f), previous) => {
            let (ps, po) = match previous {
                Level::FractionOfBase {
                    fallback_systemic,
                    fallback_other,
                    ..
                } => (Some(fallback_systemic), Some(fallback_other)),
                Level::Absolute { .. } => (None, None),
            };
            Level::FractionOfBase {
                numerator: f.numerator,
                denominator: f.denominator,
                fallback_systemic: patch
                    .fallback_systemic
                    .map(|a| a.0)
                    .or(ps)
                    .ok_or_else(|| missing("`fallback_systemic`"))?,
                fallback_other: patch
                    .fallback_other
                    .map(|a| a.0)
                    .or(po)
                    .ok_or_else(|| missing("`fallback_other`"))?,
            }
        }
        (
            None,
            None,
            Level::FractionOfBase {
                numerator,
                denominator,
                fallback_systemic,
                fallback_other,
            },
        ) => Level::FractionOfBase {
            numerator,
            denominator,
            fallback_systemic: patch.fallback_systemic.map_or(fallback_systemic, |a| a.0),
            fallback_other: patch.fallback_other.map_or(fallback_other, |a| a.0),
        },
        (None, None, Level::Absolute { .. }) if fallbacks => {
            return Err(ThresholdConfigError::FallbackWithoutFraction(id));
        }
        (None, None, level @ Level::Absolute { .. }) => level,
    };
    // A new threshold starts at version 1; a default that the config changes is version 2.
    t.version = if new {
        1
    } else if t.same_rule(base) {
        base.version
    } else {
        base.version + 1
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::pow10;

    fn toml_config(text: &str) -> ThresholdConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn amounts_are_exact() {
        let cases: &[(&str, Result<u128, &str>)] = &[
            ("1e25", Ok(pow10(25))),
            ("1E25", Ok(pow10(25))),
            ("3.33e24", Ok(333 * pow10(22))),
            ("2_100_000", Ok(2_100_000)),
            ("+7", Ok(7)),
            ("1.50e1", Ok(15)),
            ("0.0", Ok(0)),
            ("1.5", Err("whole")),
            ("1e-3", Err("whole")),
            ("-1e25", Err("negative")),
            ("1e39", Err("too large")),
            ("abc", Err("not a number")),
            ("", Err("not a number")),
            ("1e", Err("not a number")),
            (".", Err("not a number")),
        ];
        for (text, want) in cases {
            let got = FlopAmount::parse(text);
            match want {
                Ok(v) => assert_eq!(got, Ok(FlopAmount(*v)), "{text}"),
                Err(msg) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(msg), "{text}: {e}");
                }
            }
        }
    }

    #[test]
    fn toml_floats_and_integers_read_exactly() {
        let c = toml_config(
            "[thresholds.a]\nlevel = 1e25\n[thresholds.b]\nlevel = 5000\n[thresholds.c]\nlevel = \"2.1e25\"",
        );
        assert_eq!(c.thresholds["a"].level, Some(FlopAmount(pow10(25))));
        assert_eq!(c.thresholds["b"].level, Some(FlopAmount(5000)));
        assert_eq!(c.thresholds["c"].level, Some(FlopAmount(21 * pow10(24))));
        assert!(toml::from_str::<ThresholdConfig>("[thresholds.a]\nlevle = 1").is_err());
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let r = ThresholdConfig::default().resolve(&[]).unwrap();
        assert_eq!(r.thresholds, threshold::defaults());
        assert_eq!(r.decision_bound, Bound::High);
        assert!(
            r.changes
                .iter()
                .all(|c| matches!(c, ThresholdChange::Added { version: 1, .. }))
        );
        // Applying the same again against what is in force changes nothing.
        let again = ThresholdConfig::default().resolve(&r.thresholds).unwrap();
        assert_eq!(again.changes, vec![]);
    }

    /// Add, change and disable, table-driven: each row is a TOML snippet and what it must do.
    #[test]
    fn add_change_disable() {
        struct Row {
            toml: &'static str,
            id: &'static str,
            check: fn(Option<&Threshold>, &ResolvedThresholds),
        }
        let rows = [
            Row {
                toml: r#"
                    [thresholds.internal-review]
                    jurisdiction = "internal"
                    legal_basis = "Company policy"
                    level = "5e24"
                    comparison = "at-least"
                    obligation = { kind = "notify", days = 7 }"#,
                id: "internal-review",
                check: |t, r| {
                    let t = t.unwrap();
                    assert_eq!(t.version, 1);
                    assert_eq!(
                        t.level,
                        Level::Absolute {
                            flop: 5 * pow10(24)
                        }
                    );
                    assert_eq!(t.comparison, Comparison::AtLeast);
                    assert_eq!(t.notify_days(), Some(7));
                    assert_eq!(r.thresholds.last().unwrap().id, "internal-review");
                },
            },
            Row {
                toml: r#"
                    [thresholds.eu-systemic-risk]
                    level = "2e25"
                    legal_basis = "AI Act Art. 51(3) delegated act (hypothetical)""#,
                id: "eu-systemic-risk",
                check: |t, _| {
                    let t = t.unwrap();
                    assert_eq!(t.version, 2);
                    assert_eq!(
                        t.level,
                        Level::Absolute {
                            flop: 2 * pow10(25)
                        }
                    );
                    assert_eq!(t.comparison, Comparison::GreaterThan, "kept");
                    assert_eq!(t.notify_days(), Some(14), "kept");
                },
            },
            Row {
                toml: r#"
                    [thresholds.us-ca-sb53]
                    obligation = { kind = "notify", days = 15 }
                    comparison = "at-least""#,
                id: "us-ca-sb53",
                check: |t, _| {
                    let t = t.unwrap();
                    assert_eq!((t.version, t.notify_days()), (2, Some(15)));
                    assert_eq!(t.comparison, Comparison::AtLeast);
                },
            },
            Row {
                toml: "[thresholds.eu-modifier]\nfallback_other = \"3.4e22\"",
                id: "eu-modifier",
                check: |t, _| {
                    let t = t.unwrap();
                    assert_eq!(t.version, 2);
                    assert_eq!(t.level_flop(None, false), 34 * pow10(21));
                    assert_eq!(t.level_flop(None, true), pow10(25) / 3, "kept");
                },
            },
            Row {
                toml: "[thresholds.us-ny-raise]\nenabled = false",
                id: "us-ny-raise",
                check: |t, r| {
                    assert!(t.is_none());
                    assert_eq!(r.disabled, vec!["us-ny-raise".to_string()]);
                    assert_eq!(r.thresholds.len(), threshold::defaults().len() - 1);
                },
            },
            Row {
                toml: "decision_bound = \"central\"",
                id: "eu-systemic-risk",
                check: |t, r| {
                    assert_eq!(t.unwrap().version, 1);
                    assert_eq!(r.decision_bound, Bound::Central);
                },
            },
            Row {
                // Restating a default unchanged is not a change.
                toml: "[thresholds.eu-systemic-risk]\nlevel = \"1e25\"",
                id: "eu-systemic-risk",
                check: |t, _| assert_eq!(t.unwrap().version, 1),
            },
        ];
        for row in rows {
            let r = toml_config(row.toml).resolve(&[]).unwrap();
            (row.check)(threshold::find(&r.thresholds, row.id), &r);
        }
    }

    #[test]
    fn refusals_name_the_fix() {
        let rows: &[(&str, &str)] = &[
            (
                "[thresholds.new-one]\nlevel = \"1e24\"",
                "needs `jurisdiction`",
            ),
            (
                "[thresholds.new-one]\njurisdiction = \"X\"\nlegal_basis = \"Y\"",
                "needs `level` or `fraction_of_base`",
            ),
            (
                "[thresholds.eu-systemic-risk]\nlevel = \"1e25\"\nfraction_of_base = \"1/3\"",
                "not both",
            ),
            (
                "[thresholds.eu-systemic-risk]\nfallback_other = \"1\"",
                "apply only with",
            ),
            (
                "[thresholds.eu-systemic-risk]\nfraction_of_base = \"1/2\"",
                "needs `fallback_systemic`",
            ),
            (
                "[thresholds.eu-systemic-risk]\nobligation = { kind = \"notify\", days = 0 }",
                "at least 1 day",
            ),
            (
                "[thresholds.eu-sytemic-risk]\nenabled = false",
                "cannot be disabled",
            ),
            (
                "[thresholds.Bad]\njurisdiction = \"X\"\nlegal_basis = \"Y\"\nlevel = 1",
                "invalid",
            ),
        ];
        for (text, want) in rows {
            let err = toml_config(text).resolve(&[]).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let bad = toml::from_str::<ThresholdConfig>(
            "[thresholds.eu-modifier]\nfraction_of_base = \"0/3\"",
        )
        .unwrap_err();
        assert!(bad.to_string().contains("at least 1"), "{bad}");
    }

    #[test]
    fn versions_move_forward_against_the_previous_set() {
        let v2 = toml_config("[thresholds.eu-systemic-risk]\nlevel = \"2e25\"")
            .resolve(&[])
            .unwrap();
        // Reverting to the default is a change against what is in force: version 3, not 1.
        let reverted = ThresholdConfig::default().resolve(&v2.thresholds).unwrap();
        let t = threshold::find(&reverted.thresholds, "eu-systemic-risk").unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(
            reverted.changes,
            vec![ThresholdChange::Changed {
                id: "eu-systemic-risk".into(),
                from_version: 2,
                to_version: 3
            }]
        );
        let disabled = toml_config("[thresholds.kr-basic-act]\nenabled = false")
            .resolve(&reverted.thresholds)
            .unwrap();
        assert_eq!(
            disabled.changes,
            vec![ThresholdChange::Removed {
                id: "kr-basic-act".into(),
                version: 1
            }]
        );
        // Unchanged thresholds keep their (bumped) version from the previous set.
        assert_eq!(
            threshold::find(&disabled.thresholds, "eu-systemic-risk")
                .unwrap()
                .version,
            3
        );
    }
}
