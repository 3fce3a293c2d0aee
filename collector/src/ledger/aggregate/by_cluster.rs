//! Per-cluster figures: how much of a stage's FLOP, GPU time and energy ran on each cluster.
//!
//! Why per stage: which stages count is applied when reading (see the parent module), so the
//! split must follow the same stages for the counted per-cluster figures to add up to the
//! counted total under any policy.
//!
//! The cluster of a record is `WorkloadIdentity.cluster`, which the agent stamps on every
//! record (its `--cluster`, else the Slurm job's `SLURM_CLUSTER_NAME`, else the node's Slurm
//! `ClusterName`; `docs/clusters.md`). Records naming none sum under the empty name, so the
//! figures always add up to the stage's total exactly.
//!
//! Bounded like the reasons: at most [`MAX_CLUSTERS`] names, the lexicographically first, the
//! rest summed in [`ByCluster::other`]. "The largest N" would read better but cannot be kept
//! in bounded memory independently of arrival order, and `ledger verify` compares bit for
//! bit; an organisation has a handful of clusters, so the bound only stops a misbehaving
//! agent from growing the ledger.
//!
//! Aggregates written before these figures existed have none, so their per-cluster figures
//! sum to less than their totals: [`ByCluster::unsplit`] is that remainder, shown as work
//! "not split by cluster", never guessed onto a cluster.

use std::collections::BTreeMap;

use flopmeter_core::units::{FlopBand, FlopTotal};
use flopmeter_proto::v1::IntervalRecord;
use serde::{Deserialize, Serialize};

use super::{MAX_CLUSTERS, StageTotals, no_estimate_reason};

/// What ran on one cluster (within one stage, or summed over stages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTotals {
    /// FLOP band of its estimated work.
    pub flop: FlopTotal,
    /// GPU time of its estimated work, ms.
    pub gpu_ms: u128,
    /// Energy of its estimated work, mJ.
    pub energy_mj: u128,
    /// Records, estimated or not.
    pub records: u64,
    /// GPU time that could not be estimated, ms.
    #[serde(default)]
    pub unestimated_gpu_ms: u128,
    /// Energy of the work that could not be estimated, mJ.
    #[serde(default)]
    pub unestimated_energy_mj: u128,
}

impl ClusterTotals {
    /// A record's figures.
    pub fn of(rec: &IntervalRecord) -> ClusterTotals {
        if no_estimate_reason(rec).is_some() {
            return ClusterTotals {
                records: 1,
                unestimated_gpu_ms: u128::from(rec.gpu_ms),
                unestimated_energy_mj: u128::from(rec.energy_mj),
                ..ClusterTotals::default()
            };
        }
        let mut flop = FlopTotal::ZERO;
        flop.add_band(FlopBand {
            low: rec.flop_low,
            central: rec.flop_central,
            high: rec.flop_high,
        });
        ClusterTotals {
            flop,
            gpu_ms: u128::from(rec.gpu_ms),
            energy_mj: u128::from(rec.energy_mj),
            records: 1,
            ..ClusterTotals::default()
        }
    }

    /// The same figures of a whole stage.
    pub fn of_stage(t: &StageTotals) -> ClusterTotals {
        ClusterTotals {
            flop: t.flop,
            gpu_ms: t.gpu_ms,
            energy_mj: t.energy_mj,
            records: t.records,
            unestimated_gpu_ms: t.unestimated.total.gpu_ms,
            unestimated_energy_mj: t.unestimated.total.energy_mj,
        }
    }

    /// Adds another's figures.
    pub fn add(&mut self, o: &ClusterTotals) {
        self.flop.add_total(o.flop);
        self.gpu_ms = self.gpu_ms.saturating_add(o.gpu_ms);
        self.energy_mj = self.energy_mj.saturating_add(o.energy_mj);
        self.records += o.records;
        self.unestimated_gpu_ms = self.unestimated_gpu_ms.saturating_add(o.unestimated_gpu_ms);
        self.unestimated_energy_mj = self
            .unestimated_energy_mj
            .saturating_add(o.unestimated_energy_mj);
    }

    /// `self − o`, each figure saturating at zero.
    pub fn minus(&self, o: &ClusterTotals) -> ClusterTotals {
        let mut flop = self.flop;
        flop.sub_total(o.flop);
        ClusterTotals {
            flop,
            gpu_ms: self.gpu_ms.saturating_sub(o.gpu_ms),
            energy_mj: self.energy_mj.saturating_sub(o.energy_mj),
            records: self.records.saturating_sub(o.records),
            unestimated_gpu_ms: self.unestimated_gpu_ms.saturating_sub(o.unestimated_gpu_ms),
            unestimated_energy_mj: self
                .unestimated_energy_mj
                .saturating_sub(o.unestimated_energy_mj),
        }
    }

    /// Every figure of `self` at most the same figure of `o`.
    pub fn within(&self, o: &ClusterTotals) -> bool {
        self.flop.low <= o.flop.low
            && self.flop.central <= o.flop.central
            && self.flop.high <= o.flop.high
            && self.gpu_ms <= o.gpu_ms
            && self.energy_mj <= o.energy_mj
            && self.records <= o.records
            && self.unestimated_gpu_ms <= o.unestimated_gpu_ms
            && self.unestimated_energy_mj <= o.unestimated_energy_mj
    }

    /// True when nothing was added.
    pub fn is_zero(&self) -> bool {
        *self == ClusterTotals::default()
    }
}

/// A stage's figures per cluster (bounded: [`MAX_CLUSTERS`] names plus `other`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByCluster {
    /// Per cluster name; the empty name holds records that named no cluster.
    #[serde(default)]
    pub named: BTreeMap<String, ClusterTotals>,
    /// Clusters beyond the [`MAX_CLUSTERS`] lexicographically first, summed.
    #[serde(default, skip_serializing_if = "ClusterTotals::is_zero")]
    pub other: ClusterTotals,
}

impl ByCluster {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.other.is_zero()
    }

    /// Adds a record's figures under its cluster.
    pub fn add_record(&mut self, rec: &IntervalRecord) {
        let cluster = rec.identity.as_ref().map_or("", |i| i.cluster.as_str());
        self.add(cluster, &ClusterTotals::of(rec));
    }

    /// Adds another stage's per-cluster figures.
    pub fn merge(&mut self, o: &ByCluster) {
        for (c, t) in &o.named {
            self.add(c, t);
        }
        self.other.add(&o.other);
    }

    /// Everything, named or not.
    pub fn sum(&self) -> ClusterTotals {
        let mut s = self.other;
        for t in self.named.values() {
            s.add(t);
        }
        s
    }

    /// What the stage's totals hold beyond these figures: work aggregated before the ledger
    /// kept per-cluster figures (zero for everything written since).
    pub fn unsplit(&self, stage: &StageTotals) -> ClusterTotals {
        ClusterTotals::of_stage(stage).minus(&self.sum())
    }

    /// Whether stored figures agree with their recomputation from raw batches and rollups:
    /// exactly when the stored stage is fully split; otherwise (a ledger that predates the
    /// figures, whose raw batches may still name the clusters of that older work) no stored
    /// figure may exceed the recomputed one, since the recomputation can only split more.
    pub fn agrees_with(
        &self,
        stored_stage: &StageTotals,
        recomputed: &ByCluster,
        recomputed_stage: &StageTotals,
    ) -> bool {
        if self.unsplit(stored_stage).is_zero() {
            return self == recomputed;
        }
        let get = |b: &ByCluster, c: &str| b.named.get(c).copied().unwrap_or_default();
        self.named
            .keys()
            .all(|c| get(self, c).within(&get(recomputed, c)))
            && self.other.within(&recomputed.other)
            && recomputed
                .unsplit(recomputed_stage)
                .within(&self.unsplit(stored_stage))
    }

    /// Adds `t` under `cluster`, keeping the [`MAX_CLUSTERS`] lexicographically first names:
    /// which survive depends only on the set of names ever added, so any order of additions
    /// (records, rollups merged, recomputation) gives the same result.
    fn add(&mut self, cluster: &str, t: &ClusterTotals) {
        if let Some(e) = self.named.get_mut(cluster) {
            e.add(t);
            return;
        }
        if self.named.len() >= MAX_CLUSTERS {
            match self.named.last_key_value() {
                Some((last, _)) if cluster > last.as_str() => {
                    self.other.add(t);
                    return;
                }
                _ => {
                    if let Some((_, evicted)) = self.named.pop_last() {
                        self.other.add(&evicted);
                    }
                }
            }
        }
        self.named.insert(cluster.to_string(), *t);
    }
}

/// What a row of per-cluster figures stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterKind {
    /// A named cluster.
    Cluster,
    /// Records that named no cluster (an agent without `--cluster`, off Slurm, or older).
    NoCluster,
    /// Clusters beyond the [`MAX_CLUSTERS`] kept by name, summed.
    OtherClusters,
    /// Work aggregated before the ledger kept per-cluster figures.
    NotSplit,
}

impl ClusterKind {
    /// How reports name a row: the cluster, or what the row stands for.
    pub fn label(self, cluster: &str) -> &str {
        match self {
            ClusterKind::Cluster => cluster,
            ClusterKind::NoCluster => "(no cluster named)",
            ClusterKind::OtherClusters => "(other clusters)",
            ClusterKind::NotSplit => "(recorded before per-cluster figures)",
        }
    }
}

/// One cluster's share of an aggregate under a stage policy: its counted stages and its
/// excluded ones. The shares of an aggregate add up to its totals exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterShare {
    /// The cluster's name; empty unless `kind` is [`ClusterKind::Cluster`].
    pub cluster: String,
    /// What the row stands for.
    pub kind: ClusterKind,
    /// The stages that count under the policy.
    pub counted: ClusterTotals,
    /// The stages it excludes.
    pub excluded: ClusterTotals,
}

impl ClusterShare {
    /// The row's name as reports print it.
    pub fn label(&self) -> &str {
        self.kind.label(&self.cluster)
    }

    /// Counted and excluded together.
    pub fn all(&self) -> ClusterTotals {
        let mut t = self.counted;
        t.add(&self.excluded);
        t
    }
}

/// The shares of an aggregate's stages (name → totals), each stage counted or excluded by
/// `counts`: named clusters largest counted FLOP first, then no cluster, other clusters and
/// the unsplit remainder, each only when not empty.
pub fn shares<'a>(
    stages: impl Iterator<Item = (&'a str, &'a StageTotals)>,
    counts: impl Fn(&str) -> bool,
) -> Vec<ClusterShare> {
    let mut rows: BTreeMap<(ClusterKind, String), ClusterShare> = BTreeMap::new();
    for (stage, t) in stages {
        let counted = counts(stage);
        let parts = t
            .by_cluster
            .named
            .iter()
            .map(|(c, v)| {
                let kind = if c.is_empty() {
                    ClusterKind::NoCluster
                } else {
                    ClusterKind::Cluster
                };
                (kind, c.clone(), *v)
            })
            .chain([
                (
                    ClusterKind::OtherClusters,
                    String::new(),
                    t.by_cluster.other,
                ),
                (
                    ClusterKind::NotSplit,
                    String::new(),
                    t.by_cluster.unsplit(t),
                ),
            ]);
        for (kind, cluster, v) in parts {
            if v.is_zero() {
                continue;
            }
            let row = rows
                .entry((kind, cluster.clone()))
                .or_insert_with(|| ClusterShare {
                    cluster,
                    kind,
                    counted: ClusterTotals::default(),
                    excluded: ClusterTotals::default(),
                });
            if counted {
                row.counted.add(&v);
            } else {
                row.excluded.add(&v);
            }
        }
    }
    let mut out: Vec<ClusterShare> = rows.into_values().collect();
    out.sort_by(|a, b| {
        a.kind.cmp(&b.kind).then_with(|| {
            b.counted
                .flop
                .central
                .cmp(&a.counted.flop.central)
                .then_with(|| a.cluster.cmp(&b.cluster))
        })
    });
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::rec;
    use super::super::{Aggregate, MAX_CLUSTERS};
    use super::*;
    use flopmeter_core::stage::StagePolicy;
    use flopmeter_proto::v1::Method;

    fn on(cluster: &str, stage: &str, central: u64) -> IntervalRecord {
        let mut r = rec(stage, central);
        if let Some(i) = r.identity.as_mut() {
            i.cluster = cluster.into();
        }
        r
    }

    #[test]
    fn figures_per_cluster_add_up_to_the_totals_exactly() {
        let mut a = Aggregate::default();
        a.add_record(&on("gpu-a", "", 1_000_003));
        a.add_record(&on("gpu-b", "", 7));
        a.add_record(&on("", "", 11));
        a.add_record(&on("gpu-b", "eval", 5));
        let mut none = on("gpu-a", "", 0);
        none.method = Method::None as i32;
        none.no_estimate_reason = "no-activity-reading".into();
        none.gpu_ms = 123;
        a.add_record(&none);
        let p = StagePolicy::default();
        let shares = a.cluster_shares(&p);
        let names: Vec<_> = shares.iter().map(|s| s.cluster.clone()).collect();
        assert_eq!(names, ["gpu-a", "gpu-b", ""]);
        let mut counted = FlopTotal::ZERO;
        let mut excluded = FlopTotal::ZERO;
        let (mut gpu_ms, mut records, mut unest) = (0, 0, 0);
        for s in &shares {
            counted.add_total(s.counted.flop);
            excluded.add_total(s.excluded.flop);
            gpu_ms += s.all().gpu_ms;
            records += s.all().records;
            unest += s.all().unestimated_gpu_ms;
        }
        assert_eq!(counted, a.counted(&p));
        assert_eq!(excluded, a.excluded(&p));
        assert_eq!(gpu_ms, a.all().gpu_ms);
        assert_eq!(records, a.records());
        assert_eq!(unest, 123);
        assert_eq!(shares[0].counted.flop.central, 1_000_003);
        assert_eq!(shares[1].excluded.flop.central, 5);
        assert_eq!(shares[1].counted.flop.central, 7);
        assert_eq!(
            shares.iter().map(|s| s.counted.energy_mj).sum::<u128>(),
            a.counted_totals(&p).energy_mj
        );
    }

    #[test]
    fn bounded_in_any_order_and_exact() {
        let recs: Vec<_> = (0..40)
            .map(|i| on(&format!("c{i:02}"), "", 10 + i))
            .collect();
        let mut forward = Aggregate::default();
        recs.iter().for_each(|r| forward.add_record(r));
        let mut backward = Aggregate::default();
        for r in recs.iter().rev() {
            let mut one = Aggregate::default();
            one.add_record(r);
            backward.merge_stages(&one);
        }
        assert_eq!(forward, backward);
        let b = &forward.stages["pretrain"].by_cluster;
        assert_eq!(b.named.len(), MAX_CLUSTERS);
        assert!(b.named.contains_key("c00") && !b.named.contains_key("c39"));
        assert_eq!(b.sum().flop, forward.all().flop, "nothing lost in the fold");
        let shares = forward.cluster_shares(&StagePolicy::default());
        assert_eq!(shares.len(), MAX_CLUSTERS + 1);
        assert_eq!(
            shares.last().map(|s| s.kind),
            Some(ClusterKind::OtherClusters)
        );
    }

    #[test]
    fn an_aggregate_from_before_the_figures_reads_and_shows_its_remainder() {
        // A stage as the previous release stored it: no per-cluster figures.
        let old = r#"{"stages":{"pretrain":{"flop":{"low":1,"central":2,"high":3},"gpu_ms":10,
            "energy_mj":5,"gpu_types":{},"methods":{},"records":1,"approximate_records":0,
            "unknown_peak_records":0,"first_event_unix_ms":1,"last_event_unix_ms":2}},
            "agents":1,"nodes":1,"clusters":["gpu-a"]}"#;
        let mut a: Aggregate = serde_json::from_str(old).unwrap();
        assert!(a.stages["pretrain"].by_cluster.is_empty());
        a.add_record(&on("gpu-a", "", 100));
        let shares = a.cluster_shares(&StagePolicy::default());
        assert_eq!(shares.len(), 2);
        assert_eq!(shares[0].cluster, "gpu-a");
        assert_eq!(shares[0].counted.flop.central, 100);
        assert_eq!(shares[1].kind, ClusterKind::NotSplit);
        assert_eq!(shares[1].counted.flop.central, 2);
        assert_eq!(shares[1].counted.gpu_ms, 10);
        // Verify: a recomputation that splits the older work too agrees; one that puts more
        // on a cluster than the stored figure could hold does not.
        let stored = &a.stages["pretrain"];
        let mut full = Aggregate::default();
        full.add_record(&on("gpu-a", "", 100));
        let mut older = on("gpu-a", "", 2);
        (
            older.flop_low,
            older.flop_high,
            older.gpu_ms,
            older.energy_mj,
        ) = (1, 3, 10, 5);
        full.add_record(&older);
        let r = &full.stages["pretrain"];
        assert!(stored.by_cluster.agrees_with(stored, &r.by_cluster, r));
        let mut wrong = stored.clone();
        wrong
            .by_cluster
            .named
            .get_mut("gpu-a")
            .unwrap()
            .flop
            .central = 103;
        assert!(!wrong.by_cluster.agrees_with(&wrong, &r.by_cluster, r));
        // Fully split stages compare exactly.
        assert!(r.by_cluster.agrees_with(r, &r.by_cluster, r));
        let mut moved = r.clone();
        let t = moved.by_cluster.named.remove("gpu-a").unwrap();
        moved.by_cluster.named.insert("gpu-b".into(), t);
        assert!(!moved.by_cluster.agrees_with(&moved, &r.by_cluster, r));
    }
}
