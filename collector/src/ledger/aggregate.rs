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

use std::collections::BTreeMap;

use flopmeter_core::stage::{Stage, StagePolicy};
use flopmeter_core::units::{FlopBand, FlopTotal};
use flopmeter_proto::convert::method_from_wire;
use flopmeter_proto::v1::{AttributionSource, IntervalRecord};
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
}

impl StageTotals {
    /// Adds one record.
    pub fn add_record(&mut self, rec: &IntervalRecord) {
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
        self.records += 1;
        self.approximate_records += u64::from(rec.approximate);
        self.unknown_peak_records += u64::from(rec.unknown_peak);
        self.widen_period(Some(rec.start_unix_ms), Some(rec.end_unix_ms));
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
}

impl Aggregate {
    /// Adds one record under its stage.
    pub fn add_record(&mut self, rec: &IntervalRecord) {
        self.stages
            .entry(stage_of(rec))
            .or_default()
            .add_record(rec);
    }

    /// Adds another aggregate's stage totals (not its agent and node counts, which are
    /// distinct counts and do not add).
    pub fn merge_stages(&mut self, other: &Aggregate) {
        for (stage, t) in &other.stages {
            self.stages.entry(stage.clone()).or_default().merge(t);
        }
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
