//! MIG: mode, instance handles and their attributes, from the scenario's layout.

use super::*;
use std::ffi::{c_uint, c_void};

use crate::abi::{DeviceAttributes, NvmlReturn};

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
