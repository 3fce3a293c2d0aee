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
    GPM_METRIC_MAX, GPM_METRICS_GET_VERSION, GPM_SUPPORT_VERSION, GpmMetric, GpmMetricsGet,
    GpmSupport, MEMORY_V2_VERSION, MemoryV2, NvmlReturn, PciInfo, ProcessInfo,
    ProcessUtilizationSample, Utilization,
};
use crate::scenario::{Gpu, Scenario, gpm_metric};
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

struct Instance {
    scenario: Scenario,
    started: Instant,
    clock_file: Option<PathBuf>,
    last_clock: f64,
    refs: u32,
    /// Allocated GPM samples: `None` until `nvmlGpmSampleGet` fills in (GPU, time).
    samples: HashMap<usize, Option<(usize, f64)>>,
    next_sample: usize,
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
        scenario,
        started: Instant::now(),
        // Decided once: a clock file that appears later still counts, because `now` tries
        // the path on every call.
        clock_file: clock_path(dir.as_deref()),
        last_clock: 0.0,
        refs: 1,
        samples: HashMap::new(),
        next_sample: 1,
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
    device("nvmlDeviceGetName", dev, |g, _| {
        // SAFETY: NVML contract: `name` holds `length` bytes.
        unsafe { write_str(name, length, &g.name) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    dev: *mut c_void,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    device("nvmlDeviceGetUUID", dev, |g, _| {
        // SAFETY: NVML contract: `uuid` holds `length` bytes.
        unsafe { write_str(uuid, length, &g.uuid) }
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
    device("nvmlDeviceGetTotalEnergyConsumption", dev, |g, t| {
        let joules = g.metrics.power_w.integral(0.0, t);
        let mj = (joules * 1e3).max(0.0).floor() as u64;
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

fn used_memory_bytes(g: &Gpu, t: f64) -> u64 {
    g.processes
        .iter()
        .filter(|p| p.running_at(t))
        .map(|p| p.used_memory_mib << 20)
        .sum()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    dev: *mut c_void,
    memory: *mut MemoryV2,
) -> NvmlReturn {
    device("nvmlDeviceGetMemoryInfo_v2", dev, |g, t| {
        if memory.is_null() {
            return INVALID_ARGUMENT;
        }
        // SAFETY: non-null; NVML contract: a readable and writable nvmlMemory_v2_t.
        let version = unsafe { (*memory).version };
        if version != MEMORY_V2_VERSION {
            return ARGUMENT_VERSION_MISMATCH;
        }
        let total = g.memory_total_mib << 20;
        let used = used_memory_bytes(g, t).min(total);
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
    device("nvmlDeviceGetComputeRunningProcesses_v3", dev, |g, t| {
        if count.is_null() {
            return INVALID_ARGUMENT;
        }
        let running: Vec<_> = g.processes.iter().filter(|p| p.running_at(t)).collect();
        let n = running.len() as c_uint;
        // SAFETY: non-null; NVML contract: a readable and writable uint.
        let capacity = unsafe { *count };
        if n == 0 {
            // SAFETY: as above.
            return unsafe { put(count, 0) };
        }
        if infos.is_null() || capacity < n {
            // SAFETY: as above.
            unsafe { put(count, n) };
            return INSUFFICIENT_SIZE;
        }
        for (k, p) in running.iter().enumerate() {
            let info = ProcessInfo {
                pid: p.pid,
                used_gpu_memory: p.used_memory_mib << 20,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            };
            // SAFETY: NVML contract: `infos` holds `capacity` ≥ n entries.
            unsafe { infos.add(k).write(info) };
        }
        // SAFETY: as above.
        unsafe { put(count, n) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    dev: *mut c_void,
    utilization: *mut ProcessUtilizationSample,
    count: *mut c_uint,
    last_seen: c_ulonglong,
) -> NvmlReturn {
    device("nvmlDeviceGetProcessUtilization", dev, |g, t| {
        if count.is_null() {
            return INVALID_ARGUMENT;
        }
        // One sample per running process, stamped with the scenario time in µs (+1 so that
        // a sample at t = 0 is newer than "never seen", which callers pass as 0).
        let stamp = (t * 1e6) as u64 + 1;
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
    })
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
            *slot = Some((index, t));
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
    let (Some((g1, t1)), Some((g2, t2))) = (filled(s1), filled(s2)) else {
        return INVALID_ARGUMENT;
    };
    if g1 != g2 {
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
            scenario.gpm_curve(g1, id),
        ) {
            (Some(code), _) => {
                entry.nvml_return = code;
                entry.value = 0.0;
            }
            (None, Some(curve)) => {
                entry.nvml_return = SUCCESS;
                entry.value = curve.mean(from, to);
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
