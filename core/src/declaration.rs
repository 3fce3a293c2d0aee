//! What a run or the model registry declares about a training: its plan (planned FLOP, or
//! parameters and tokens for 6·N·D), precision, base model and planned end.
//!
//! One type wherever a declaration travels, so a plan cannot be read one way in a job's
//! labels and another in the compliance engine: the agent parses labels into a
//! [`Declaration`], the wire carries it as `WorkloadDeclaration` (`flopmeter_proto::convert`),
//! the ledger stores it per run and in the registry entry, and the engine's
//! [`crate::evidence::DeclaredPlan`] wraps its [`PlanFigures`] with an id, a date and a
//! declarer. [`PlanFigures::total`] is the one rule that turns figures into FLOP.
//!
//! Stored JSON keeps the field names the ledger has always written (`planned_flop`,
//! `params`, `tokens`, `precision`, `base_model`, `planned_end_unix_ms`). They stay flat
//! rather than nesting [`PlanFigures`]: serde's `flatten` cannot carry `u128` figures.

use serde::{Deserialize, Serialize};

use crate::estimator::six_n_d;
use crate::units::{FlopTotal, Precision};

/// The figures of a plan. Either may be declared, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlanFigures {
    /// Planned total FLOP.
    pub planned_flop: Option<u128>,
    /// Parameters N, for 6·N·D.
    pub params: Option<u128>,
    /// Training tokens D, for 6·N·D.
    pub tokens: Option<u128>,
}

impl PlanFigures {
    /// Whether it states nothing (no plan, or a withdrawn one).
    pub fn is_empty(&self) -> bool {
        *self == PlanFigures::default()
    }

    /// 6·N·D when both N and D are declared; a product beyond `u128` saturates, since a
    /// declared figure too large to hold is still above every threshold.
    pub fn six_n_d(&self) -> Option<u128> {
        let (n, d) = self.params.zip(self.tokens)?;
        Some(six_n_d(n, d).unwrap_or(u128::MAX))
    }

    /// The declared total: the larger of the planned FLOP and 6·N·D (when both are given the
    /// larger is kept, because the smaller cannot be trusted to bound the run). `None` if
    /// the plan states neither.
    pub fn total(&self) -> Option<u128> {
        match (self.planned_flop, self.six_n_d()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`PlanFigures::total`] as a band: a declared figure has none, all three bounds are
    /// equal.
    pub fn total_band(&self) -> Option<FlopTotal> {
        self.total().map(FlopTotal::exact)
    }

    /// Which figure the total rests on, for reports.
    pub fn basis(&self) -> &'static str {
        match (self.planned_flop, self.six_n_d()) {
            (Some(_), Some(_)) => "planned FLOP and 6·N·D (the larger)",
            (Some(_), None) => "planned FLOP",
            (None, Some(_)) => "6·N·D",
            (None, None) => "nothing (no figure declared)",
        }
    }
}

/// Everything a run (its job's labels) or the model registry may declare. Every field is
/// optional. The fields are flat, as the ledger has always stored them; [`Declaration::plan`]
/// is the plan's part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Declaration {
    /// Training precision; narrows the estimate's band.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Planned total FLOP.
    #[serde(default)]
    pub planned_flop: Option<u128>,
    /// Parameters N, for 6·N·D.
    #[serde(default)]
    pub params: Option<u128>,
    /// Training tokens D, for 6·N·D.
    #[serde(default)]
    pub tokens: Option<u128>,
    /// The base model the run fine-tunes or the model modifies.
    #[serde(default)]
    pub base_model: Option<String>,
    /// Planned end of training, Unix ms.
    #[serde(default)]
    pub planned_end_unix_ms: Option<i64>,
}

impl Declaration {
    /// True when nothing is declared (a record then carries no declaration).
    pub fn is_empty(&self) -> bool {
        *self == Declaration::default()
    }

    /// The plan's figures.
    pub fn plan(&self) -> PlanFigures {
        PlanFigures {
            planned_flop: self.planned_flop,
            params: self.params,
            tokens: self.tokens,
        }
    }

    /// Sets the plan's figures.
    pub fn set_plan(&mut self, plan: PlanFigures) {
        self.planned_flop = plan.planned_flop;
        self.params = plan.params;
        self.tokens = plan.tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E24: u128 = 1_000_000_000_000_000_000_000_000;

    #[test]
    fn the_total_is_the_larger_figure() {
        let flop = |f| PlanFigures {
            planned_flop: Some(f),
            ..Default::default()
        };
        assert_eq!(flop(3 * E24).total(), Some(3 * E24));
        let nd = PlanFigures {
            params: Some(70_000_000_000),
            tokens: Some(15_000_000_000_000),
            ..Default::default()
        };
        assert_eq!(nd.total(), Some(6 * 70_000_000_000 * 15_000_000_000_000));
        assert_eq!(nd.basis(), "6·N·D");
        // A registry entry once took its explicit figure over 6·N·D whatever their sizes;
        // the engine took the larger. One rule now: the larger.
        let both = PlanFigures {
            planned_flop: Some(1),
            ..nd
        };
        assert_eq!(both.total(), nd.total());
        assert_eq!(both.basis(), "planned FLOP and 6·N·D (the larger)");
        let half = PlanFigures {
            params: Some(1),
            ..Default::default()
        };
        assert_eq!(half.total(), None, "N without D is no figure");
        let huge = PlanFigures {
            params: Some(u128::MAX),
            tokens: Some(2),
            ..Default::default()
        };
        assert_eq!(huge.total(), Some(u128::MAX));
        assert!(PlanFigures::default().is_empty());
        assert_eq!(PlanFigures::default().total_band(), None);
    }

    /// A run's declaration exactly as the ledger's `run_meta` tree held it before this type
    /// existed (`codec::Declaration`, precision as its tag): it must read the same, and
    /// write back byte for byte.
    #[test]
    fn reads_and_writes_the_ledgers_stored_shape() {
        let stored = r#"{"precision":"fp8","planned_flop":38000000000000000000000000,"params":70000000000,"tokens":null,"base_model":"llama","planned_end_unix_ms":1790726400000}"#;
        let d: Declaration = serde_json::from_str(stored).unwrap();
        assert_eq!(
            d,
            Declaration {
                precision: Some(Precision::Fp8),
                planned_flop: Some(38 * E24),
                params: Some(70_000_000_000),
                tokens: None,
                base_model: Some("llama".into()),
                planned_end_unix_ms: Some(1_790_726_400_000),
            }
        );
        assert_eq!(serde_json::to_string(&d).unwrap(), stored);
        let empty: Declaration = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(d.plan().total(), Some(38 * E24));
    }
}
