//! The sampler: reads the GPUs every sample interval, estimates FLOP, attributes it to runs,
//! and every report interval turns what it accumulated into interval records in the spool.
//!
//! Why it is a plain blocking loop on its own thread: NVML calls block (a GPU falling off the
//! bus can stall a call for seconds), and an async worker stuck in NVML would stall the
//! shipper and the metrics endpoint with it.
//!
//! Per tick and GPU: the reading's interval is estimated by the core estimator (per distinct
//! declared precision of the processes on the GPU), energy comes from the NVML counter via
//! [`EnergyCounter`], and the GPU's processes split both by their SM share. The results are
//! added to one accumulator per (run identity, GPU, method, precision). At a report boundary
//! each accumulator becomes one record. FLOP is rounded once per tick and share, and summed as
//! integers from then on.
//!
//! Back-pressure: when the spool refuses (full, or a disk error), the accumulators are kept
//! and keep growing in *time*, not in number: the next boundary retries with records that
//! cover the longer interval. Once an interval spans `max_record_span` (the collector rejects
//! longer records) its records are closed into a held queue and a new interval starts, so
//! memory grows by one record per (run, GPU) per span. Past `max_held_records` the records
//! are written past the spool's cap rather than dropped: the hard ceiling on what the sampler
//! holds is `max_held_records` records plus the open interval's one per (run, GPU).
//!
//! Replay mode ([`Replay`], tests and demos only) runs on a virtual clock and makes the
//! records a pure function of the workload and the virtual span, whatever crashes happen:
//! each report boundary's records are appended together with the boundary's event time
//! ([`Spool::append_replay`]), a restarted agent resumes its clock from that position, a
//! partial interval is never flushed (it is redone after a restart), and a full spool pauses
//! virtual time instead of holding records, so interval boundaries never move. Time that
//! stands still while the collector is away is exactly back-pressure without loss.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flopmeter_core::catalogue::GpuModel;
use flopmeter_core::energy::{EnergyCounter, EnergySource};
use flopmeter_core::estimator::{self, MigSlice};
use flopmeter_core::units::{FlopBand, Method, Precision};
use flopmeter_proto::v1;

use crate::attribution::{Attribution, Attributor, Source};
use crate::clock::{Clock, StopSignal};
use crate::gpu::{
    self, GpuInfo, GpuProcess, GpuSource, GpuStatus, IntervalSummary, Inventory, MigReading, Tick,
};
use crate::metrics::AgentMetrics;
use crate::spool::{Spool, SpoolError};

/// Sampler settings.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Time between GPU reads.
    pub sample_interval: Duration,
    /// Time between records.
    pub report_interval: Duration,
    /// Records (held and open) kept in memory while the spool refuses, before they are
    /// written past its cap.
    pub max_held_records: usize,
    /// The longest interval one record may cover while the spool refuses (the collector
    /// rejects records longer than its `--max-interval`, 1 h by default).
    pub max_record_span: Duration,
    /// BF16 dense peak (TFLOP/s) to use for GPUs the catalogue does not know.
    pub unknown_gpu_peak_tflops: Option<f64>,
    /// Replay mode; `None` with the real clock.
    pub replay: Option<Replay>,
}

/// Replay mode (see the module docs): for a sampler on a [`crate::clock::VirtualClock`]
/// started at the spool's [`Spool::virtual_pos`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    /// Event time (Unix ms) at which sampling ends: the report interval that reaches it is
    /// the last one.
    pub stop_unix_ms: Option<i64>,
    /// Hold records in memory when the spool is full, as with the real clock, instead of
    /// pausing virtual time (to exercise the memory ceiling quickly).
    pub hold_when_full: bool,
}

/// Why [`Sampler::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop signal was raised.
    Stopped,
    /// Replay mode reached its stop time and spooled its last interval.
    ReplayDone,
}

/// Records per spool write when many are written at once (see `Sampler::append_chunked`).
const SPOOL_CHUNK: usize = 256;

/// How long a paused replay sampler waits (real time) between retries of a full spool.
const FULL_RETRY: Duration = Duration::from_millis(100);

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            sample_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(10),
            max_held_records: 10_000,
            max_record_span: Duration::from_secs(30 * 60),
            unknown_gpu_peak_tflops: None,
            replay: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    who: Arc<Attribution>,
    gpu: u32,
    /// The MIG instance's UUID, for a GPU in MIG mode.
    mig: Option<Arc<str>>,
    method: Method,
    precision: Precision,
    precision_declared: bool,
    /// Why there is no estimate (`Method::None`).
    no_estimate: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Acc {
    uuid: String,
    gpu_type: &'static str,
    unknown_peak: bool,
    peak_conflict: bool,
    energy_from_power: bool,
    mig: Option<v1::MigInstance>,
    low: u64,
    central: u64,
    high: u64,
    gpu_ms: f64,
    energy_mj: f64,
    clock_mhz_s: f64,
    clock_s: f64,
    tensor_s: f64,
    seconds: f64,
    approximate: bool,
    start_ms: i64,
    end_ms: i64,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Nothing to write.
    Empty,
    /// `n` records written.
    Written(usize),
    /// The spool refused; the accumulators are held and retried at the next boundary.
    Held,
}

/// The accumulating state of the sampler. [`Sampler::run`] drives it from a [`GpuSource`];
/// [`Sampler::tick`] and [`Sampler::flush`] are public so benchmarks and tests can drive it
/// step by step.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    attributor: Attributor,
    spool: Arc<Spool>,
    metrics: Arc<AgentMetrics>,
    energy: HashMap<u32, EnergyCounter>,
    open: HashMap<Key, Acc>,
    held: Vec<v1::IntervalRecord>,
    run_flop: HashMap<[String; 3], f64>,
    operator_model: Option<Arc<GpuModel>>,
    warned: HashSet<(u32, &'static str)>,
    last_method: HashMap<u32, &'static str>,
}

impl Sampler {
    /// A sampler writing to `spool`.
    pub fn new(
        cfg: SamplerConfig,
        attributor: Attributor,
        spool: Arc<Spool>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        let operator_model = cfg
            .unknown_gpu_peak_tflops
            .map(|p| Arc::new(GpuModel::operator_supplied(p)));
        Sampler {
            cfg,
            attributor,
            spool,
            metrics,
            energy: HashMap::new(),
            open: HashMap::new(),
            held: Vec::new(),
            run_flop: HashMap::new(),
            operator_model,
            warned: HashSet::new(),
            last_method: HashMap::new(),
        }
    }

    /// Samples until `stop` is raised, then flushes the partial interval into the spool
    /// (replay mode: until its stop time, and a partial interval is left to be redone).
    /// `inventory` receives the source's inventory at start and whenever it changes (the
    /// shipper's hello carries it).
    pub fn run(
        &mut self,
        source: &mut dyn GpuSource,
        clock: &dyn Clock,
        stop: &StopSignal,
        inventory: &tokio::sync::watch::Sender<Option<Inventory>>,
    ) -> RunEnd {
        let replay = self.cfg.replay;
        if let Some(end) = replay.and_then(|r| r.stop_unix_ms)
            && clock.now_unix_ms() >= end
        {
            return RunEnd::ReplayDone;
        }
        let sample = self.cfg.sample_interval.max(Duration::from_millis(1));
        let report = self.cfg.report_interval.max(sample);
        let start = clock.monotonic();
        let mut next_tick = start;
        let mut next_report = start + report;
        let mut report_start_ms = clock.now_unix_ms();
        loop {
            if !clock.sleep_until(next_tick, stop) {
                break;
            }
            let now = clock.monotonic();
            let tick = source.read(now);
            let now_ms = clock.now_unix_ms();
            if inventory.borrow().as_ref() != Some(source.inventory()) {
                inventory.send_replace(Some(source.inventory().clone()));
            }
            self.tick(source.inventory(), &tick, now_ms);
            if clock.monotonic() >= next_report {
                let outcome = self.report(report_start_ms, now_ms, false);
                if outcome == FlushOutcome::Held
                    && replay.is_some_and(|r| !r.hold_when_full)
                    && !self.wait_for_room(now_ms, stop)
                {
                    return RunEnd::Stopped;
                }
                report_start_ms = now_ms;
                while next_report <= clock.monotonic() {
                    next_report += report;
                }
                if let Some(end) = replay.and_then(|r| r.stop_unix_ms)
                    && now_ms >= end
                {
                    return RunEnd::ReplayDone;
                }
            }
            next_tick += sample;
            let after = clock.monotonic();
            while next_tick <= after {
                // The tick took longer than the interval: skip the deadlines it missed
                // rather than bursting to catch up, and count them.
                self.metrics.sampler_overruns_total.inc();
                next_tick += sample;
            }
        }
        if replay.is_some_and(|r| !r.hold_when_full) {
            // The spooled position stops at the last boundary; a restart redoes the rest.
            return RunEnd::Stopped;
        }
        let now_ms = clock.now_unix_ms();
        self.report(report_start_ms, now_ms, true);
        RunEnd::Stopped
    }

    /// Replay mode with a full spool: virtual time stands still while the records of the
    /// boundary at `now_ms` wait (in real time) for room. False when stopped meanwhile.
    fn wait_for_room(&mut self, now_ms: i64, stop: &StopSignal) -> bool {
        loop {
            if !stop.wait_timeout(FULL_RETRY) {
                return false;
            }
            // Paused by design, not stalled: /healthz stays ok.
            self.metrics.sampler_alive();
            if self.flush(now_ms, false) != FlushOutcome::Held {
                return true;
            }
        }
    }

    /// Ends a report interval: publishes run rates and flushes the accumulators.
    fn report(&mut self, start_ms: i64, end_ms: i64, last: bool) -> FlushOutcome {
        let seconds = (end_ms - start_ms).max(1) as f64 / 1000.0;
        let rates: Vec<([String; 3], f64)> = self
            .run_flop
            .drain()
            .map(|(k, flop)| (k, flop / seconds))
            .collect();
        self.metrics.set_run_rates(&rates);
        self.flush(end_ms, last)
    }

    /// Processes one tick of readings taken at event time `now_ms`.
    pub fn tick(&mut self, inventory: &Inventory, tick: &Tick, now_ms: i64) {
        self.metrics.sampler_ticks_total.inc();
        for reading in &tick.gpus {
            let info = inventory.gpus.iter().find(|g| g.index == reading.index);
            let uuid = reading
                .uuid
                .clone()
                .or_else(|| info.and_then(|i| i.uuid.clone()))
                .unwrap_or_default();
            let idx = reading.index.to_string();
            let labels = [idx.as_str(), uuid.as_str()];
            if reading.status != GpuStatus::Ok {
                self.metrics.gpu_up.with_label_values(&labels).set(0);
                continue;
            }
            self.metrics.gpu_up.with_label_values(&labels).set(1);
            if let Some(c) = reading.sm_clock_mhz {
                self.metrics
                    .gpu_sm_clock_hertz
                    .with_label_values(&labels)
                    .set(f64::from(c) * 1e6);
            }
            if let Some(u) = reading.gpu_util_percent {
                self.metrics
                    .gpu_utilization_ratio
                    .with_label_values(&labels)
                    .set(f64::from(u) / 100.0);
            }
            if let Some(t) = reading.gpm.and_then(|g| g.any_tensor) {
                self.metrics
                    .gpu_tensor_active_ratio
                    .with_label_values(&labels)
                    .set(t / 100.0);
            }
            if let Some(p) = reading.power_mw {
                self.metrics
                    .gpu_power_watts
                    .with_label_values(&labels)
                    .set(f64::from(p) / 1000.0);
            }
            let counter = self.energy.entry(reading.index).or_default();
            let Some(seconds) = reading.interval_seconds.filter(|s| *s > 0.0) else {
                // A baseline: prime the energy counter, nothing to book yet.
                counter.delta(reading.energy_mj, None, 0.0);
                continue;
            };
            let (energy_mj, energy_source) =
                counter.delta(reading.energy_mj, reading.power_mw.map(u64::from), seconds);
            // Energy from power because the counter was stuck, reset or unreadable: flagged
            // on the records, and logged once per GPU.
            let energy_from_power = matches!(
                energy_source,
                EnergySource::StuckFromPower | EnergySource::ResetFromPower | EnergySource::Power
            ) && energy_mj > 0;
            if energy_source == EnergySource::StuckFromPower {
                self.estimate_error(reading.index, "energy-counter-stuck", || {
                    format!(
                        "GPU {} ({uuid}): the energy counter stands still while power reads above \
                         zero; energy is taken from the power integral",
                        reading.index
                    )
                });
            }
            self.metrics
                .gpu_energy_joules_total
                .with_label_values(&labels)
                .inc_by(energy_mj as f64 / 1000.0);
            let Some(summary) = IntervalSummary::from_reading(reading) else {
                continue;
            };
            let energy = Energy {
                mj: energy_mj,
                from_power: energy_from_power,
            };
            self.book_gpu(info, &uuid, &summary, reading, energy, now_ms);
        }
        self.attributor.end_tick();
        self.metrics.sampler_alive();
    }

    fn book_gpu(
        &mut self,
        info: Option<&GpuInfo>,
        uuid: &str,
        summary: &IntervalSummary,
        reading: &gpu::GpuReading,
        energy: Energy,
        now_ms: i64,
    ) {
        let index = reading.index;
        let operator_model = self.operator_model.clone();
        let model = info.and_then(|i| gpu::model_for(i, operator_model.as_deref()).ok());
        let conflict = info.and_then(|i| i.name_conflict);
        let mut base = Base {
            index,
            uuid,
            gpu_type: info.and_then(GpuInfo::model).map_or("", |m| m.id),
            unknown_peak: info.is_some_and(|i| i.model().is_none()) && model.is_some(),
            peak_conflict: conflict.is_some(),
            energy_from_power: energy.from_power,
            tick_start_ms: now_ms - (summary.seconds * 1000.0).round() as i64,
            now_ms,
            summary,
            mig: None,
            reason: None,
        };
        if model.is_none() {
            self.estimate_error(index, "unknown-gpu", || {
                format!(
                    "GPU {index} ({uuid}) is not in the catalogue; its GPU time and energy are \
                     reported without an estimate (unknown-gpu-no-peak); set \
                     --unknown-gpu-peak-tflops to measure it"
                )
            });
        }
        if let (Some(c), Some(i)) = (conflict, info) {
            let pci = i.model().map_or("unknown", |m| m.id);
            self.metrics
                .gpu_peak_conflict
                .with_label_values(&[&index.to_string(), uuid, pci, c.id])
                .set(1);
            self.estimate_error(index, "peak-conflict", || {
                format!(
                    "GPU {index} ({uuid}): its PCI id names {pci} but its NVML name {:?} names \
                     {}; estimated with {pci}, the band covers both models' peaks",
                    i.name.as_deref().unwrap_or(""),
                    c.id
                )
            });
        }
        if let (Some(instances), Some(i)) = (&reading.mig, info) {
            self.book_mig(i, model, &mut base, instances, energy.mj);
            return;
        }

        // Who ran on this GPU, and with which share of it.
        let procs = reading.processes.as_deref().unwrap_or(&[]);
        let no_process = procs.is_empty();
        let shares = self.shares(procs);
        let approximate = shares.len() > 1;
        for (who, share) in shares {
            let outcome = match model {
                Some(m) => gpu::estimate_with(m, conflict, summary, who.declaration.precision, 1.0)
                    .map_err(|e| self.no_estimate_reason(index, &e)),
                None => Err("unknown-gpu-no-peak"),
            };
            match outcome {
                Ok(est) => {
                    if no_process && est.estimate.flop.high == 0 {
                        // An idle GPU nobody holds: nothing to book, no record every interval.
                        return;
                    }
                    if no_process && self.warned.insert((index, "no-process")) {
                        // The one unattributed source the attributor never sees: say it once.
                        tracing::info!(
                            gpu = index,
                            uuid,
                            "GPU work with no process visible to the agent is booked as \
                             unattributed (in a container the agent needs hostPID)"
                        );
                    }
                    let band = scale(est.estimate.flop, share);
                    self.add(
                        &base,
                        who,
                        None,
                        Some(&est.estimate),
                        band,
                        share,
                        energy.mj as f64 * share,
                        approximate,
                    );
                }
                Err(reason) => {
                    let active = summary.gpu_util_percent.is_some_and(|u| u > 0.0)
                        || summary
                            .gpm
                            .and_then(|g| g.any_tensor)
                            .is_some_and(|t| t > 0.0);
                    if no_process && !active {
                        return;
                    }
                    base.no_estimate(reason);
                    self.add(
                        &base,
                        who,
                        None,
                        None,
                        FlopBand::default(),
                        share,
                        energy.mj as f64 * share,
                        approximate,
                    );
                }
            }
        }
    }

    /// A GPU in MIG mode: each instance with processes on it is estimated over its own SMs
    /// from its own GPM activity, or, without that, by the bounded fallback from the GPU's
    /// activity ([`estimator::mig_fallback`]); its processes share only its work. The GPU's
    /// energy is split among the busy instances by SM share.
    fn book_mig(
        &mut self,
        info: &GpuInfo,
        model: Option<&GpuModel>,
        base: &mut Base<'_>,
        instances: &[MigReading],
        energy_mj: u64,
    ) {
        let index = base.index;
        let gpu_sm = info.gpu_sm_count();
        let busy: Vec<(&MigReading, Option<f64>)> = instances
            .iter()
            // An instance with activity but no visible process still did work: it is booked
            // to "unattributed", as a whole GPU's would be.
            .filter(|m| {
                !m.processes.is_empty() || m.gpm.and_then(|g| g.any_tensor).is_some_and(|t| t > 0.0)
            })
            .map(|m| {
                let share = match (m.info.sm_count, gpu_sm) {
                    (Some(s), Some(g)) if s > 0 && g > 0 => {
                        Some((f64::from(s) / f64::from(g)).min(1.0))
                    }
                    _ => None,
                };
                (m, share)
            })
            .collect();
        let share_total: f64 = busy.iter().filter_map(|(_, s)| *s).sum();
        let slices: Vec<MigSlice> = busy
            .iter()
            .filter_map(|(m, s)| {
                s.map(|sm_share| MigSlice {
                    sm_share,
                    activity: m.gpm.and_then(|g| gpm_activity(&g)),
                })
            })
            .collect();
        for (m, sm_share) in &busy {
            let record = v1::MigInstance {
                uuid: m.info.uuid.clone(),
                profile: m.info.profile.clone(),
                gpu_instance_id: m.info.gpu_instance_id.unwrap_or(u32::MAX),
                compute_instance_id: m.info.compute_instance_id.unwrap_or(u32::MAX),
                sm_count: m.info.sm_count.unwrap_or(0),
                gpu_sm_count: gpu_sm.unwrap_or(0),
            };
            let energy_share = match sm_share {
                Some(s) if share_total > 0.0 => energy_mj as f64 * s / share_total,
                _ => energy_mj as f64 / busy.len() as f64,
            };
            let shares = self.shares(&m.processes);
            let approximate = shares.len() > 1;
            for (who, share) in shares {
                let precision = who.declaration.precision;
                let outcome: Result<estimator::Estimate, &'static str> = match (model, sm_share) {
                    (None, _) => Err("unknown-gpu-no-peak"),
                    (Some(_), None) => Err("mig-unknown-sm-count"),
                    (Some(model), Some(s)) => match m.gpm {
                        Some(g) if g.any_tensor.is_some() => {
                            let own = IntervalSummary {
                                gpm: Some(g),
                                gpu_util_percent: None,
                                ..*base.summary
                            };
                            gpu::estimate_with(model, info.name_conflict, &own, precision, *s)
                                .map(|e| e.estimate)
                                .map_err(|e| self.no_estimate_reason(index, &e))
                        }
                        _ => self.mig_fallback_for(model, base.summary, precision, &slices, *s),
                    },
                };
                let mig_key: Arc<str> = Arc::from(m.info.uuid.as_str());
                match outcome {
                    Ok(est) => {
                        let band = scale(est.flop, share);
                        base.mig = Some(record.clone());
                        self.add(
                            base,
                            who,
                            Some(mig_key),
                            Some(&est),
                            band,
                            share,
                            energy_share * share,
                            approximate,
                        );
                    }
                    Err(reason) => {
                        base.mig = Some(record.clone());
                        base.no_estimate(reason);
                        self.add(
                            base,
                            who,
                            Some(mig_key),
                            None,
                            FlopBand::default(),
                            share,
                            energy_share * share,
                            approximate,
                        );
                        base.reason = None;
                    }
                }
            }
        }
    }

    /// The fallback estimate of one instance (the first slice without activity of share
    /// `sm_share`), or why there is none.
    fn mig_fallback_for(
        &mut self,
        model: &GpuModel,
        summary: &IntervalSummary,
        precision: Option<Precision>,
        slices: &[MigSlice],
        sm_share: f64,
    ) -> Result<estimator::Estimate, &'static str> {
        let (parent, _) =
            gpu::to_interval(summary, precision).map_err(|_| "no-activity-reading")?;
        let estimates =
            estimator::mig_fallback(model, &parent, slices).map_err(|_| "bad-reading")?;
        let position = slices
            .iter()
            .filter(|s| s.activity.is_none())
            .position(|s| s.sm_share == sm_share)
            .ok_or("mig-no-activity-reading")?;
        estimates
            .get(position)
            .copied()
            .ok_or("mig-no-activity-reading")
    }

    fn no_estimate_reason(&mut self, index: u32, e: &gpu::EstimateError) -> &'static str {
        let reason = match e {
            gpu::EstimateError::NoActivity => "no-activity-reading",
            gpu::EstimateError::UnknownGpu { .. } => "unknown-gpu-no-peak",
            gpu::EstimateError::Estimator(_) => "bad-reading",
        };
        self.estimate_error(index, reason, || {
            format!("GPU {index}: {e}; its GPU time and energy are reported without an estimate ({reason})")
        });
        reason
    }

    /// Adds one identity's part of one GPU (or MIG instance) interval to its accumulator.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        base: &Base<'_>,
        who: Arc<Attribution>,
        mig: Option<Arc<str>>,
        est: Option<&estimator::Estimate>,
        band: FlopBand,
        share: f64,
        energy_mj: f64,
        approximate: bool,
    ) {
        let index = base.index;
        let idx = index.to_string();
        let uuid = base.uuid;
        let method = est.map_or(Method::None, |e| e.method);
        let method_tag = method.as_str();
        if self.last_method.get(&index) != Some(&method_tag) {
            if let Some(old) = self.last_method.insert(index, method_tag) {
                let _ = self
                    .metrics
                    .gpu_method_info
                    .remove_label_values(&[&idx, uuid, old]);
            }
            self.metrics
                .gpu_method_info
                .with_label_values(&[&idx, uuid, method_tag])
                .set(1);
        }
        let central = band.central as f64;
        self.metrics
            .gpu_flop_total
            .with_label_values(&[&idx, uuid])
            .inc_by(central);
        if who.identity.source == Source::Unattributed {
            self.metrics
                .unattributed_flop_total
                .with_label_values(&[&idx, uuid])
                .inc_by(central);
        } else {
            let id = &who.identity;
            *self
                .run_flop
                .entry([id.model.clone(), id.run.clone(), id.stage.clone()])
                .or_default() += central;
        }
        let summary = base.summary;
        let tensor = summary
            .gpm
            .and_then(|g| g.any_tensor)
            .map_or(0.0, |t| t / 100.0);
        let key = Key {
            who,
            gpu: index,
            mig,
            method,
            precision: est.map_or(Precision::Bf16, |e| e.precision),
            precision_declared: est.is_some_and(|e| e.precision_declared),
            no_estimate: if est.is_none() { base.reason } else { None },
        };
        let acc = self.open.entry(key).or_insert_with(|| Acc {
            uuid: uuid.to_string(),
            gpu_type: base.gpu_type,
            unknown_peak: base.unknown_peak,
            peak_conflict: base.peak_conflict,
            energy_from_power: false,
            mig: base.mig.clone(),
            low: 0,
            central: 0,
            high: 0,
            gpu_ms: 0.0,
            energy_mj: 0.0,
            clock_mhz_s: 0.0,
            clock_s: 0.0,
            tensor_s: 0.0,
            seconds: 0.0,
            approximate: false,
            start_ms: base.tick_start_ms,
            end_ms: base.now_ms,
        });
        acc.low = acc.low.saturating_add(band.low);
        acc.central = acc.central.saturating_add(band.central);
        acc.high = acc.high.saturating_add(band.high);
        acc.gpu_ms += summary.seconds * share * 1000.0;
        acc.energy_mj += energy_mj;
        acc.energy_from_power |= base.energy_from_power;
        if let Some(c) = summary.mean_sm_clock_mhz {
            acc.clock_mhz_s += c * summary.seconds;
            acc.clock_s += summary.seconds;
        }
        acc.tensor_s += tensor * summary.seconds;
        acc.seconds += summary.seconds;
        acc.approximate |= approximate;
        acc.start_ms = acc.start_ms.min(base.tick_start_ms);
        acc.end_ms = acc.end_ms.max(base.now_ms);
    }

    /// The identities among `procs` and their shares (summing to 1). Processes of one
    /// identity are merged. Shares follow per-process SM utilisation when NVML gives it for
    /// every process and it is not all zero; otherwise the processes split evenly. No visible
    /// process means "unattributed", whole.
    fn shares(&mut self, procs: &[GpuProcess]) -> Vec<(Arc<Attribution>, f64)> {
        if procs.is_empty() {
            return vec![(Arc::new(Attribution::unattributed()), 1.0)];
        }
        let weights: Option<Vec<f64>> = procs
            .iter()
            .map(|p| p.sm_util_percent.filter(|w| w.is_finite() && *w >= 0.0))
            .collect();
        let weights = match weights {
            Some(w) if w.iter().sum::<f64>() > 0.0 => w,
            _ => vec![1.0; procs.len()],
        };
        let total: f64 = weights.iter().sum();
        let mut out: Vec<(Arc<Attribution>, f64)> = Vec::with_capacity(procs.len());
        for (p, w) in procs.iter().zip(weights) {
            let who = self.attributor.attribute(p.pid);
            let share = w / total;
            match out.iter_mut().find(|(a, _)| *a == who) {
                Some((_, s)) => *s += share,
                None => out.push((who, share)),
            }
        }
        out
    }

    fn estimate_error(&mut self, gpu: u32, reason: &'static str, msg: impl FnOnce() -> String) {
        self.metrics
            .estimate_errors_total
            .with_label_values(&[&gpu.to_string(), reason])
            .inc();
        if self.warned.insert((gpu, reason)) {
            tracing::warn!(gpu, reason, "{}", msg());
        }
    }

    /// Turns the accumulators into records and appends them, with any records held from
    /// earlier refusals, to the spool. With `last` (shutdown) a refusing spool is written past
    /// its cap: the process is about to exit and memory would be lost.
    pub fn flush(&mut self, now_ms: i64, last: bool) -> FlushOutcome {
        if self.open.is_empty() && self.held.is_empty() {
            self.metrics.sampler_held_series.set(0);
            if self.cfg.replay.is_some()
                && let Err(e) = self.spool.append_replay(&mut [], now_ms, false)
            {
                // Only the position: the next boundary writes it again.
                tracing::warn!(error = %e, "could not record the replay position");
            }
            return FlushOutcome::Empty;
        }
        let held = self.held.len();
        let mut records = std::mem::take(&mut self.held);
        records.extend(self.records());
        let total = records.len();
        let mut result = self.append_chunked(&mut records, now_ms, false);
        if let Err(e) = &result {
            let over_ceiling = records.len() > self.cfg.max_held_records;
            if last || over_ceiling {
                tracing::error!(
                    error = %e,
                    records = records.len(),
                    "spool refused records and they can no longer be held in memory; \
                     writing past the spool cap"
                );
                result = self.append_chunked(&mut records, now_ms, true);
            }
        }
        let written = total - records.len();
        self.metrics.records_spooled_total.inc_by(written as u64);
        match result {
            Ok(()) => {
                self.metrics.sampler_held_series.set(0);
                self.open.clear();
                FlushOutcome::Written(written)
            }
            Err(e) => {
                if !matches!(e, SpoolError::Full { .. }) {
                    tracing::error!(error = %e, "spool append failed; holding records in memory");
                }
                // Keep accumulating into the open interval, unless it already spans as much
                // as one record may (the collector rejects longer ones): then close it into
                // the held queue and start a new one.
                let open_since = self
                    .open
                    .values()
                    .map(|a| a.start_ms)
                    .min()
                    .unwrap_or(now_ms);
                let span = Duration::from_millis(u64::try_from(now_ms - open_since).unwrap_or(0));
                // Also closed when some of this interval's records were written already (a
                // chunked write that failed part-way): the rest must not be booked twice.
                if span >= self.cfg.max_record_span || written > held {
                    self.open.clear();
                } else {
                    records.truncate(held - written);
                }
                for r in &mut records {
                    r.seq = 0;
                }
                self.held = records;
                let n = self.held.len() + self.open.len();
                self.metrics
                    .sampler_held_series
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                FlushOutcome::Held
            }
        }
    }

    /// Appends `records`, removing from the front what was written. Many records (held ones)
    /// go in chunks of [`SPOOL_CHUNK`]: sled 0.34 keeps much of a huge batch's memory after
    /// writing it (a 10 000-record batch cost ~30 MB of resident memory, measured), which
    /// would defeat the ceiling the spill exists for. Replay mode without holding writes one
    /// batch, since an interval's records and its position must be one atomic write (it
    /// never holds more than one interval).
    fn append_chunked(
        &self,
        records: &mut Vec<v1::IntervalRecord>,
        now_ms: i64,
        over_cap: bool,
    ) -> Result<(), SpoolError> {
        let chunk = match self.cfg.replay {
            Some(r) if !r.hold_when_full => records.len().max(1),
            _ => SPOOL_CHUNK,
        };
        while !records.is_empty() {
            let n = records.len().min(chunk);
            self.append(&mut records[..n], now_ms, over_cap)?;
            records.drain(..n);
        }
        Ok(())
    }

    fn append(
        &self,
        records: &mut [v1::IntervalRecord],
        now_ms: i64,
        over_cap: bool,
    ) -> Result<Option<std::ops::RangeInclusive<u64>>, SpoolError> {
        match (self.cfg.replay, over_cap) {
            (Some(_), _) => self.spool.append_replay(records, now_ms, over_cap),
            (None, false) => self.spool.append(records),
            (None, true) => self.spool.append_over_cap(records),
        }
    }

    /// The records the accumulators stand for, in a stable order (GPU, then identity).
    fn records(&self) -> Vec<v1::IntervalRecord> {
        let mut entries: Vec<(&Key, &Acc)> = self.open.iter().collect();
        entries.sort_by(|(a, _), (b, _)| {
            (
                a.gpu,
                &a.mig,
                &a.who.identity,
                a.method,
                a.precision,
                a.no_estimate,
            )
                .cmp(&(
                    b.gpu,
                    &b.mig,
                    &b.who.identity,
                    b.method,
                    b.precision,
                    b.no_estimate,
                ))
        });
        entries.into_iter().map(|(k, a)| to_record(k, a)).collect()
    }

    /// Number of accumulators in the current interval.
    pub fn open_series(&self) -> usize {
        self.open.len()
    }
}

/// One interval's energy of a GPU.
#[derive(Debug, Clone, Copy)]
struct Energy {
    mj: u64,
    from_power: bool,
}

/// What every record of one GPU's interval shares.
#[derive(Debug)]
struct Base<'a> {
    index: u32,
    uuid: &'a str,
    gpu_type: &'static str,
    unknown_peak: bool,
    peak_conflict: bool,
    energy_from_power: bool,
    tick_start_ms: i64,
    now_ms: i64,
    summary: &'a IntervalSummary,
    mig: Option<v1::MigInstance>,
    reason: Option<&'static str>,
}

impl Base<'_> {
    fn no_estimate(&mut self, reason: &'static str) {
        self.reason = Some(reason);
    }
}

/// GPM percent → the estimator's fractions, if the tensor metric came back.
fn gpm_activity(g: &gpu::GpmMetrics) -> Option<estimator::GpmActivity> {
    let frac = |p: Option<f64>| p.unwrap_or(0.0) / 100.0;
    g.any_tensor.map(|t| estimator::GpmActivity {
        tensor: t / 100.0,
        fp32: frac(g.fp32),
        fp16: frac(g.fp16),
        fp64: frac(g.fp64),
        pipes_unread: g.fp32.is_none() || g.fp16.is_none() || g.fp64.is_none(),
    })
}

fn scale(b: FlopBand, share: f64) -> FlopBand {
    if share >= 1.0 {
        b
    } else {
        FlopBand::from_f64(
            b.low as f64 * share,
            b.central as f64 * share,
            b.high as f64 * share,
        )
    }
}

fn to_record(k: &Key, a: &Acc) -> v1::IntervalRecord {
    let id = &k.who.identity;
    let d = &k.who.declaration;
    let source = match id.source {
        Source::ProcessEnv => v1::AttributionSource::ProcessEnv,
        Source::Kubernetes => v1::AttributionSource::Kubernetes,
        Source::Slurm => v1::AttributionSource::Slurm,
        Source::Unattributed => v1::AttributionSource::Unattributed,
    };
    let declaration = (!d.is_empty()).then(|| v1::WorkloadDeclaration {
        precision: d.precision.map_or(0, |p| v1::Precision::from(p) as i32),
        planned_flop: d.planned_flop.map(|n| n.to_string()).unwrap_or_default(),
        params: d.params.map(|n| n.to_string()).unwrap_or_default(),
        tokens: d.tokens.map(|n| n.to_string()).unwrap_or_default(),
        base_model: d.base_model.clone().unwrap_or_default(),
        planned_end_unix_ms: d.planned_end_unix_ms.unwrap_or(0),
    });
    v1::IntervalRecord {
        seq: 0,
        start_unix_ms: a.start_ms,
        end_unix_ms: a.end_ms,
        gpu_uuid: a.uuid.clone(),
        gpu_type: a.gpu_type.to_string(),
        flop_low: a.low,
        flop_central: a.central,
        flop_high: a.high,
        gpu_ms: a.gpu_ms.round() as u64,
        energy_mj: a.energy_mj.round() as u64,
        mean_sm_clock_mhz: if a.clock_s > 0.0 {
            (a.clock_mhz_s / a.clock_s).round() as u32
        } else {
            0
        },
        mean_tensor_util: if a.seconds > 0.0 {
            a.tensor_s / a.seconds
        } else {
            0.0
        },
        method: v1::Method::from(k.method) as i32,
        precision: v1::Precision::from(k.precision) as i32,
        precision_declared: k.precision_declared,
        identity: Some(v1::WorkloadIdentity {
            model: id.model.clone(),
            run: id.run.clone(),
            stage: id.stage.clone(),
            source: source as i32,
            namespace: id.namespace.clone(),
            job: id.job.clone(),
            cluster: id.cluster.clone(),
            user: id.user.clone(),
            process: id.process.clone(),
        }),
        approximate: a.approximate,
        declaration,
        unknown_peak: a.unknown_peak,
        no_estimate_reason: k.no_estimate.unwrap_or_default().to_string(),
        peak_conflict: a.peak_conflict,
        mig: a.mig.clone(),
        energy_from_power: a.energy_from_power,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::VirtualClock;
    use crate::simulated::{SimulatedSource, Workload};
    use crate::spool::SpoolOptions;

    const START: i64 = 1_700_000_000_000;
    const STOP: i64 = START + 1_800_000;

    fn sampler(spool: &Arc<Spool>, dir: &std::path::Path) -> Sampler {
        Sampler::new(
            SamplerConfig {
                replay: Some(Replay {
                    stop_unix_ms: Some(STOP),
                    hold_when_full: false,
                }),
                ..SamplerConfig::default()
            },
            Attributor::new(dir.join("no-proc"), None),
            spool.clone(),
            Arc::new(AgentMetrics::new().unwrap()),
        )
    }

    /// One replay "process" on `spool`, from where the spool says, until the stop time or
    /// until `stop` is raised.
    fn replay(spool: &Arc<Spool>, dir: &std::path::Path, stop: &StopSignal) -> RunEnd {
        let w = Workload::from_toml(
            "gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 0.37\n[[process]]\npid = 7\n",
        )
        .unwrap();
        let mut src = SimulatedSource::new(w).unwrap();
        let clock = VirtualClock::new(spool.virtual_pos().unwrap().unwrap_or(START));
        let (tx, _rx) = tokio::sync::watch::channel(None);
        sampler(spool, dir).run(&mut src, &clock, stop, &tx)
    }

    /// What a record says about compute (energy follows the source's counter).
    fn key(r: &v1::IntervalRecord) -> (u64, i64, i64, String, u64, u64, u64, u64) {
        (
            r.seq,
            r.start_unix_ms,
            r.end_unix_ms,
            r.gpu_uuid.clone(),
            r.flop_low,
            r.flop_central,
            r.flop_high,
            r.gpu_ms,
        )
    }

    fn open(dir: &std::path::Path, max_bytes: u64) -> Arc<Spool> {
        Arc::new(
            Spool::open(
                dir,
                SpoolOptions {
                    max_bytes,
                    ..SpoolOptions::default()
                },
            )
            .unwrap(),
        )
    }

    #[test]
    fn replay_resumes_where_the_spool_ends_and_pauses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let reference = open(&dir.path().join("a"), 1 << 30);
        assert_eq!(
            replay(&reference, dir.path(), &StopSignal::new()),
            RunEnd::ReplayDone
        );
        let want: Vec<_> = reference
            .read_from(0, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        assert_eq!(want.len(), 2 * 180, "one record per GPU per 10 s");
        assert_eq!(reference.virtual_pos().unwrap(), Some(STOP));

        // Interrupted at arbitrary points (a stop mid-interval leaves the partial interval
        // to be redone), and with a spool so small it refuses most of the time: a helper
        // acknowledges slowly, like a collector, and virtual time waits for it. The helper
        // starts acknowledging in each run only once the spool has refused: otherwise, when
        // fsyncs are slow (a loaded disk), it drained the spool as fast as the sampler
        // filled it, the spool never refused, and `saw_full` failed about once in five runs.
        let path = dir.path().join("b");
        let mut got = Vec::new();
        let (mut runs, mut saw_full) = (0, false);
        loop {
            let spool = open(&path, 2_000);
            let stop = StopSignal::new();
            let acker = {
                let (spool, stop) = (spool.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut acks, mut full) = (0, false);
                    while stop.wait_timeout(Duration::from_millis(5)) {
                        full |= spool.stats().full;
                        if !full {
                            continue;
                        }
                        let mut batch = spool.read_from(0, 3, usize::MAX).unwrap();
                        if let Some(last) = batch.last().map(|r| r.seq) {
                            spool.ack(last).unwrap();
                            acks += 1;
                            got.append(&mut batch);
                        }
                        if acks == 25 {
                            stop.raise();
                        }
                    }
                    (got, full)
                })
            };
            let end = replay(&spool, dir.path(), &stop);
            stop.raise();
            let full;
            (got, full) = acker.join().unwrap();
            saw_full |= full;
            runs += 1;
            if end == RunEnd::ReplayDone {
                got.extend(spool.read_from(0, usize::MAX, usize::MAX).unwrap());
                break;
            }
            assert!(runs < 1000, "replay makes progress");
        }
        assert!(runs > 3, "interrupted several times ({runs})");
        assert!(saw_full, "the spool refused and virtual time waited");
        let got: Vec<_> = got.iter().map(key).collect();
        assert_eq!(got, want);
    }
}
