//! Booking one tick: each GPU's (or MIG instance's) reading estimated, split among its
//! processes by SM share, and added to the accumulators of the open interval.

use super::*;
use std::sync::Arc;

use flopmeter_core::catalogue::GpuModel;
use flopmeter_core::energy::EnergySource;
use flopmeter_core::estimator::{self, MigSlice};
use flopmeter_core::units::{FlopBand, Method, Precision};
use flopmeter_proto::v1;

use crate::attribution::{Attribution, Source};
use crate::gpu::{
    self, GpuInfo, GpuProcess, GpuStatus, IntervalSummary, Inventory, MigReading, Tick,
};

impl Sampler {
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

    fn no_estimate_reason(&mut self, index: u32, e: &gpu::GpuEstimateError) -> &'static str {
        let reason = match e {
            gpu::GpuEstimateError::NoActivity => "no-activity-reading",
            gpu::GpuEstimateError::UnknownGpu { .. } => "unknown-gpu-no-peak",
            gpu::GpuEstimateError::Estimator(_) => "bad-reading",
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
