//! The NVML [`GpuSource`], through nvml-wrapper 0.13.
//!
//! Failure modes, each with its own behaviour:
//! - **No library / no driver** ([`NvmlLibrary::open`]): a typed [`NvmlSourceError`] whose
//!   message says there is no NVIDIA driver and how to run against the fake.
//! - **GPM unsupported**: readings carry no GPM metrics; the estimate falls back to
//!   util × MFU and its method tag says so ([`super::Fallback::GpmUnsupported`]).
//! - **One function not supported or missing** (`NotSupported`, `FailedToLoadSymbol` from an
//!   older driver): that field is `None` and listed in [`GpuReading::unavailable`];
//!   everything else is read as usual.
//! - **GPU lost** (`GPU_IS_LOST`): that GPU is marked failed, the others carry on, and its
//!   handle is re-acquired (by UUID) on later ticks with exponential backoff
//!   ([`RetryPolicy`]). After it comes back its first reading is a new baseline, so no
//!   interval ever spans the outage.
//!
//! All calls block; see the [threading note](super#threads).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::time::Duration;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::gpm::{GpmSample, gpm_metrics_get};
use nvml_wrapper::{Device, Nvml};

use super::{
    FieldError, GpmMetrics, GpuInfo, GpuProcess, GpuReading, GpuSource, GpuStatus, Inventory,
    MigInfo, MigReading, Tick,
};

/// The library loaded when no path is given: the soname NVIDIA's driver installs.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

/// Why NVML could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NvmlSourceError {
    /// The library could not be loaded at all.
    #[error(
        "no NVIDIA driver found: could not load {lib} ({detail}); on a machine without GPUs use \
         --nvml-lib with the fake library (cargo build -p fake-nvml, then --nvml-lib \
         target/debug/libfake_nvml.so; see fake-nvml/README.md)"
    )]
    LibraryNotFound {
        /// The library path or name.
        lib: String,
        /// The loader's message.
        detail: String,
    },
    /// The library loaded but the kernel driver is not running.
    #[error(
        "no NVIDIA driver found: {lib} loaded but reports that the NVIDIA driver is not loaded \
         (NVML_ERROR_DRIVER_NOT_LOADED); check the kernel module (nvidia-smi); on a machine \
         without GPUs use --nvml-lib with the fake library (see fake-nvml/README.md)"
    )]
    DriverNotLoaded {
        /// The library path or name.
        lib: String,
    },
    /// The driver refused us.
    #[error(
        "NVML through {lib} has no permission to talk to the NVIDIA driver; run the agent with \
         access to /dev/nvidia*"
    )]
    NoPermission {
        /// The library path or name.
        lib: String,
    },
    /// The library lacks `nvmlInit_v2`: not NVML, or far too old.
    #[error("{lib} is not a usable NVML library: {detail}")]
    NotNvml {
        /// The library path or name.
        lib: String,
        /// Which symbol was missing.
        detail: String,
    },
    /// Any other initialisation failure.
    #[error("NVML initialisation through {lib} failed: {source}")]
    Init {
        /// The library path or name.
        lib: String,
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// NVML started but could not count the GPUs.
    #[error("NVML could not count the GPUs: {0}")]
    DeviceCount(#[source] NvmlError),
}

/// A loaded and initialised NVML library. Shut down (`nvmlShutdown`) on drop.
pub struct NvmlLibrary {
    nvml: Nvml,
    path: OsString,
}

impl std::fmt::Debug for NvmlLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlLibrary")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl NvmlLibrary {
    /// Loads and initialises NVML from `path`: a file, or a name the dynamic linker
    /// resolves (default [`DEFAULT_LIB`]).
    pub fn open(path: impl AsRef<OsStr>) -> Result<NvmlLibrary, NvmlSourceError> {
        let path = path.as_ref();
        let lib = path.to_string_lossy().into_owned();
        let nvml = Nvml::builder().lib_path(path).init().map_err(|e| match e {
            NvmlError::LibloadingError(detail) => NvmlSourceError::LibraryNotFound {
                lib: lib.clone(),
                detail: detail.to_string(),
            },
            NvmlError::DriverNotLoaded => NvmlSourceError::DriverNotLoaded { lib: lib.clone() },
            NvmlError::NoPermission => NvmlSourceError::NoPermission { lib: lib.clone() },
            NvmlError::FailedToLoadSymbol(detail) => NvmlSourceError::NotNvml {
                lib: lib.clone(),
                detail,
            },
            source => NvmlSourceError::Init {
                lib: lib.clone(),
                source,
            },
        })?;
        Ok(NvmlLibrary {
            nvml,
            path: path.to_os_string(),
        })
    }

    /// The path or name it was loaded from.
    pub fn path(&self) -> &OsStr {
        &self.path
    }

    /// The nvml-wrapper handle, for anything the source does not cover.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }
}

/// When to try a failed GPU again: after `initial`, doubling per failed attempt up to
/// `max`. A lost GPU usually needs a reset to come back; polling it every tick would only
/// add blocking calls to every sampling step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between retries.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
        }
    }
}

/// The GPM metrics read each tick, in [`GpmMetrics`] field order.
const GPM_IDS: [GpmMetricId; 6] = [
    GpmMetricId::AnyTensorUtil,
    GpmMetricId::HmmaTensorUtil,
    GpmMetricId::Fp64Util,
    GpmMetricId::Fp32Util,
    GpmMetricId::Fp16Util,
    GpmMetricId::SmUtil,
];
const GPM_FIELDS: [&str; 6] = [
    "gpm.any_tensor",
    "gpm.hmma",
    "gpm.fp64",
    "gpm.fp32",
    "gpm.fp16",
    "gpm.sm_util",
];

struct Failure {
    lost: bool,
    reason: String,
    next_retry: Duration,
    backoff: Duration,
}

/// The end of the previous interval of one GPU.
struct Previous<'lib> {
    at: Duration,
    sample: Option<GpmSample<'lib>>,
    sm_clock_mhz: Option<u32>,
}

struct Slot<'lib> {
    device: Option<Device<'lib>>,
    previous: Option<Previous<'lib>>,
    failure: Option<Failure>,
    /// Newest per-process utilisation sample seen (NVML's µs timestamp).
    last_process_sample: u64,
    /// Per MIG instance (by UUID): its ids once seen, and its previous GPM sample.
    mig: HashMap<String, MigSlot<'lib>>,
}

struct MigSlot<'lib> {
    gpu_instance_id: Option<u32>,
    compute_instance_id: Option<u32>,
    sample: Option<GpmSample<'lib>>,
}

impl Slot<'_> {
    fn new() -> Self {
        Slot {
            device: None,
            previous: None,
            failure: None,
            last_process_sample: 0,
            mig: HashMap::new(),
        }
    }
}

/// The GPU was lost during a read: the reading is abandoned.
struct Lost(String);

/// The NVML implementation of [`GpuSource`]. Borrows its [`NvmlLibrary`], so the library
/// outlives every handle and GPM sample taken from it.
pub struct NvmlSource<'lib> {
    nvml: &'lib Nvml,
    retry: RetryPolicy,
    inventory: Inventory,
    slots: Vec<Slot<'lib>>,
}

impl std::fmt::Debug for NvmlSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("retry", &self.retry)
            .field("inventory", &self.inventory)
            .finish_non_exhaustive()
    }
}

impl<'lib> NvmlSource<'lib> {
    /// Takes the inventory. GPUs that cannot be reached now are listed with what is known
    /// (their index) and retried on the first [`GpuSource::read`].
    pub fn new(lib: &'lib NvmlLibrary, retry: RetryPolicy) -> Result<Self, NvmlSourceError> {
        let nvml = &lib.nvml;
        let count = nvml.device_count().map_err(NvmlSourceError::DeviceCount)?;
        let mut gpus = Vec::new();
        let mut slots = Vec::new();
        for index in 0..count {
            let mut info = GpuInfo::unidentified(index);
            let slot = match nvml.device_by_index(index) {
                Ok(device) => {
                    fill_info(&mut info, &device);
                    Slot {
                        device: Some(device),
                        ..Slot::new()
                    }
                }
                Err(e) => Slot {
                    failure: Some(Failure {
                        lost: matches!(e, NvmlError::GpuLost),
                        reason: e.to_string(),
                        next_retry: Duration::ZERO,
                        backoff: retry.initial,
                    }),
                    ..Slot::new()
                },
            };
            gpus.push(info);
            slots.push(slot);
        }
        Ok(NvmlSource {
            nvml,
            retry,
            inventory: Inventory {
                driver_version: nvml.sys_driver_version().ok(),
                nvml_version: nvml.sys_nvml_version().ok(),
                gpus,
            },
            slots,
        })
    }

    fn fail(&mut self, index: usize, now: Duration, lost: bool, reason: String) -> GpuReading {
        let retry = self.retry;
        let slot = &mut self.slots[index];
        slot.device = None;
        // Dropping the previous sample ends the interval: the next reading is a baseline.
        slot.previous = None;
        slot.mig.clear();
        let backoff = match &slot.failure {
            Some(f) => (f.backoff * 2).min(retry.max),
            None => retry.initial,
        };
        let next_retry = now + backoff;
        slot.failure = Some(Failure {
            lost,
            reason: reason.clone(),
            next_retry,
            backoff,
        });
        let info = &self.inventory.gpus[index];
        GpuReading::failed(
            info.index,
            info.uuid.clone(),
            GpuStatus::Failed {
                lost,
                reason,
                next_retry_seconds: next_retry.as_secs_f64(),
            },
        )
    }

    fn read_gpu(&mut self, index: usize, now: Duration) -> GpuReading {
        if let Some(f) = &self.slots[index].failure
            && now < f.next_retry
        {
            let info = &self.inventory.gpus[index];
            return GpuReading::failed(
                info.index,
                info.uuid.clone(),
                GpuStatus::Failed {
                    lost: f.lost,
                    reason: f.reason.clone(),
                    next_retry_seconds: f.next_retry.as_secs_f64(),
                },
            );
        }
        if self.slots[index].device.is_none() {
            // Re-acquire by UUID where known: after a reset the index may name another GPU.
            let info = &self.inventory.gpus[index];
            let acquired = match &info.uuid {
                Some(uuid) => self.nvml.device_by_uuid(uuid.as_str()),
                None => self.nvml.device_by_index(info.index),
            };
            match acquired {
                Ok(device) => {
                    fill_info(&mut self.inventory.gpus[index], &device);
                    let slot = &mut self.slots[index];
                    slot.device = Some(device);
                    slot.failure = None;
                }
                Err(e) => {
                    let lost = matches!(e, NvmlError::GpuLost);
                    return self.fail(index, now, lost, e.to_string());
                }
            }
        }
        let gpm_supported = self.inventory.gpus[index].gpm_supported;
        let mig_enabled = self.inventory.gpus[index].mig_enabled;
        let info_index = self.inventory.gpus[index].index;
        let uuid = self.inventory.gpus[index].uuid.clone();
        match read_device(
            self.nvml,
            &mut self.slots[index],
            now,
            gpm_supported,
            mig_enabled,
        ) {
            Ok(mut reading) => {
                reading.index = info_index;
                reading.uuid = uuid;
                if let Some(instances) = &reading.mig {
                    // Reconfiguration (instances destroyed and created) shows in the
                    // inventory the next Hello carries.
                    self.inventory.gpus[index].mig_instances =
                        instances.iter().map(|m| m.info.clone()).collect();
                }
                reading
            }
            Err(Lost(reason)) => self.fail(index, now, true, reason),
        }
    }
}

impl GpuSource for NvmlSource<'_> {
    fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    fn read(&mut self, now: Duration) -> Tick {
        let gpus = (0..self.slots.len())
            .map(|i| self.read_gpu(i, now))
            .collect();
        Tick {
            at_seconds: now.as_secs_f64(),
            gpus,
        }
    }
}

/// Fills what is missing from `info`; called at start-up and whenever a handle is
/// (re-)acquired, so a GPU unreachable at start-up is identified once it answers.
fn fill_info(info: &mut GpuInfo, device: &Device<'_>) {
    if info.uuid.is_none() {
        info.uuid = device.uuid().ok();
    }
    if info.name.is_none() {
        info.name = device.name().ok();
    }
    if info.pci_device_id.is_none() {
        // NVML packs the device id in the upper 16 bits, the vendor (0x10DE) in the lower.
        info.pci_device_id = device
            .pci_info()
            .ok()
            .map(|p| (p.pci_device_id >> 16) as u16);
    }
    if info.max_sm_clock_mhz.is_none() {
        info.max_sm_clock_mhz = device.max_clock_info(Clock::SM).ok();
    }
    if info.max_mem_clock_mhz.is_none() {
        info.max_mem_clock_mhz = device.max_clock_info(Clock::Memory).ok();
    }
    if info.memory_total_bytes.is_none() {
        info.memory_total_bytes = device.memory_info().ok().map(|m| m.total);
    }
    if !info.gpm_supported {
        info.gpm_supported = device.gpm_support().unwrap_or(false);
    }
    if info.sm_count.is_none() {
        info.sm_count = device.attributes().ok().map(|a| a.multiprocessor_count);
    }
    // MIG mode changes only with a GPU reset, which re-acquires the handle.
    info.mig_enabled = device.mig_mode().is_ok_and(|m| m.current == 1);
    info.catalogue = GpuInfo::lookup(info.pci_device_id, info.name.as_deref());
    info.name_conflict =
        flopmeter_core::catalogue::name_conflict(info.pci_device_id, info.name.as_deref());
}

/// Collects one field: its value, or `None` plus the reason; `GPU_IS_LOST` aborts the read.
struct Fields {
    unavailable: Vec<FieldError>,
}

impl Fields {
    fn take<T>(&mut self, field: &'static str, r: Result<T, NvmlError>) -> Result<Option<T>, Lost> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(NvmlError::GpuLost) => Err(Lost(format!("GPU lost while reading {field}"))),
            Err(e) => {
                self.unavailable.push(FieldError {
                    field,
                    error: e.to_string(),
                });
                Ok(None)
            }
        }
    }
}

fn read_device<'lib>(
    nvml: &'lib Nvml,
    slot: &mut Slot<'lib>,
    now: Duration,
    gpm_supported: bool,
    mig_enabled: bool,
) -> Result<GpuReading, Lost> {
    let Some(device) = slot.device.as_ref() else {
        return Err(Lost("no device handle".into()));
    };
    let mut f = Fields {
        unavailable: Vec::new(),
    };
    let sm_clock = f.take("sm_clock_mhz", device.clock_info(Clock::SM))?;
    let gpu_util = f.take("gpu_util_percent", device.utilization_rates())?;
    let power = f.take("power_mw", device.power_usage())?;
    let energy = f.take("energy_mj", device.total_energy_consumption())?;
    let memory = f.take("memory_used_bytes", device.memory_info())?;
    let processes = f.take("processes", device.running_compute_processes())?;
    let process_util = match device.process_utilization_stats(slot.last_process_sample) {
        // NOT_FOUND is NVML's "no samples newer than the timestamp": nothing ran, or no
        // time passed. It is not a failure of the function.
        Err(NvmlError::NotFound) => Some(Vec::new()),
        other => f.take("processes.sm_util_percent", other)?,
    };

    let sample = if gpm_supported {
        f.take("gpm", device.gpm_sample())?
    } else {
        None
    };
    let previous = slot.previous.take();
    let gpm = match (previous.as_ref().and_then(|p| p.sample.as_ref()), &sample) {
        (Some(earlier), Some(later)) => {
            match f.take("gpm", gpm_metrics_get(nvml, earlier, later, &GPM_IDS))? {
                Some(results) => {
                    let mut values = [None; 6];
                    for ((value, result), field) in values.iter_mut().zip(results).zip(GPM_FIELDS) {
                        *value = f.take(field, result.map(|m| m.value))?;
                    }
                    let [any_tensor, hmma, fp64, fp32, fp16, sm_util] = values;
                    Some(GpmMetrics {
                        any_tensor,
                        hmma,
                        fp64,
                        fp32,
                        fp16,
                        sm_util,
                    })
                }
                None => None,
            }
        }
        _ => None,
    };

    let mut per_process: HashMap<u32, (f64, u32)> = HashMap::new();
    if let Some(samples) = &process_util {
        for s in samples {
            let e = per_process.entry(s.pid).or_insert((0.0, 0));
            e.0 += f64::from(s.sm_util);
            e.1 += 1;
            slot.last_process_sample = slot.last_process_sample.max(s.timestamp);
        }
    }
    let mut processes: Option<Vec<GpuProcess>> = processes.map(|list| {
        list.into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
                sm_util_percent: per_process.get(&p.pid).map(|(sum, n)| sum / f64::from(*n)),
            })
            .collect()
    });
    // Some NVML implementations answer the null-buffer count query with SUCCESS and the
    // count instead of INSUFFICIENT_SIZE; nvml-wrapper 0.13 then returns an empty list. The
    // per-process utilisation samples still name the processes that ran, so they stand in
    // (without memory figures) rather than booking their work as unattributed.
    if let Some(list) = &mut processes
        && list.is_empty()
        && !per_process.is_empty()
    {
        let mut pids: Vec<u32> = per_process.keys().copied().collect();
        pids.sort_unstable();
        *list = pids
            .into_iter()
            .map(|pid| GpuProcess {
                pid,
                used_memory_bytes: None,
                sm_util_percent: per_process.get(&pid).map(|(sum, n)| sum / f64::from(*n)),
            })
            .collect();
    }
    let mig = if mig_enabled {
        Some(read_mig(
            nvml,
            device,
            &mut slot.mig,
            previous.is_some(),
            &mut f,
        )?)
    } else {
        None
    };

    let interval = previous
        .as_ref()
        .map(|p| now.saturating_sub(p.at).as_secs_f64());
    let mean_sm_clock_mhz = match (previous.as_ref().and_then(|p| p.sm_clock_mhz), sm_clock) {
        (Some(a), Some(b)) => Some((f64::from(a) + f64::from(b)) / 2.0),
        (None, Some(b)) => Some(f64::from(b)),
        _ => None,
    };
    slot.previous = Some(Previous {
        at: now,
        sample,
        sm_clock_mhz: sm_clock,
    });
    Ok(GpuReading {
        index: 0,
        uuid: None,
        status: GpuStatus::Ok,
        interval_seconds: interval,
        gpm_supported,
        gpm,
        sm_clock_mhz: sm_clock,
        mean_sm_clock_mhz,
        gpu_util_percent: gpu_util.map(|u| u.gpu),
        power_mw: power,
        energy_mj: energy,
        memory_used_bytes: memory.map(|m| m.used),
        processes,
        mig,
        unavailable: f.unavailable,
    })
}

/// Reads the MIG instances of a GPU in MIG mode: each one's identity, SMs, processes and,
/// over the interval, its own GPM metrics (`nvmlGpmMigSampleGet`, which needs the GPU
/// instance id). nvml-wrapper 0.13 does not wrap `nvmlDeviceGetGpuInstanceId`, and the
/// workspace forbids `unsafe` outside the fake, so the id is taken from the instance's
/// processes (NVML fills `gpuInstanceId` on every process of a MIG device) and kept until the
/// instance goes away. An instance whose id is not known yet, or whose per-instance sample
/// fails, has no `gpm` and is estimated by the bounded fallback.
fn read_mig<'lib>(
    nvml: &'lib Nvml,
    device: &Device<'lib>,
    slots: &mut HashMap<String, MigSlot<'lib>>,
    has_interval: bool,
    f: &mut Fields,
) -> Result<Vec<MigReading>, Lost> {
    let max = f.take("mig", device.mig_device_count())?.unwrap_or(0);
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for index in 0..max {
        let mig = match device.mig_device_by_index(index) {
            Ok(d) => d,
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(e) => {
                f.take::<()>("mig", Err(e))?;
                continue;
            }
        };
        let Some(uuid) = f.take("mig.uuid", mig.uuid())? else {
            continue;
        };
        let name = f.take("mig.name", mig.name())?.unwrap_or_default();
        let profile = name
            .rsplit_once(" MIG ")
            .map_or_else(|| name.clone(), |(_, p)| p.trim().to_string());
        let sm_count = f
            .take("mig.sm_count", mig.attributes())?
            .map(|a| a.multiprocessor_count);
        let listed = f
            .take("mig.processes", mig.running_compute_processes())?
            .unwrap_or_default();
        let state = slots.entry(uuid.clone()).or_insert(MigSlot {
            gpu_instance_id: None,
            compute_instance_id: None,
            sample: None,
        });
        if let Some(p) = listed.iter().find(|p| p.gpu_instance_id.is_some()) {
            state.gpu_instance_id = p.gpu_instance_id;
            state.compute_instance_id = p.compute_instance_id;
        }
        let sample = match state.gpu_instance_id {
            Some(gi) => f.take("mig.gpm", device.gpm_mig_sample(gi))?,
            None => None,
        };
        let gpm = match (has_interval, state.sample.as_ref(), sample.as_ref()) {
            (true, Some(earlier), Some(later)) => {
                match f.take("mig.gpm", gpm_metrics_get(nvml, earlier, later, &GPM_IDS))? {
                    Some(results) => {
                        let mut values = [None; 6];
                        for (value, result) in values.iter_mut().zip(results) {
                            *value = f.take("mig.gpm", result.map(|m| m.value))?;
                        }
                        let [any_tensor, hmma, fp64, fp32, fp16, sm_util] = values;
                        any_tensor.map(|_| GpmMetrics {
                            any_tensor,
                            hmma,
                            fp64,
                            fp32,
                            fp16,
                            sm_util,
                        })
                    }
                    None => None,
                }
            }
            _ => None,
        };
        state.sample = sample;
        seen.push(uuid.clone());
        out.push(MigReading {
            info: MigInfo {
                uuid,
                profile,
                gpu_instance_id: state.gpu_instance_id,
                compute_instance_id: state.compute_instance_id,
                sm_count,
            },
            gpm,
            processes: listed
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_util_percent: None,
                })
                .collect(),
        });
    }
    // A destroyed instance's state goes with it: a recreated one (new UUID) starts afresh.
    slots.retain(|uuid, _| seen.contains(uuid));
    Ok(out)
}
