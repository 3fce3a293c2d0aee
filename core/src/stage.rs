//! Training stages and the policy deciding which count toward a model's regulatory total.
//!
//! Defaults follow the Commission GPAI guidelines (Annex A.1, `reference/regulation.md`):
//! compute that "contributed or will contribute" to capabilities counts: pre-training,
//! fine-tuning, RL, and non-public synthetic-data generation (discarded samples included).
//! Evaluations and red-teaming, reward or value models, distillation teachers and exploratory
//! research need not be included. Excluded compute is still measured and shown; the policy
//! only decides what is summed into the regulatory total.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stage of a model's lifecycle, as a run declares it (`FLOPMETER_STAGE`,
/// `flopmeter.io/stage`). Unknown stage names are kept verbatim as [`Stage::Other`] so that a
/// typo is visible in reports rather than silently merged into a known stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Stage {
    /// Pre-training (also the stage of a run that declares none).
    Pretrain,
    /// Supervised fine-tuning.
    Finetune,
    /// Reinforcement learning, RLHF and similar.
    Rl,
    /// Non-public synthetic-data generation, discarded samples included.
    SyntheticData,
    /// Evaluations and red-teaming.
    Eval,
    /// Reward or value models.
    RewardModel,
    /// Training of a distillation teacher.
    DistillationTeacher,
    /// Exploratory research and failed experiments.
    Research,
    /// A stage name flopmeter does not know.
    Other(String),
}

impl Stage {
    /// The canonical lowercase name.
    pub fn as_str(&self) -> &str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Finetune => "finetune",
            Stage::Rl => "rl",
            Stage::SyntheticData => "synthetic-data",
            Stage::Eval => "eval",
            Stage::RewardModel => "reward-model",
            Stage::DistillationTeacher => "distillation-teacher",
            Stage::Research => "research",
            Stage::Other(s) => s,
        }
    }

    /// Parses a declared stage; empty means pre-training.
    pub fn parse(s: &str) -> Stage {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "" | "pretrain" | "pre-train" | "pretraining" | "pre-training" => Stage::Pretrain,
            "finetune" | "fine-tune" | "sft" | "fine-tuning" | "finetuning" => Stage::Finetune,
            "rl" | "rlhf" | "rlaif" | "grpo" | "ppo" | "dpo" => Stage::Rl,
            "synthetic-data" | "synthetic" | "synth" => Stage::SyntheticData,
            "eval" | "evaluation" | "red-team" | "red-teaming" => Stage::Eval,
            "reward-model" | "reward" | "rm" | "value-model" => Stage::RewardModel,
            "distillation-teacher" | "teacher" => Stage::DistillationTeacher,
            "research" | "ablation" | "exploration" => Stage::Research,
            _ => Stage::Other(norm),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Stage::parse(s))
    }
}

impl From<Stage> for String {
    fn from(s: Stage) -> String {
        s.as_str().to_string()
    }
}

impl From<String> for Stage {
    fn from(s: String) -> Stage {
        Stage::parse(&s)
    }
}

/// Which stages count toward the regulatory total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePolicy {
    /// Explicit decisions per stage name; stages not listed fall back to `unknown_counts`.
    pub counts: BTreeMap<String, bool>,
    /// Whether a stage name the policy does not list counts. Default `true`: an unknown
    /// stage is more likely a typo of a counting stage than a legitimate exclusion, and
    /// over-counting is the safe error near a threshold.
    pub unknown_counts: bool,
}

impl Default for StagePolicy {
    fn default() -> Self {
        let counts = [
            (Stage::Pretrain, true),
            (Stage::Finetune, true),
            (Stage::Rl, true),
            (Stage::SyntheticData, true),
            (Stage::Eval, false),
            (Stage::RewardModel, false),
            (Stage::DistillationTeacher, false),
            (Stage::Research, false),
        ]
        .into_iter()
        .map(|(s, c)| (s.as_str().to_string(), c))
        .collect();
        StagePolicy {
            counts,
            unknown_counts: true,
        }
    }
}

impl StagePolicy {
    /// Whether compute of `stage` counts toward the regulatory total.
    pub fn counts(&self, stage: &Stage) -> bool {
        self.counts
            .get(stage.as_str())
            .copied()
            .unwrap_or(self.unknown_counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_guidelines() {
        let p = StagePolicy::default();
        for s in ["", "pretrain", "SFT", "rlhf", "synthetic-data"] {
            assert!(p.counts(&Stage::parse(s)), "{s}");
        }
        for s in [
            "eval",
            "reward-model",
            "distillation-teacher",
            "research",
            "ablation",
        ] {
            assert!(!p.counts(&Stage::parse(s)), "{s}");
        }
        assert_eq!(Stage::parse("pretrian"), Stage::Other("pretrian".into()));
        assert!(
            p.counts(&Stage::parse("pretrian")),
            "unknown stages count by default"
        );
    }

    #[test]
    fn serde_uses_canonical_names() {
        let s: Stage = serde_json_like("fine_tune");
        assert_eq!(s, Stage::Finetune);
        assert_eq!(String::from(Stage::SyntheticData), "synthetic-data");
    }

    fn serde_json_like(s: &str) -> Stage {
        Stage::from(s.to_string())
    }
}
