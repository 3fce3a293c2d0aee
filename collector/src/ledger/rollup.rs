//! Summing raw batches into hourly rollups: the one rule every store rolls up by.
//!
//! Why here: the rollups must hold exactly what the raw batches held (verification
//! recomputes totals from them after the batches are gone), so the stores must not each keep
//! their own copy of which record goes into which hour and which sets.

use std::collections::BTreeMap;

use super::RollupStats;
use super::aggregate::{Attribution, attribution, gpu_type_of};
use super::codec::{Rollup, StoredBatch};
use super::keys::HOUR_MS;

/// (model, run, hour) for a run's rollup; (node, GPU type, hour) for an unattributed one.
pub type RollupKey = (String, String, i64);

/// The rollups some raw batches add, before they are merged into the stored ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupDeltas {
    /// Per (model, run, hour).
    pub runs: BTreeMap<RollupKey, Rollup>,
    /// Per (node, GPU type, hour): stage totals only, as unattributed aggregates count no
    /// distinct agents or nodes.
    pub unattributed: BTreeMap<RollupKey, Rollup>,
}

impl RollupDeltas {
    /// Adds one raw batch's records to their hours, and counts it in `stats`.
    pub fn add_batch(&mut self, batch: &StoredBatch, stats: &mut RollupStats) {
        for rec in &batch.records {
            let hour = rec.start_unix_ms.div_euclid(HOUR_MS);
            match attribution(rec) {
                Attribution::Run { model, run } => {
                    let r = self
                        .runs
                        .entry((model.to_string(), run.to_string(), hour))
                        .or_default();
                    r.aggregate.add_record(rec);
                    r.agents.insert(batch.agent_id.clone());
                    r.nodes.insert(batch.node.clone());
                }
                Attribution::Unattributed => {
                    let key = (batch.node.clone(), gpu_type_of(rec).to_string(), hour);
                    self.unattributed
                        .entry(key)
                        .or_default()
                        .aggregate
                        .add_record(rec);
                }
            }
            stats.records += 1;
        }
        stats.batches += 1;
    }
}

impl Rollup {
    /// Adds another rollup of the same hour and scope to this one.
    pub fn merge(&mut self, other: &Rollup) {
        self.aggregate.merge_stages(&other.aggregate);
        self.agents.extend(other.agents.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use flopmeter_proto::v1::{AttributionSource, IntervalRecord, WorkloadIdentity};

    use super::*;

    fn rec(start_unix_ms: i64, run: Option<&str>, central: u64) -> IntervalRecord {
        IntervalRecord {
            start_unix_ms,
            end_unix_ms: start_unix_ms + 10_000,
            gpu_type: "h100-sxm".into(),
            flop_low: central,
            flop_central: central,
            flop_high: central,
            gpu_ms: 10_000,
            identity: run.map(|run| WorkloadIdentity {
                model: "m".into(),
                run: run.into(),
                source: AttributionSource::ProcessEnv as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn records_go_to_their_hour_and_only_runs_keep_agents_and_nodes() {
        let batch = StoredBatch {
            agent_id: "a".into(),
            node: "n".into(),
            received_unix_ms: 0,
            records: vec![
                rec(HOUR_MS - 1, Some("r"), 1),
                rec(HOUR_MS, Some("r"), 2),
                rec(-1, None, 4),
            ],
        };
        let mut stats = RollupStats::default();
        let mut deltas = RollupDeltas::default();
        deltas.add_batch(&batch, &mut stats);
        deltas.add_batch(&batch, &mut stats);
        assert_eq!((stats.batches, stats.records), (2, 6));

        let runs: Vec<_> = deltas.runs.keys().cloned().collect();
        let r = |hour| ("m".to_string(), "r".to_string(), hour);
        assert_eq!(runs, [r(0), r(1)]);
        let hour0 = &deltas.runs[&r(0)];
        assert_eq!(hour0.aggregate.all().flop.central, 2);
        assert_eq!(hour0.agents.iter().collect::<Vec<_>>(), ["a"]);
        assert_eq!(hour0.nodes.iter().collect::<Vec<_>>(), ["n"]);

        let key = ("n".to_string(), "h100-sxm".to_string(), -1);
        let u = &deltas.unattributed[&key];
        assert_eq!(u.aggregate.all().flop.central, 8);
        assert!(u.agents.is_empty() && u.nodes.is_empty());

        let mut merged = deltas.runs[&r(1)].clone();
        merged.merge(hour0);
        assert_eq!(merged.aggregate.all().flop.central, 6);
        assert_eq!(merged.agents.len(), 1);
    }
}
