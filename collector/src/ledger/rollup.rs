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
