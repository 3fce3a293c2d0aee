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

mod device;
mod gpm;
mod mig;
mod tools;

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, c_char, c_int, c_uint, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::abi::NvmlReturn;
use crate::scenario::{Gpu, MigInstance, Scenario};
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
