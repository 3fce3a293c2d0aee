//! Validation at the door: what makes a record unfit for any total.
//!
//! Pure: the collector's clock is a parameter (`now_unix_ms`), so every rule is tested
//! without waiting or faking time. A record that fails is quarantined, not applied, and the
//! agent's high-water mark moves past it (see `crate::ledger`): a bad record never
//! half-applies and never blocks the records behind it.

use std::collections::HashMap;
use std::fmt;

use flopmeter_core::agent_id::{AgentId, AgentIdError};
use flopmeter_core::catalogue::{self, CATALOGUE, GpuModel};
use flopmeter_core::utc::{MS_PER_DAY, MS_PER_HOUR};
use flopmeter_proto::v1::{GpuInventory, Hello, IntervalRecord, Method};

use crate::ledger::RecordRejection;

/// Why a record was quarantined. The tag is the `reason` of the Ack's `Rejection` and the
/// `reason` label of `flopmeter_ingest_rejected_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// FLOP above the GPU type's physical ceiling × interval × tolerance.
    FlopAbovePeak,
    /// End before start, an empty interval, or a start at or before the epoch.
    BadInterval,
    /// Interval longer than the configured maximum.
    IntervalTooLong,
    /// Event time too far ahead of the collector's clock.
    FutureEventTime,
    /// `low ≤ central ≤ high` violated.
    BandOrder,
    /// No catalogue entry and no operator-supplied peak: the ceiling cannot be checked.
    UnknownGpuType,
    /// More GPU time than the interval has.
    GpuTimeAboveInterval,
    /// Energy beyond any GPU's power over the interval.
    ImplausibleEnergy,
    /// Model, run, stage or GPU type too long or containing control characters.
    BadIdentity,
    /// A non-finite or out-of-range value (tensor activity outside 0..1).
    BadValue,
    /// The GPU is uncatalogued and the peak its agent declared for it is beyond any
    /// plausible GPU ([`MAX_OPERATOR_PEAK_FACTOR`]), so it cannot bound the record's FLOP.
    ImplausiblePeak,
    /// A record without an estimate (`METHOD_NONE`) carrying FLOP, without a reason, or
    /// with a reason that is not a bounded kebab-case tag; or a reason on an estimate.
    BadNoEstimate,
    /// A declared count (planned FLOP, parameters, tokens) that is not a whole number by
    /// the rule of `FlopAmount` (bad syntax, a fraction, an absurd exponent): a plan read
    /// wrong could start a legal clock, so the record waits in quarantine instead.
    BadDeclaration,
    /// The record names a GPU its agent's Hello did not declare: the ceiling check is per
    /// GPU, so GPUs made up on the spot would multiply a node's ceiling.
    UndeclaredGpu,
    /// Event time before the backfill window (`--backfill-window`): an agent with a wrong
    /// clock could otherwise write facts dated decades ago that can never be moved.
    EventTimeTooOld,
    /// Together with the records it overlaps on the same GPU of the same agent (other
    /// runs, other MIG instances, or the same work sent twice under new sequence numbers),
    /// more FLOP than the GPU's ceiling over their union allows. Decided by the ledger
    /// writer, which knows every record applied before (`crate::occupancy`).
    GpuOverlap,
    /// The record would start a new run (or model) beyond the agent's
    /// `--new-runs-per-agent-per-hour` (`crate::newruns`). Decided by the ledger writer.
    TooManyNewRuns,
}

impl RejectReason {
    /// Every reason, for metric initialisation and docs.
    pub const ALL: [RejectReason; 17] = [
        RejectReason::FlopAbovePeak,
        RejectReason::BadInterval,
        RejectReason::IntervalTooLong,
        RejectReason::FutureEventTime,
        RejectReason::BandOrder,
        RejectReason::UnknownGpuType,
        RejectReason::GpuTimeAboveInterval,
        RejectReason::ImplausibleEnergy,
        RejectReason::BadIdentity,
        RejectReason::BadValue,
        RejectReason::ImplausiblePeak,
        RejectReason::BadNoEstimate,
        RejectReason::BadDeclaration,
        RejectReason::UndeclaredGpu,
        RejectReason::EventTimeTooOld,
        RejectReason::GpuOverlap,
        RejectReason::TooManyNewRuns,
    ];

    /// The kebab-case tag.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::FlopAbovePeak => "flop-above-peak",
            RejectReason::BadInterval => "bad-interval",
            RejectReason::IntervalTooLong => "interval-too-long",
            RejectReason::FutureEventTime => "future-event-time",
            RejectReason::BandOrder => "band-order",
            RejectReason::UnknownGpuType => "unknown-gpu-type",
            RejectReason::GpuTimeAboveInterval => "gpu-time-above-interval",
            RejectReason::ImplausibleEnergy => "implausible-energy",
            RejectReason::BadIdentity => "bad-identity",
            RejectReason::BadValue => "bad-value",
            RejectReason::ImplausiblePeak => "implausible-peak",
            RejectReason::BadNoEstimate => "bad-no-estimate",
            RejectReason::BadDeclaration => "bad-declaration",
            RejectReason::UndeclaredGpu => "undeclared-gpu",
            RejectReason::EventTimeTooOld => "event-time-too-old",
            RejectReason::GpuOverlap => "gpu-overlap",
            RejectReason::TooManyNewRuns => "too-many-new-runs",
        }
    }

    /// The reason with this tag.
    pub fn parse(tag: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == tag)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits validation applies (from the collector's configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Factor over the physical ceiling a record may reach before rejection (clock
    /// overshoot, counter jitter): 1.05.
    pub peak_tolerance: f64,
    /// Longest interval a record may cover, ms.
    pub max_interval_ms: i64,
    /// How far ahead of the collector's clock an event may end, ms.
    pub max_future_ms: i64,
    /// Highest average power a GPU may draw over an interval, W (energy plausibility).
    pub max_gpu_watts: f64,
    /// How far behind the collector's clock an event may start, ms (`--backfill-window`):
    /// long enough for a spool that was offline for weeks.
    pub max_backfill_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            peak_tolerance: 1.05,
            max_interval_ms: MS_PER_HOUR,
            max_future_ms: 300_000,
            // Twice the highest board power in the catalogue (B200/GB200, ~1.2 kW).
            max_gpu_watts: 2_500.0,
            max_backfill_ms: DEFAULT_BACKFILL_DAYS * MS_PER_DAY,
        }
    }
}

/// Default backfill window, days: a node cut off for weeks (a spool of several GiB holds
/// months of records) still delivers, while a clock decades off is refused.
pub const DEFAULT_BACKFILL_DAYS: i64 = 90;

/// Longest model, run, stage or GPU-type name accepted.
pub const MAX_NAME_LEN: usize = 256;

/// Most MIG instances one GPU may declare (the largest GPUs have 7).
pub const MAX_MIG_INSTANCES: usize = 64;

/// Why a key name (model, run, stage, base model) is refused, if it is: bounded, and free
/// of control, bidirectional, invisible and look-alike characters, so two models that print
/// the same are the same model.
pub fn key_name_problem(s: &str) -> Option<String> {
    if s.len() > MAX_NAME_LEN {
        return Some(format!("is longer than {MAX_NAME_LEN} bytes"));
    }
    flopmeter_core::text::first_suspicious(s).map(|(at, c, why)| {
        format!(
            "has {why} (U+{:04X}) at byte {at}: names must print as what they are",
            u32::from(c)
        )
    })
}

/// A name usable as a ledger key part: bounded, no control characters (keys use NUL as a
/// separator).
pub fn valid_name(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control)
}

/// Longest `no_estimate_reason` accepted.
pub const MAX_REASON_LEN: usize = 64;

/// A `no_estimate_reason`: lower-case words of letters and digits joined by single hyphens
/// (`unknown-gpu-no-peak`), at most [`MAX_REASON_LEN`] bytes. It becomes a ledger key and a
/// metric label, so it is held to a tag's shape.
pub fn valid_reason(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REASON_LEN
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Most GPUs one Hello may declare: far above any node, so only a hostile or broken agent
/// meets it, and it bounds what one Hello writes into the agents table.
pub const MAX_GPUS_PER_HELLO: usize = 4096;

/// An operator-supplied peak above this multiple of the catalogue's fastest BF16 dense peak
/// is not believed: a typo or a hostile agent could otherwise declare a peak that lets any
/// FLOP figure through the ceiling check.
pub const MAX_OPERATOR_PEAK_FACTOR: f64 = 10.0;

/// The highest operator-supplied BF16 peak believed, TFLOP/s.
pub fn max_operator_peak_tflops() -> f64 {
    let fastest = CATALOGUE
        .iter()
        .filter_map(|m| m.peaks.bf16)
        .fold(0.0, f64::max);
    fastest * MAX_OPERATOR_PEAK_FACTOR
}

/// Why a Hello is refused (`bad-hello`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The agent id breaks [`AgentId`]'s rule (the rule the agent and `certs dev` apply).
    #[error("Hello.agent_id: {0}")]
    AgentId(#[from] AgentIdError),
    /// A string is longer than [`MAX_NAME_LEN`] or has control characters.
    #[error("Hello.{field} must be at most {MAX_NAME_LEN} bytes, no control characters")]
    BadString {
        /// Where it is (`node`, `gpus[0].uuid`, ...).
        field: String,
    },
    /// More GPUs than [`MAX_GPUS_PER_HELLO`].
    #[error("Hello declares {0} GPUs, more than the {MAX_GPUS_PER_HELLO} a node may have")]
    TooManyGpus(usize),
    /// A GPU with more MIG instances than [`MAX_MIG_INSTANCES`].
    #[error(
        "Hello.gpus[{gpu}] declares {count} MIG instances, more than the {MAX_MIG_INSTANCES} a \
         GPU may have"
    )]
    TooManyMigInstances {
        /// The GPU's index in the Hello.
        gpu: usize,
        /// How many it declared.
        count: usize,
    },
}

/// Checks a Hello before the agent is let in, and returns its agent id. Every string it
/// carries ends up in the agents table and the API, so each is bounded and free of control
/// characters (a terminal escape in a GPU name would reach an operator's terminal through
/// `flopmeter agents`); the agent id follows [`AgentId`]'s rule, so an agent the collector
/// accepts can always be given a certificate for mutual TLS.
pub fn check_hello(hello: &Hello) -> Result<AgentId, HelloError> {
    let agent_id = AgentId::parse(&hello.agent_id)?;
    let bad = |field: String| Err(HelloError::BadString { field });
    for (what, v) in [
        ("node", &hello.node),
        ("cluster", &hello.cluster),
        ("software_version", &hello.software_version),
        ("driver_version", &hello.driver_version),
        ("nvml_version", &hello.nvml_version),
    ] {
        if !valid_name(v) {
            return bad(what.to_string());
        }
    }
    if hello.gpus.len() > MAX_GPUS_PER_HELLO {
        return Err(HelloError::TooManyGpus(hello.gpus.len()));
    }
    for (i, g) in hello.gpus.iter().enumerate() {
        for (what, v) in [
            ("uuid", &g.uuid),
            ("name", &g.name),
            ("catalogue_id", &g.catalogue_id),
            ("name_catalogue_id", &g.name_catalogue_id),
        ] {
            if !valid_name(v) {
                return bad(format!("gpus[{i}].{what}"));
            }
        }
        if g.mig_instances.len() > MAX_MIG_INSTANCES {
            return Err(HelloError::TooManyMigInstances {
                gpu: i,
                count: g.mig_instances.len(),
            });
        }
        for (j, m) in g.mig_instances.iter().enumerate() {
            for (what, v) in [("uuid", &m.uuid), ("profile", &m.profile)] {
                if !valid_name(v) {
                    return bad(format!("gpus[{i}].mig_instances[{j}].{what}"));
                }
            }
        }
    }
    Ok(agent_id)
}

/// The GPUs an agent declared in its Hello: which physical GPUs its records may name, and
/// the operator-supplied peaks of uncatalogued devices.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    declared: std::collections::HashSet<String>,
    operator_peaks: HashMap<String, f64>,
    /// Declared peaks beyond [`max_operator_peak_tflops`], kept to say why records on
    /// those GPUs are quarantined.
    implausible_peaks: HashMap<String, f64>,
    /// GPUs whose NVML name names another catalogue model than their PCI id
    /// (`name_catalogue_id`): their records' high bound covers the faster of the two, so the
    /// ceiling does too.
    name_models: HashMap<String, String>,
}

impl Inventory {
    /// From a Hello's GPU list.
    pub fn from_hello(gpus: &[GpuInventory]) -> Inventory {
        let max = max_operator_peak_tflops();
        let mut inv = Inventory::default();
        for g in gpus {
            inv.declared.insert(g.uuid.clone());
            if !g.name_catalogue_id.is_empty() {
                inv.name_models
                    .insert(g.uuid.clone(), g.name_catalogue_id.clone());
            }
            let p = g.operator_peak_tflops;
            if p.is_finite() && p > 0.0 && p <= max {
                inv.operator_peaks.insert(g.uuid.clone(), p);
            } else if p != 0.0 {
                inv.implausible_peaks.insert(g.uuid.clone(), p);
            }
        }
        inv
    }

    /// Whether the Hello declared this physical GPU.
    pub fn declares(&self, gpu_uuid: &str) -> bool {
        self.declared.contains(gpu_uuid)
    }

    /// The ceiling in FLOP/s of the GPU a record ran on: the catalogue's for a catalogued
    /// type (the larger of the two when the GPU's name and PCI id name different models),
    /// else the operator-supplied peak the Hello declared for that GPU.
    pub fn ceiling_flop_per_s(&self, rec: &IntervalRecord) -> Option<f64> {
        if !rec.gpu_type.is_empty()
            && let Some(m) = catalogue::find(&rec.gpu_type)
        {
            let by_name = self
                .name_models
                .get(&rec.gpu_uuid)
                .and_then(|id| catalogue::find(id))
                .map_or(0.0, |n| n.ceiling_flop_per_s());
            return Some(m.ceiling_flop_per_s().max(by_name));
        }
        self.operator_peaks
            .get(&rec.gpu_uuid)
            .map(|&p| GpuModel::operator_supplied(p).ceiling_flop_per_s())
    }
}

/// Checks one record. `None` means it may be applied.
pub fn check_record(
    rec: &IntervalRecord,
    inventory: &Inventory,
    limits: &Limits,
    now_unix_ms: i64,
) -> Option<(RejectReason, String)> {
    let reject = |r: RejectReason, d: String| Some((r, d));
    let bad_name = |what: &str| {
        reject(
            RejectReason::BadIdentity,
            format!("{what} is longer than {MAX_NAME_LEN} bytes or has control characters"),
        )
    };
    // Every string is checked, not only the key parts: the others are stored with the run
    // (job, namespace, base model) and shown by the API and the CLI.
    if let Some(id) = &rec.identity {
        for (what, v) in [
            ("namespace", &id.namespace),
            ("job", &id.job),
            ("cluster", &id.cluster),
            ("user", &id.user),
            ("process", &id.process),
        ] {
            if !valid_name(v) {
                return bad_name(what);
            }
        }
        // Key names: what makes two models one, so nothing in them may print as something
        // else.
        for (what, v) in [("model", &id.model), ("run", &id.run), ("stage", &id.stage)] {
            if let Some(p) = key_name_problem(v) {
                return reject(RejectReason::BadIdentity, format!("{what} {p}"));
            }
        }
    }
    if let Some(d) = &rec.declaration {
        for (what, v) in [
            ("declaration.planned_flop", &d.planned_flop),
            ("declaration.params", &d.params),
            ("declaration.tokens", &d.tokens),
        ] {
            if !valid_name(v) {
                return bad_name(what);
            }
        }
        if let Some(p) = key_name_problem(&d.base_model) {
            return reject(
                RejectReason::BadIdentity,
                format!("declaration.base_model {p}"),
            );
        }
    }
    // `no_estimate_reason` is checked with the rest of its shape below (`bad-no-estimate`).
    if let Some(m) = &rec.mig {
        for (what, v) in [("mig.uuid", &m.uuid), ("mig.profile", &m.profile)] {
            if !valid_name(v) {
                return bad_name(what);
            }
        }
    }
    if let Some(d) = &rec.declaration
        && let Err(e) = flopmeter_proto::convert::declaration_from_wire(d)
    {
        return reject(RejectReason::BadDeclaration, e.to_string());
    }
    if !valid_name(&rec.gpu_type) {
        return bad_name("gpu_type");
    }
    if !valid_name(&rec.gpu_uuid) {
        return bad_name("gpu_uuid");
    }
    let no_estimate = rec.method() == Method::None;
    if no_estimate || !rec.no_estimate_reason.is_empty() {
        let bad = |d: String| reject(RejectReason::BadNoEstimate, d);
        if !no_estimate {
            return bad(format!(
                "no_estimate_reason {:?} is set on a record with method {:?}: a record either \
                 has an estimate or says why not (METHOD_NONE)",
                rec.no_estimate_reason.chars().take(80).collect::<String>(),
                rec.method()
            ));
        }
        if !valid_reason(&rec.no_estimate_reason) {
            return bad(format!(
                "a record without an estimate (METHOD_NONE) needs no_estimate_reason as a \
                 kebab-case tag of at most {MAX_REASON_LEN} bytes (e.g. unknown-gpu-no-peak), \
                 got {:?}",
                rec.no_estimate_reason.chars().take(80).collect::<String>()
            ));
        }
        if rec.flop_low != 0 || rec.flop_central != 0 || rec.flop_high != 0 {
            return bad(format!(
                "a record without an estimate (METHOD_NONE, {}) must carry 0 FLOP, got low {} \
                 central {} high {}",
                rec.no_estimate_reason, rec.flop_low, rec.flop_central, rec.flop_high
            ));
        }
    }
    if !inventory.declares(&rec.gpu_uuid) {
        return reject(
            RejectReason::UndeclaredGpu,
            format!(
                "GPU {:?} is not among the GPUs the agent's Hello declared; an agent reports \
                 only the physical GPUs of its node (a MIG instance's record names its parent \
                 GPU)",
                rec.gpu_uuid
            ),
        );
    }
    let interval_ms = rec.end_unix_ms.saturating_sub(rec.start_unix_ms);
    if rec.start_unix_ms <= 0 || interval_ms <= 0 {
        return reject(
            RejectReason::BadInterval,
            format!(
                "interval [{}, {}] ms is empty, negative or before the epoch",
                rec.start_unix_ms, rec.end_unix_ms
            ),
        );
    }
    if interval_ms > limits.max_interval_ms {
        return reject(
            RejectReason::IntervalTooLong,
            format!(
                "interval of {interval_ms} ms exceeds the maximum of {} ms",
                limits.max_interval_ms
            ),
        );
    }
    if rec.end_unix_ms > now_unix_ms.saturating_add(limits.max_future_ms) {
        return reject(
            RejectReason::FutureEventTime,
            format!(
                "interval ends {} ms after the collector's clock (at most {} ms allowed)",
                rec.end_unix_ms - now_unix_ms,
                limits.max_future_ms
            ),
        );
    }
    if rec.start_unix_ms < now_unix_ms.saturating_sub(limits.max_backfill_ms) {
        return reject(
            RejectReason::EventTimeTooOld,
            format!(
                "interval starts {} days before the collector's clock, beyond the backfill \
                 window of {} days (--backfill-window); check the agent's clock",
                (now_unix_ms - rec.start_unix_ms) / MS_PER_DAY,
                limits.max_backfill_ms / MS_PER_DAY
            ),
        );
    }
    if !(rec.flop_low <= rec.flop_central && rec.flop_central <= rec.flop_high) {
        return reject(
            RejectReason::BandOrder,
            format!(
                "FLOP band out of order: low {} central {} high {}",
                rec.flop_low, rec.flop_central, rec.flop_high
            ),
        );
    }
    if !rec.mean_tensor_util.is_finite() || !(0.0..=1.0).contains(&rec.mean_tensor_util) {
        return reject(
            RejectReason::BadValue,
            format!(
                "tensor activity {} is not within 0..1",
                rec.mean_tensor_util
            ),
        );
    }
    // A little slack for clock jitter between the agent's interval ends and its GPU-time
    // accounting; real overshoot is far larger.
    if rec.gpu_ms as f64 > interval_ms as f64 * limits.peak_tolerance {
        return reject(
            RejectReason::GpuTimeAboveInterval,
            format!("{} GPU-ms in an interval of {interval_ms} ms", rec.gpu_ms),
        );
    }
    let seconds = interval_ms as f64 / 1000.0;
    let max_mj = limits.max_gpu_watts * seconds * 1000.0;
    if rec.energy_mj as f64 > max_mj {
        return reject(
            RejectReason::ImplausibleEnergy,
            format!(
                "{} mJ in {seconds} s is more than {} W",
                rec.energy_mj, limits.max_gpu_watts
            ),
        );
    }
    if no_estimate {
        // 0 FLOP, checked above: there is nothing for a peak to bound, and an unknown GPU
        // without a peak is exactly the work such records exist for.
        return None;
    }
    let Some(ceiling) = inventory.ceiling_flop_per_s(rec) else {
        if let Some(p) = inventory.implausible_peaks.get(&rec.gpu_uuid) {
            return reject(
                RejectReason::ImplausiblePeak,
                format!(
                    "GPU {:?} is not in the catalogue and the peak its agent declared, {p} \
                     TFLOP/s, is not plausible (at most {} TFLOP/s is believed)",
                    rec.gpu_uuid,
                    max_operator_peak_tflops()
                ),
            );
        }
        return reject(
            RejectReason::UnknownGpuType,
            format!(
                "GPU type {:?} is not in the catalogue and the agent declared no operator peak \
                 for GPU {:?}",
                rec.gpu_type, rec.gpu_uuid
            ),
        );
    };
    let max_flop = ceiling * seconds * limits.peak_tolerance;
    if rec.flop_high as f64 > max_flop {
        return reject(
            RejectReason::FlopAbovePeak,
            format!(
                "{:.3e} FLOP in {seconds} s exceeds the physical ceiling of {} ({:.3e} FLOP/s \
                 × {} tolerance = {max_flop:.3e})",
                rec.flop_high as f64,
                if rec.gpu_type.is_empty() {
                    "the GPU"
                } else {
                    &rec.gpu_type
                },
                ceiling,
                limits.peak_tolerance
            ),
        );
    }
    None
}

/// [`check_record`] as the ledger's verdict.
pub fn verdict(
    rec: &IntervalRecord,
    inventory: &Inventory,
    limits: &Limits,
    now_unix_ms: i64,
) -> Option<RecordRejection> {
    check_record(rec, inventory, limits, now_unix_ms).map(|(r, detail)| RecordRejection {
        reason: r.as_str().to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    fn good() -> IntervalRecord {
        IntervalRecord {
            seq: 1,
            start_unix_ms: NOW - 10_000,
            end_unix_ms: NOW,
            gpu_uuid: "GPU-1".into(),
            gpu_type: "h100-sxm".into(),
            flop_low: 3_000_000_000_000_000,
            flop_central: 4_000_000_000_000_000,
            flop_high: 8_000_000_000_000_000,
            gpu_ms: 10_000,
            energy_mj: 7_000_000,
            mean_tensor_util: 0.4,
            ..Default::default()
        }
    }

    #[test]
    fn a_gpu_whose_name_names_a_faster_model_is_bounded_by_the_faster_ceiling() {
        // A GB200 name on the H100 SXM's PCI id: the agent's high bound covers the GB200's
        // peak, so the ceiling must too, or honest records would be quarantined.
        let h100 = catalogue::find("h100-sxm").unwrap().ceiling_flop_per_s();
        let gb200 = catalogue::find("gb200").unwrap().ceiling_flop_per_s();
        assert!(gb200 > 1.5 * h100);
        let mut r = good();
        r.flop_high = (h100 * 10.0 * 1.2) as u64;
        r.flop_central = r.flop_low;
        assert_eq!(
            check_record(&r, &inv(), &Limits::default(), NOW).map(|x| x.0),
            Some(RejectReason::FlopAbovePeak)
        );
        let named = Inventory::from_hello(&[GpuInventory {
            uuid: "GPU-1".into(),
            catalogue_id: "h100-sxm".into(),
            name_catalogue_id: "gb200".into(),
            ..Default::default()
        }]);
        assert_eq!(check_record(&r, &named, &Limits::default(), NOW), None);
    }

    /// The Hello of the agent every test record comes from: one H100, `GPU-1`.
    fn inv() -> Inventory {
        Inventory::from_hello(&[GpuInventory {
            uuid: "GPU-1".into(),
            catalogue_id: "h100-sxm".into(),
            ..Default::default()
        }])
    }

    fn reason(rec: &IntervalRecord) -> Option<RejectReason> {
        check_record(rec, &inv(), &Limits::default(), NOW).map(|(r, _)| r)
    }

    #[test]
    fn each_rule() {
        assert_eq!(reason(&good()), None);
        let mut r = good();
        let h100 = catalogue::find("h100-sxm").unwrap().ceiling_flop_per_s();
        r.flop_high = (h100 * 10.0 * 1.05 * 1.01) as u64;
        assert_eq!(reason(&r), Some(RejectReason::FlopAbovePeak));
        let mut r = good();
        r.end_unix_ms = r.start_unix_ms - 1;
        assert_eq!(reason(&r), Some(RejectReason::BadInterval));
        let mut r = good();
        r.start_unix_ms = r.end_unix_ms - 3_600_001;
        assert_eq!(reason(&r), Some(RejectReason::IntervalTooLong));
        let mut r = good();
        r.start_unix_ms += 400_000;
        r.end_unix_ms += 400_000;
        assert_eq!(reason(&r), Some(RejectReason::FutureEventTime));
        let mut r = good();
        r.flop_low = r.flop_high + 1;
        assert_eq!(reason(&r), Some(RejectReason::BandOrder));
        let mut r = good();
        r.gpu_type = "x999".into();
        assert_eq!(reason(&r), Some(RejectReason::UnknownGpuType));
        let mut r = good();
        r.gpu_ms = 20_000;
        assert_eq!(reason(&r), Some(RejectReason::GpuTimeAboveInterval));
        let mut r = good();
        r.energy_mj = 100_000_000;
        assert_eq!(reason(&r), Some(RejectReason::ImplausibleEnergy));
        let mut r = good();
        r.mean_tensor_util = f64::NAN;
        assert_eq!(reason(&r), Some(RejectReason::BadValue));
        let mut r = good();
        r.gpu_uuid = "GPU-never-declared".into();
        assert_eq!(reason(&r), Some(RejectReason::UndeclaredGpu));
        // The backfill window: 90 days back is fine, a day more is not.
        let day = 86_400_000;
        let mut r = good();
        r.start_unix_ms = NOW - 90 * day + 1;
        r.end_unix_ms = r.start_unix_ms + 10_000;
        assert_eq!(reason(&r), None);
        r.start_unix_ms = NOW - 91 * day;
        r.end_unix_ms = r.start_unix_ms + 10_000;
        assert_eq!(reason(&r), Some(RejectReason::EventTimeTooOld));
        let (_, detail) = check_record(&r, &inv(), &Limits::default(), NOW).unwrap();
        assert!(detail.contains("--backfill-window"), "{detail}");
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn work_without_an_estimate_is_accepted_only_in_its_own_shape() {
        let none = || {
            let mut r = good();
            (r.flop_low, r.flop_central, r.flop_high) = (0, 0, 0);
            r.method = Method::None as i32;
            r.no_estimate_reason = "unknown-gpu-no-peak".into();
            // An uncatalogued GPU without an operator peak: nothing to check FLOP against,
            // and nothing to check.
            r.gpu_type.clear();
            r
        };
        assert_eq!(reason(&none()), None);
        let mut r = none();
        r.flop_high = 1;
        assert_eq!(reason(&r), Some(RejectReason::BadNoEstimate));
        for bad in [
            "",
            "Unknown",
            "no_peak",
            "-x",
            "a--b",
            "x\u{1b}[2J",
            &"a".repeat(65),
        ] {
            let mut r = none();
            r.no_estimate_reason = bad.into();
            assert_eq!(reason(&r), Some(RejectReason::BadNoEstimate), "{bad:?}");
        }
        let mut r = good();
        r.no_estimate_reason = "no-activity-reading".into();
        assert_eq!(reason(&r), Some(RejectReason::BadNoEstimate));
        // The other rules still hold: GPU time and energy are real measurements.
        let mut r = none();
        r.gpu_ms = 20_000;
        assert_eq!(reason(&r), Some(RejectReason::GpuTimeAboveInterval));
        let mut r = none();
        r.energy_mj = 100_000_000;
        assert_eq!(reason(&r), Some(RejectReason::ImplausibleEnergy));
    }

    #[test]
    fn every_string_is_bounded() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let mut r = good();
        r.gpu_uuid = long.clone();
        assert_eq!(reason(&r), Some(RejectReason::BadIdentity));
        let mut r = good();
        r.identity = Some(flopmeter_proto::v1::WorkloadIdentity {
            model: "m".into(),
            job: "job\u{1b}[2J".into(),
            ..Default::default()
        });
        assert_eq!(reason(&r), Some(RejectReason::BadIdentity));
        let mut r = good();
        r.declaration = Some(flopmeter_proto::v1::WorkloadDeclaration {
            base_model: long.clone(),
            ..Default::default()
        });
        assert_eq!(reason(&r), Some(RejectReason::BadIdentity));

        // Key names may not hide what they are; other strings only need to be bounded.
        for bad in [
            "llama\u{2011}70b",
            "llama\u{200b}",
            "\u{202e}amall",
            "llama\u{a0}70b",
        ] {
            let mut r = good();
            r.identity = Some(flopmeter_proto::v1::WorkloadIdentity {
                model: bad.into(),
                ..Default::default()
            });
            assert_eq!(reason(&r), Some(RejectReason::BadIdentity), "{bad:?}");
        }
        let mut r = good();
        r.identity = Some(flopmeter_proto::v1::WorkloadIdentity {
            model: "模型-7b".into(),
            job: "train – v2".into(),
            ..Default::default()
        });
        assert_eq!(reason(&r), None);
        // A reason is a kebab-case tag: a terminal escape is refused with the rest of its shape.
        let mut r = good();
        r.no_estimate_reason = "x\u{1b}]0;t\u{7}".into();
        assert_eq!(reason(&r), Some(RejectReason::BadNoEstimate));
        for f in [
            |r: &mut IntervalRecord| {
                r.mig = Some(flopmeter_proto::v1::MigInstance {
                    profile: "1g\n10gb".into(),
                    ..Default::default()
                })
            },
            |r: &mut IntervalRecord| {
                r.identity = Some(flopmeter_proto::v1::WorkloadIdentity {
                    user: "u".repeat(MAX_NAME_LEN + 1),
                    ..Default::default()
                })
            },
        ] {
            let mut r = good();
            f(&mut r);
            assert_eq!(reason(&r), Some(RejectReason::BadIdentity));
        }

        let hello = |f: &dyn Fn(&mut Hello)| {
            let mut h = Hello {
                agent_id: "a".into(),
                gpus: vec![GpuInventory::default()],
                ..Default::default()
            };
            f(&mut h);
            check_hello(&h)
        };
        assert_eq!(hello(&|_| ()).map(String::from), Ok("a".to_string()));
        assert!(hello(&|h| h.agent_id.clear()).is_err());
        // The agent's rule, not only "no control characters": no certificate names these.
        for id in ["node a", "node:1", "10.0.0.1", "node."] {
            let e = hello(&|h| h.agent_id = id.into()).unwrap_err();
            assert!(matches!(e, HelloError::AgentId(_)), "{id}: {e}");
            assert!(e.to_string().starts_with("Hello.agent_id: "), "{e}");
        }
        assert!(hello(&|h| h.software_version = long.clone()).is_err());
        assert!(hello(&|h| h.cluster = "c\n1".into()).is_err());
        let mut r = good();
        r.identity = Some(flopmeter_proto::v1::WorkloadIdentity {
            process: "py\u{7}".into(),
            ..Default::default()
        });
        assert_eq!(reason(&r), Some(RejectReason::BadIdentity));
        assert!(hello(&|h| h.gpus[0].name = "H100\u{7}".into()).is_err());
        assert!(
            hello(&|h| h.gpus = vec![GpuInventory::default(); MAX_GPUS_PER_HELLO + 1]).is_err()
        );
        assert!(hello(&|h| h.cluster = "c\u{1b}".into()).is_err());
        assert!(
            hello(&|h| h.gpus[0].mig_instances = vec![Default::default(); MAX_MIG_INSTANCES + 1])
                .is_err()
        );
        assert!(
            hello(
                &|h| h.gpus[0].mig_instances = vec![flopmeter_proto::v1::MigInstance {
                    uuid: "MIG-\u{7}".into(),
                    ..Default::default()
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn an_implausible_operator_peak_bounds_nothing() {
        let inv = Inventory::from_hello(&[GpuInventory {
            uuid: "GPU-1".into(),
            operator_peak_tflops: max_operator_peak_tflops() * 1.01,
            ..Default::default()
        }]);
        let mut r = good();
        r.gpu_type.clear();
        assert_eq!(
            check_record(&r, &inv, &Limits::default(), NOW).map(|x| x.0),
            Some(RejectReason::ImplausiblePeak)
        );
        for p in [f64::NAN, f64::INFINITY, -1.0] {
            let inv = Inventory::from_hello(&[GpuInventory {
                uuid: "GPU-1".into(),
                operator_peak_tflops: p,
                ..Default::default()
            }]);
            assert_eq!(
                check_record(&r, &inv, &Limits::default(), NOW).map(|x| x.0),
                Some(RejectReason::ImplausiblePeak)
            );
        }
    }

    #[test]
    fn uncatalogued_gpu_uses_the_operator_peak() {
        let inv = Inventory::from_hello(&[GpuInventory {
            uuid: "GPU-1".into(),
            operator_peak_tflops: 400.0,
            ..Default::default()
        }]);
        let mut r = good();
        r.gpu_type.clear();
        let limit = GpuModel::operator_supplied(400.0).ceiling_flop_per_s() * 10.0 * 1.05;
        r.flop_low = 1;
        r.flop_central = 2;
        r.flop_high = (limit * 0.99) as u64;
        assert_eq!(check_record(&r, &inv, &Limits::default(), NOW), None);
        r.flop_high = (limit * 1.01) as u64;
        assert_eq!(
            check_record(&r, &inv, &Limits::default(), NOW).map(|x| x.0),
            Some(RejectReason::FlopAbovePeak)
        );
        r.gpu_uuid = "GPU-other".into();
        assert_eq!(
            check_record(&r, &inv, &Limits::default(), NOW).map(|x| x.0),
            Some(RejectReason::UndeclaredGpu)
        );
        let inv = Inventory::from_hello(&[
            GpuInventory {
                uuid: "GPU-1".into(),
                operator_peak_tflops: 400.0,
                ..Default::default()
            },
            GpuInventory {
                uuid: "GPU-other".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(
            check_record(&r, &inv, &Limits::default(), NOW).map(|x| x.0),
            Some(RejectReason::UnknownGpuType)
        );
    }
}
