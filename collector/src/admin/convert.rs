//! Conversions between the ledger's domain types and the admin API's messages.
//!
//! `u128` FLOP figures travel as exact decimal strings; an empty string means "none".

use flopmeter_core::declaration::Declaration;
use flopmeter_core::units::{FlopAmount, FlopAmountError, FlopTotal};
use flopmeter_proto::v1 as pb;

use crate::ledger::aggregate::{ClusterKind, ClusterShare};
use crate::ledger::summary::{ModelSummary, RunSummary};
use crate::ledger::{ModelEntry, Role};

/// A malformed admin message: a figure that is not a count by [`FlopAmount`]'s rule.
#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {source}")]
pub struct ConvertError {
    /// The field.
    pub field: &'static str,
    /// Why its text is not a count.
    #[source]
    pub source: FlopAmountError,
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// A band as decimal strings.
pub fn band_to_pb(t: FlopTotal) -> pb::FlopBand128 {
    pb::FlopBand128 {
        low: t.low.to_string(),
        central: t.central.to_string(),
        high: t.high.to_string(),
    }
}

/// A band from decimal strings, by the one rule of [`FlopAmount`]; a missing band or part
/// is zero (nothing measured), a part that does not parse is an error, never a zero.
pub fn band_from_pb(b: Option<&pb::FlopBand128>) -> Result<FlopTotal, ConvertError> {
    let Some(b) = b else {
        return Ok(FlopTotal::ZERO);
    };
    let part = |field, s: &str| parse_u128(field, s).map(Option::unwrap_or_default);
    Ok(FlopTotal {
        low: part("flop.low", &b.low)?,
        central: part("flop.central", &b.central)?,
        high: part("flop.high", &b.high)?,
    })
}

/// An integer the admin API sends as a decimal string (GPU-ms, mJ), by the same rule as
/// [`band_from_pb`]: empty is zero, anything else must be a count.
pub fn count_from_pb(field: &'static str, s: &str) -> Result<u128, ConvertError> {
    parse_u128(field, s).map(Option::unwrap_or_default)
}

fn opt_u128(v: Option<u128>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// Parses an optional FLOP, parameter or token figure (`38e23`, `3.8e24`) by the one exact
/// rule of [`FlopAmount`]: bounded work, so it runs at the door of the admin API, never on
/// the ledger writer.
pub fn parse_u128(field: &'static str, s: &str) -> Result<Option<u128>, ConvertError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    FlopAmount::parse(s)
        .map(|v| Some(v.get()))
        .map_err(|source| ConvertError { field, source })
}

/// Registry entry → message.
pub fn entry_to_pb(e: &ModelEntry) -> pb::ModelEntry {
    pb::ModelEntry {
        model: e.model.clone(),
        base_model: e.declared.base_model.clone().unwrap_or_default(),
        base_flop: opt_u128(e.base_flop),
        base_flop_source: e.base_flop_source.clone().unwrap_or_default(),
        base_systemic_risk: e.base_systemic_risk,
        role: match e.role {
            None => pb::ModelRole::Unspecified,
            Some(Role::Provider) => pb::ModelRole::Provider,
            Some(Role::Modifier) => pb::ModelRole::Modifier,
        } as i32,
        planned_flop: opt_u128(e.declared.planned_flop),
        planned_params: opt_u128(e.declared.params),
        planned_tokens: opt_u128(e.declared.tokens),
        planned_end_unix_ms: e.declared.planned_end_unix_ms.unwrap_or(0),
        updated_unix_ms: e.updated_unix_ms,
        updated_by: e.updated_by.clone().unwrap_or_default(),
    }
}

/// Message → registry entry (`updated_unix_ms` as given).
pub fn entry_from_pb(e: &pb::ModelEntry) -> Result<ModelEntry, ConvertError> {
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    Ok(ModelEntry {
        model: e.model.trim().to_string(),
        declared: Declaration {
            precision: None,
            planned_flop: parse_u128("planned_flop", &e.planned_flop)?,
            params: parse_u128("planned_params", &e.planned_params)?,
            tokens: parse_u128("planned_tokens", &e.planned_tokens)?,
            base_model: opt(&e.base_model),
            planned_end_unix_ms: (e.planned_end_unix_ms != 0).then_some(e.planned_end_unix_ms),
        },
        base_flop: parse_u128("base_flop", &e.base_flop)?,
        base_flop_source: opt(&e.base_flop_source),
        base_systemic_risk: e.base_systemic_risk,
        role: match e.role() {
            pb::ModelRole::Unspecified => None,
            pb::ModelRole::Provider => Some(Role::Provider),
            pb::ModelRole::Modifier => Some(Role::Modifier),
        },
        updated_unix_ms: e.updated_unix_ms,
        updated_by: opt(&e.updated_by),
    })
}

/// Model summary → message.
pub fn model_to_pb(s: &ModelSummary) -> pb::ModelSummary {
    pb::ModelSummary {
        model: s.model.clone(),
        counted: Some(band_to_pb(s.counted)),
        excluded: Some(band_to_pb(s.excluded)),
        runs: s.runs,
        gpu_ms: s.gpu_ms.to_string(),
        energy_mj: s.energy_mj.to_string(),
        first_event_unix_ms: s.first_event_unix_ms.unwrap_or(0),
        last_event_unix_ms: s.last_event_unix_ms.unwrap_or(0),
        records: s.records,
        agents: s.agents,
        nodes: s.nodes,
        entry: s.entry.as_ref().map(entry_to_pb),
        clusters: s.clusters.clone(),
        by_cluster: s.by_cluster.iter().map(cluster_to_pb).collect(),
    }
}

/// One cluster's share → message.
pub fn cluster_to_pb(c: &ClusterShare) -> pb::ClusterFigures {
    pb::ClusterFigures {
        cluster: c.cluster.clone(),
        kind: match c.kind {
            ClusterKind::Cluster => "cluster",
            ClusterKind::NoCluster => "no-cluster",
            ClusterKind::OtherClusters => "other-clusters",
            ClusterKind::NotSplit => "not-split",
        }
        .to_string(),
        counted: Some(band_to_pb(c.counted.flop)),
        excluded: Some(band_to_pb(c.excluded.flop)),
        gpu_ms: c.all().gpu_ms.to_string(),
        energy_mj: c.all().energy_mj.to_string(),
        records: c.all().records,
        unestimated_gpu_ms: c.all().unestimated_gpu_ms.to_string(),
    }
}

/// Run summary → message.
pub fn run_to_pb(s: &RunSummary) -> pb::RunSummary {
    pb::RunSummary {
        model: s.model.clone(),
        run: s.run.clone(),
        stages: s.stages.clone(),
        counted: Some(band_to_pb(s.counted)),
        excluded: Some(band_to_pb(s.excluded)),
        gpu_ms: s.gpu_ms.to_string(),
        energy_mj: s.energy_mj.to_string(),
        first_event_unix_ms: s.first_event_unix_ms.unwrap_or(0),
        last_event_unix_ms: s.last_event_unix_ms.unwrap_or(0),
        records: s.records,
        approximate_records: s.approximate_records,
        agents: s.agents,
        nodes: s.nodes,
        clusters: s.clusters.clone(),
        by_cluster: s.by_cluster.iter().map(cluster_to_pb).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let e = ModelEntry {
            model: "m".into(),
            declared: Declaration {
                base_model: Some("b".into()),
                planned_flop: Some(2 * 10u128.pow(25)),
                planned_end_unix_ms: Some(1_803_945_600_000),
                ..Declaration::default()
            },
            base_flop: Some(3_800_000_000_000_000_000_000_000),
            base_flop_source: Some("model card".into()),
            base_systemic_risk: Some(true),
            role: Some(Role::Modifier),
            updated_unix_ms: 5,
            updated_by: Some("alice".into()),
        };
        assert_eq!(entry_from_pb(&entry_to_pb(&e)).unwrap(), e);
        assert_eq!(
            parse_u128("x", "3.8e24").unwrap(),
            Some(3_800_000_000_000_000_000_000_000)
        );
        assert!(parse_u128("x", "-1").is_err());
        // Refused with its reason, with bounded work (the old parser multiplied zero by ten
        // two billion times here).
        let e = parse_u128("planned_flop", "0e2147483647").unwrap_err();
        assert!(e.to_string().contains("exponent outside"), "{e}");
        assert!(parse_u128("x", "2.5").is_err());
    }
}
