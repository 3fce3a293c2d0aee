//! Scenario files: what the fake GPUs report over time, which faults to inject, and the
//! ground truth the reports stand for.
//!
//! # Format (TOML)
//!
//! Times are seconds since `nvmlInit` ("scenario time"). Utilisations are **percent**
//! (0–100), as NVML reports them. A *curve* is one of:
//!
//! - a number: constant, e.g. `tensor_util = 45.0`;
//! - `{ steps = [[t, v], ...] }`: `v_i` from `t_i` until the next point (the first value
//!   before the first point), e.g. `{ steps = [[0, 45], [10, 5], [12, 45]] }`;
//! - `{ ramp = [[t, v], ...] }`: straight lines between points, constant outside them.
//!
//! ```toml
//! driver_version = "550.54.15"          # nvmlSystemGetDriverVersion
//! nvml_version = "12.550.54.15"         # optional; default "12.<driver_version>"
//! cuda_driver_version = 12040           # optional; default 12040
//!
//! [truth]                               # scenario-wide ground truth (a GPU may override)
//! precision = "bf16"                    # what really ran (informational: tests declare it)
//! tensor_flop_per_clk_per_sm = 4096     # dense FLOP per clock per SM of the tensor pipe
//! fp32_flop_per_clk_per_sm = 256        # non-tensor pipes (default 0)
//! fp16_flop_per_clk_per_sm = 512
//! fp64_flop_per_clk_per_sm = 128
//!
//! [[gpu]]
//! count = 8                             # optional (default 1): this many identical GPUs
//! name = "NVIDIA H100 80GB HBM3"        # nvmlDeviceGetName
//! uuid = "GPU-5f0e2a4c-0000-4000-8000-00000000000{index}"  # {index} = NVML index
//! pci_device_id = 0x2330                # upper 16 bits of pciDeviceId (vendor 0x10DE)
//! sm_count = 132
//! max_sm_clock_mhz = 1980               # nvmlDeviceGetMaxClockInfo(SM / graphics)
//! max_mem_clock_mhz = 2619              # optional, default 2619
//! gpm = true                            # nvmlGpmQueryDeviceSupport
//! memory_total_mib = 81559
//!
//! [gpu.metrics]                         # every metric is a curve; defaults in brackets
//! sm_clock_mhz = 1755                   # [max_sm_clock_mhz] nvmlDeviceGetClockInfo(SM/graphics)
//! mem_clock_mhz = 2619                  # [max_mem_clock_mhz]
//! tensor_util = 45.0                    # [0] GPM ANY_TENSOR_UTIL; for gpm = false GPUs it is
//!                                       #     hidden from NVML but still defines the truth
//! hmma_util = 45.0                      # [tensor_util] GPM HMMA_TENSOR_UTIL
//! imma_util = 0.0                       # [0] GPM IMMA_TENSOR_UTIL
//! dfma_util = 0.0                       # [0] GPM DFMA_TENSOR_UTIL
//! fp32_util = 3.0                       # [0] GPM FP32_UTIL (non-tensor)
//! fp16_util = 1.0                       # [0] GPM FP16_UTIL (non-tensor)
//! fp64_util = 0.0                       # [0] GPM FP64_UTIL
//! sm_util = 80.0                        # [tensor_util] GPM SM_UTIL
//! gpu_util = 98.0                       # [0] utilization.gpu (nvmlDeviceGetUtilizationRates);
//!                                       #     also GPM GRAPHICS_UTIL
//! mem_util = 40.0                       # [0] utilization.memory
//! power_w = { ramp = [[0, 120], [2, 610]] }  # [0] nvmlDeviceGetPowerUsage; energy is its
//!                                       #     exact integral since init
//! temperature_c = 60.0                  # [40]
//!
//! [[gpu.processes]]                     # nvmlDeviceGetComputeRunningProcesses_v3
//! pid = 4242
//! pid_stride = 1                        # [0] with count > 1: the k-th GPU of the entry
//!                                       #     sees pid + k·pid_stride (one rank per GPU)
//! used_memory_mib = 61440
//! sm_share = 0.5                        # [0] share of sm_util this process reports in
//!                                       #     nvmlDeviceGetProcessUtilization
//! from = 0.0                            # [always] listed from this time ...
//! until = 100.0                         # ... until this time
//!
//! [gpu.truth]                           # optional per-GPU override of [truth]
//! # same keys as [truth]
//!
//! [faults]
//! init_error = 9                        # nvmlInit returns this code (9 = driver not loaded)
//!
//! [[faults.errors]]                     # a function returns `code` instead of working
//! function = "nvmlDeviceGetPowerUsage"
//! code = 3                              # 3 = NOT_SUPPORTED
//! gpu = 2                               # optional: only this GPU (default: every call)
//! from = 0.0                            # optional time window (default: always)
//! until = 1e9
//!
//! [[faults.lost]]                       # every call for the GPU returns 15 (GPU_IS_LOST)
//! gpu = 1                               # from `at` until `recovered_at` (default: forever)
//! at = 5.0
//! recovered_at = 9.0
//!
//! [[faults.gpm_metric_errors]]          # one GPM metric comes back with its own error code
//! metric = 13                           # NVML_GPM_METRIC_FP16_UTIL
//! code = 3
//! gpu = 0                               # optional
//! ```
//!
//! GPU entries expand in order, so with `count = 8` the first entry is GPUs 0–7 and the next
//! entry starts at 8; per-GPU faults use these indices.
//!
//! # Ground truth
//!
//! [`Scenario::true_flop`] integrates, over any window, what the scenario's own arithmetic
//! says ran: `Σ_pipe util_pipe(t)/100 · SMs · rate_pipe · f_SM(t)·10^6` over the tensor pipe
//! (`tensor_util`) and the FP32/FP16/FP64 pipes. It never consults an estimator: a test that
//! asked the estimator for the truth would check nothing.

mod playback;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::curve::{Curve, integral_of_product};

/// Every NVML function the fake exports. `[[faults.errors]]` must name one of these, so a
/// typo in a scenario fails loudly instead of silently injecting nothing.
pub const FUNCTIONS: &[&str] = &[
    "nvmlInit_v2",
    "nvmlInit",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetProcessUtilization",
    "nvmlGpmQueryDeviceSupport",
    "nvmlGpmSampleAlloc",
    "nvmlGpmSampleFree",
    "nvmlGpmSampleGet",
    "nvmlGpmMetricsGet",
    "nvmlEventSetFree",
    // What every monitoring tool calls besides (nvidia-smi, nvitop, dcgm-exporter).
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetFanSpeed_v2",
    "nvmlDeviceGetNumFans",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetPerformanceState",
    "nvmlDeviceGetPersistenceMode",
    "nvmlDeviceGetComputeMode",
    "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetMinorNumber",
    "nvmlDeviceGetBAR1MemoryInfo",
    "nvmlDeviceGetDisplayActive",
    "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth",
    // MIG.
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetAttributes_v2",
    "nvmlGpmMigSampleGet",
];

/// GPM metric ids (`nvmlGpmMetricId_t`) the fake computes. Others come back with a
/// per-metric NOT_SUPPORTED.
pub mod gpm_metric {
    /// `NVML_GPM_METRIC_GRAPHICS_UTIL`.
    pub const GRAPHICS_UTIL: u32 = 1;
    /// `NVML_GPM_METRIC_SM_UTIL`.
    pub const SM_UTIL: u32 = 2;
    /// `NVML_GPM_METRIC_ANY_TENSOR_UTIL`.
    pub const ANY_TENSOR_UTIL: u32 = 5;
    /// `NVML_GPM_METRIC_DFMA_TENSOR_UTIL`.
    pub const DFMA_TENSOR_UTIL: u32 = 6;
    /// `NVML_GPM_METRIC_HMMA_TENSOR_UTIL`.
    pub const HMMA_TENSOR_UTIL: u32 = 7;
    /// `NVML_GPM_METRIC_IMMA_TENSOR_UTIL`.
    pub const IMMA_TENSOR_UTIL: u32 = 9;
    /// `NVML_GPM_METRIC_FP64_UTIL`.
    pub const FP64_UTIL: u32 = 11;
    /// `NVML_GPM_METRIC_FP32_UTIL`.
    pub const FP32_UTIL: u32 = 12;
    /// `NVML_GPM_METRIC_FP16_UTIL`.
    pub const FP16_UTIL: u32 = 13;
}

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the format.
    #[error("invalid scenario {path}: {source}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// The TOML parsed but makes no sense.
    #[error("invalid scenario {path}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a ground-truth figure could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TruthError {
    /// No such GPU index.
    #[error("no GPU {0} in the scenario")]
    NoGpu(usize),
    /// Neither the GPU nor the scenario has a `[truth]` table.
    #[error("GPU {0} has no ground truth ([truth] or [gpu.truth])")]
    NoTruth(usize),
}

/// The ground truth of a GPU: what really ran, per clock per SM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    /// The precision that really ran (`bf16`, `fp8`, `tf32`, ...). Tests pass it to the
    /// estimator as the declared precision; the fake itself only reports it.
    pub precision: String,
    /// Dense FLOP per clock per SM of the tensor pipe at that precision.
    pub tensor_flop_per_clk_per_sm: f64,
    /// FLOP per clock per SM of the non-tensor FP32 pipe.
    #[serde(default)]
    pub fp32_flop_per_clk_per_sm: f64,
    /// FLOP per clock per SM of the non-tensor FP16 pipe.
    #[serde(default)]
    pub fp16_flop_per_clk_per_sm: f64,
    /// FLOP per clock per SM of the non-tensor FP64 pipe.
    #[serde(default)]
    pub fp64_flop_per_clk_per_sm: f64,
}

/// Every metric curve of one GPU, defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// SM (and graphics) clock, MHz.
    pub sm_clock_mhz: Curve,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Curve,
    /// Any-tensor pipe activity, percent (GPM `ANY_TENSOR_UTIL`).
    pub tensor_util: Curve,
    /// HMMA tensor activity, percent.
    pub hmma_util: Curve,
    /// IMMA tensor activity, percent.
    pub imma_util: Curve,
    /// DFMA tensor activity, percent.
    pub dfma_util: Curve,
    /// Non-tensor FP32 activity, percent.
    pub fp32_util: Curve,
    /// Non-tensor FP16 activity, percent.
    pub fp16_util: Curve,
    /// Non-tensor FP64 activity, percent.
    pub fp64_util: Curve,
    /// SM activity, percent.
    pub sm_util: Curve,
    /// `utilization.gpu`, percent.
    pub gpu_util: Curve,
    /// `utilization.memory`, percent.
    pub mem_util: Curve,
    /// Board power, W.
    pub power_w: Curve,
    /// Temperature, °C.
    pub temperature_c: Curve,
}

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Process id (after `count` expansion: `pid + k·pid_stride` on the entry's k-th GPU).
    pub pid: u32,
    /// Added to `pid` per GPU of a `count` entry, so each GPU can have its own rank.
    #[serde(default)]
    pub pid_stride: u32,
    /// GPU memory in MiB.
    pub used_memory_mib: u64,
    /// Share of the GPU's SM utilisation this process reports, 0–1.
    #[serde(default)]
    pub sm_share: f64,
    /// Listed from this scenario time on.
    #[serde(default)]
    pub from: Option<f64>,
    /// Listed until this scenario time.
    #[serde(default)]
    pub until: Option<f64>,
}

impl Process {
    /// Whether the process is running at `t`.
    pub fn running_at(&self, t: f64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.until.is_none_or(|u| t < u)
    }
}

/// One GPU of a scenario, after `count` expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// NVML index.
    pub index: u32,
    /// NVML name.
    pub name: String,
    /// NVML UUID.
    pub uuid: String,
    /// PCI device id (without the vendor half).
    pub pci_device_id: u16,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Max SM clock, MHz.
    pub max_sm_clock_mhz: u32,
    /// Max memory clock, MHz.
    pub max_mem_clock_mhz: u32,
    /// Whether GPM is supported.
    pub gpm: bool,
    /// Framebuffer size, MiB.
    pub memory_total_mib: u64,
    /// Metric curves.
    pub metrics: Metrics,
    /// Compute processes.
    pub processes: Vec<Process>,
    /// Ground truth (the GPU's own, else the scenario's).
    pub truth: Option<Truth>,
    /// Power limit (W), `None`: NOT_SUPPORTED.
    pub power_limit_w: Option<f64>,
    /// NVLink links (NVML field 91), `None`: NOT_SUPPORTED.
    pub nvlink_links: Option<u32>,
    /// MIG instances; non-empty means the GPU is in MIG mode.
    pub mig: Vec<MigInstance>,
}

impl Gpu {
    /// Whether the GPU is in MIG mode.
    pub fn mig_enabled(&self) -> bool {
        !self.mig.is_empty()
    }

    /// The compute processes running at `t` with their MIG (GPU, compute) instance ids, or
    /// `None` for a GPU not in MIG mode.
    pub fn processes_at(&self, t: f64) -> Vec<(&Process, Option<(u32, u32)>)> {
        if self.mig_enabled() {
            self.mig
                .iter()
                .filter(|m| m.exists_at(t))
                .flat_map(|m| {
                    m.processes
                        .iter()
                        .filter(move |p| p.running_at(t))
                        .map(move |p| (p, Some((m.gpu_instance_id, m.compute_instance_id))))
                })
                .collect()
        } else {
            self.processes
                .iter()
                .filter(|p| p.running_at(t))
                .map(|p| (p, None))
                .collect()
        }
    }
}

/// An injected error code for one function.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionFault {
    /// The NVML function, e.g. `nvmlDeviceGetPowerUsage`.
    pub function: String,
    /// The `nvmlReturn_t` to return.
    pub code: u32,
    /// Only for this GPU; every call if absent.
    #[serde(default)]
    pub gpu: Option<u32>,
    /// From this scenario time.
    #[serde(default)]
    pub from: Option<f64>,
    /// Until this scenario time.
    #[serde(default)]
    pub until: Option<f64>,
}

/// A GPU that falls off the bus.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LostFault {
    /// The GPU.
    pub gpu: u32,
    /// When it is lost.
    pub at: f64,
    /// When it comes back, if ever.
    #[serde(default)]
    pub recovered_at: Option<f64>,
}

/// One GPM metric that fails with its own return code.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricFault {
    /// The `nvmlGpmMetricId_t`.
    pub metric: u32,
    /// The per-metric `nvmlReturn_t`.
    pub code: u32,
    /// Only for this GPU; all if absent.
    #[serde(default)]
    pub gpu: Option<u32>,
}

/// Faults to inject.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// `nvmlInit*` returns this code.
    #[serde(default)]
    pub init_error: Option<u32>,
    /// Per-function error codes.
    #[serde(default)]
    pub errors: Vec<FunctionFault>,
    /// Lost GPUs.
    #[serde(default)]
    pub lost: Vec<LostFault>,
    /// Per-metric GPM errors.
    #[serde(default)]
    pub gpm_metric_errors: Vec<MetricFault>,
    /// Energy counters that freeze (stop counting while the board draws power).
    #[serde(default)]
    pub energy_frozen: Vec<FrozenEnergy>,
}

/// An energy counter stuck at its value from `from` until `until` (default: for ever),
/// while power goes on; it then jumps to the true integral again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenEnergy {
    /// The GPU.
    pub gpu: u32,
    /// From this time.
    pub from: f64,
    /// Until this time.
    #[serde(default)]
    pub until: Option<f64>,
}

/// How the fake answers the null-buffer "how many processes" query of
/// `nvmlDeviceGetComputeRunningProcesses_v3` (`count = 0`, `infos = NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CountProtocol {
    /// NVML's documented answer: `NVML_ERROR_INSUFFICIENT_SIZE` with `*count` set.
    #[default]
    InsufficientSize,
    /// `NVML_SUCCESS` with `*count` set, as some NVML implementations answer (nvml-wrapper
    /// 0.13 and pynvml then return an empty list).
    Success,
}

/// A driver reload: the energy counter restarts from zero at `at`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverReload {
    /// Scenario time of the reload.
    pub at: f64,
}

/// One MIG instance (a GPU instance with one compute instance) of a GPU in MIG mode.
#[derive(Debug, Clone, PartialEq)]
pub struct MigInstance {
    /// Profile name, e.g. `3g.40gb` (the MIG device's NVML name ends with it).
    pub profile: String,
    /// The MIG device's UUID (`MIG-...`).
    pub uuid: String,
    /// GPU instance id.
    pub gpu_instance_id: u32,
    /// Compute instance id (within the GPU instance).
    pub compute_instance_id: u32,
    /// SMs of the instance.
    pub sm_count: u32,
    /// Memory of the instance, MiB.
    pub memory_mib: u64,
    /// Exists from this time (created by the operator) ...
    pub from: Option<f64>,
    /// ... until this time (destroyed).
    pub until: Option<f64>,
    /// Activity curves, percent of the instance's own SMs (what per-instance GPM reports).
    pub metrics: Metrics,
    /// Processes on the instance.
    pub processes: Vec<Process>,
}

impl MigInstance {
    /// Whether the instance exists at `t`.
    pub fn exists_at(&self, t: f64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.until.is_none_or(|u| t < u)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigFile {
    profile: String,
    uuid: String,
    gpu_instance_id: u32,
    #[serde(default)]
    compute_instance_id: u32,
    sm_count: u32,
    memory_mib: u64,
    #[serde(default)]
    from: Option<f64>,
    #[serde(default)]
    until: Option<f64>,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    processes: Vec<Process>,
}

/// A loaded, validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `nvmlSystemGetDriverVersion`.
    pub driver_version: String,
    /// `nvmlSystemGetNVMLVersion`.
    pub nvml_version: String,
    /// `nvmlSystemGetCudaDriverVersion`.
    pub cuda_driver_version: i32,
    /// The GPUs, in NVML index order.
    pub gpus: Vec<Gpu>,
    /// Faults.
    pub faults: Faults,
    /// How the null-buffer process count query is answered.
    pub process_count_protocol: CountProtocol,
    /// The Unix time (µs) of scenario time 0 for process-utilisation timestamps; `None`: the
    /// wall clock at `nvmlInit`.
    pub epoch_unix_us: Option<u64>,
    /// Driver reloads (energy counter resets).
    pub driver_reloads: Vec<DriverReload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    driver_version: String,
    #[serde(default)]
    nvml_version: Option<String>,
    #[serde(default)]
    cuda_driver_version: Option<i32>,
    #[serde(default)]
    truth: Option<Truth>,
    #[serde(default)]
    gpu: Vec<GpuFile>,
    #[serde(default)]
    faults: Faults,
    #[serde(default)]
    process_count_protocol: CountProtocol,
    #[serde(default)]
    epoch_unix_us: Option<u64>,
    #[serde(default)]
    driver_reload: Vec<DriverReload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuFile {
    #[serde(default)]
    count: Option<u32>,
    name: String,
    uuid: String,
    pci_device_id: u16,
    sm_count: u32,
    max_sm_clock_mhz: u32,
    #[serde(default)]
    max_mem_clock_mhz: Option<u32>,
    gpm: bool,
    memory_total_mib: u64,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    processes: Vec<Process>,
    #[serde(default)]
    truth: Option<Truth>,
    #[serde(default)]
    power_limit_w: Option<f64>,
    #[serde(default)]
    nvlink_links: Option<u32>,
    #[serde(default)]
    mig: Vec<MigFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    sm_clock_mhz: Option<Curve>,
    mem_clock_mhz: Option<Curve>,
    tensor_util: Option<Curve>,
    hmma_util: Option<Curve>,
    imma_util: Option<Curve>,
    dfma_util: Option<Curve>,
    fp32_util: Option<Curve>,
    fp16_util: Option<Curve>,
    fp64_util: Option<Curve>,
    sm_util: Option<Curve>,
    gpu_util: Option<Curve>,
    mem_util: Option<Curve>,
    power_w: Option<Curve>,
    temperature_c: Option<Curve>,
}

const DEFAULT_MAX_MEM_CLOCK_MHZ: u32 = 2619;
const DEFAULT_CUDA_DRIVER_VERSION: i32 = 12040;

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            path: origin.to_string(),
            message,
        };
        let mut gpus = Vec::new();
        for spec in file.gpu {
            let count = spec.count.unwrap_or(1);
            if count > 1 && !spec.uuid.contains("{index}") {
                return Err(invalid(format!(
                    "GPU entry {:?} has count = {count} but its uuid has no {{index}}, so the UUIDs would repeat",
                    spec.name
                )));
            }
            let max_mem = spec.max_mem_clock_mhz.unwrap_or(DEFAULT_MAX_MEM_CLOCK_MHZ);
            let metrics = resolve_metrics(spec.metrics, spec.max_sm_clock_mhz, max_mem);
            let mut mig = Vec::new();
            for m in spec.mig {
                if m.sm_count == 0 || m.sm_count > spec.sm_count {
                    return Err(invalid(format!(
                        "MIG instance {} has sm_count {} (the GPU has {})",
                        m.uuid, m.sm_count, spec.sm_count
                    )));
                }
                mig.push(MigInstance {
                    profile: m.profile,
                    uuid: m.uuid,
                    gpu_instance_id: m.gpu_instance_id,
                    compute_instance_id: m.compute_instance_id,
                    sm_count: m.sm_count,
                    memory_mib: m.memory_mib,
                    from: m.from,
                    until: m.until,
                    metrics: resolve_metrics(m.metrics, spec.max_sm_clock_mhz, max_mem),
                    processes: m.processes,
                });
            }
            if !mig.is_empty() && count > 1 {
                return Err(invalid(format!(
                    "GPU entry {:?}: a MIG layout needs its own [[gpu]] entry (count = 1), \
                     since MIG UUIDs are per GPU",
                    spec.name
                )));
            }
            for p in &spec.processes {
                if !(0.0..=1.0).contains(&p.sm_share) {
                    return Err(invalid(format!(
                        "process {} has sm_share {} outside 0..1",
                        p.pid, p.sm_share
                    )));
                }
            }
            for k in 0..count {
                let index = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
                let processes = spec
                    .processes
                    .iter()
                    .map(|p| Process {
                        pid: p.pid.saturating_add(k.saturating_mul(p.pid_stride)),
                        ..p.clone()
                    })
                    .collect();
                gpus.push(Gpu {
                    index,
                    name: spec.name.clone(),
                    uuid: spec.uuid.replace("{index}", &index.to_string()),
                    pci_device_id: spec.pci_device_id,
                    sm_count: spec.sm_count,
                    max_sm_clock_mhz: spec.max_sm_clock_mhz,
                    max_mem_clock_mhz: max_mem,
                    gpm: spec.gpm,
                    memory_total_mib: spec.memory_total_mib,
                    metrics: metrics.clone(),
                    processes,
                    truth: spec.truth.clone().or_else(|| file.truth.clone()),
                    power_limit_w: spec.power_limit_w,
                    nvlink_links: spec.nvlink_links,
                    mig: mig.clone(),
                });
            }
        }
        let mut uuids = HashSet::new();
        for g in &gpus {
            for m in &g.mig {
                if !uuids.insert(m.uuid.as_str()) {
                    return Err(invalid(format!("duplicate UUID {}", m.uuid)));
                }
            }
            if !uuids.insert(g.uuid.as_str()) {
                return Err(invalid(format!("duplicate UUID {}", g.uuid)));
            }
            if g.name.len() >= 96 || g.uuid.len() >= 96 {
                return Err(invalid(format!(
                    "GPU {}: name and UUID must be shorter than 96 bytes",
                    g.index
                )));
            }
        }
        let n = gpus.len() as u32;
        let faults = file.faults;
        for f in &faults.errors {
            if !FUNCTIONS.contains(&f.function.as_str()) {
                return Err(invalid(format!(
                    "[[faults.errors]] names {:?}, which the fake does not export",
                    f.function
                )));
            }
            if f.gpu.is_some_and(|g| g >= n) {
                return Err(invalid(format!(
                    "[[faults.errors]] GPU {:?} out of range",
                    f.gpu
                )));
            }
        }
        if let Some(g) = faults
            .lost
            .iter()
            .map(|l| l.gpu)
            .chain(faults.gpm_metric_errors.iter().filter_map(|m| m.gpu))
            .find(|&g| g >= n)
        {
            return Err(invalid(format!("fault names GPU {g}, out of range")));
        }
        Ok(Scenario {
            nvml_version: file
                .nvml_version
                .unwrap_or_else(|| format!("12.{}", file.driver_version)),
            driver_version: file.driver_version,
            cuda_driver_version: file
                .cuda_driver_version
                .unwrap_or(DEFAULT_CUDA_DRIVER_VERSION),
            gpus,
            faults,
            process_count_protocol: file.process_count_protocol,
            epoch_unix_us: file.epoch_unix_us,
            driver_reloads: file.driver_reload,
        })
    }
}

fn resolve_metrics(m: MetricsFile, max_sm_clock_mhz: u32, max_mem: u32) -> Metrics {
    let tensor = m.tensor_util.unwrap_or_default();
    Metrics {
        sm_clock_mhz: m
            .sm_clock_mhz
            .unwrap_or(Curve::Constant(f64::from(max_sm_clock_mhz))),
        mem_clock_mhz: m
            .mem_clock_mhz
            .unwrap_or(Curve::Constant(f64::from(max_mem))),
        hmma_util: m.hmma_util.unwrap_or_else(|| tensor.clone()),
        sm_util: m.sm_util.unwrap_or_else(|| tensor.clone()),
        tensor_util: tensor,
        imma_util: m.imma_util.unwrap_or_default(),
        dfma_util: m.dfma_util.unwrap_or_default(),
        fp32_util: m.fp32_util.unwrap_or_default(),
        fp16_util: m.fp16_util.unwrap_or_default(),
        fp64_util: m.fp64_util.unwrap_or_default(),
        gpu_util: m.gpu_util.unwrap_or_default(),
        mem_util: m.mem_util.unwrap_or_default(),
        power_w: m.power_w.unwrap_or_default(),
        temperature_c: m.temperature_c.unwrap_or(Curve::Constant(40.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
driver_version = "550.54.15"
[truth]
precision = "bf16"
tensor_flop_per_clk_per_sm = 4096
fp32_flop_per_clk_per_sm = 256

[[gpu]]
count = 2
name = "NVIDIA H100 80GB HBM3"
uuid = "GPU-test-{index}"
pci_device_id = 0x2330
sm_count = 132
max_sm_clock_mhz = 1980
gpm = true
memory_total_mib = 81559
[gpu.metrics]
sm_clock_mhz = 1500
tensor_util = { steps = [[0, 50], [10, 0]] }
fp32_util = 10
power_w = { ramp = [[0, 100], [10, 300]] }
"#;

    #[test]
    fn parses_expands_and_defaults() {
        let s = Scenario::parse(MINIMAL, "minimal").unwrap();
        assert_eq!(s.gpus.len(), 2);
        assert_eq!(s.gpus[1].uuid, "GPU-test-1");
        assert_eq!(s.nvml_version, "12.550.54.15");
        assert_eq!(s.gpus[0].metrics.hmma_util, s.gpus[0].metrics.tensor_util);
        assert_eq!(s.gpus[0].max_mem_clock_mhz, 2619);
    }

    /// Hand calculation: tensor 50% for 10 s at 1500 MHz on 132 SMs at 4096/clk
    /// = 0.5·132·4096·1.5e9·10 = 4.05504e15; FP32 10% for 20 s: 0.1·132·256·1.5e9·20
    /// = 1.01376e14.
    #[test]
    fn truth_is_the_scenario_arithmetic() {
        let s = Scenario::parse(MINIMAL, "minimal").unwrap();
        let t = s.true_flop(0, 0.0, 20.0).unwrap();
        let expected = 4.05504e15 + 1.01376e14;
        assert!((t - expected).abs() / expected < 1e-12, "{t} vs {expected}");
        // Energy: ∫0..10 of 100→300 W = 2000 J, then 300 W.
        assert_eq!(s.energy_mj(0, 10.0), Some(2_000_000));
        assert_eq!(s.energy_mj(0, 11.0), Some(2_300_000));
    }

    #[test]
    fn rejects_typos_and_repeated_uuids() {
        let typo =
            format!("{MINIMAL}\n[[faults.errors]]\nfunction = \"nvmlDeviceGetPower\"\ncode = 3\n");
        assert!(matches!(
            Scenario::parse(&typo, "t"),
            Err(ScenarioError::Invalid { .. })
        ));
        let repeated = MINIMAL.replace("GPU-test-{index}", "GPU-test");
        assert!(matches!(
            Scenario::parse(&repeated, "t"),
            Err(ScenarioError::Invalid { .. })
        ));
        let unknown_key = MINIMAL.replace("fp32_util = 10", "fp32_utilisation = 10");
        assert!(matches!(
            Scenario::parse(&unknown_key, "t"),
            Err(ScenarioError::Parse { .. })
        ));
    }

    /// A driver reload restarts the energy counter: ∫ 100→300 W ramp over 10..11 s after a
    /// reload at 10 s is 300 J, not the 2,300 J since init.
    #[test]
    fn driver_reload_restarts_the_energy_counter() {
        let s =
            Scenario::parse(&format!("{MINIMAL}\n[[driver_reload]]\nat = 10.0\n"), "t").unwrap();
        assert_eq!(s.energy_mj(0, 9.0), Some(1_710_000));
        assert_eq!(s.energy_mj(0, 11.0), Some(300_000));
    }

    /// MIG truth is per instance and only while the instance exists: 50% of 60 SMs at
    /// 4096 FLOP/clk and 1500 MHz for the 4 s of [8, 12] the instance lives = 7.3728e14; the
    /// GPU's GPM is the SM-weighted sum (50% × 60/132 while it exists, half of [8, 12]).
    #[test]
    fn mig_truth_is_per_instance_and_lifetime() {
        let text = MINIMAL.replace("count = 2\n", "")
            + "[[gpu.mig]]\nprofile = \"3g.40gb\"\nuuid = \"MIG-a\"\ngpu_instance_id = 1\n\
               sm_count = 60\nmemory_mib = 40192\nfrom = 10.0\n[gpu.mig.metrics]\n\
               sm_clock_mhz = 1500\ntensor_util = 50.0\n";
        let s = Scenario::parse(&text, "t").unwrap();
        assert!(s.gpus[0].mig_enabled());
        let t = s.true_flop_mig(0, 0, 8.0, 14.0).unwrap();
        let expected = 0.5 * 60.0 * 4096.0 * 1.5e9 * 4.0;
        assert!((t - expected).abs() / expected < 1e-12, "{t}");
        assert_eq!(s.true_flop(0, 8.0, 14.0).unwrap(), t);
        let parent = s
            .gpm_mean(0, None, gpm_metric::ANY_TENSOR_UTIL, 8.0, 12.0)
            .unwrap();
        assert!(
            (parent - 50.0 * 60.0 / 132.0 / 2.0).abs() < 1e-9,
            "{parent}"
        );
    }
}
