//! Device queries: identity, clocks, utilisation, power and energy, memory, processes.

use super::*;
use std::ffi::{CStr, c_char, c_uint, c_ulonglong, c_void};

use crate::abi::{
    MEMORY_V2_VERSION, MemoryV2, NvmlReturn, PciInfo, ProcessInfo, ProcessUtilizationSample,
    Utilization,
};
use crate::scenario::CountProtocol;

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

pub(super) fn used_memory_bytes(d: Target<'_>, t: f64) -> u64 {
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

pub(super) fn memory_total_bytes(d: Target<'_>) -> u64 {
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
