//! The C structs the fake fills in, laid out as NVML's headers (LP64) define them.
//!
//! The layouts are asserted here at compile time against the figures recorded in
//! `shared/reference/nvml-abi.md`, and `tests/abi.rs` compares them field by field with
//! nvml-wrapper-sys's bindgen types, so a drift on either side fails loudly instead of
//! corrupting memory in a caller.

use std::ffi::{c_char, c_uint, c_void};
use std::mem::{offset_of, size_of};

/// `nvmlReturn_t`.
pub type NvmlReturn = c_uint;

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Utilization {
    /// Percent of the last sample period a kernel ran.
    pub gpu: c_uint,
    /// Percent of it memory was read or written.
    pub memory: c_uint,
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemoryV2 {
    /// Must be [`MEMORY_V2_VERSION`].
    pub version: c_uint,
    /// Total bytes.
    pub total: u64,
    /// Bytes reserved by the driver.
    pub reserved: u64,
    /// Free bytes.
    pub free: u64,
    /// Used bytes.
    pub used: u64,
}

/// `NVML_STRUCT_VERSION(Memory, 2)`: `sizeof | 2 << 24`.
pub const MEMORY_V2_VERSION: c_uint = (size_of::<MemoryV2>() as c_uint) | (2 << 24);

/// `nvmlProcessInfo_t` (the v2 layout, used by the `_v3` process calls).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: c_uint,
    /// Bytes, or `u64::MAX` for "not available".
    pub used_gpu_memory: u64,
    /// MIG GPU instance, `0xFFFFFFFF` for none.
    pub gpu_instance_id: c_uint,
    /// MIG compute instance, `0xFFFFFFFF` for none.
    pub compute_instance_id: c_uint,
}

/// `nvmlPciInfo_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PciInfo {
    /// Legacy bus id, `domain:bus:device.function` with a 4-digit domain.
    pub bus_id_legacy: [c_char; 16],
    /// PCI domain.
    pub domain: c_uint,
    /// PCI bus.
    pub bus: c_uint,
    /// PCI device.
    pub device: c_uint,
    /// Device id in the upper 16 bits, vendor id (0x10DE) in the lower.
    pub pci_device_id: c_uint,
    /// Subsystem id, same packing.
    pub pci_sub_system_id: c_uint,
    /// Bus id with an 8-digit domain.
    pub bus_id: [c_char; 32],
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProcessUtilizationSample {
    /// Process id.
    pub pid: c_uint,
    /// CPU timestamp, µs.
    pub time_stamp: u64,
    /// SM utilisation, percent.
    pub sm_util: c_uint,
    /// Memory utilisation, percent.
    pub mem_util: c_uint,
    /// Encoder utilisation, percent.
    pub enc_util: c_uint,
    /// Decoder utilisation, percent.
    pub dec_util: c_uint,
}

/// `nvmlGpmSupport_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpmSupport {
    /// Must be [`GPM_SUPPORT_VERSION`].
    pub version: c_uint,
    /// Non-zero if GPM is supported.
    pub is_supported_device: c_uint,
}

/// `NVML_GPM_SUPPORT_VERSION`.
pub const GPM_SUPPORT_VERSION: c_uint = 1;

/// The names NVML attaches to a GPM metric.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpmMetricInfo {
    /// Short name.
    pub short_name: *mut c_char,
    /// Long name.
    pub long_name: *mut c_char,
    /// Unit.
    pub unit: *mut c_char,
}

/// `nvmlGpmMetric_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpmMetric {
    /// `nvmlGpmMetricId_t`, set by the caller.
    pub metric_id: c_uint,
    /// Per-metric result.
    pub nvml_return: NvmlReturn,
    /// The value.
    pub value: f64,
    /// Names.
    pub metric_info: GpmMetricInfo,
}

/// The fixed head of `nvmlGpmMetricsGet_t`; `metrics` is a flexible tail because callers
/// size it differently (nvml-wrapper-sys 210 entries, CUDA 12 headers 98), so only
/// `num_metrics` entries may ever be touched.
#[repr(C)]
#[derive(Debug)]
pub struct GpmMetricsGet {
    /// Must be [`GPM_METRICS_GET_VERSION`].
    pub version: c_uint,
    /// Entries of `metrics` in use.
    pub num_metrics: c_uint,
    /// Earlier sample.
    pub sample1: *mut c_void,
    /// Later sample.
    pub sample2: *mut c_void,
    /// The caller's array.
    pub metrics: [GpmMetric; 0],
}

/// `NVML_GPM_METRICS_GET_VERSION`.
pub const GPM_METRICS_GET_VERSION: c_uint = 1;

/// The largest metric array any known header declares (nvml-wrapper-sys 0.10).
pub const GPM_METRIC_MAX: usize = 210;

const _: () = {
    assert!(size_of::<Utilization>() == 8);
    assert!(offset_of!(Utilization, memory) == 4);
    assert!(size_of::<MemoryV2>() == 40);
    assert!(offset_of!(MemoryV2, total) == 8);
    assert!(offset_of!(MemoryV2, reserved) == 16);
    assert!(offset_of!(MemoryV2, free) == 24);
    assert!(offset_of!(MemoryV2, used) == 32);
    assert!(MEMORY_V2_VERSION == 0x0200_0028);
    assert!(size_of::<ProcessInfo>() == 24);
    assert!(offset_of!(ProcessInfo, used_gpu_memory) == 8);
    assert!(offset_of!(ProcessInfo, gpu_instance_id) == 16);
    assert!(offset_of!(ProcessInfo, compute_instance_id) == 20);
    assert!(size_of::<PciInfo>() == 68);
    assert!(offset_of!(PciInfo, pci_device_id) == 28);
    assert!(offset_of!(PciInfo, bus_id) == 36);
    assert!(size_of::<ProcessUtilizationSample>() == 32);
    assert!(offset_of!(ProcessUtilizationSample, time_stamp) == 8);
    assert!(size_of::<GpmSupport>() == 8);
    assert!(size_of::<GpmMetric>() == 40);
    assert!(offset_of!(GpmMetric, value) == 8);
    assert!(offset_of!(GpmMetric, metric_info) == 16);
    assert!(offset_of!(GpmMetricsGet, sample1) == 8);
    assert!(offset_of!(GpmMetricsGet, sample2) == 16);
    assert!(offset_of!(GpmMetricsGet, metrics) == 24);
};

/// `nvmlMemory_t` (v1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MemoryV1 {
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Used bytes.
    pub used: u64,
}

/// `nvmlFieldValue_t`. The value is a union of 8 bytes; the fake writes it as `u64`
/// (`valueType` 3, `NVML_VALUE_TYPE_UNSIGNED_LONG_LONG`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FieldValue {
    /// `NVML_FI_*`, set by the caller.
    pub field_id: c_uint,
    /// Scope (NVLink id, ...), set by the caller.
    pub scope_id: c_uint,
    /// CPU timestamp, µs.
    pub timestamp: i64,
    /// How long the read took, µs.
    pub latency_usec: i64,
    /// `nvmlValueType_t`.
    pub value_type: c_uint,
    /// Per-field result.
    pub nvml_return: NvmlReturn,
    /// The value (union, 8 bytes).
    pub value: u64,
}

/// `nvmlDeviceAttributes_t` (what `nvmlDeviceGetAttributes_v2` fills).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceAttributes {
    /// SMs of the device or MIG instance.
    pub multiprocessor_count: c_uint,
    /// Copy engines.
    pub shared_copy_engine_count: c_uint,
    /// Decoders.
    pub shared_decoder_count: c_uint,
    /// Encoders.
    pub shared_encoder_count: c_uint,
    /// JPEG engines.
    pub shared_jpeg_count: c_uint,
    /// OFA engines.
    pub shared_ofa_count: c_uint,
    /// GPU instance slices.
    pub gpu_instance_slice_count: c_uint,
    /// Compute instance slices.
    pub compute_instance_slice_count: c_uint,
    /// Memory, MB.
    pub memory_size_mb: u64,
}

const _: () = {
    assert!(size_of::<MemoryV1>() == 24);
    assert!(size_of::<FieldValue>() == 40);
    assert!(offset_of!(FieldValue, timestamp) == 8);
    assert!(offset_of!(FieldValue, value_type) == 24);
    assert!(offset_of!(FieldValue, nvml_return) == 28);
    assert!(offset_of!(FieldValue, value) == 32);
    assert!(size_of::<DeviceAttributes>() == 40);
    assert!(offset_of!(DeviceAttributes, memory_size_mb) == 32);
};
