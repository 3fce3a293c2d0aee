#!/usr/bin/env python3
"""A third-party NVML client against flopmeter's fake libnvidia-ml.

nvidia-ml-py (pynvml) and nvitop load the fake exactly as they load NVIDIA's library
(dlopen of libnvidia-ml.so.1, found through LD_LIBRARY_PATH), and must read what the
scenario says. Expected values come from the scenario TOML itself (tomllib) and the NVML
conventions documented by NVIDIA, never from flopmeter's code.

usage: foreign_nvml_client.py CASE LIB_DIR SCENARIO
  CASE: dgx (tests/scenarios/dgx-h100.toml), mig (h100-mig.toml),
        count-success (dgx-h100.toml with process_count_protocol = "success")
LIB_DIR holds libnvidia-ml.so.1 (the fake), its scenario and its clock file.
"""

import os
import sys
import time
import tomllib

import pynvml as nv

CASE, LIB_DIR, SCENARIO = sys.argv[1], sys.argv[2], sys.argv[3]
with open(SCENARIO, "rb") as f:
    SC = tomllib.load(f)

checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


def set_time(t):
    path = os.path.join(LIB_DIR, "fake-nvml-clock")
    with open(path + ".tmp", "w") as f:
        f.write(str(t))
    os.replace(path + ".tmp", path)


def curve_at(c, t):
    """A scenario curve's value at t (number, steps or ramp), per fake-nvml/README.md."""
    if isinstance(c, (int, float)):
        return float(c)
    if "steps" in c:
        v = c["steps"][0][1]
        for (ti, vi) in c["steps"]:
            if t >= ti:
                v = vi
        return float(v)
    pts = c["ramp"]
    if t <= pts[0][0]:
        return float(pts[0][1])
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return float(pts[-1][1])


def curve_integral(c, a, b, n=20000):
    # Midpoint rule on a fine grid: the curves are piecewise linear with few pieces, so
    # this is exact to well under a millijoule over seconds.
    h = (b - a) / n
    return sum(curve_at(c, a + (k + 0.5) * h) for k in range(n)) * h


def expand_gpus():
    gpus = []
    for spec in SC["gpu"]:
        for k in range(spec.get("count", 1)):
            i = len(gpus)
            g = dict(spec)
            g["index"] = i
            g["uuid"] = spec["uuid"].replace("{index}", str(i))
            g["procs"] = [
                dict(p, pid=p["pid"] + k * p.get("pid_stride", 0)) for p in spec.get("processes", [])
            ]
            gpus.append(g)
    return gpus


def running(p, t):
    return p.get("from", -1e18) <= t < p.get("until", 1e18)


def gpm_get(handle, s1, s2, ids):
    req = nv.c_nvmlGpmMetricsGet_t()
    req.version = nv.NVML_GPM_METRICS_GET_VERSION
    req.numMetrics = len(ids)
    req.sample1 = s1
    req.sample2 = s2
    for k, mid in enumerate(ids):
        req.metrics[k].metricId = mid
    nv.nvmlGpmMetricsGet(req)
    out = {}
    for k, mid in enumerate(ids):
        check(req.metrics[k].nvmlReturn == nv.NVML_SUCCESS, f"GPM metric {mid} returned")
        out[mid] = req.metrics[k].value
    return out


def case_dgx():
    t = 6.0
    set_time(t)
    nv.nvmlInit()
    gpus = expand_gpus()
    check(nv.nvmlDeviceGetCount() == len(gpus), "device count")
    check(nv.nvmlSystemGetDriverVersion() == SC["driver_version"], "driver version")
    now_us = time.time_ns() // 1000
    for g in gpus:
        h = nv.nvmlDeviceGetHandleByIndex(g["index"])
        m = g["metrics"]
        check(nv.nvmlDeviceGetName(h) == g["name"], "name")
        check(nv.nvmlDeviceGetUUID(h) == g["uuid"], "uuid")
        check(nv.nvmlDeviceGetHandleByUUID(g["uuid"]) is not None, "handle by UUID")
        check(nv.nvmlDeviceGetPciInfo_v3(h).pciDeviceId >> 16 == g["pci_device_id"], "PCI id")
        procs = [p for p in g["procs"] if running(p, t)]
        used = sum(p["used_memory_mib"] for p in procs) << 20
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        check(mem.total == g["memory_total_mib"] << 20 and mem.used == used, "memory v1")
        mem2 = nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2)
        check(mem2.total == g["memory_total_mib"] << 20 and mem2.used == used, "memory v2")
        u = nv.nvmlDeviceGetUtilizationRates(h)
        check(u.gpu == round(curve_at(m["gpu_util"], t)), "utilization.gpu")
        check(u.memory == round(curve_at(m["mem_util"], t)), "utilization.memory")
        check(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM) == round(curve_at(m["sm_clock_mhz"], t)), "SM clock")
        check(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM) == g.get("max_mem_clock_mhz", 2619), "memory clock")
        check(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM) == g["max_sm_clock_mhz"], "max SM clock")
        check(nv.nvmlDeviceGetPowerUsage(h) == round(curve_at(m["power_w"], t) * 1000), "power (mW)")
        energy = nv.nvmlDeviceGetTotalEnergyConsumption(h)
        check(abs(energy - curve_integral(m["power_w"], 0.0, t) * 1000) <= 2, f"energy (mJ) {energy}")
        check(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU) == round(curve_at(m["temperature_c"], t)), "temperature")
        check(nv.nvmlDeviceGetPowerManagementLimit(h) == g["power_limit_w"] * 1000, "power limit")
        try:
            nv.nvmlDeviceGetFanSpeed(h)
            check(False, "an H100 SXM has no fan")
        except nv.NVMLError_NotSupported:
            pass
        check(nv.nvmlDeviceGetPersistenceMode(h) == nv.NVML_FEATURE_ENABLED, "persistence mode")
        check(nv.nvmlDeviceGetComputeMode(h) == nv.NVML_COMPUTEMODE_DEFAULT, "compute mode")
        check(nv.nvmlDeviceGetPerformanceState(h) == 0, "P0 under load")
        check(nv.nvmlDeviceGetEncoderUtilization(h)[0] == 0, "encoder utilisation")
        check(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES) == 0, "PCIe throughput")
        check(nv.nvmlDeviceGetTotalEccErrors(h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC) == 0, "ECC")
        fv = nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_NVLINK_LINK_COUNT])
        check(fv[0].nvmlReturn == nv.NVML_SUCCESS and fv[0].value.uiVal == g["nvlink_links"], "NVLink link count")
        check(nv.nvmlDeviceGetGraphicsRunningProcesses(h) == [], "no graphics processes")
        listed = nv.nvmlDeviceGetComputeRunningProcesses(h)
        check(sorted((p.pid, p.usedGpuMemory) for p in listed)
              == sorted((p["pid"], p["used_memory_mib"] << 20) for p in procs), "running processes with memory")
        # Per-process SM utilisation: NVML's timestamps are Unix µs, so "samples newer than
        # one second ago" (what nvitop asks) must return them, and "newer than a minute from
        # now" must not.
        sm = curve_at(m["sm_util"], t)
        samples = nv.nvmlDeviceGetProcessUtilization(h, now_us - 1_000_000)
        got = sorted((s.pid, s.smUtil) for s in samples)
        want = sorted((p["pid"], round(p.get("sm_share", 0) * sm)) for p in procs)
        check(got == want, f"per-process SM utilisation {got} vs {want}")
        check(all(abs(s.timeStamp - now_us) < 120_000_000 for s in samples), "timestamps are Unix µs")
        try:
            nv.nvmlDeviceGetProcessUtilization(h, now_us + 60_000_000)
            check(False, "no samples newer than the future")
        except nv.NVMLError_NotFound:
            pass
        check(nv.nvmlDeviceGetMigMode(h) == [0, 0], "MIG disabled")

    # GPM over [6, 8]: the exact mean of each curve, as NVML computes it between two samples.
    h = nv.nvmlDeviceGetHandleByIndex(0)
    check(nv.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1, "GPM supported")
    s1 = nv.nvmlGpmSampleAlloc()
    s2 = nv.nvmlGpmSampleAlloc()
    nv.nvmlGpmSampleGet(h, s1)
    set_time(8.0)
    nv.nvmlGpmSampleGet(h, s2)
    v = gpm_get(h, s1, s2, [nv.NVML_GPM_METRIC_ANY_TENSOR_UTIL, nv.NVML_GPM_METRIC_SM_UTIL, nv.NVML_GPM_METRIC_FP32_UTIL])
    m = SC["gpu"][0]["metrics"]
    check(abs(v[nv.NVML_GPM_METRIC_ANY_TENSOR_UTIL] - curve_at(m["tensor_util"], 7.0)) < 1e-9, "GPM tensor")
    check(abs(v[nv.NVML_GPM_METRIC_SM_UTIL] - curve_at(m["sm_util"], 7.0)) < 1e-9, "GPM SM")
    check(abs(v[nv.NVML_GPM_METRIC_FP32_UTIL] - curve_at(m["fp32_util"], 7.0)) < 1e-9, "GPM FP32")
    nv.nvmlGpmSampleFree(s1)
    nv.nvmlGpmSampleFree(s2)
    nv.nvmlShutdown()

    # nvitop, the monitor people run, on the same driver.
    from nvitop import Device

    set_time(t)
    devices = Device.all()
    check(len(devices) == len(gpus), "nvitop device count")
    for d, g in zip(devices, gpus):
        check(d.name() == g["name"] and d.uuid() == g["uuid"], "nvitop name and UUID")
        check(d.memory_total() == g["memory_total_mib"] << 20, "nvitop memory")
        check(d.gpu_utilization() == round(curve_at(g["metrics"]["gpu_util"], t)), "nvitop utilisation")
        check(d.power_limit() == g["power_limit_w"] * 1000, "nvitop power limit")
        procs = d.processes()
        sm = curve_at(g["metrics"]["sm_util"], t)
        want = {p["pid"]: round(p.get("sm_share", 0) * sm) for p in g["procs"] if running(p, t)}
        check({pid: p.gpu_sm_utilization() for pid, p in procs.items()} == want, "nvitop per-process SM utilisation")
        check(all(p.gpu_memory() != "N/A" for p in procs.values()), "nvitop process memory")


def case_count_success():
    set_time(6.0)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    # NVML's documented answer to the null-buffer count is INSUFFICIENT_SIZE; this driver
    # answers SUCCESS, and pynvml, like nvml-wrapper, then reports no processes, while the
    # utilisation samples name them.
    check(nv.nvmlDeviceGetComputeRunningProcesses(h) == [], "pynvml sees no processes")
    pids = sorted(s.pid for s in nv.nvmlDeviceGetProcessUtilization(h, 0))
    check(pids == [4100, 5200], f"utilisation samples name the processes {pids}")


def case_mig():
    t = 5.0
    set_time(t)
    nv.nvmlInit()
    spec = SC["gpu"][0]
    h = nv.nvmlDeviceGetHandleByIndex(0)
    check(nv.nvmlDeviceGetMigMode(h) == [1, 1], "MIG enabled")
    check(nv.nvmlDeviceGetMaxMigDeviceCount(h) == 7, "seven MIG devices at most")
    try:
        nv.nvmlDeviceGetUtilizationRates(h)
        check(False, "utilization is not supported in MIG mode")
    except nv.NVMLError_NotSupported:
        pass
    everyone = []
    for k, inst in enumerate(spec["mig"]):
        mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
        check(nv.nvmlDeviceIsMigDeviceHandle(mh).value == 1, "is a MIG handle")
        check(nv.nvmlDeviceGetName(mh) == f"{spec['name']} MIG {inst['profile']}", "MIG name")
        check(nv.nvmlDeviceGetUUID(mh) == inst["uuid"], "MIG UUID")
        check(nv.nvmlDeviceGetGpuInstanceId(mh) == inst["gpu_instance_id"], "GPU instance id")
        check(nv.nvmlDeviceGetComputeInstanceId(mh) == inst.get("compute_instance_id", 0), "compute instance id")
        check(nv.nvmlDeviceGetAttributes(mh).multiprocessorCount == inst["sm_count"], "MIG SM count")
        check(nv.nvmlDeviceGetMemoryInfo(mh).total == inst["memory_mib"] << 20, "MIG memory")
        parent = nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mh)
        check(nv.nvmlDeviceGetUUID(parent) == spec["uuid"], "parent of a MIG device")
        procs = nv.nvmlDeviceGetComputeRunningProcesses(mh)
        want = [(p["pid"], p["used_memory_mib"] << 20, inst["gpu_instance_id"]) for p in inst["processes"]]
        check([(p.pid, p.usedGpuMemory, p.gpuInstanceId) for p in procs] == want, "MIG processes")
        everyone += [(p["pid"], inst["gpu_instance_id"]) for p in inst["processes"]]
    try:
        nv.nvmlDeviceGetMigDeviceHandleByIndex(h, len(spec["mig"]))
        check(False, "no MIG device past the last")
    except nv.NVMLError_NotFound:
        pass
    listed = nv.nvmlDeviceGetComputeRunningProcesses(h)
    check(sorted((p.pid, p.gpuInstanceId) for p in listed) == sorted(everyone), "GPU lists every instance's processes")

    # Per-instance GPM (nvmlGpmMigSampleGet) and the GPU's, the SM-weighted sum.
    ids = [nv.NVML_GPM_METRIC_ANY_TENSOR_UTIL]
    weighted = 0.0
    for inst in spec["mig"]:
        s1, s2 = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
        set_time(t)
        nv.nvmlGpmMigSampleGet(h, inst["gpu_instance_id"], s1)
        set_time(t + 2)
        nv.nvmlGpmMigSampleGet(h, inst["gpu_instance_id"], s2)
        v = gpm_get(h, s1, s2, ids)[ids[0]]
        want = curve_at(inst["metrics"]["tensor_util"], t + 1)
        check(abs(v - want) < 1e-9, f"instance tensor {v} vs {want}")
        weighted += want * inst["sm_count"] / spec["sm_count"]
    s1, s2 = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
    set_time(t)
    nv.nvmlGpmSampleGet(h, s1)
    set_time(t + 2)
    nv.nvmlGpmSampleGet(h, s2)
    v = gpm_get(h, s1, s2, ids)[ids[0]]
    check(abs(v - weighted) < 1e-9, f"GPU tensor {v} vs {weighted}")
    nv.nvmlShutdown()

    from nvitop import Device

    set_time(t)
    d = Device(0)
    check(d.is_mig_mode_enabled(), "nvitop: MIG mode")
    migs = d.mig_devices()
    check([m.uuid() for m in migs] == [i["uuid"] for i in spec["mig"]], "nvitop: MIG devices")
    check([m.gpu_instance_id() for m in migs] == [i["gpu_instance_id"] for i in spec["mig"]], "nvitop: GI ids")
    for m, inst in zip(migs, spec["mig"]):
        check(sorted(m.processes()) == sorted(p["pid"] for p in inst["processes"]), "nvitop: MIG processes")


{"dgx": case_dgx, "mig": case_mig, "count-success": case_count_success}[CASE]()
print(f"{CASE}: {checks} checks passed")
