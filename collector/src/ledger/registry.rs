//! The model registry: lineage and declared plans, set by an administrator.
//!
//! The compliance engine (a later issue) reads it: the base model's compute decides the
//! downstream-modifier threshold (1/3 of it), and the declared plan can start the Art. 52
//! clock before a single FLOP is measured.

use std::fmt;
use std::str::FromStr;

use flopmeter_core::estimator::six_n_d;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Model name, as runs report it.
    pub model: String,
    /// The base model this one modifies or was initialised from.
    pub base_model: Option<String>,
    /// Compute embodied in the base model, FLOP.
    pub base_flop: Option<u128>,
    /// Where `base_flop` comes from (model card, provider statement, estimate...).
    pub base_flop_source: Option<String>,
    /// Whether the base model is a systemic-risk model, as declared (`model set
    /// --base-systemic-risk`). Decides the modifier threshold's fallback when `base_flop` is
    /// unknown (10^25/3 for a systemic-risk base, else 10^23/3). `None`: not declared, which
    /// is inferred from `base_flop` when known (above 10^25), else the lower fallback.
    #[serde(default)]
    pub base_systemic_risk: Option<bool>,
    /// Provider or modifier.
    pub role: Option<Role>,
    /// Declared plan: total FLOP.
    pub planned_flop: Option<u128>,
    /// Declared plan: parameters N (with `planned_tokens`, 6·N·D).
    pub planned_params: Option<u128>,
    /// Declared plan: tokens D.
    pub planned_tokens: Option<u128>,
    /// Planned end of training, Unix ms.
    pub planned_end_unix_ms: Option<i64>,
    /// When the entry last changed, Unix ms (collector clock).
    pub updated_unix_ms: i64,
    /// Who last changed it, as authenticated by the admin credential (absent in entries
    /// written before actors were recorded).
    #[serde(default)]
    pub updated_by: Option<String>,
}

impl ModelEntry {
    /// The declared plan in FLOP: the explicit figure, else 6·N·D when both are declared.
    pub fn planned_total(&self) -> Option<u128> {
        self.planned_flop
            .or_else(|| match (self.planned_params, self.planned_tokens) {
                (Some(n), Some(d)) => six_n_d(n, d),
                _ => None,
            })
    }
}
