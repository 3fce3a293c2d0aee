//! The model registry: lineage and declared plans, set by an administrator.
//!
//! The compliance engine (a later issue) reads it: the base model's compute decides the
//! downstream-modifier threshold (1/3 of it), and the declared plan can start the Art. 52
//! clock before a single FLOP is measured.

use std::fmt;
use std::str::FromStr;

use flopmeter_core::declaration::{Declaration, PlanFigures};
use flopmeter_core::units::Precision;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A model's role under the AI Act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trains the model itself (the original provider).
    Provider,
    /// Modifies someone else's base model; becomes a provider past 1/3 of its compute.
    Modifier,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Modifier => "modifier",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "provider" => Ok(Role::Provider),
            "modifier" => Ok(Role::Modifier),
            _ => Err(format!("unknown role {s:?}: expected provider or modifier")),
        }
    }
}

/// One model's registry entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelEntry {
    /// Model name, as runs report it.
    pub model: String,
    /// What the registry declares: the base model this one modifies or was initialised
    /// from, the plan (total FLOP, or N and D for 6·N·D) and the planned end of training.
    /// The same type a run's labels declare.
    pub declared: Declaration,
    /// Compute embodied in the base model, FLOP.
    pub base_flop: Option<u128>,
    /// Where `base_flop` comes from (model card, provider statement, estimate...).
    pub base_flop_source: Option<String>,
    /// Whether the base model is a systemic-risk model, as declared (`model set
    /// --base-systemic-risk`). Decides the modifier threshold's fallback when `base_flop` is
    /// unknown (10^25/3 for a systemic-risk base, else 10^23/3). `None`: not declared, which
    /// is inferred from `base_flop` when known (above 10^25), else the lower fallback.
    pub base_systemic_risk: Option<bool>,
    /// Provider or modifier.
    pub role: Option<Role>,
    /// When the entry last changed, Unix ms (collector clock).
    pub updated_unix_ms: i64,
    /// Who last changed it, as authenticated by the admin credential (absent in entries
    /// written before actors were recorded).
    pub updated_by: Option<String>,
}

impl ModelEntry {
    /// The declared plan in FLOP, by the one rule ([`PlanFigures::total`]: the larger of the
    /// explicit figure and 6·N·D), so the registry, reports and the compliance engine read
    /// the same figure.
    pub fn planned_total(&self) -> Option<u128> {
        self.declared.plan().total()
    }

    /// The declared plan's figures.
    pub fn plan(&self) -> PlanFigures {
        self.declared.plan()
    }
}

/// The stored shape of a [`ModelEntry`] (the `models` tree, the admin API's JSON): flat, with
/// the names entries have always been written under (`planned_params`, `planned_tokens`).
/// A registry entry declares no precision; one that did would be written as `precision`.
#[derive(Serialize, Deserialize)]
struct StoredEntry<S> {
    model: S,
    base_model: Option<S>,
    base_flop: Option<u128>,
    base_flop_source: Option<S>,
    #[serde(default)]
    base_systemic_risk: Option<bool>,
    role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precision: Option<Precision>,
    planned_flop: Option<u128>,
    planned_params: Option<u128>,
    planned_tokens: Option<u128>,
    planned_end_unix_ms: Option<i64>,
    updated_unix_ms: i64,
    #[serde(default)]
    updated_by: Option<S>,
}

impl Serialize for ModelEntry {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        let d = &self.declared;
        StoredEntry::<&str> {
            model: &self.model,
            base_model: d.base_model.as_deref(),
            base_flop: self.base_flop,
            base_flop_source: self.base_flop_source.as_deref(),
            base_systemic_risk: self.base_systemic_risk,
            role: self.role,
            precision: d.precision,
            planned_flop: d.planned_flop,
            planned_params: d.params,
            planned_tokens: d.tokens,
            planned_end_unix_ms: d.planned_end_unix_ms,
            updated_unix_ms: self.updated_unix_ms,
            updated_by: self.updated_by.as_deref(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ModelEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let e = StoredEntry::<String>::deserialize(d)?;
        Ok(ModelEntry {
            model: e.model,
            declared: Declaration {
                precision: e.precision,
                planned_flop: e.planned_flop,
                params: e.planned_params,
                tokens: e.planned_tokens,
                base_model: e.base_model,
                planned_end_unix_ms: e.planned_end_unix_ms,
            },
            base_flop: e.base_flop,
            base_flop_source: e.base_flop_source,
            base_systemic_risk: e.base_systemic_risk,
            role: e.role,
            updated_unix_ms: e.updated_unix_ms,
            updated_by: e.updated_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry exactly as the `models` tree held it before the registry shared the
    /// declaration type: it reads the same and writes back byte for byte.
    #[test]
    fn reads_and_writes_the_stored_entry_shape() {
        let stored = r#"{"model":"frontier","base_model":"base-405b","base_flop":3800000000000000000000000,"base_flop_source":"model card","base_systemic_risk":true,"role":"modifier","planned_flop":21000000000000000000000000,"planned_params":400000000000,"planned_tokens":15000000000000,"planned_end_unix_ms":1803945600000,"updated_unix_ms":1790000000000,"updated_by":"alice"}"#;
        let e: ModelEntry = serde_json::from_str(stored).unwrap();
        assert_eq!(e.declared.base_model.as_deref(), Some("base-405b"));
        assert_eq!(e.declared.params, Some(400_000_000_000));
        assert_eq!(e.declared.tokens, Some(15_000_000_000_000));
        assert_eq!(e.declared.planned_end_unix_ms, Some(1_803_945_600_000));
        assert_eq!(e.role, Some(Role::Modifier));
        assert_eq!(serde_json::to_string(&e).unwrap(), stored);
        // Written before actors and systemic-risk declarations were recorded.
        let older = r#"{"model":"m","base_model":null,"base_flop":null,"base_flop_source":null,"role":null,"planned_flop":null,"planned_params":null,"planned_tokens":null,"planned_end_unix_ms":null,"updated_unix_ms":1}"#;
        let e: ModelEntry = serde_json::from_str(older).unwrap();
        assert_eq!((e.updated_by, e.base_systemic_risk), (None, None));
    }

    /// The registry's figure is the engine's: both go through `PlanFigures::total`. Before,
    /// the registry took the explicit figure over a larger 6·N·D, so `model show` and the
    /// report printed a plan below the one that started the clock.
    #[test]
    fn the_registry_plan_is_the_engines_plan() {
        let mut e = ModelEntry::default();
        e.declared.planned_flop = Some(10u128.pow(24));
        e.declared.params = Some(4 * 10u128.pow(11));
        e.declared.tokens = Some(5 * 10u128.pow(12));
        let engine = flopmeter_core::evidence::DeclaredPlan {
            plan_id: "registry:m".into(),
            run_id: None,
            registered_at_ms: 0,
            figures: e.plan(),
            declared_by: None,
        };
        assert_eq!(e.planned_total(), Some(12 * 10u128.pow(24)));
        assert_eq!(engine.total().map(|t| t.central), e.planned_total());
    }
}
