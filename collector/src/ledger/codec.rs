//! Stored value formats.
//!
//! Raw batches and quarantined records are stored as protobuf, holding the agent's
//! `IntervalRecord`s exactly as they arrived on the wire: an auditor recomputing a total
//! reads the same bytes the agent sent, and the format is documented by `ingest.proto`.
//! Aggregates, rollups and registry entries are JSON: small, read-modify-written once per
//! batch, and readable with any sled dump tool; serde_json keeps `u128` sums exact.

use std::collections::BTreeSet;

use flopmeter_proto::v1::IntervalRecord;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::aggregate::Aggregate;
use super::{RecordRejection, StoreError};

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

impl StoredRejection {
    /// What every store keeps of a quarantined record: the record as received, why, and
    /// where and when it came from.
    pub fn new(
        record: &IntervalRecord,
        rejection: &RecordRejection,
        node: &str,
        received_unix_ms: i64,
    ) -> Self {
        StoredRejection {
            reason: rejection.reason.clone(),
            detail: rejection.detail.clone(),
            node: node.to_string(),
            received_unix_ms,
            record: Some(record.clone()),
        }
    }
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

/// Declarations a run made (from its records' `WorkloadDeclaration`), latest wins: the
/// `run_meta` value. Core's type, stored in the shape this module always wrote.
pub use flopmeter_core::declaration::Declaration;

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
