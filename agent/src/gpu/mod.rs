//! GPU sources: what the agent knows about a node's GPUs, and what it reads from them each
//! tick.
//!
//! A [`GpuSource`] has two jobs: an [`Inventory`] (which GPUs, which catalogue model, whether
//! GPM exists, which driver) and a [`Tick`] per sampling step with one [`GpuReading`] per
//! GPU. Turning readings into FLOP is pure and lives here too ([`IntervalSummary`],
//! [`estimate`]), so the NVML implementation only reads and the arithmetic stays in
//! `flopmeter-core`.
//!
//! # Threads
//! NVML calls block (a GPU that is falling off the bus can stall a call for seconds), so a
//! source is meant to be driven from a dedicated sampler thread, never from an async
//! runtime's worker. [`nvml::NvmlSource`] borrows its [`nvml::NvmlLibrary`], so the sampler
//! thread opens the library and builds the source itself:
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use flopmeter_agent::gpu::GpuSource;
//! use flopmeter_agent::gpu::nvml::{NvmlLibrary, NvmlSource, RetryPolicy};
//!
//! let sampler = std::thread::spawn(move || -> Result<(), flopmeter_agent::gpu::nvml::NvmlSourceError> {
//!     let lib = NvmlLibrary::open("libnvidia-ml.so.1")?;
//!     let mut source = NvmlSource::new(&lib, RetryPolicy::default())?;
//!     let start = Instant::now();
//!     loop {
//!         let tick = source.read(start.elapsed());
//!         // ... hand `tick` to the accumulator over a channel ...
//!         # let _ = tick; break;
//!         std::thread::sleep(Duration::from_secs(1));
//!     }
//!     Ok(())
//! });
//! ```

pub mod nvml;

use std::time::Duration;

use flopmeter_core::catalogue::{self, GpuModel, Lookup, MatchedBy};
use flopmeter_core::estimator::{self, Activity, Estimate, GpmActivity, Interval};
use flopmeter_core::units::{Method, Precision};
use serde::Serialize;

/// Where GPU readings come from (NVML on a node; a simulation in tests and demos).
pub trait GpuSource {
    /// The GPUs and driver as currently known. A GPU that could not be read at start-up is
    /// listed with the fields that are missing; they are filled in once it is reachable.
    fn inventory(&self) -> &Inventory;

    /// Reads every GPU once. `now` is the caller's monotonic time (e.g. elapsed since the
    /// sampler started); interval lengths are differences of it, so a test can drive a
    /// source with virtual time. The first reading of a GPU (and the first after it comes
    /// back from a failure) has no interval: it is the baseline for the next one.
    ///
    /// Never fails as a whole: a GPU that cannot be read is reported as failed in its
    /// [`GpuReading::status`] while the others carry on.
    fn read(&mut self, now: Duration) -> Tick;
}

/// The node's GPUs and driver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    /// Driver version (`nvmlSystemGetDriverVersion`), if readable.
    pub driver_version: Option<String>,
    /// NVML library version, if readable.
    pub nvml_version: Option<String>,
    /// One entry per GPU, by NVML index.
    pub gpus: Vec<GpuInfo>,
}

/// What the agent knows about one GPU. `None` means NVML could not tell us (a function the
/// driver lacks, or a GPU unreachable since start-up).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// NVML UUID, the GPU's stable identity.
    pub uuid: Option<String>,
    /// NVML name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: Option<String>,
    /// PCI device id (vendor 0x10DE), e.g. `0x2330`.
    pub pci_device_id: Option<u16>,
    /// The catalogue model, matched by PCI device id, then by name.
    #[serde(serialize_with = "serialize_lookup")]
    pub catalogue: Lookup,
    /// Max SM clock (MHz).
    pub max_sm_clock_mhz: Option<u32>,
    /// Max memory clock (MHz).
    pub max_mem_clock_mhz: Option<u32>,
    /// Framebuffer size (bytes).
    pub memory_total_bytes: Option<u64>,
    /// Whether NVML GPM (tensor activity) is available. False when the query itself fails.
    pub gpm_supported: bool,
    /// The catalogue model the NVML name names when it is not the one the PCI id chose
    /// (`catalogue::name_conflict`): estimates then cover both peaks and are flagged.
    #[serde(serialize_with = "serialize_model_id")]
    pub name_conflict: Option<&'static GpuModel>,
    /// SMs of the whole GPU (`nvmlDeviceGetAttributes_v2`), if NVML says.
    pub sm_count: Option<u32>,
    /// Whether the GPU is in MIG mode (its work is then metered per instance).
    pub mig_enabled: bool,
    /// The MIG instances as last read (they can be reconfigured at any time).
    pub mig_instances: Vec<MigInfo>,
}

/// One MIG instance of a GPU, as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigInfo {
    /// The MIG device's UUID (`MIG-...`).
    pub uuid: String,
    /// Profile, e.g. `3g.40gb` (from the MIG device's NVML name).
    pub profile: String,
    /// GPU instance id, once NVML has shown it (on the instance's processes).
    pub gpu_instance_id: Option<u32>,
    /// Compute instance id, likewise.
    pub compute_instance_id: Option<u32>,
    /// SMs of the instance.
    pub sm_count: Option<u32>,
}

fn serialize_model_id<S: serde::Serializer>(
    m: &Option<&'static GpuModel>,
    s: S,
) -> Result<S::Ok, S::Error> {
    m.map(|m| m.id).serialize(s)
}

impl GpuInfo {
    /// What is known of GPU `index` before NVML said anything about it.
    pub fn unidentified(index: u32) -> GpuInfo {
        GpuInfo {
            index,
            uuid: None,
            name: None,
            pci_device_id: None,
            catalogue: Lookup::Unknown,
            max_sm_clock_mhz: None,
            max_mem_clock_mhz: None,
            memory_total_bytes: None,
            gpm_supported: false,
            name_conflict: None,
            sm_count: None,
            mig_enabled: false,
            mig_instances: Vec::new(),
        }
    }

    /// The catalogue model, if the GPU is known.
    pub fn model(&self) -> Option<&'static GpuModel> {
        match self.catalogue {
            Lookup::Known(m, _) => Some(m),
            Lookup::Unknown => None,
        }
    }

    /// SMs of the whole GPU: NVML's figure, else the catalogue's.
    pub fn gpu_sm_count(&self) -> Option<u32> {
        self.sm_count
            .or_else(|| self.model().and_then(|m| m.sm_count))
    }

    /// Identifies the GPU in the catalogue from what NVML reported.
    pub fn lookup(pci_device_id: Option<u16>, name: Option<&str>) -> Lookup {
        catalogue::lookup(pci_device_id, name)
    }
}

/// Serialises a catalogue match as `{ "id": …, "matched_by": … }`, or null if unknown.
pub(crate) fn serialize_lookup<S: serde::Serializer>(
    lookup: &Lookup,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Match {
        id: &'static str,
        matched_by: MatchedBy,
    }
    match lookup {
        Lookup::Known(m, by) => Some(Match {
            id: m.id,
            matched_by: *by,
        })
        .serialize(s),
        Lookup::Unknown => None::<Match>.serialize(s),
    }
}

/// One sampling step: a reading per GPU, in inventory order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tick {
    /// The caller's time of the step (seconds on its monotonic clock).
    pub at_seconds: f64,
    /// One per GPU.
    pub gpus: Vec<GpuReading>,
}

/// Whether a GPU could be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum GpuStatus {
    /// Read normally (individual fields may still be missing).
    Ok,
    /// Not read this tick. The source keeps the others going and tries this one again
    /// (re-acquiring its handle) from `next_retry_seconds` on.
    Failed {
        /// True when NVML said the GPU is lost (fallen off the bus).
        lost: bool,
        /// What went wrong, for logs and `probe`.
        reason: String,
        /// When the next attempt is due, on the caller's clock (seconds).
        next_retry_seconds: f64,
    },
}

/// GPM metrics over the interval, in percent as NVML reports them. Each is `None` when its
/// own query failed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct GpmMetrics {
    /// Any tensor pipe active (`ANY_TENSOR_UTIL`).
    pub any_tensor: Option<f64>,
    /// HMMA (16-bit) tensor active.
    pub hmma: Option<f64>,
    /// Non-tensor FP64.
    pub fp64: Option<f64>,
    /// Non-tensor FP32.
    pub fp32: Option<f64>,
    /// Non-tensor FP16.
    pub fp16: Option<f64>,
    /// SMs with at least one warp.
    pub sm_util: Option<f64>,
}

/// One MIG instance's reading within its GPU's reading (same interval and clock).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigReading {
    /// The instance.
    pub info: MigInfo,
    /// Its own GPM metrics over the interval (percent of its SMs), from
    /// `nvmlGpmMigSampleGet`; `None` when per-instance GPM gave nothing (then the estimate
    /// falls back to the GPU's activity, [`flopmeter_core::estimator::mig_fallback`]).
    pub gpm: Option<GpmMetrics>,
    /// Its compute processes.
    pub processes: Vec<GpuProcess>,
}

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuProcess {
    /// Process id (in the host's PID namespace).
    pub pid: u32,
    /// GPU memory in bytes, if NVML could say.
    pub used_memory_bytes: Option<u64>,
    /// The process's SM utilisation (percent) over the tick, from NVML's per-process
    /// samples, where NVML gives it.
    pub sm_util_percent: Option<f64>,
}

/// A field that could not be read this tick, and why (not-supported, missing symbol, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// The field, e.g. `power_mw`.
    pub field: &'static str,
    /// NVML's error.
    pub error: String,
}

/// One GPU's reading at one tick. Every value is `None` when it could not be read: one
/// missing function never costs the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReading {
    /// NVML index.
    pub index: u32,
    /// UUID, if known.
    pub uuid: Option<String>,
    /// Whether the GPU could be read.
    pub status: GpuStatus,
    /// Seconds since this GPU's previous successful reading: the interval the GPM metrics
    /// and the estimate cover. `None` for a baseline reading.
    pub interval_seconds: Option<f64>,
    /// Whether NVML reports GPM support for this GPU.
    pub gpm_supported: bool,
    /// GPM metrics over the interval.
    pub gpm: Option<GpmMetrics>,
    /// SM clock now (MHz).
    pub sm_clock_mhz: Option<u32>,
    /// Mean SM clock over the interval (MHz): the mean of the clock at its two ends, the
    /// best NVML offers without a clock counter.
    pub mean_sm_clock_mhz: Option<f64>,
    /// `utilization.gpu` (percent of the driver's last sample period with a kernel running).
    pub gpu_util_percent: Option<u32>,
    /// Board power now (mW).
    pub power_mw: Option<u32>,
    /// Total energy counter (mJ since the driver loaded).
    pub energy_mj: Option<u64>,
    /// Framebuffer in use (bytes).
    pub memory_used_bytes: Option<u64>,
    /// Running compute processes.
    pub processes: Option<Vec<GpuProcess>>,
    /// The MIG instances with their own readings, for a GPU in MIG mode.
    pub mig: Option<Vec<MigReading>>,
    /// Fields that could not be read, and why.
    pub unavailable: Vec<FieldError>,
}

impl GpuReading {
    /// A reading with nothing in it, for a GPU that could not be read.
    pub fn failed(index: u32, uuid: Option<String>, status: GpuStatus) -> GpuReading {
        GpuReading {
            index,
            uuid,
            status,
            interval_seconds: None,
            gpm_supported: false,
            gpm: None,
            sm_clock_mhz: None,
            mean_sm_clock_mhz: None,
            gpu_util_percent: None,
            power_mw: None,
            energy_mj: None,
            memory_used_bytes: None,
            processes: None,
            mig: None,
            unavailable: Vec::new(),
        }
    }
}

/// What one or more consecutive readings of a GPU say about the interval they cover.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IntervalSummary {
    /// Length (seconds).
    pub seconds: f64,
    /// Whether the GPU supports GPM.
    pub gpm_supported: bool,
    /// Time-weighted GPM means (percent); a metric missing from any reading is `None`,
    /// because an average over part of the interval would misstate the whole.
    pub gpm: Option<GpmMetrics>,
    /// Time-weighted mean SM clock (MHz).
    pub mean_sm_clock_mhz: Option<f64>,
    /// Time-weighted `utilization.gpu` (percent).
    pub gpu_util_percent: Option<f64>,
}

impl IntervalSummary {
    /// The interval one reading covers; `None` for a baseline or failed reading.
    pub fn from_reading(reading: &GpuReading) -> Option<IntervalSummary> {
        Self::from_readings(std::iter::once(reading))
    }

    /// The interval consecutive readings of one GPU cover, or `None` if none has an
    /// interval. Readings without one (baselines, failures) add no time.
    pub fn from_readings<'a>(
        readings: impl IntoIterator<Item = &'a GpuReading>,
    ) -> Option<IntervalSummary> {
        let parts: Vec<(&GpuReading, f64)> = readings
            .into_iter()
            .filter(|r| r.status == GpuStatus::Ok)
            .filter_map(|r| r.interval_seconds.map(|s| (r, s)))
            .filter(|(_, s)| *s > 0.0)
            .collect();
        let seconds: f64 = parts.iter().map(|(_, s)| s).sum();
        if parts.is_empty() {
            return None;
        }
        let mean = |f: &dyn Fn(&GpuReading) -> Option<f64>| -> Option<f64> {
            let mut total = 0.0;
            for (r, s) in &parts {
                total += f(r)? * s;
            }
            Some(total / seconds)
        };
        let gpm_part = |f: fn(&GpmMetrics) -> Option<f64>| mean(&|r| r.gpm.as_ref().and_then(f));
        let gpm = parts
            .iter()
            .all(|(r, _)| r.gpm.is_some())
            .then(|| GpmMetrics {
                any_tensor: gpm_part(|g| g.any_tensor),
                hmma: gpm_part(|g| g.hmma),
                fp64: gpm_part(|g| g.fp64),
                fp32: gpm_part(|g| g.fp32),
                fp16: gpm_part(|g| g.fp16),
                sm_util: gpm_part(|g| g.sm_util),
            });
        Some(IntervalSummary {
            seconds,
            gpm_supported: parts.iter().all(|(r, _)| r.gpm_supported),
            gpm,
            mean_sm_clock_mhz: mean(&|r| r.mean_sm_clock_mhz),
            gpu_util_percent: mean(&|r| r.gpu_util_percent.map(f64::from)),
        })
    }
}

/// Why an estimate fell back from GPM to util × MFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// The GPU has no GPM (pre-Hopper, or NVML says so).
    GpmUnsupported,
    /// The GPU has GPM, but the tensor metric did not come back for this interval.
    GpmUnavailable,
}

/// How an estimate was made: the core method, plus why GPM was not used where it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MethodTag {
    /// The estimator's method.
    pub method: Method,
    /// Why util × MFU was used, if it was.
    pub fallback: Option<Fallback>,
}

impl MethodTag {
    /// The tag shown in `probe` and logs: `gpm-tensor`, `util-mfu`,
    /// `util-mfu (gpm unsupported)`, `util-mfu (gpm unavailable)`.
    pub fn as_str(&self) -> &'static str {
        match (self.method, self.fallback) {
            (Method::UtilMfu, Some(Fallback::GpmUnsupported)) => "util-mfu (gpm unsupported)",
            (Method::UtilMfu, Some(Fallback::GpmUnavailable)) => "util-mfu (gpm unavailable)",
            (m, _) => m.as_str(),
        }
    }
}

impl std::fmt::Display for MethodTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An estimate for one GPU over one interval, with what went into it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GpuEstimate {
    /// The estimator's answer.
    pub estimate: Estimate,
    /// Method and fallback reason.
    pub method: MethodTag,
    /// The estimator input built from the readings.
    pub interval: Interval,
}

/// Why no estimate could be made for an interval.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuEstimateError {
    /// The GPU is not in the catalogue and no peak was supplied.
    #[error(
        "GPU not in the catalogue (PCI device id {pci_device_id}, name {name}): no peak to estimate with"
    )]
    UnknownGpu {
        /// PCI device id, as reported.
        pci_device_id: String,
        /// NVML name, as reported.
        name: String,
    },
    /// Neither GPM tensor activity nor `utilization.gpu` was read.
    #[error(
        "no activity reading for the interval: neither GPM tensor activity nor utilization.gpu"
    )]
    NoActivity,
    /// The estimator rejected the input.
    #[error(transparent)]
    Estimator(#[from] estimator::EstimateError),
}

/// Builds the estimator's input: GPM when the GPU supports it and its tensor metric came
/// back, else `utilization.gpu` × MFU, with the reason in the tag.
///
/// GPM pipe metrics that are missing (FP32/FP16/FP64) count as zero in the central and low
/// figures: they are small corrections to the tensor term, and dropping the whole GPM
/// estimate for want of one would trade them for the much wider util × MFU band. The high
/// bound then takes the vector pipes at their full peak (`pipes_unread`), so it never
/// undercounts.
pub fn to_interval(
    summary: &IntervalSummary,
    declared_precision: Option<Precision>,
) -> Result<(Interval, MethodTag), GpuEstimateError> {
    let frac = |p: Option<f64>| p.unwrap_or(0.0) / 100.0;
    let tensor = summary.gpm.as_ref().and_then(|g| g.any_tensor);
    let (activity, method) = match (tensor, summary.gpu_util_percent) {
        (Some(t), _) => {
            let g = summary.gpm.unwrap_or_default();
            (
                Activity::Gpm(GpmActivity {
                    tensor: t / 100.0,
                    fp32: frac(g.fp32),
                    fp16: frac(g.fp16),
                    fp64: frac(g.fp64),
                    pipes_unread: g.fp32.is_none() || g.fp16.is_none() || g.fp64.is_none(),
                }),
                MethodTag {
                    method: Method::GpmTensor,
                    fallback: None,
                },
            )
        }
        (None, Some(util)) => (
            Activity::Util {
                gpu_util: util / 100.0,
            },
            MethodTag {
                method: Method::UtilMfu,
                fallback: Some(if summary.gpm_supported {
                    Fallback::GpmUnavailable
                } else {
                    Fallback::GpmUnsupported
                }),
            },
        ),
        (None, None) => return Err(GpuEstimateError::NoActivity),
    };
    Ok((
        Interval {
            seconds: summary.seconds,
            activity,
            mean_sm_clock_mhz: summary.mean_sm_clock_mhz,
            declared_precision,
        },
        method,
    ))
}

/// Estimates the FLOP `model` executed over the summarised interval.
pub fn estimate(
    model: &GpuModel,
    summary: &IntervalSummary,
    declared_precision: Option<Precision>,
) -> Result<GpuEstimate, GpuEstimateError> {
    estimate_with(model, None, summary, declared_precision, 1.0)
}

/// [`estimate`] with a conflicting name's model (the band covers both,
/// [`estimator::estimate_conflicted`]) and over a share of the GPU's SMs (a MIG instance).
pub fn estimate_with(
    model: &GpuModel,
    conflict: Option<&GpuModel>,
    summary: &IntervalSummary,
    declared_precision: Option<Precision>,
    sm_share: f64,
) -> Result<GpuEstimate, GpuEstimateError> {
    let (interval, mut method) = to_interval(summary, declared_precision)?;
    let estimate = match conflict {
        Some(other) => estimator::estimate_conflicted(model, other, &interval, sm_share)?,
        None => estimator::estimate_share(model, &interval, sm_share)?,
    };
    if estimate.method != method.method {
        method = MethodTag {
            method: estimate.method,
            fallback: None,
        };
    }
    Ok(GpuEstimate {
        estimate,
        method,
        interval,
    })
}

/// The model to estimate an inventoried GPU with: its catalogue model, else the
/// operator-supplied one (`--unknown-gpu-peak-tflops`), else an error naming the device.
pub fn model_for<'a>(
    gpu: &GpuInfo,
    operator: Option<&'a GpuModel>,
) -> Result<&'a GpuModel, GpuEstimateError> {
    match (gpu.model(), operator) {
        (Some(m), _) => Ok(m),
        (None, Some(op)) => Ok(op),
        (None, None) => Err(GpuEstimateError::UnknownGpu {
            pci_device_id: gpu
                .pci_device_id
                .map_or_else(|| "unknown".into(), |id| format!("{id:#06x}")),
            name: gpu.name.clone().unwrap_or_else(|| "unknown".into()),
        }),
    }
}

/// [`estimate`] for an inventoried GPU: its catalogue model (with a name conflict's model),
/// or an error for an unknown one.
pub fn estimate_for(
    gpu: &GpuInfo,
    summary: &IntervalSummary,
    declared_precision: Option<Precision>,
) -> Result<GpuEstimate, GpuEstimateError> {
    estimate_for_peak(gpu, None, summary, declared_precision)
}

/// [`estimate_for`] with an operator-supplied model for an uncatalogued GPU.
pub fn estimate_for_peak(
    gpu: &GpuInfo,
    operator: Option<&GpuModel>,
    summary: &IntervalSummary,
    declared_precision: Option<Precision>,
) -> Result<GpuEstimate, GpuEstimateError> {
    let model = model_for(gpu, operator)?;
    estimate_with(model, gpu.name_conflict, summary, declared_precision, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seconds: f64, tensor: Option<f64>, util: Option<u32>, clock: f64) -> GpuReading {
        GpuReading {
            interval_seconds: Some(seconds),
            gpm_supported: tensor.is_some(),
            gpm: tensor.map(|t| GpmMetrics {
                any_tensor: Some(t),
                ..GpmMetrics::default()
            }),
            mean_sm_clock_mhz: Some(clock),
            gpu_util_percent: util,
            ..GpuReading::failed(0, None, GpuStatus::Ok)
        }
    }

    fn h100() -> &'static GpuModel {
        catalogue::find("h100-sxm").unwrap()
    }

    /// Hand calculation: 50% tensor at the 1830 MHz reference for 1 s on H100 SXM =
    /// 0.5 × 989e12 = 4.945e14 (BF16 central).
    #[test]
    fn gpm_reading_uses_tensor_activity() {
        let s = IntervalSummary::from_reading(&reading(1.0, Some(50.0), Some(99), 1830.0)).unwrap();
        let e = estimate(h100(), &s, None).unwrap();
        assert_eq!(e.method.as_str(), "gpm-tensor");
        assert_eq!(e.estimate.flop.central, 494_500_000_000_000);
    }

    /// Two readings, 1 s at 40% and 3 s at 60%: the time-weighted mean is 55%, and the
    /// estimate over 4 s equals the sum of the two one-reading estimates.
    #[test]
    fn sequences_are_time_weighted() {
        let a = reading(1.0, Some(40.0), Some(90), 1830.0);
        let b = reading(3.0, Some(60.0), Some(100), 1830.0);
        let s = IntervalSummary::from_readings([&a, &b]).unwrap();
        assert_eq!(s.seconds, 4.0);
        assert!((s.gpm.unwrap().any_tensor.unwrap() - 55.0).abs() < 1e-12);
        assert!((s.gpu_util_percent.unwrap() - 97.5).abs() < 1e-12);
        let whole = estimate(h100(), &s, None).unwrap().estimate.flop.central;
        let parts: u64 = [&a, &b]
            .iter()
            .map(|r| {
                let s = IntervalSummary::from_reading(r).unwrap();
                estimate(h100(), &s, None).unwrap().estimate.flop.central
            })
            .sum();
        assert!(whole.abs_diff(parts) <= 2, "{whole} vs {parts}");
    }

    #[test]
    fn falls_back_to_util_mfu_and_says_why() {
        let unsupported = reading(1.0, None, Some(90), 1410.0);
        let s = IntervalSummary::from_reading(&unsupported).unwrap();
        let a100 = catalogue::find("a100-sxm").unwrap();
        let e = estimate(a100, &s, None).unwrap();
        assert_eq!(e.method.as_str(), "util-mfu (gpm unsupported)");

        let mut unavailable = reading(1.0, Some(50.0), Some(90), 1830.0);
        unavailable.gpm = Some(GpmMetrics::default());
        let s = IntervalSummary::from_reading(&unavailable).unwrap();
        let e = estimate(h100(), &s, None).unwrap();
        assert_eq!(e.method.as_str(), "util-mfu (gpm unavailable)");

        let mut nothing = reading(1.0, None, None, 1830.0);
        nothing.gpm_supported = true;
        let s = IntervalSummary::from_reading(&nothing).unwrap();
        assert_eq!(
            estimate(h100(), &s, None),
            Err(GpuEstimateError::NoActivity)
        );
    }

    #[test]
    fn baselines_and_failures_cover_no_time() {
        let mut baseline = reading(1.0, Some(50.0), Some(90), 1830.0);
        baseline.interval_seconds = None;
        assert_eq!(IntervalSummary::from_reading(&baseline), None);
        let failed = GpuReading::failed(
            0,
            None,
            GpuStatus::Failed {
                lost: true,
                reason: "GPU is lost".into(),
                next_retry_seconds: 5.0,
            },
        );
        assert_eq!(IntervalSummary::from_reading(&failed), None);
    }

    #[test]
    fn unknown_gpus_need_a_peak() {
        let gpu = GpuInfo {
            name: Some("NVIDIA Future".into()),
            pci_device_id: Some(0xFFFF),
            catalogue: GpuInfo::lookup(Some(0xFFFF), Some("NVIDIA Future")),
            ..GpuInfo::unidentified(0)
        };
        let s = IntervalSummary::from_reading(&reading(1.0, None, Some(50), 1500.0)).unwrap();
        let err = estimate_for(&gpu, &s, None).unwrap_err();
        assert!(err.to_string().contains("0xffff"), "{err}");
    }
}
