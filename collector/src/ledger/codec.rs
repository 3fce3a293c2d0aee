//! Stored value formats.
//!
//! Raw batches and quarantined records are stored as protobuf, holding the agent's
//! `IntervalRecord`s exactly as they arrived on the wire: an auditor recomputing a total
//! reads the same bytes the agent sent, and the format is documented by `ingest.proto`.
//! Aggregates, rollups and registry entries are JSON: small, read-modify-written once per
//! batch, and readable with any sled dump tool; serde_json keeps `u128` sums exact.

use std::collections::BTreeSet;

use flopmeter_core::units::{FlopAmount, FlopAmountError};
use flopmeter_proto::v1::IntervalRecord;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;
use super::aggregate::Aggregate;

/// One received batch's applied records: the value of the `raw` tree, keyed by agent and the
/// first applied sequence number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBatch {
    /// The agent that sent it.
    #[prost(string, tag = "1")]
    pub agent_id: String,
    /// The agent's node.
    #[prost(string, tag = "2")]
    pub node: String,
    /// Collector clock when it was applied, Unix ms.
    #[prost(int64, tag = "3")]
    pub received_unix_ms: i64,
    /// The records that passed validation and were applied, in sequence order.
    #[prost(message, repeated, tag = "4")]
    pub records: Vec<IntervalRecord>,
}

/// A record that failed validation: the value of the `rejected` tree, keyed by agent and
/// sequence number. Kept for inspection; never part of any total.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRejection {
    /// Machine-readable reason (`flop-above-peak`, ...).
    #[prost(string, tag = "1")]
    pub reason: String,
    /// Human-readable explanation.
    #[prost(string, tag = "2")]
    pub detail: String,
    /// The agent's node.
    #[prost(string, tag = "3")]
    pub node: String,
    /// Collector clock when it was quarantined, Unix ms.
    #[prost(int64, tag = "4")]
    pub received_unix_ms: i64,
    /// The record as received.
    #[prost(message, optional, tag = "5")]
    pub record: Option<IntervalRecord>,
}

/// An hourly rollup of raw records past the retention age, per run or per unattributed
/// (node, GPU type). Carries the agent and node sets so that distinct counts stay
/// recomputable after the raw batches are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Stage totals of the hour (agent and node counts unused).
    pub aggregate: Aggregate,
    /// Agents that reported in the hour.
    pub agents: BTreeSet<String>,
    /// Nodes that reported in the hour.
    pub nodes: BTreeSet<String>,
}

/// Declarations a run made (from its records' `WorkloadDeclaration`), latest wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declaration {
    /// Declared precision (`bf16`, ...), if any.
    pub precision: Option<String>,
    /// Planned total FLOP of the run.
    pub planned_flop: Option<u128>,
    /// Parameters N.
    pub params: Option<u128>,
    /// Tokens D.
    pub tokens: Option<u128>,
    /// Base model the run fine-tunes.
    pub base_model: Option<String>,
    /// Planned end, Unix ms.
    pub planned_end_unix_ms: Option<i64>,
}

/// A declared count that is not a whole number by [`FlopAmount`]'s rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("declaration.{field}: {source}")]
pub struct DeclarationError {
    /// The field (`planned_flop`, `params`, `tokens`).
    pub field: &'static str,
    /// Why its text is not a count.
    pub source: FlopAmountError,
}

impl Declaration {
    /// Reads the wire declaration, parsing its counts by the one exact rule
    /// ([`FlopAmount`]; bounded work). Called at the door (ingest validation), never inside
    /// the ledger's transaction; a count that does not parse quarantines its record, since
    /// a plan read wrong could start a legal clock.
    pub fn from_wire(
        d: &flopmeter_proto::v1::WorkloadDeclaration,
    ) -> Result<Declaration, DeclarationError> {
        let num = |field: &'static str, s: &str| -> Result<Option<u128>, DeclarationError> {
            if s.trim().is_empty() {
                return Ok(None);
            }
            FlopAmount::parse(s)
                .map(|v| Some(v.get()))
                .map_err(|source| DeclarationError { field, source })
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let precision = flopmeter_proto::convert::precision_from_wire(d.precision())
            .map(|p| p.as_str().to_string());
        Ok(Declaration {
            precision,
            planned_flop: num("planned_flop", &d.planned_flop)?,
            params: num("params", &d.params)?,
            tokens: num("tokens", &d.tokens)?,
            base_model: opt(&d.base_model),
            planned_end_unix_ms: (d.planned_end_unix_ms > 0).then_some(d.planned_end_unix_ms),
        })
    }

    /// True when nothing was declared.
    pub fn is_empty(&self) -> bool {
        *self == Declaration::default()
    }
}

/// What the collector knows about an agent from its last Hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent id.
    pub agent_id: String,
    /// Node name.
    pub node: String,
    /// Agent software version.
    pub software_version: String,
    /// GPUs as (catalogue id or `unknown`, count).
    pub gpus: Vec<(String, u32)>,
    /// Collector clock at the last Hello, Unix ms.
    pub last_hello_unix_ms: i64,
    /// The cluster the agent said it belongs to (`Hello.cluster`; absent in older ledgers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

/// Encodes a JSON value; `what` names it in the error.
pub fn to_json<T: Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Encode { what, source })
}

/// Decodes a JSON value; `what` names it in the error.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        source: e.into(),
    })
}

/// Decodes a protobuf value; `what` names it in the error.
pub fn from_proto<T: prost::Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt {
        what,
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flopmeter_proto::v1::WorkloadDeclaration;

    #[test]
    fn declared_counts_are_exact_or_refused_with_the_field() {
        let d = Declaration::from_wire(&WorkloadDeclaration {
            planned_flop: "3.8e24".into(),
            params: "70000000000".into(),
            tokens: "".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.planned_flop, Some(38 * 10u128.pow(23)));
        assert_eq!(d.params, Some(70_000_000_000));
        assert_eq!(d.tokens, None);
        for (field, text) in [
            ("planned_flop", "0e2147483647"),
            ("params", "1.25e1"),
            ("tokens", "-1"),
        ] {
            let mut w = WorkloadDeclaration::default();
            match field {
                "planned_flop" => w.planned_flop = text.into(),
                "params" => w.params = text.into(),
                _ => w.tokens = text.into(),
            }
            let e = Declaration::from_wire(&w).unwrap_err();
            assert_eq!(e.field, field);
            assert!(
                e.to_string().starts_with(&format!("declaration.{field}: ")),
                "{e}"
            );
        }
    }
}
