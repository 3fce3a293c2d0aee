//! The exported NVML C API.
//!
//! Every entry point takes the global lock, works out the scenario time, applies the
//! injected faults (a lost GPU first, then a per-function error code) and only then does its
//! job. nvml-wrapper's `Device` is `Send + Sync`, so callers may come from any thread; one
//! mutex keeps that simple, and the fake is never the bottleneck of a test.
//!
//! Nothing here may panic: unwinding out of an `extern "C"` function aborts the caller's
//! process. Poisoned locks are recovered and malformed input becomes an NVML error code.

// The exported names are NVML's, not ours.
#![allow(non_snake_case)]
// The safety contract of every function here is the NVML C API's documentation for that
// function (valid, writable pointers of the documented types); restating it per function
// would add nothing.
#![allow(clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::abi::{
    DeviceAttributes, FieldValue, GPM_METRIC_MAX, GPM_METRICS_GET_VERSION, GPM_SUPPORT_VERSION,
    GpmMetric, GpmMetricsGet, GpmSupport, MEMORY_V2_VERSION, MemoryV1, MemoryV2, NvmlReturn,
    PciInfo, ProcessInfo, ProcessUtilizationSample, Utilization,
};
use crate::scenario::{CountProtocol, Gpu, MigInstance, Scenario, gpm_metric};
use crate::{CLOCK_ENV, CLOCK_FILE_NAME, SCENARIO_ENV, SCENARIO_FILE_NAME};

const SUCCESS: NvmlReturn = 0;
const UNINITIALIZED: NvmlReturn = 1;
const INVALID_ARGUMENT: NvmlReturn = 2;
const NOT_SUPPORTED: NvmlReturn = 3;
const NOT_FOUND: NvmlReturn = 6;
const INSUFFICIENT_SIZE: NvmlReturn = 7;
const GPU_IS_LOST: NvmlReturn = 15;
const ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
const UNKNOWN: NvmlReturn = 999;

/// Device handles are opaque to callers; encoding the index keeps them stable across
/// re-acquisition, as NVIDIA's are.
const HANDLE_BASE: usize = 0x4e56_0000;
/// GPM sample handles, likewise (a different range so mixing them up is caught).
const SAMPLE_BASE: usize = 0x5347_0000;
/// MIG device handles: `MIG_BASE + gpu · MIG_STRIDE + instance` (the instance's position in
/// the scenario's `[[gpu.mig]]` list, so a recreated instance is a new handle).
const MIG_BASE: usize = 0x4d49_0000;
const MIG_STRIDE: usize = 0x100;
/// `NVML_VALUE_NOT_AVAILABLE` for `usedGpuMemory`.
const MEMORY_NOT_AVAILABLE: u64 = u64::MAX;

struct Instance {
    scenario: Scenario,
    started: Instant,
    clock_file: Option<PathBuf>,
    last_clock: f64,
    refs: u32,
    /// Allocated GPM samples: `None` until `nvmlGpmSampleGet` (or `nvmlGpmMigSampleGet`)
    /// fills in (GPU, MIG instance, time).
    samples: HashMap<usize, Option<(usize, Option<usize>, f64)>>,
    next_sample: usize,
    /// Unix µs of scenario time 0 (process-utilisation timestamps).
    epoch_us: u64,
}

impl Instance {
    /// Scenario time: the clock file's content if there is one, else monotonic seconds
    /// since init. A clock file caught mid-rewrite keeps the last good value.
    fn now(&mut self) -> f64 {
        if let Some(path) = &self.clock_file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            if let Ok(t) = text.trim().parse::<f64>()
                && t.is_finite()
            {
                self.last_clock = t.max(0.0);
            }
            return self.last_clock;
        }
        self.started.elapsed().as_secs_f64()
    }
}

static STATE: Mutex<Option<Instance>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<Instance>> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The directory of the shared object this code was loaded from.
fn own_dir() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: ptr::null(),
        dli_fbase: ptr::null_mut(),
        dli_sname: ptr::null(),
        dli_saddr: ptr::null_mut(),
    };
    let here = own_dir as fn() -> Option<PathBuf> as *const c_void;
    // SAFETY: `here` is an address inside this object and `info` is a valid out-parameter.
    let found = unsafe { libc::dladdr(here, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path that lives as long as the mapping.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = Path::new(OsStr::from_bytes(name.to_bytes()));
    let dir = path.parent()?;
    Some(if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    })
}

fn scenario_path(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(beside) = dir.map(|d| d.join(SCENARIO_FILE_NAME))
        && beside.is_file()
    {
        return Some(beside);
    }
    std::env::var_os(SCENARIO_ENV).map(PathBuf::from)
}

fn clock_path(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(beside) = dir.map(|d| d.join(CLOCK_FILE_NAME))
        && beside.exists()
    {
        return Some(beside);
    }
    std::env::var_os(CLOCK_ENV)
        .map(PathBuf::from)
        .or_else(|| dir.map(|d| d.join(CLOCK_FILE_NAME)))
}

fn init() -> NvmlReturn {
    let mut guard = state();
    if let Some(instance) = guard.as_mut() {
        instance.refs += 1;
        return SUCCESS;
    }
    let dir = own_dir();
    let Some(path) = scenario_path(dir.as_deref()) else {
        eprintln!(
            "fake-nvml: no scenario: put {SCENARIO_FILE_NAME} beside the library or set {SCENARIO_ENV}"
        );
        return UNKNOWN;
    };
    let scenario = match Scenario::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-nvml: {e}");
            return UNKNOWN;
        }
    };
    if let Some(code) = scenario.faults.init_error {
        return code;
    }
    if let Some(code) = scenario.function_fault("nvmlInit_v2", None, 0.0) {
        return code;
    }
    *guard = Some(Instance {
        started: Instant::now(),
        // Decided once: a clock file that appears later still counts, because `now` tries
        // the path on every call.
        clock_file: clock_path(dir.as_deref()),
        last_clock: 0.0,
        refs: 1,
        samples: HashMap::new(),
        next_sample: 1,
        // NVML stamps process samples with the CPU's Unix time in µs, and clients ask for
        // "newer than now − 1 s" (nvitop), so without a fixed epoch the wall clock at init
        // keeps the stamps near real time when the scenario plays in real time.
        epoch_us: scenario.epoch_unix_us.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        }),
        scenario,
    });
    SUCCESS
}

/// Runs `f` for a system-level call after the uninitialised and fault checks.
fn system<F>(function: &str, f: F) -> NvmlReturn
where
    F: FnOnce(&mut Instance, f64) -> NvmlReturn,
{
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let t = instance.now();
    if let Some(code) = instance.scenario.function_fault(function, None, t) {
        return code;
    }
    f(instance, t)
}

fn device_index(device: *mut c_void, gpus: usize) -> Option<usize> {
    (device as usize)
        .checked_sub(HANDLE_BASE)
        .filter(|&i| i < gpus)
}

fn handle(index: usize) -> *mut c_void {
    (HANDLE_BASE + index) as *mut c_void
}

/// Runs `f` for a per-device call after the uninitialised, handle, lost-GPU and fault checks.
fn device<F>(function: &str, device: *mut c_void, f: F) -> NvmlReturn
where
    F: FnOnce(&Gpu, f64) -> NvmlReturn,
{
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let Some(index) = device_index(device, instance.scenario.gpus.len()) else {
        return INVALID_ARGUMENT;
    };
    let t = instance.now();
    let scenario = &instance.scenario;
    if scenario.is_lost(index as u32, t) {
        return GPU_IS_LOST;
    }
    if let Some(code) = scenario.function_fault(function, Some(index as u32), t) {
        return code;
    }
    f(&scenario.gpus[index], t)
}

/// What a handle names: a physical GPU, or one of its MIG instances.
#[derive(Clone, Copy)]
struct Target<'a> {
    index: usize,
    gpu: &'a Gpu,
    mig: Option<(usize, &'a MigInstance)>,
}

fn resolve(handle: *mut c_void, scenario: &Scenario, t: f64) -> Option<Target<'_>> {
    let raw = handle as usize;
    if let Some(index) = device_index(handle, scenario.gpus.len()) {
        return Some(Target {
            index,
            gpu: &scenario.gpus[index],
            mig: None,
        });
    }
    let offset = raw.checked_sub(MIG_BASE)?;
    let (index, instance) = (offset / MIG_STRIDE, offset % MIG_STRIDE);
    let gpu = scenario.gpus.get(index)?;
    let m = gpu.mig.get(instance).filter(|m| m.exists_at(t))?;
    Some(Target {
        index,
        gpu,
        mig: Some((instance, m)),
    })
}

/// Like [`device`], for calls that also accept MIG device handles; lost-GPU and fault
/// checks apply to the parent GPU.
fn any_device<F>(function: &str, handle: *mut c_void, f: F) -> NvmlReturn
where
    F: FnOnce(&Scenario, Target<'_>, f64, u64) -> NvmlReturn,
{
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let t = instance.now();
    let scenario = &instance.scenario;
    let Some(target) = resolve(handle, scenario, t) else {
        return INVALID_ARGUMENT;
    };
    let gpu = target.index as u32;
    if scenario.is_lost(gpu, t) {
        return GPU_IS_LOST;
    }
    if let Some(code) = scenario.function_fault(function, Some(gpu), t) {
        return code;
    }
    f(scenario, target, t, instance.epoch_us)
}

/// Writes `s` NUL-terminated into a caller buffer of `length` bytes.
///
/// # Safety
/// `buf` must be null or valid for `length` bytes of writes.
unsafe fn write_str(buf: *mut c_char, length: c_uint, s: &str) -> NvmlReturn {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > length as usize {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `length` writable bytes, and we write len + 1 ≤ length.
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    SUCCESS
}

/// Writes `value` through an out-pointer, or reports INVALID_ARGUMENT for null.
///
/// # Safety
/// `out` must be null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> NvmlReturn {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and, by the caller's contract, valid for writes.
    unsafe { out.write(value) };
    SUCCESS
}

fn round_u32(x: f64) -> c_uint {
    x.round().clamp(0.0, f64::from(u32::MAX)) as c_uint
}

fn percent(x: f64) -> c_uint {
    x.round().clamp(0.0, 100.0) as c_uint
}

fn copy_c_str<const N: usize>(s: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

// --- Library lifecycle and system queries. ---

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    init()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> NvmlReturn {
    init()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    init()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    instance.refs -= 1;
    if instance.refs == 0 {
        *guard = None;
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    let s: &'static CStr = match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        NOT_FOUND => c"Not Found",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        9 => c"Driver Not Loaded",
        GPU_IS_LOST => c"GPU is lost",
        ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    system("nvmlSystemGetDriverVersion", |i, _| {
        // SAFETY: NVML contract: `version` holds `length` bytes.
        unsafe { write_str(version, length, &i.scenario.driver_version) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    system("nvmlSystemGetNVMLVersion", |i, _| {
        // SAFETY: NVML contract: `version` holds `length` bytes.
        unsafe { write_str(version, length, &i.scenario.nvml_version) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> NvmlReturn {
    system("nvmlSystemGetCudaDriverVersion", |i, _| {
        // SAFETY: NVML contract: a writable int.
        unsafe { put(version, i.scenario.cuda_driver_version) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> NvmlReturn {
    system("nvmlSystemGetCudaDriverVersion_v2", |i, _| {
        // SAFETY: NVML contract: a writable int.
        unsafe { put(version, i.scenario.cuda_driver_version) }
    })
}

// --- Devices. ---

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    system("nvmlDeviceGetCount_v2", |i, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(count, i.scenario.gpus.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut *mut c_void,
) -> NvmlReturn {
    system("nvmlDeviceGetHandleByIndex_v2", |i, t| {
        let index = index as usize;
        if index >= i.scenario.gpus.len() {
            return INVALID_ARGUMENT;
        }
        if i.scenario.is_lost(index as u32, t) {
            return GPU_IS_LOST;
        }
        // `system` applied the global faults; this adds the ones aimed at this GPU.
        let gpu = Some(index as u32);
        if let Some(code) = i
            .scenario
            .function_fault("nvmlDeviceGetHandleByIndex_v2", gpu, t)
        {
            return code;
        }
        // SAFETY: NVML contract: a writable handle.
        unsafe { put(device, handle(index)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut *mut c_void,
) -> NvmlReturn {
    if uuid.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: NVML contract: a NUL-terminated string.
    let wanted = unsafe { CStr::from_ptr(uuid) }.to_bytes().to_vec();
    system("nvmlDeviceGetHandleByUUID", |i, t| {
        let mig = i.scenario.gpus.iter().enumerate().find_map(|(g, gpu)| {
            gpu.mig
                .iter()
                .position(|m| m.uuid.as_bytes() == wanted && m.exists_at(t))
                .map(|k| (g, k))
        });
        if let Some((g, k)) = mig {
            if i.scenario.is_lost(g as u32, t) {
                return GPU_IS_LOST;
            }
            // SAFETY: NVML contract: a writable handle.
            return unsafe { put(device, (MIG_BASE + g * MIG_STRIDE + k) as *mut c_void) };
        }
        let Some(index) = i
            .scenario
            .gpus
            .iter()
            .position(|g| g.uuid.as_bytes() == wanted)
        else {
            return NOT_FOUND;
        };
        if i.scenario.is_lost(index as u32, t) {
            return GPU_IS_LOST;
        }
        let gpu = Some(index as u32);
        if let Some(code) = i
            .scenario
            .function_fault("nvmlDeviceGetHandleByUUID", gpu, t)
        {
            return code;
        }
        // SAFETY: NVML contract: a writable handle.
        unsafe { put(device, handle(index)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: *mut c_void, index: *mut c_uint) -> NvmlReturn {
    device("nvmlDeviceGetIndex", dev, |g, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(index, g.index) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    dev: *mut c_void,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    any_device("nvmlDeviceGetName", dev, |_, d, _, _| {
        // A MIG device's name is the GPU's with the profile: "NVIDIA H100 80GB HBM3 MIG 3g.40gb".
        let text = match d.mig {
            Some((_, m)) => format!("{} MIG {}", d.gpu.name, m.profile),
            None => d.gpu.name.clone(),
        };
        // SAFETY: NVML contract: `name` holds `length` bytes.
        unsafe { write_str(name, length, &text) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    dev: *mut c_void,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    any_device("nvmlDeviceGetUUID", dev, |_, d, _, _| {
        let text = d.mig.map_or(d.gpu.uuid.as_str(), |(_, m)| m.uuid.as_str());
        // SAFETY: NVML contract: `uuid` holds `length` bytes.
        unsafe { write_str(uuid, length, text) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    dev: *mut c_void,
    pci: *mut PciInfo,
) -> NvmlReturn {
    device("nvmlDeviceGetPciInfo_v3", dev, |g, _| {
        // Bus numbers as on an HGX baseboard; any distinct values would do.
        let bus = 0x18 + g.index * 0x10;
        let info = PciInfo {
            bus_id_legacy: copy_c_str(&format!("0000:{bus:02X}:00.0")),
            domain: 0,
            bus,
            device: 0,
            pci_device_id: (u32::from(g.pci_device_id) << 16) | 0x10DE,
            pci_sub_system_id: (0x16C1 << 16) | 0x10DE,
            bus_id: copy_c_str(&format!("00000000:{bus:02X}:00.0")),
        };
        // SAFETY: NVML contract: a writable nvmlPciInfo_t.
        unsafe { put(pci, info) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    dev: *mut c_void,
    clock_type: c_uint,
    clock: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetClockInfo", dev, |g, t| {
        let m = &g.metrics;
        let mhz = match clock_type {
            // Graphics, SM and video clocks move together on data-centre parts.
            0 | 1 | 3 => m.sm_clock_mhz.at(t),
            2 => m.mem_clock_mhz.at(t),
            _ => return INVALID_ARGUMENT,
        };
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(clock, round_u32(mhz)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    dev: *mut c_void,
    clock_type: c_uint,
    clock: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetMaxClockInfo", dev, |g, _| {
        let mhz = match clock_type {
            0 | 1 | 3 => g.max_sm_clock_mhz,
            2 => g.max_mem_clock_mhz,
            _ => return INVALID_ARGUMENT,
        };
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(clock, mhz) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    dev: *mut c_void,
    utilization: *mut Utilization,
) -> NvmlReturn {
    device("nvmlDeviceGetUtilizationRates", dev, |g, t| {
        // NVML: "On MIG-enabled GPUs, querying device utilization rates is not currently
        // supported."
        if g.mig_enabled() {
            return NOT_SUPPORTED;
        }
        let u = Utilization {
            gpu: percent(g.metrics.gpu_util.at(t)),
            memory: percent(g.metrics.mem_util.at(t)),
        };
        // SAFETY: NVML contract: a writable nvmlUtilization_t.
        unsafe { put(utilization, u) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    dev: *mut c_void,
    power: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetPowerUsage", dev, |g, t| {
        // SAFETY: NVML contract: a writable uint (milliwatts).
        unsafe { put(power, round_u32(g.metrics.power_w.at(t) * 1e3)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    dev: *mut c_void,
    energy: *mut c_ulonglong,
) -> NvmlReturn {
    any_device("nvmlDeviceGetTotalEnergyConsumption", dev, |s, d, t, _| {
        if d.mig.is_some() {
            return NOT_SUPPORTED;
        }
        let mj = s.energy_mj(d.index, t).unwrap_or(0);
        // SAFETY: NVML contract: a writable u64 (millijoules).
        unsafe { put(energy, mj) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    dev: *mut c_void,
    sensor: c_uint,
    temp: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetTemperature", dev, |g, t| {
        if sensor != 0 {
            return INVALID_ARGUMENT;
        }
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(temp, round_u32(g.metrics.temperature_c.at(t))) }
    })
}

fn used_memory_bytes(d: Target<'_>, t: f64) -> u64 {
    let processes = match d.mig {
        Some((_, m)) => m.processes.iter().filter(|p| p.running_at(t)).collect(),
        None => d
            .gpu
            .processes_at(t)
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>(),
    };
    processes.iter().map(|p| p.used_memory_mib << 20).sum()
}

fn memory_total_bytes(d: Target<'_>) -> u64 {
    d.mig.map_or(d.gpu.memory_total_mib, |(_, m)| m.memory_mib) << 20
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    dev: *mut c_void,
    memory: *mut MemoryV2,
) -> NvmlReturn {
    any_device("nvmlDeviceGetMemoryInfo_v2", dev, |_, d, t, _| {
        if memory.is_null() {
            return INVALID_ARGUMENT;
        }
        // SAFETY: non-null; NVML contract: a readable and writable nvmlMemory_v2_t.
        let version = unsafe { (*memory).version };
        if version != MEMORY_V2_VERSION {
            return ARGUMENT_VERSION_MISMATCH;
        }
        let total = memory_total_bytes(d);
        let used = used_memory_bytes(d, t).min(total);
        let info = MemoryV2 {
            version,
            total,
            reserved: 0,
            free: total - used,
            used,
        };
        // SAFETY: as above.
        unsafe { put(memory, info) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    any_device(
        "nvmlDeviceGetComputeRunningProcesses_v3",
        dev,
        |s, d, t, _| {
            if count.is_null() {
                return INVALID_ARGUMENT;
            }
            // A MIG device lists its own processes; the GPU lists all of them, with their
            // instance ids and (as nvitop observes on MIG-enabled GPUs) no memory figure.
            let running: Vec<ProcessInfo> = match d.mig {
                Some((_, m)) => m
                    .processes
                    .iter()
                    .filter(|p| p.running_at(t))
                    .map(|p| ProcessInfo {
                        pid: p.pid,
                        used_gpu_memory: p.used_memory_mib << 20,
                        gpu_instance_id: m.gpu_instance_id,
                        compute_instance_id: m.compute_instance_id,
                    })
                    .collect(),
                None => d
                    .gpu
                    .processes_at(t)
                    .into_iter()
                    .map(|(p, mig)| ProcessInfo {
                        pid: p.pid,
                        used_gpu_memory: if mig.is_some() {
                            MEMORY_NOT_AVAILABLE
                        } else {
                            p.used_memory_mib << 20
                        },
                        gpu_instance_id: mig.map_or(u32::MAX, |(gi, _)| gi),
                        compute_instance_id: mig.map_or(u32::MAX, |(_, ci)| ci),
                    })
                    .collect(),
            };
            // SAFETY: non-null; NVML contract: a readable and writable uint.
            unsafe { write_list(&running, count, infos, s.process_count_protocol) }
        },
    )
}

/// The process-list protocol: `*count` in is the caller's capacity; a null buffer (or too
/// small a one) is answered with the count and INSUFFICIENT_SIZE (NVML's documented answer)
/// or, if the scenario says so, SUCCESS with the count; otherwise the entries are written and
/// `*count` is their number.
///
/// # Safety
/// `count` must be valid for reads and writes; `infos` null or valid for `*count` entries.
unsafe fn write_list<T: Copy>(
    items: &[T],
    count: *mut c_uint,
    infos: *mut T,
    protocol: CountProtocol,
) -> NvmlReturn {
    let n = items.len() as c_uint;
    // SAFETY: by the caller's contract.
    let capacity = unsafe { *count };
    if n == 0 {
        // SAFETY: as above.
        return unsafe { put(count, 0) };
    }
    if infos.is_null() || capacity < n {
        // SAFETY: as above.
        unsafe { put(count, n) };
        return match (protocol, infos.is_null()) {
            (CountProtocol::Success, true) => SUCCESS,
            _ => INSUFFICIENT_SIZE,
        };
    }
    for (k, item) in items.iter().enumerate() {
        // SAFETY: `infos` holds `capacity` ≥ n entries.
        unsafe { infos.add(k).write(*item) };
    }
    // SAFETY: as above.
    unsafe { put(count, n) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> NvmlReturn {
    any_device(
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        dev,
        |s, _, _, _| {
            if count.is_null() {
                return INVALID_ARGUMENT;
            }
            // Data-centre GPUs run no graphics contexts.
            // SAFETY: non-null; NVML contract as for the compute list.
            unsafe { write_list::<ProcessInfo>(&[], count, infos, s.process_count_protocol) }
        },
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    dev: *mut c_void,
    utilization: *mut ProcessUtilizationSample,
    count: *mut c_uint,
    last_seen: c_ulonglong,
) -> NvmlReturn {
    any_device(
        "nvmlDeviceGetProcessUtilization",
        dev,
        |_, d, t, epoch_us| {
            let g = d.gpu;
            if count.is_null() {
                return INVALID_ARGUMENT;
            }
            if d.mig.is_some() || g.mig_enabled() {
                return NOT_SUPPORTED;
            }
            // One sample per running process, stamped as NVML does: the CPU's Unix time in µs
            // (`nvmlProcessUtilizationSample_t.timeStamp`), here the epoch plus scenario time,
            // +1 so that a sample at t = 0 is newer than "never seen", which callers pass as 0.
            let stamp = epoch_us + (t * 1e6) as u64 + 1;
            let running: Vec<_> = g.processes.iter().filter(|p| p.running_at(t)).collect();
            if running.is_empty() || stamp <= last_seen {
                return NOT_FOUND;
            }
            let n = running.len() as c_uint;
            // SAFETY: non-null; NVML contract: a readable and writable uint.
            let capacity = unsafe { *count };
            if utilization.is_null() || capacity < n {
                // SAFETY: as above.
                unsafe { put(count, n) };
                return INSUFFICIENT_SIZE;
            }
            let sm = g.metrics.sm_util.at(t);
            let mem = g.metrics.mem_util.at(t);
            for (k, p) in running.iter().enumerate() {
                let sample = ProcessUtilizationSample {
                    pid: p.pid,
                    time_stamp: stamp,
                    sm_util: percent(p.sm_share * sm),
                    mem_util: percent(p.sm_share * mem),
                    enc_util: 0,
                    dec_util: 0,
                };
                // SAFETY: NVML contract: `utilization` holds `capacity` ≥ n entries.
                unsafe { utilization.add(k).write(sample) };
            }
            // SAFETY: as above.
            unsafe { put(count, n) }
        },
    )
}

// --- GPM. ---

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(
    dev: *mut c_void,
    support: *mut GpmSupport,
) -> NvmlReturn {
    device("nvmlGpmQueryDeviceSupport", dev, |g, _| {
        if support.is_null() {
            return INVALID_ARGUMENT;
        }
        // SAFETY: non-null; NVML contract: a readable and writable nvmlGpmSupport_t.
        unsafe {
            if (*support).version != GPM_SUPPORT_VERSION {
                return ARGUMENT_VERSION_MISMATCH;
            }
            (*support).is_supported_device = c_uint::from(g.gpm);
        }
        SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(sample: *mut *mut c_void) -> NvmlReturn {
    system("nvmlGpmSampleAlloc", |i, _| {
        if sample.is_null() {
            return INVALID_ARGUMENT;
        }
        let id = i.next_sample;
        i.next_sample += 1;
        i.samples.insert(id, None);
        // SAFETY: non-null; NVML contract: a writable handle.
        unsafe { put(sample, (SAMPLE_BASE + id) as *mut c_void) }
    })
}

fn sample_id(sample: *mut c_void) -> Option<usize> {
    (sample as usize).checked_sub(SAMPLE_BASE)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleFree(sample: *mut c_void) -> NvmlReturn {
    system("nvmlGpmSampleFree", |i, _| {
        match sample_id(sample).and_then(|id| i.samples.remove(&id)) {
            Some(_) => SUCCESS,
            None => INVALID_ARGUMENT,
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleGet(dev: *mut c_void, sample: *mut c_void) -> NvmlReturn {
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let Some(index) = device_index(dev, instance.scenario.gpus.len()) else {
        return INVALID_ARGUMENT;
    };
    let t = instance.now();
    if instance.scenario.is_lost(index as u32, t) {
        return GPU_IS_LOST;
    }
    if let Some(code) = instance
        .scenario
        .function_fault("nvmlGpmSampleGet", Some(index as u32), t)
    {
        return code;
    }
    if !instance.scenario.gpus[index].gpm {
        return NOT_SUPPORTED;
    }
    match sample_id(sample).and_then(|id| instance.samples.get_mut(&id)) {
        Some(slot) => {
            *slot = Some((index, None, t));
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmMigSampleGet(
    dev: *mut c_void,
    gpu_instance_id: c_uint,
    sample: *mut c_void,
) -> NvmlReturn {
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let Some(index) = device_index(dev, instance.scenario.gpus.len()) else {
        return INVALID_ARGUMENT;
    };
    let t = instance.now();
    let scenario = &instance.scenario;
    if scenario.is_lost(index as u32, t) {
        return GPU_IS_LOST;
    }
    if let Some(code) = scenario.function_fault("nvmlGpmMigSampleGet", Some(index as u32), t) {
        return code;
    }
    let gpu = &scenario.gpus[index];
    if !gpu.gpm || !gpu.mig_enabled() {
        return NOT_SUPPORTED;
    }
    // NVML: INVALID_ARGUMENT "if device or GPU instance ID is invalid".
    let Some(k) = gpu
        .mig
        .iter()
        .position(|m| m.gpu_instance_id == gpu_instance_id && m.exists_at(t))
    else {
        return INVALID_ARGUMENT;
    };
    match sample_id(sample).and_then(|id| instance.samples.get_mut(&id)) {
        Some(slot) => {
            *slot = Some((index, Some(k), t));
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

fn metric_names(metric: u32) -> (&'static CStr, &'static CStr, &'static CStr) {
    match metric {
        gpm_metric::GRAPHICS_UTIL => (c"GR_UTIL", c"Graphics utilization", c"%"),
        gpm_metric::SM_UTIL => (c"SM_UTIL", c"SM utilization", c"%"),
        gpm_metric::ANY_TENSOR_UTIL => (c"ANY_TENSOR_UTIL", c"Any tensor utilization", c"%"),
        gpm_metric::DFMA_TENSOR_UTIL => (c"DFMA_UTIL", c"DFMA tensor utilization", c"%"),
        gpm_metric::HMMA_TENSOR_UTIL => (c"HMMA_UTIL", c"HMMA tensor utilization", c"%"),
        gpm_metric::IMMA_TENSOR_UTIL => (c"IMMA_UTIL", c"IMMA tensor utilization", c"%"),
        gpm_metric::FP64_UTIL => (c"FP64_UTIL", c"FP64 utilization", c"%"),
        gpm_metric::FP32_UTIL => (c"FP32_UTIL", c"FP32 utilization", c"%"),
        gpm_metric::FP16_UTIL => (c"FP16_UTIL", c"FP16 utilization", c"%"),
        _ => (c"", c"", c""),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmMetricsGet(request: *mut GpmMetricsGet) -> NvmlReturn {
    if request.is_null() {
        return INVALID_ARGUMENT;
    }
    let mut guard = state();
    let Some(instance) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    // SAFETY: non-null; NVML contract: a readable nvmlGpmMetricsGet_t head.
    let (version, n, s1, s2) = unsafe {
        (
            (*request).version,
            (*request).num_metrics as usize,
            (*request).sample1,
            (*request).sample2,
        )
    };
    if version != GPM_METRICS_GET_VERSION {
        return ARGUMENT_VERSION_MISMATCH;
    }
    if n > GPM_METRIC_MAX {
        return INVALID_ARGUMENT;
    }
    let filled = |s| sample_id(s).and_then(|id| instance.samples.get(&id).copied().flatten());
    let (Some((g1, m1, t1)), Some((g2, m2, t2))) = (filled(s1), filled(s2)) else {
        return INVALID_ARGUMENT;
    };
    if g1 != g2 || m1 != m2 {
        return INVALID_ARGUMENT;
    }
    let t = instance.now();
    let scenario = &instance.scenario;
    if scenario.is_lost(g1 as u32, t) {
        return GPU_IS_LOST;
    }
    if let Some(code) = scenario.function_fault("nvmlGpmMetricsGet", Some(g1 as u32), t) {
        return code;
    }
    let (from, to) = if t1 <= t2 { (t1, t2) } else { (t2, t1) };
    // SAFETY: `metrics` is the start of the caller's array; only `n` entries are touched,
    // and NVML's contract is that the caller sized the array for `num_metrics`.
    let metrics = unsafe { ptr::addr_of_mut!((*request).metrics).cast::<GpmMetric>() };
    for k in 0..n {
        // SAFETY: k < n, see above.
        let entry = unsafe { &mut *metrics.add(k) };
        let id = entry.metric_id;
        let (short, long, unit) = metric_names(id);
        entry.metric_info.short_name = short.as_ptr().cast_mut();
        entry.metric_info.long_name = long.as_ptr().cast_mut();
        entry.metric_info.unit = unit.as_ptr().cast_mut();
        match (
            scenario.gpm_metric_fault(g1 as u32, id),
            scenario.gpm_mean(g1, m1, id, from, to),
        ) {
            (Some(code), _) => {
                entry.nvml_return = code;
                entry.value = 0.0;
            }
            (None, Some(value)) => {
                entry.nvml_return = SUCCESS;
                entry.value = value;
            }
            (None, None) => {
                entry.nvml_return = NOT_SUPPORTED;
                entry.value = 0.0;
            }
        }
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(_set: *mut c_void) -> NvmlReturn {
    SUCCESS
}

// --- What every monitoring tool reads besides (nvidia-smi, nvitop, dcgm-exporter). ---

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    dev: *mut c_void,
    memory: *mut MemoryV1,
) -> NvmlReturn {
    any_device("nvmlDeviceGetMemoryInfo", dev, |_, d, t, _| {
        let total = memory_total_bytes(d);
        let used = used_memory_bytes(d, t).min(total);
        let info = MemoryV1 {
            total,
            free: total - used,
            used,
        };
        // SAFETY: NVML contract: a writable nvmlMemory_t.
        unsafe { put(memory, info) }
    })
}

/// Data-centre SXM boards are passively cooled: NVML has no fan to report.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(
    dev: *mut c_void,
    _speed: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetFanSpeed", dev, |_, _| NOT_SUPPORTED)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed_v2(
    dev: *mut c_void,
    _fan: c_uint,
    _speed: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetFanSpeed_v2", dev, |_, _| NOT_SUPPORTED)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNumFans(dev: *mut c_void, fans: *mut c_uint) -> NvmlReturn {
    device("nvmlDeviceGetNumFans", dev, |_, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(fans, 0) }
    })
}

fn power_limit(g: &Gpu) -> Option<c_uint> {
    g.power_limit_w.map(|w| round_u32(w * 1e3))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    dev: *mut c_void,
    limit: *mut c_uint,
) -> NvmlReturn {
    device(
        "nvmlDeviceGetPowerManagementLimit",
        dev,
        |g, _| match power_limit(g) {
            // SAFETY: NVML contract: a writable uint (milliwatts).
            Some(mw) => unsafe { put(limit, mw) },
            None => NOT_SUPPORTED,
        },
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    dev: *mut c_void,
    limit: *mut c_uint,
) -> NvmlReturn {
    device(
        "nvmlDeviceGetEnforcedPowerLimit",
        dev,
        |g, _| match power_limit(g) {
            // SAFETY: NVML contract: a writable uint (milliwatts).
            Some(mw) => unsafe { put(limit, mw) },
            None => NOT_SUPPORTED,
        },
    )
}

/// P0 while compute processes run, P8 (idle) otherwise.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    dev: *mut c_void,
    state: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetPerformanceState", dev, |g, t| {
        let p = if g.processes_at(t).is_empty() { 8 } else { 0 };
        // SAFETY: NVML contract: a writable nvmlPstates_t.
        unsafe { put(state, p) }
    })
}

/// Enabled, as on every managed data-centre node.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(
    dev: *mut c_void,
    mode: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetPersistenceMode", dev, |_, _| {
        // SAFETY: NVML contract: a writable nvmlEnableState_t.
        unsafe { put(mode, 1) }
    })
}

/// `NVML_COMPUTEMODE_DEFAULT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(
    dev: *mut c_void,
    mode: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetComputeMode", dev, |_, _| {
        // SAFETY: NVML contract: a writable nvmlComputeMode_t.
        unsafe { put(mode, 0) }
    })
}

/// Training jobs use no video engines: 0% over the driver's 167 ms sampling period.
fn codec_utilization(utilization: *mut c_uint, period_us: *mut c_uint) -> NvmlReturn {
    // SAFETY: NVML contract: two writable uints.
    unsafe {
        let r = put(utilization, 0);
        if r != SUCCESS {
            return r;
        }
        put(period_us, 167_000)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEncoderUtilization(
    dev: *mut c_void,
    utilization: *mut c_uint,
    period_us: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetEncoderUtilization", dev, |_, _| {
        codec_utilization(utilization, period_us)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDecoderUtilization(
    dev: *mut c_void,
    utilization: *mut c_uint,
    period_us: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetDecoderUtilization", dev, |_, _| {
        codec_utilization(utilization, period_us)
    })
}

/// KB/s over the last 20 ms; counters 0 (TX) and 1 (RX). No traffic is modelled.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPcieThroughput(
    dev: *mut c_void,
    counter: c_uint,
    value: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetPcieThroughput", dev, |_, _| {
        if counter > 1 {
            return INVALID_ARGUMENT;
        }
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(value, 0) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrPcieLinkGeneration(
    dev: *mut c_void,
    generation: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetCurrPcieLinkGeneration", dev, |_, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(generation, 5) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrPcieLinkWidth(
    dev: *mut c_void,
    width: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetCurrPcieLinkWidth", dev, |_, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(width, 16) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    dev: *mut c_void,
    minor: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetMinorNumber", dev, |g, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(minor, g.index) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDisplayActive(
    dev: *mut c_void,
    active: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetDisplayActive", dev, |_, _| {
        // SAFETY: NVML contract: a writable nvmlEnableState_t.
        unsafe { put(active, 0) }
    })
}

/// `NVML_FI_DEV_NVLINK_LINK_COUNT`.
const FI_NVLINK_LINK_COUNT: c_uint = 91;
/// `NVML_VALUE_TYPE_UNSIGNED_INT`.
const VALUE_TYPE_UNSIGNED_INT: c_uint = 1;

/// Per-field answers: the NVLink link count from the scenario's `nvlink_links`, every
/// other field its own NOT_SUPPORTED (the call itself succeeds, as NVML's does).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    dev: *mut c_void,
    count: c_int,
    values: *mut FieldValue,
) -> NvmlReturn {
    any_device("nvmlDeviceGetFieldValues", dev, |_, d, t, epoch_us| {
        if values.is_null() || count < 0 {
            return INVALID_ARGUMENT;
        }
        let stamp = (epoch_us + (t * 1e6) as u64) as i64;
        for k in 0..count as usize {
            // SAFETY: NVML contract: `values` holds `count` entries.
            let v = unsafe { &mut *values.add(k) };
            v.timestamp = stamp;
            v.latency_usec = 0;
            match (v.field_id, d.gpu.nvlink_links) {
                (FI_NVLINK_LINK_COUNT, Some(links)) if d.mig.is_none() => {
                    v.value_type = VALUE_TYPE_UNSIGNED_INT;
                    v.nvml_return = SUCCESS;
                    v.value = u64::from(links);
                }
                _ => {
                    v.nvml_return = NOT_SUPPORTED;
                    v.value = 0;
                }
            }
        }
        SUCCESS
    })
}

/// No ECC errors on any fake GPU.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    dev: *mut c_void,
    _error_type: c_uint,
    _counter_type: c_uint,
    errors: *mut c_ulonglong,
) -> NvmlReturn {
    device("nvmlDeviceGetTotalEccErrors", dev, |_, _| {
        // SAFETY: NVML contract: a writable u64.
        unsafe { put(errors, 0) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetBAR1MemoryInfo(
    dev: *mut c_void,
    _bar1: *mut c_void,
) -> NvmlReturn {
    device("nvmlDeviceGetBAR1MemoryInfo", dev, |_, _| NOT_SUPPORTED)
}

// --- MIG. ---

/// `NVML_DEVICE_MIG_ENABLE` when the scenario gives the GPU a layout; pending = current.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    dev: *mut c_void,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetMigMode", dev, |g, _| {
        let mode = c_uint::from(g.mig_enabled());
        // SAFETY: NVML contract: two writable uints.
        unsafe {
            let r = put(current, mode);
            if r != SUCCESS {
                return r;
            }
            put(pending, mode)
        }
    })
}

/// Seven MIG devices at most on A100/H100 (`nvidia-smi mig -lgip`); 0 outside MIG mode.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    dev: *mut c_void,
    count: *mut c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetMaxMigDeviceCount", dev, |g, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(count, if g.mig_enabled() { 7 } else { 0 }) }
    })
}

/// The `index`-th MIG device existing now, in layout order; NOT_FOUND past the last (NVML
/// documents NOT_FOUND "if the MIG device at the index does not exist").
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    dev: *mut c_void,
    index: c_uint,
    mig: *mut *mut c_void,
) -> NvmlReturn {
    any_device("nvmlDeviceGetMigDeviceHandleByIndex", dev, |_, d, t, _| {
        if d.mig.is_some() {
            return INVALID_ARGUMENT;
        }
        if !d.gpu.mig_enabled() {
            return NOT_SUPPORTED;
        }
        let Some(k) = d
            .gpu
            .mig
            .iter()
            .enumerate()
            .filter(|(_, m)| m.exists_at(t))
            .map(|(k, _)| k)
            .nth(index as usize)
        else {
            return NOT_FOUND;
        };
        let handle = MIG_BASE + d.index * MIG_STRIDE + k;
        // SAFETY: NVML contract: a writable handle.
        unsafe { put(mig, handle as *mut c_void) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    dev: *mut c_void,
    is_mig: *mut c_uint,
) -> NvmlReturn {
    any_device("nvmlDeviceIsMigDeviceHandle", dev, |_, d, _, _| {
        // SAFETY: NVML contract: a writable uint.
        unsafe { put(is_mig, c_uint::from(d.mig.is_some())) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    dev: *mut c_void,
    parent: *mut *mut c_void,
) -> NvmlReturn {
    any_device(
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        dev,
        |_, d, _, _| {
            if d.mig.is_none() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: NVML contract: a writable handle.
            unsafe { put(parent, handle(d.index)) }
        },
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    dev: *mut c_void,
    id: *mut c_uint,
) -> NvmlReturn {
    any_device("nvmlDeviceGetGpuInstanceId", dev, |_, d, _, _| {
        match d.mig {
            // SAFETY: NVML contract: a writable uint.
            Some((_, m)) => unsafe { put(id, m.gpu_instance_id) },
            None => NOT_SUPPORTED,
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    dev: *mut c_void,
    id: *mut c_uint,
) -> NvmlReturn {
    any_device(
        "nvmlDeviceGetComputeInstanceId",
        dev,
        |_, d, _, _| match d.mig {
            // SAFETY: NVML contract: a writable uint.
            Some((_, m)) => unsafe { put(id, m.compute_instance_id) },
            None => NOT_SUPPORTED,
        },
    )
}

/// SMs and memory of a MIG device (or the whole GPU). Slice counts follow the profile name
/// (`3g.40gb`: 3 GPU slices); copy engines and codecs are not modelled.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAttributes_v2(
    dev: *mut c_void,
    attributes: *mut DeviceAttributes,
) -> NvmlReturn {
    any_device("nvmlDeviceGetAttributes_v2", dev, |_, d, _, _| {
        let (sms, slices, mb) = match d.mig {
            Some((_, m)) => {
                let slices = m
                    .profile
                    .split('g')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                (m.sm_count, slices, m.memory_mib)
            }
            None => (d.gpu.sm_count, 7, d.gpu.memory_total_mib),
        };
        let a = DeviceAttributes {
            multiprocessor_count: sms,
            shared_copy_engine_count: 0,
            shared_decoder_count: 0,
            shared_encoder_count: 0,
            shared_jpeg_count: 0,
            shared_ofa_count: 0,
            gpu_instance_slice_count: slices,
            compute_instance_slice_count: slices,
            memory_size_mb: mb,
        };
        // SAFETY: NVML contract: a writable nvmlDeviceAttributes_t.
        unsafe { put(attributes, a) }
    })
}
