//! The fake's C structs against nvml-wrapper-sys's bindgen types, field by field: if either
//! side drifts (a new NVML header, a changed struct version), this fails before any caller
//! reads garbage.

use std::mem::{align_of, offset_of, size_of};

use fake_nvml::abi;
use nvml_wrapper_sys::bindings as sys;

macro_rules! same_layout {
    ($ours:ty, $theirs:ty, { $($o:ident = $t:ident),* $(,)? }) => {{
        assert_eq!(size_of::<$ours>(), size_of::<$theirs>(), "size of {}", stringify!($ours));
        assert_eq!(align_of::<$ours>(), align_of::<$theirs>(), "align of {}", stringify!($ours));
        $(
            assert_eq!(
                offset_of!($ours, $o),
                offset_of!($theirs, $t),
                "{}.{} vs {}.{}",
                stringify!($ours), stringify!($o), stringify!($theirs), stringify!($t),
            );
        )*
    }};
}

#[test]
fn structs_match_nvml_wrapper_sys() {
    same_layout!(abi::Utilization, sys::nvmlUtilization_t, { gpu = gpu, memory = memory });
    same_layout!(abi::MemoryV2, sys::nvmlMemory_v2_t, {
        version = version, total = total, reserved = reserved, free = free, used = used,
    });
    same_layout!(abi::ProcessInfo, sys::nvmlProcessInfo_t, {
        pid = pid,
        used_gpu_memory = usedGpuMemory,
        gpu_instance_id = gpuInstanceId,
        compute_instance_id = computeInstanceId,
    });
    same_layout!(abi::PciInfo, sys::nvmlPciInfo_t, {
        bus_id_legacy = busIdLegacy,
        domain = domain,
        bus = bus,
        device = device,
        pci_device_id = pciDeviceId,
        pci_sub_system_id = pciSubSystemId,
        bus_id = busId,
    });
    same_layout!(abi::ProcessUtilizationSample, sys::nvmlProcessUtilizationSample_t, {
        pid = pid,
        time_stamp = timeStamp,
        sm_util = smUtil,
        mem_util = memUtil,
        enc_util = encUtil,
        dec_util = decUtil,
    });
    same_layout!(abi::GpmSupport, sys::nvmlGpmSupport_t, {
        version = version, is_supported_device = isSupportedDevice,
    });
    same_layout!(abi::GpmMetricInfo, sys::nvmlGpmMetric_t__bindgen_ty_1, {
        short_name = shortName, long_name = longName, unit = unit,
    });
    same_layout!(abi::GpmMetric, sys::nvmlGpmMetric_t, {
        metric_id = metricId, nvml_return = nvmlReturn, value = value, metric_info = metricInfo,
    });
    same_layout!(abi::MemoryV1, sys::nvmlMemory_t, { total = total, free = free, used = used });
    same_layout!(abi::FieldValue, sys::nvmlFieldValue_t, {
        field_id = fieldId,
        scope_id = scopeId,
        timestamp = timestamp,
        latency_usec = latencyUsec,
        value_type = valueType,
        nvml_return = nvmlReturn,
        value = value,
    });
    same_layout!(abi::DeviceAttributes, sys::nvmlDeviceAttributes_t, {
        multiprocessor_count = multiprocessorCount,
        shared_copy_engine_count = sharedCopyEngineCount,
        gpu_instance_slice_count = gpuInstanceSliceCount,
        compute_instance_slice_count = computeInstanceSliceCount,
        memory_size_mb = memorySizeMB,
    });
}

/// The metrics request is a fixed head plus the caller's array, which the fake never
/// assumes the length of; the head and the array's start must match.
#[test]
fn gpm_metrics_request_head_matches() {
    assert_eq!(
        offset_of!(abi::GpmMetricsGet, version),
        offset_of!(sys::nvmlGpmMetricsGet_t, version)
    );
    assert_eq!(
        offset_of!(abi::GpmMetricsGet, num_metrics),
        offset_of!(sys::nvmlGpmMetricsGet_t, numMetrics)
    );
    assert_eq!(
        offset_of!(abi::GpmMetricsGet, sample1),
        offset_of!(sys::nvmlGpmMetricsGet_t, sample1)
    );
    assert_eq!(
        offset_of!(abi::GpmMetricsGet, sample2),
        offset_of!(sys::nvmlGpmMetricsGet_t, sample2)
    );
    assert_eq!(
        offset_of!(abi::GpmMetricsGet, metrics),
        offset_of!(sys::nvmlGpmMetricsGet_t, metrics)
    );
    assert_eq!(
        size_of::<sys::nvmlGpmMetricsGet_t>(),
        offset_of!(sys::nvmlGpmMetricsGet_t, metrics)
            + abi::GPM_METRIC_MAX * size_of::<abi::GpmMetric>(),
        "nvml-wrapper-sys's metric array is no longer {} entries",
        abi::GPM_METRIC_MAX
    );
}

#[test]
fn version_stamps_match() {
    assert_eq!(abi::GPM_SUPPORT_VERSION, sys::NVML_GPM_SUPPORT_VERSION);
    assert_eq!(
        abi::GPM_METRICS_GET_VERSION,
        sys::NVML_GPM_METRICS_GET_VERSION
    );
    // nvml-wrapper computes the memory v2 stamp from the bindgen struct's size.
    assert_eq!(
        abi::MEMORY_V2_VERSION as usize,
        size_of::<sys::nvmlMemory_v2_t>() | (2 << 24)
    );
    assert_eq!(size_of::<sys::nvmlReturn_t>(), size_of::<abi::NvmlReturn>());
}
