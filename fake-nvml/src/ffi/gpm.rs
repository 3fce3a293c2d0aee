//! GPU Performance Monitoring: support, samples (per GPU and per MIG instance), metrics.

use super::*;
use std::ffi::{CStr, c_uint, c_void};
use std::ptr;

use crate::abi::{
    GPM_METRIC_MAX, GPM_METRICS_GET_VERSION, GPM_SUPPORT_VERSION, GpmMetric, GpmMetricsGet,
    GpmSupport, NvmlReturn,
};
use crate::scenario::gpm_metric;

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
