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

impl Declaration {
    /// Reads the wire declaration; unparsable numbers are dropped (the declaration is
    /// informational; the measured figures never depend on it).
    pub fn from_wire(d: &flopmeter_proto::v1::WorkloadDeclaration) -> Declaration {
        let num = |s: &str| parse_sci(s);
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let precision = flopmeter_proto::convert::precision_from_wire(d.precision())
            .map(|p| p.as_str().to_string());
        Declaration {
            precision,
            planned_flop: num(&d.planned_flop),
            params: num(&d.params),
            tokens: num(&d.tokens),
            base_model: opt(&d.base_model),
            planned_end_unix_ms: (d.planned_end_unix_ms > 0).then_some(d.planned_end_unix_ms),
        }
    }

    /// True when nothing was declared.
    pub fn is_empty(&self) -> bool {
        *self == Declaration::default()
    }
}

/// Parses a non-negative number written in decimal or scientific notation (`2e25`,
/// `3.8e24`, `70000000000`) exactly into an integer: declarations and registry figures are
/// written that way, and going through `f64` would change their last digits. A fractional
/// remainder is truncated.
pub fn parse_sci(s: &str) -> Option<u128> {
    let s = s.trim();
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (
            &s[..i],
            s[i + 1..].trim_start_matches('+').parse::<i32>().ok()?,
        ),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let shift = exp - frac.len() as i32;
    let mut v: u128 = 0;
    let keep = if shift >= 0 {
        digits.len()
    } else {
        digits.len().saturating_sub(shift.unsigned_abs() as usize)
    };
    for c in digits[..keep].chars() {
        v = v
            .checked_mul(10)?
            .checked_add(u128::from(c.to_digit(10)?))?;
    }
    for _ in 0..shift.max(0) {
        v = v.checked_mul(10)?;
    }
    Some(v)
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

/// Encodes a JSON value.
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// Decodes a JSON value; `what` names it in the error.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Decodes a protobuf value; `what` names it in the error.
pub fn from_proto<T: prost::Message + Default>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scientific_notation_is_exact() {
        assert_eq!(parse_sci("3.8e24"), Some(38 * 10u128.pow(23)));
        assert_eq!(parse_sci("2E25"), Some(2 * 10u128.pow(25)));
        assert_eq!(parse_sci("70000000000"), Some(70_000_000_000));
        assert_eq!(parse_sci("1.25e1"), Some(12));
        assert_eq!(parse_sci("1e+3"), Some(1000));
        assert_eq!(parse_sci(""), None);
        assert_eq!(parse_sci("-1"), None);
        assert_eq!(parse_sci("1e40"), None);
        assert_eq!(parse_sci("abc"), None);
    }
}
