//! Declared plans over time: every version of a model's registry plan and of each run's
//! plan as its records declared it, with when it became known and who declared it.
//!
//! Why a history and not the latest value: a plan above a threshold is evidence that "it
//! became known that it will be met" (Art. 52(1)) at the moment it was declared, even when it
//! is revised minutes later. Keeping only the latest figure let a plan of 2e25 revised to 5e24
//! three seconds later vanish without a clock. The compliance engine reads the whole history
//! (`compliance::evidence`); the versions are also in the audit chain, appended in
//! the transaction that records them.
//!
//! A version is added when a statement changes the plan in force **at the statement's own
//! time**: a new figure, or the same figure known earlier than recorded so far (a late
//! record from another node of the same run). A plan declared in records is dated at the
//! event time of the first record that carried it, never after the collector received it.
//!
//! Bound: [`MAX_VERSIONS`] per scope. A run whose records flip their plan without end (a
//! broken or hostile agent) stops adding versions there; the first ones, crossings
//! included, stay, and the records themselves stay in the raw batches.

use flopmeter_core::declaration::PlanFigures;
use serde::{Deserialize, Serialize};

use super::keys;

/// Versions kept per scope (the registry plan of a model, or one run's plan).
pub const MAX_VERSIONS: usize = 64;

/// Who declared a plan version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PlanSource {
    /// A registry change (`flopmeter model set`), by the actor its admin credential names.
    Registry {
        /// The actor.
        actor: String,
    },
    /// A run's records (`FLOPMETER_PLANNED_FLOP`, `flopmeter.io/planned-flop`, ...), as sent
    /// by this agent.
    Agent {
        /// The agent that sent the first record carrying it.
        agent_id: String,
        /// Its node.
        node: String,
        /// That record's sequence number.
        seq: u64,
    },
}

impl PlanSource {
    /// In words, for alerts and reports: `alice via the model registry`, `agent a1 on node
    /// n1 (record 42)`.
    pub fn describe(&self) -> String {
        match self {
            PlanSource::Registry { actor } => format!("{actor} via the model registry"),
            PlanSource::Agent {
                agent_id,
                node,
                seq,
            } => format!("agent {agent_id} on node {node} (record {seq})"),
        }
    }
}

/// One version of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanVersion {
    /// Planned total FLOP.
    pub planned_flop: Option<u128>,
    /// Parameters N.
    pub params: Option<u128>,
    /// Tokens D.
    pub tokens: Option<u128>,
    /// When it became known (Unix ms): the registry change's time, or the event time of the
    /// first record that carried it.
    pub declared_at_ms: i64,
    /// When the collector recorded it (its clock, Unix ms).
    pub recorded_at_ms: i64,
    /// Who declared it.
    pub by: PlanSource,
}

impl PlanVersion {
    /// The figures it states (core's plan type, whose `total` is the one rule).
    pub fn figures(&self) -> PlanFigures {
        PlanFigures {
            planned_flop: self.planned_flop,
            params: self.params,
            tokens: self.tokens,
        }
    }

    /// Whether it states nothing (a withdrawn plan).
    pub fn is_empty(&self) -> bool {
        self.figures().is_empty()
    }
}

/// What recording a statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new version: the plan in force at its time changed.
    Added,
    /// It changes nothing (same figures already in force at its time).
    Unchanged,
    /// The scope has [`MAX_VERSIONS`] versions already; not recorded.
    Full,
}

/// The versions of one scope, sorted by `declared_at_ms` (recording order among equals).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanHistory {
    /// The versions.
    pub versions: Vec<PlanVersion>,
}

impl PlanHistory {
    /// The version in force at `at`: the last declared at or before it.
    pub fn in_force(&self, at: i64) -> Option<&PlanVersion> {
        self.versions.iter().rfind(|v| v.declared_at_ms <= at)
    }

    /// Records a statement of the plan (see the module docs for when it adds a version).
    /// A statement of nothing is only a version when it withdraws a plan in force.
    pub fn record(&mut self, v: PlanVersion) -> Recorded {
        let current = self.in_force(v.declared_at_ms);
        let unchanged = match current {
            Some(c) => c.figures() == v.figures(),
            None => v.is_empty(),
        };
        if unchanged {
            return Recorded::Unchanged;
        }
        if self.versions.len() >= MAX_VERSIONS {
            return Recorded::Full;
        }
        let at = self
            .versions
            .partition_point(|x| x.declared_at_ms <= v.declared_at_ms);
        self.versions.insert(at, v);
        Recorded::Added
    }
}

/// Which plan of a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlanScope {
    /// The model-wide plan of the registry.
    Registry,
    /// One run's plan, declared in its records.
    Run(String),
}

impl PlanScope {
    /// Its key in the `plans` tree: `model \0 registry`, or `model \0 run \0 <run>`.
    pub fn key(&self, model: &str) -> Vec<u8> {
        match self {
            PlanScope::Registry => keys::join(&[model, "registry"]),
            PlanScope::Run(run) => keys::join(&[model, "run", run]),
        }
    }

    /// Reads a key of the `plans` tree: (model, scope).
    pub fn from_key(k: &[u8]) -> Option<(String, PlanScope)> {
        let parts = keys::split(k);
        match parts.as_slice() {
            [model, r] if r == "registry" => Some((model.clone(), PlanScope::Registry)),
            [model, r, run] if r == "run" => Some((model.clone(), PlanScope::Run(run.clone()))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(flop: u128, at: i64) -> PlanVersion {
        PlanVersion {
            planned_flop: Some(flop),
            params: None,
            tokens: None,
            declared_at_ms: at,
            recorded_at_ms: at,
            by: PlanSource::Registry {
                actor: "alice".into(),
            },
        }
    }

    #[test]
    fn revisions_and_earlier_evidence_are_kept() {
        let mut h = PlanHistory::default();
        assert_eq!(h.record(v(20, 100)), Recorded::Added);
        assert_eq!(
            h.record(v(20, 150)),
            Recorded::Unchanged,
            "same figure later"
        );
        assert_eq!(h.record(v(5, 103)), Recorded::Added, "a revision");
        assert_eq!(h.in_force(101).unwrap().planned_flop, Some(20));
        assert_eq!(h.in_force(200).unwrap().planned_flop, Some(5));
        // A late record of another node shows the 20 known earlier: a version of its own.
        assert_eq!(h.record(v(20, 50)), Recorded::Added);
        assert_eq!(h.in_force(60).unwrap().planned_flop, Some(20));
        assert_eq!(h.versions.len(), 3);
        let mut none = v(0, 300);
        none.planned_flop = None;
        assert_eq!(h.record(none.clone()), Recorded::Added, "withdrawn");
        assert!(PlanHistory::default().record(none) == Recorded::Unchanged);
        for i in 0..200 {
            h.record(v(i, 1000 + i as i64));
        }
        assert_eq!(h.versions.len(), MAX_VERSIONS);
    }

    #[test]
    fn keys_round_trip() {
        for s in [PlanScope::Registry, PlanScope::Run("r-1".into())] {
            assert_eq!(PlanScope::from_key(&s.key("m")), Some(("m".into(), s)));
        }
    }
}
