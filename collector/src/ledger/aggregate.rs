//! Aggregates: the additive summary of a set of interval records, per stage.
//!
//! Why per stage, and why the stage policy is *not* applied here: which stages count toward
//! the regulatory total is a legal reading that may change (the policy is configurable, and
//! Art. 51(3) lets the threshold rules change). Storing a counted/excluded split would freeze
//! the reading in force when each record arrived and make `ledger verify` depend on the
//! policy's history. So the ledger stores facts per stage, and [`Aggregate::counted`] /
//! [`Aggregate::excluded`] apply whichever policy the reader names.
//!
//! Everything here is integer arithmetic (FLOP and energy as `u128`, GPU time in ms), so any
//! order of additions gives the same result, and a recomputation from raw records matches
//! the stored aggregate bit for bit.
//!
//! **Work that could not be estimated** (`METHOD_NONE` records: an uncatalogued GPU without a
//! peak, no activity reading) is never estimated work: its GPU time and energy go to
//! [`StageTotals::unestimated`], per reason, and never into the FLOP band, `gpu_ms`,
//! `energy_mj`, the GPU types or the method mix. It still counts as a record and widens the
//! period: the hardware ran.
//!
//! Every collection an agent's strings can grow is bounded, by rules that depend only on
//! the *set* of values seen, never on arrival order, so `ledger verify` stays exact: at most
//! [`MAX_REASONS`] reasons per stage and [`MAX_CLUSTERS`] clusters per aggregate, the
//! lexicographically first kept and the rest folded into [`OTHER_REASONS`] or dropped. The
//! one exception is [`Sources`], the largest unattributed sources of a bucket: see there.

mod by_cluster;

use std::collections::{BTreeMap, BTreeSet};

pub use by_cluster::{ByCluster, ClusterKind, ClusterShare};

use flopmeter_core::stage::{Stage, StagePolicy};
use flopmeter_core::units::{FlopBand, FlopTotal};
use flopmeter_proto::convert::method_from_wire;
use flopmeter_proto::v1::{AttributionSource, IntervalRecord, Method};
use serde::{Deserialize, Serialize};

/// GPU-type key used when a record names no catalogue id (an uncatalogued device).
pub const UNKNOWN_GPU_TYPE: &str = "unknown";

/// Who a record's work belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution<'a> {
    /// A model's run (the run id may be empty when the job declared none).
    Run {
        /// Model name.
        model: &'a str,
        /// Run id.
        run: &'a str,
    },
    /// No workload identity: aggregated per node and GPU type, never dropped.
    Unattributed,
}

/// Classifies a record. A record counts as unattributed when the agent says so, or when it
/// names no model (a run id without a model cannot be summed into any model's total).
pub fn attribution(rec: &IntervalRecord) -> Attribution<'_> {
    match &rec.identity {
        Some(id) if !id.model.is_empty() && id.source() != AttributionSource::Unattributed => {
            Attribution::Run {
                model: &id.model,
                run: &id.run,
            }
        }
        _ => Attribution::Unattributed,
    }
}

/// The canonical stage name of a record (empty = pretrain, aliases folded).
pub fn stage_of(rec: &IntervalRecord) -> String {
    let raw = rec.identity.as_ref().map_or("", |i| i.stage.as_str());
    Stage::parse(raw).as_str().to_string()
}

/// The GPU-type key of a record.
pub fn gpu_type_of(rec: &IntervalRecord) -> &str {
    if rec.gpu_type.is_empty() {
        UNKNOWN_GPU_TYPE
    } else {
        &rec.gpu_type
    }
}

/// The key of a record's GPU-days: its GPU type, and for work on a MIG instance the
/// profile too (`h100-sxm/mig-3g.40gb`), so the ledger shows GPU-days per GPU type and MIG
/// profile. Aggregates stored before MIG support keep their plain type keys and read as
/// before. A profile that does not look like one (`1g.10gb`, `1g.10gb+me`, ...) becomes
/// `mig-other`, so an agent cannot grow the key set (and metric labels) without bound.
pub fn gpu_days_key(rec: &IntervalRecord) -> std::borrow::Cow<'_, str> {
    let ty = gpu_type_of(rec);
    match rec.mig.as_ref().map(|m| m.profile.as_str()) {
        None => std::borrow::Cow::Borrowed(ty),
        Some(p) => {
            let plausible = !p.is_empty()
                && p.len() <= 16
                && p.contains('g')
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || b"gbme.+c".contains(&b));
            let profile = if plausible { p } else { "other" };
            std::borrow::Cow::Owned(format!("{ty}/mig-{profile}"))
        }
    }
}

/// The method tag of a record, as reports show it.
pub fn method_of(rec: &IntervalRecord) -> &'static str {
    method_from_wire(rec.method()).map_or("unspecified", |m| m.as_str())
}

/// Reasons kept per stage; further reasons are summed under [`OTHER_REASONS`].
pub const MAX_REASONS: usize = 16;
/// Where reasons beyond [`MAX_REASONS`] are summed (not kebab-case, so no agent can send it).
pub const OTHER_REASONS: &str = "(other reasons)";
/// Clusters kept by name per aggregate and per stage's figures (a run spans one, an
/// organisation's model a few).
pub const MAX_CLUSTERS: usize = 16;
/// Sources named per unattributed bucket; the rest are summed in [`Sources::other`].
pub const MAX_SOURCES: usize = 32;

/// Why a record carries no FLOP estimate, if it does not (`METHOD_NONE`).
pub fn no_estimate_reason(rec: &IntervalRecord) -> Option<&str> {
    (rec.method() == Method::None).then_some(if rec.no_estimate_reason.is_empty() {
        "unspecified"
    } else {
        rec.no_estimate_reason.as_str()
    })
}

/// GPU time and energy that could not be estimated, with how many records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnestimatedCounts {
    /// GPU time, ms.
    pub gpu_ms: u128,
    /// Energy, mJ.
    pub energy_mj: u128,
    /// Records.
    pub records: u64,
}

impl UnestimatedCounts {
    fn add(&mut self, o: &UnestimatedCounts) {
        self.gpu_ms = self.gpu_ms.saturating_add(o.gpu_ms);
        self.energy_mj = self.energy_mj.saturating_add(o.energy_mj);
        self.records += o.records;
    }

    /// True when nothing was added.
    pub fn is_zero(&self) -> bool {
        *self == UnestimatedCounts::default()
    }
}

/// Work that could not be estimated, per reason (bounded: [`MAX_REASONS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unestimated {
    /// All reasons together.
    pub total: UnestimatedCounts,
    /// Per reason (`unknown-gpu-no-peak`, ...), and [`OTHER_REASONS`].
    #[serde(default)]
    pub reasons: BTreeMap<String, UnestimatedCounts>,
}

impl Unestimated {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.total.is_zero() && self.reasons.is_empty()
    }

    fn add_reason(&mut self, reason: &str, c: &UnestimatedCounts) {
        self.total.add(c);
        add_bounded(&mut self.reasons, reason, c);
    }

    /// Adds another's counts.
    pub fn merge(&mut self, o: &Unestimated) {
        self.total.add(&o.total);
        for (r, c) in &o.reasons {
            add_bounded(&mut self.reasons, r, c);
        }
    }
}

/// Adds `c` under `key`, keeping at most [`MAX_REASONS`] keys besides [`OTHER_REASONS`]: the
/// lexicographically first. Which keys survive depends only on the set of keys ever added,
/// so the result is the same in any order of additions.
fn add_bounded(map: &mut BTreeMap<String, UnestimatedCounts>, key: &str, c: &UnestimatedCounts) {
    if key != OTHER_REASONS && !map.contains_key(key) {
        let named = map.len() - usize::from(map.contains_key(OTHER_REASONS));
        if named >= MAX_REASONS {
            let last = map
                .keys()
                .rfind(|k| *k != OTHER_REASONS)
                .cloned()
                .expect("the map is full");
            if key > last.as_str() {
                map.entry(OTHER_REASONS.to_string()).or_default().add(c);
                return;
            }
            let evicted = map.remove(&last).expect("present");
            map.entry(OTHER_REASONS.to_string())
                .or_default()
                .add(&evicted);
        }
    }
    map.entry(key.to_string()).or_default().add(c);
}

/// Per-GPU-type totals within a stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTypeTotals {
    /// GPU time attributed, milliseconds.
    pub gpu_ms: u128,
    /// FLOP band.
    pub flop: FlopTotal,
    /// Records.
    pub records: u64,
}

/// Everything measured for one stage (of a run, a model, or an unattributed bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTotals {
    /// FLOP band, exact sums.
    pub flop: FlopTotal,
    /// GPU time attributed, milliseconds.
    pub gpu_ms: u128,
    /// Energy attributed, millijoules.
    pub energy_mj: u128,
    /// Per GPU type (catalogue id, or `unknown`).
    pub gpu_types: BTreeMap<String, GpuTypeTotals>,
    /// Central FLOP per estimation method, for the method mix.
    pub methods: BTreeMap<String, u128>,
    /// Records summed.
    pub records: u64,
    /// Records whose GPU was shared and split by SM share.
    pub approximate_records: u64,
    /// Records estimated with an operator-supplied peak (uncatalogued GPU).
    pub unknown_peak_records: u64,
    /// Earliest interval start, Unix ms.
    pub first_event_unix_ms: Option<i64>,
    /// Latest interval end, Unix ms.
    pub last_event_unix_ms: Option<i64>,
    /// GPU time and energy that could not be estimated (not in any figure above but
    /// `records` and the period). Absent in ledgers written before it existed: empty.
    #[serde(default, skip_serializing_if = "Unestimated::is_empty")]
    pub unestimated: Unestimated,
    /// The figures above per cluster (see [`ByCluster`]). Absent in ledgers written before
    /// it existed: empty, and the whole stage reads as not split by cluster.
    #[serde(default, skip_serializing_if = "ByCluster::is_empty")]
    pub by_cluster: ByCluster,
}

impl StageTotals {
    /// Adds one record.
    pub fn add_record(&mut self, rec: &IntervalRecord) {
        self.records += 1;
        self.widen_period(Some(rec.start_unix_ms), Some(rec.end_unix_ms));
        self.by_cluster.add_record(rec);
        if let Some(reason) = no_estimate_reason(rec) {
            let c = UnestimatedCounts {
                gpu_ms: u128::from(rec.gpu_ms),
                energy_mj: u128::from(rec.energy_mj),
                records: 1,
            };
            self.unestimated.add_reason(reason, &c);
            return;
        }
        let band = FlopBand {
            low: rec.flop_low,
            central: rec.flop_central,
            high: rec.flop_high,
        };
        self.flop.add_band(band);
        self.gpu_ms = self.gpu_ms.saturating_add(u128::from(rec.gpu_ms));
        self.energy_mj = self.energy_mj.saturating_add(u128::from(rec.energy_mj));
        let g = self
            .gpu_types
            .entry(gpu_days_key(rec).into_owned())
            .or_default();
        g.gpu_ms = g.gpu_ms.saturating_add(u128::from(rec.gpu_ms));
        g.flop.add_band(band);
        g.records += 1;
        let m = self.methods.entry(method_of(rec).to_string()).or_default();
        *m = m.saturating_add(u128::from(rec.flop_central));
        self.approximate_records += u64::from(rec.approximate);
        self.unknown_peak_records += u64::from(rec.unknown_peak);
    }

    /// Adds another stage's totals.
    pub fn merge(&mut self, other: &StageTotals) {
        self.flop.add_total(other.flop);
        self.gpu_ms = self.gpu_ms.saturating_add(other.gpu_ms);
        self.energy_mj = self.energy_mj.saturating_add(other.energy_mj);
        for (k, v) in &other.gpu_types {
            let g = self.gpu_types.entry(k.clone()).or_default();
            g.gpu_ms = g.gpu_ms.saturating_add(v.gpu_ms);
            g.flop.add_total(v.flop);
            g.records += v.records;
        }
        for (k, v) in &other.methods {
            let m = self.methods.entry(k.clone()).or_default();
            *m = m.saturating_add(*v);
        }
        self.records += other.records;
        self.approximate_records += other.approximate_records;
        self.unknown_peak_records += other.unknown_peak_records;
        self.widen_period(other.first_event_unix_ms, other.last_event_unix_ms);
        self.unestimated.merge(&other.unestimated);
        self.by_cluster.merge(&other.by_cluster);
    }

    fn widen_period(&mut self, first: Option<i64>, last: Option<i64>) {
        self.first_event_unix_ms = match (self.first_event_unix_ms, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_event_unix_ms = match (self.last_event_unix_ms, last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The aggregate of a run, a model, or an unattributed (node, GPU type, day) bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Totals per canonical stage name.
    pub stages: BTreeMap<String, StageTotals>,
    /// Distinct agents that reported work for it.
    pub agents: u64,
    /// Distinct nodes that reported work for it.
    pub nodes: u64,
    /// Slurm clusters its jobs ran on (`WorkloadIdentity.cluster`; at most
    /// `MAX_CLUSTERS`). Absent in older ledgers: empty.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub clusters: BTreeSet<String>,
    /// Unattributed buckets only: the sources (job, pod, process) of the work, largest
    /// first. Absent in older ledgers: empty.
    #[serde(default, skip_serializing_if = "Sources::is_empty")]
    pub sources: Sources,
}

impl Aggregate {
    /// Adds one record under its stage (and, if unattributed, under its source).
    pub fn add_record(&mut self, rec: &IntervalRecord) {
        self.stages
            .entry(stage_of(rec))
            .or_default()
            .add_record(rec);
        if let Some(c) = rec.identity.as_ref().map(|i| i.cluster.as_str())
            && !c.is_empty()
        {
            add_cluster(&mut self.clusters, c);
        }
        if attribution(rec) == Attribution::Unattributed {
            self.sources.add(SourceKey::of(rec), &SourceCounts::of(rec));
        }
    }

    /// Adds another aggregate's stage totals, clusters and sources (not its agent and node
    /// counts, which are distinct counts and do not add).
    pub fn merge_stages(&mut self, other: &Aggregate) {
        for (stage, t) in &other.stages {
            self.stages.entry(stage.clone()).or_default().merge(t);
        }
        for c in &other.clusters {
            add_cluster(&mut self.clusters, c);
        }
        self.sources.merge(&other.sources);
    }

    /// Work that could not be estimated, all stages.
    pub fn unestimated(&self) -> Unestimated {
        let mut u = Unestimated::default();
        for t in self.stages.values() {
            u.merge(&t.unestimated);
        }
        u
    }

    /// All stages together.
    pub fn all(&self) -> StageTotals {
        self.select(|_| true)
    }

    /// The stages that count toward the regulatory total under `policy`, together.
    pub fn counted_totals(&self, policy: &StagePolicy) -> StageTotals {
        self.select(|s| policy.counts(&Stage::parse(s)))
    }

    /// The stages excluded under `policy`, together.
    pub fn excluded_totals(&self, policy: &StagePolicy) -> StageTotals {
        self.select(|s| !policy.counts(&Stage::parse(s)))
    }

    /// FLOP that counts toward the regulatory total under `policy`.
    pub fn counted(&self, policy: &StagePolicy) -> FlopTotal {
        self.counted_totals(policy).flop
    }

    /// FLOP measured but excluded under `policy`.
    pub fn excluded(&self, policy: &StagePolicy) -> FlopTotal {
        self.excluded_totals(policy).flop
    }

    /// Each cluster's share under `policy`, adding up to the totals exactly (see
    /// `ClusterShare`).
    pub fn cluster_shares(&self, policy: &StagePolicy) -> Vec<ClusterShare> {
        by_cluster::shares(self.stages.iter().map(|(s, t)| (s.as_str(), t)), |s| {
            policy.counts(&Stage::parse(s))
        })
    }

    /// Records summed over all stages.
    pub fn records(&self) -> u64 {
        self.stages.values().map(|s| s.records).sum()
    }

    fn select(&self, keep: impl Fn(&str) -> bool) -> StageTotals {
        let mut t = StageTotals::default();
        for (stage, s) in &self.stages {
            if keep(stage) {
                t.merge(s);
            }
        }
        t
    }
}

/// Keeps the [`MAX_CLUSTERS`] lexicographically first cluster names (order-independent).
fn add_cluster(set: &mut BTreeSet<String>, c: &str) {
    if set.contains(c) {
        return;
    }
    set.insert(c.to_string());
    while set.len() > MAX_CLUSTERS {
        set.pop_last();
    }
}

/// Where unattributed work came from: the Slurm job or pod, and the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceKey {
    /// Slurm cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Kubernetes namespace or Slurm account.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Slurm job id or pod name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
    /// Slurm job user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Command name of the process.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub process: String,
}

impl SourceKey {
    /// The source of a record (all empty when the agent saw no process).
    pub fn of(rec: &IntervalRecord) -> SourceKey {
        rec.identity
            .as_ref()
            .map(|i| SourceKey {
                cluster: i.cluster.clone(),
                namespace: i.namespace.clone(),
                job: i.job.clone(),
                user: i.user.clone(),
                process: i.process.clone(),
            })
            .unwrap_or_default()
    }

    /// `slurm job 42 (user alice, account research, cluster c1, process python)`, or
    /// `(no process visible)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, v) in [
            ("user", &self.user),
            ("namespace/account", &self.namespace),
            ("cluster", &self.cluster),
            ("process", &self.process),
        ] {
            if !v.is_empty() {
                parts.push(format!("{what} {v}"));
            }
        }
        match (self.job.is_empty(), parts.is_empty()) {
            (true, true) => "(no process visible)".to_string(),
            (true, false) => parts.join(", "),
            (false, true) => format!("job {}", self.job),
            (false, false) => format!("job {} ({})", self.job, parts.join(", ")),
        }
    }
}

/// What one source did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounts {
    /// FLOP band of its estimated work.
    pub flop: FlopTotal,
    /// GPU time of its estimated work, ms.
    pub gpu_ms: u128,
    /// GPU time that could not be estimated, ms.
    #[serde(default)]
    pub unestimated_gpu_ms: u128,
    /// Energy, mJ (all its work).
    pub energy_mj: u128,
    /// Records.
    pub records: u64,
}

impl SourceCounts {
    /// A record's counts.
    pub fn of(rec: &IntervalRecord) -> SourceCounts {
        let (flop, gpu_ms, unestimated_gpu_ms) = if no_estimate_reason(rec).is_some() {
            (FlopTotal::ZERO, 0, u128::from(rec.gpu_ms))
        } else {
            let mut f = FlopTotal::ZERO;
            f.add_band(FlopBand {
                low: rec.flop_low,
                central: rec.flop_central,
                high: rec.flop_high,
            });
            (f, u128::from(rec.gpu_ms), 0)
        };
        SourceCounts {
            flop,
            gpu_ms,
            unestimated_gpu_ms,
            energy_mj: u128::from(rec.energy_mj),
            records: 1,
        }
    }

    /// Adds another's counts.
    pub fn add(&mut self, o: &SourceCounts) {
        self.flop.add_total(o.flop);
        self.gpu_ms = self.gpu_ms.saturating_add(o.gpu_ms);
        self.unestimated_gpu_ms = self.unestimated_gpu_ms.saturating_add(o.unestimated_gpu_ms);
        self.energy_mj = self.energy_mj.saturating_add(o.energy_mj);
        self.records += o.records;
    }

    /// GPU time, estimated or not: what "largest" means (it covers work without FLOP).
    pub fn size(&self) -> u128 {
        self.gpu_ms.saturating_add(self.unestimated_gpu_ms)
    }

    /// True when nothing was added.
    pub fn is_zero(&self) -> bool {
        *self == SourceCounts::default()
    }
}

/// One named source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// Who.
    pub key: SourceKey,
    /// What it did.
    pub counts: SourceCounts,
}

/// The sources of a bucket's unattributed work: at most [`MAX_SOURCES`] named, the rest summed
/// in `other`, so a node running thousands of unlabelled jobs cannot grow the ledger.
///
/// When the set is full, a new source displaces the smallest named one (by GPU time) if its
/// own work so far is larger; otherwise it is summed in `other`. Sums are exact either way
/// (every record is in exactly one entry). *Which* sources are named depends on arrival order
/// only once a bucket (one node, GPU type and UTC day) has seen more than [`MAX_SOURCES`]
/// distinct sources, so `ledger verify` compares sources exactly while `other` is empty, and
/// beyond that checks that the sums agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    /// Named sources, sorted by key.
    #[serde(default)]
    pub named: Vec<SourceEntry>,
    /// Everything from sources that are not named.
    #[serde(default)]
    pub other: SourceCounts,
}

impl Sources {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.other.is_zero()
    }

    /// Adds a source's work.
    pub fn add(&mut self, key: SourceKey, c: &SourceCounts) {
        match self.named.binary_search_by(|e| e.key.cmp(&key)) {
            Ok(i) => self.named[i].counts.add(c),
            Err(i) if self.named.len() < MAX_SOURCES => {
                self.named.insert(i, SourceEntry { key, counts: *c })
            }
            Err(_) => {
                let (min, min_size) = self
                    .named
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (i, e.counts.size()))
                    .min_by_key(|&(i, size)| (size, std::cmp::Reverse(i)))
                    .expect("the set is full");
                if c.size() > min_size {
                    let evicted = self.named.remove(min);
                    self.other.add(&evicted.counts);
                    // The key is not in the set (it was looked up above); either way the
                    // search names the position that keeps the set sorted.
                    let (Ok(at) | Err(at)) = self.named.binary_search_by(|e| e.key.cmp(&key));
                    self.named.insert(at, SourceEntry { key, counts: *c });
                } else {
                    self.other.add(c);
                }
            }
        }
    }

    /// Adds another bucket's sources.
    pub fn merge(&mut self, o: &Sources) {
        for e in &o.named {
            self.add(e.key.clone(), &e.counts);
        }
        self.other.add(&o.other);
    }

    /// Everything, named or not.
    pub fn total(&self) -> SourceCounts {
        let mut t = self.other;
        for e in &self.named {
            t.add(&e.counts);
        }
        t
    }

    /// The named sources, largest (by GPU time) first.
    pub fn largest(&self) -> Vec<&SourceEntry> {
        let mut v: Vec<&SourceEntry> = self.named.iter().collect();
        v.sort_by(|a, b| {
            b.counts
                .size()
                .cmp(&a.counts.size())
                .then_with(|| a.key.cmp(&b.key))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flopmeter_proto::v1::{Method, WorkloadIdentity};

    pub(crate) fn rec(stage: &str, central: u64) -> IntervalRecord {
        IntervalRecord {
            seq: 1,
            start_unix_ms: 1_000,
            end_unix_ms: 11_000,
            gpu_type: "h100-sxm".into(),
            flop_low: central / 2,
            flop_central: central,
            flop_high: central * 2,
            gpu_ms: 10_000,
            energy_mj: 7_000_000,
            method: Method::GpmTensor as i32,
            identity: Some(WorkloadIdentity {
                model: "m".into(),
                run: "r".into(),
                stage: stage.into(),
                source: AttributionSource::ProcessEnv as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn policy_splits_at_read_time() {
        let mut a = Aggregate::default();
        a.add_record(&rec("", 100));
        a.add_record(&rec("SFT", 10));
        a.add_record(&rec("eval", 1));
        let p = StagePolicy::default();
        assert_eq!(a.counted(&p).central, 110);
        assert_eq!(a.excluded(&p).central, 1);
        assert_eq!(a.all().flop.central, 111);
        assert_eq!(a.all().gpu_types["h100-sxm"].gpu_ms, 30_000);
        assert_eq!(a.all().methods["gpm-tensor"], 111);
        assert_eq!(
            a.stages.keys().collect::<Vec<_>>(),
            ["eval", "finetune", "pretrain"]
        );
    }

    fn unestimated(reason: &str, gpu_ms: u64) -> IntervalRecord {
        let mut r = rec("", 0);
        r.flop_low = 0;
        r.flop_high = 0;
        r.method = Method::None as i32;
        r.no_estimate_reason = reason.into();
        r.gpu_ms = gpu_ms;
        r.energy_mj = 1_000;
        r
    }

    fn unattributed(job: &str, gpu_ms: u64) -> IntervalRecord {
        let mut r = rec("", 10);
        r.gpu_ms = gpu_ms;
        let id = r.identity.as_mut().unwrap();
        id.model.clear();
        id.run.clear();
        id.source = AttributionSource::Unattributed as i32;
        id.job = job.into();
        id.cluster = "c1".into();
        r
    }

    #[test]
    fn work_that_could_not_be_estimated_is_never_estimated_work() {
        let mut a = Aggregate::default();
        a.add_record(&rec("", 100));
        a.add_record(&unestimated("unknown-gpu-no-peak", 4_000));
        a.add_record(&unestimated("unknown-gpu-no-peak", 6_000));
        a.add_record(&unestimated("no-activity-reading", 1_000));
        let all = a.all();
        assert_eq!(all.flop.central, 100);
        assert_eq!(all.gpu_ms, 10_000, "only the estimated record's GPU time");
        assert_eq!(all.energy_mj, 7_000_000);
        assert_eq!(all.gpu_types["h100-sxm"].records, 1);
        assert!(!all.methods.contains_key("none"));
        assert_eq!(all.records, 4, "every record is a record");
        let u = a.unestimated();
        assert_eq!(
            u.total,
            UnestimatedCounts {
                gpu_ms: 11_000,
                energy_mj: 3_000,
                records: 3
            }
        );
        assert_eq!(u.reasons["unknown-gpu-no-peak"].gpu_ms, 10_000);
        assert_eq!(u.reasons["no-activity-reading"].records, 1);
    }

    #[test]
    fn reasons_and_clusters_are_bounded_the_same_way_in_any_order() {
        let recs: Vec<IntervalRecord> = (0..40)
            .map(|i| {
                let mut r = unestimated(&format!("reason-{i:02}"), 100 + i);
                r.identity.as_mut().unwrap().cluster = format!("c{i:02}");
                r
            })
            .collect();
        let mut forward = Aggregate::default();
        recs.iter().for_each(|r| forward.add_record(r));
        // Reversed, and through per-record aggregates merged pairwise (as rollups are).
        let mut backward = Aggregate::default();
        for r in recs.iter().rev() {
            let mut one = Aggregate::default();
            one.add_record(r);
            backward.merge_stages(&one);
        }
        assert_eq!(forward, backward);
        let u = forward.unestimated();
        assert_eq!(u.reasons.len(), MAX_REASONS + 1);
        assert!(u.reasons.contains_key("reason-00"));
        assert!(!u.reasons.contains_key("reason-39"));
        assert_eq!(u.total.records, 40);
        let sum: u64 = u.reasons.values().map(|c| c.records).sum();
        assert_eq!(sum, 40, "nothing lost in the fold");
        assert_eq!(forward.clusters.len(), MAX_CLUSTERS);
        assert!(forward.clusters.contains("c00"));
    }

    #[test]
    fn sources_are_bounded_keep_the_largest_and_sum_exactly() {
        let mut a = Aggregate::default();
        // Many small jobs, then one big one.
        for i in 0..100u64 {
            a.add_record(&unattributed(&format!("{i}"), 1_000));
        }
        a.add_record(&unattributed("big", 9_000));
        a.add_record(&unattributed("big", 9_000));
        assert_eq!(a.sources.named.len(), MAX_SOURCES);
        let largest = a.sources.largest();
        assert_eq!(largest[0].key.job, "big");
        assert_eq!(largest[0].counts.gpu_ms, 18_000);
        assert_eq!(largest[0].key.cluster, "c1");
        let t = a.sources.total();
        assert_eq!(t.records, 102);
        assert_eq!(t.gpu_ms, a.all().gpu_ms);
        assert_eq!(t.flop, a.all().flop);
        // Attributed records never become sources.
        let mut b = Aggregate::default();
        b.add_record(&rec("", 1));
        assert!(b.sources.is_empty());
    }

    #[test]
    fn aggregates_written_before_these_fields_still_read() {
        // An aggregate as the previous release stored it.
        let old = r#"{"stages":{"pretrain":{"flop":{"low":1,"central":2,"high":3},"gpu_ms":10,
            "energy_mj":5,"gpu_types":{},"methods":{},"records":1,"approximate_records":0,
            "unknown_peak_records":0,"first_event_unix_ms":1,"last_event_unix_ms":2}},
            "agents":1,"nodes":1}"#;
        let a: Aggregate = serde_json::from_str(old).unwrap();
        assert!(a.unestimated().is_empty());
        assert!(a.sources.is_empty() && a.clusters.is_empty());
        assert_eq!(a.all().flop.central, 2);
        // And what this release writes reads back the same.
        let mut n = Aggregate::default();
        n.add_record(&unestimated("unknown-gpu-no-peak", 5));
        n.add_record(&unattributed("7", 5));
        let back: Aggregate = serde_json::from_slice(&serde_json::to_vec(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn gpu_days_are_keyed_by_type_and_mig_profile() {
        let mut a = Aggregate::default();
        a.add_record(&rec("", 1));
        let mut mig = rec("", 1);
        mig.mig = Some(flopmeter_proto::v1::MigInstance {
            profile: "3g.40gb".into(),
            ..Default::default()
        });
        a.add_record(&mig);
        let mut odd = rec("", 1);
        odd.mig = Some(flopmeter_proto::v1::MigInstance {
            profile: "x".repeat(40),
            ..Default::default()
        });
        a.add_record(&odd);
        let keys: Vec<_> = a.all().gpu_types.keys().cloned().collect();
        assert_eq!(
            keys,
            ["h100-sxm", "h100-sxm/mig-3g.40gb", "h100-sxm/mig-other"]
        );
        // The stored shape is unchanged (a map from key to totals), so aggregates written
        // before MIG support, with plain type keys only, read exactly as before.
    }

    #[test]
    fn unattributed_when_no_model_or_flagged() {
        let mut r = rec("", 1);
        assert!(matches!(attribution(&r), Attribution::Run { .. }));
        r.identity.as_mut().unwrap().source = AttributionSource::Unattributed as i32;
        assert_eq!(attribution(&r), Attribution::Unattributed);
        r.identity = None;
        assert_eq!(attribution(&r), Attribution::Unattributed);
    }
}
