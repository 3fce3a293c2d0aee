//! What every monitoring tool reads besides (nvidia-smi, nvitop, dcgm-exporter): fans,
//! power limits, ECC, throttle reasons and the like, answered plausibly or as NOT_SUPPORTED.

use super::device::{memory_total_bytes, used_memory_bytes};
use super::*;
use std::ffi::{c_int, c_uint, c_ulonglong, c_void};

use crate::abi::{FieldValue, MemoryV1, NvmlReturn};
use crate::scenario::Gpu;

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
