//! The fake as nvml-wrapper sees it: loaded through the real dlopen path, one private copy
//! per test (see `fake_nvml::harness`), with virtual time from the clock file.

use std::ffi::OsStr;

use fake_nvml::Scenario;
use fake_nvml::harness::FakeNvml;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;

const SCENARIO: &str = r#"
driver_version = "550.54.15"
[truth]
precision = "bf16"
tensor_flop_per_clk_per_sm = 4096

[[gpu]]
count = 2
name = "NVIDIA H100 80GB HBM3"
uuid = "GPU-smoke-{index}"
pci_device_id = 0x2330
sm_count = 132
max_sm_clock_mhz = 1980
gpm = true
memory_total_mib = 81559
[gpu.metrics]
sm_clock_mhz = 1755
tensor_util = { ramp = [[0, 0], [10, 100]] }
fp32_util = { steps = [[0, 10], [5, 30]] }
gpu_util = 97
power_w = { ramp = [[0, 100], [10, 700]] }
[[gpu.processes]]
pid = 1234
used_memory_mib = 1024
sm_share = 0.5
[[gpu.processes]]
pid = 5678
used_memory_mib = 2048
sm_share = 0.25
from = 3.0

[[faults.errors]]
function = "nvmlDeviceGetTemperature"
code = 3
gpu = 1

[[faults.lost]]
gpu = 1
at = 4.0
recovered_at = 6.0

[[faults.gpm_metric_errors]]
metric = 13
code = 3
"#;

fn open(fake: &FakeNvml) -> Nvml {
    Nvml::builder()
        .lib_path(fake.lib_path().as_os_str())
        .init()
        .expect("the fake initialises")
}

#[test]
fn reports_the_scenario_and_exact_gpm_averages() {
    let fake = FakeNvml::new(SCENARIO).unwrap();
    fake.set_time(2.0).unwrap();
    let nvml = open(&fake);
    assert_eq!(nvml.sys_driver_version().unwrap(), "550.54.15");
    assert_eq!(nvml.sys_nvml_version().unwrap(), "12.550.54.15");
    assert_eq!(nvml.device_count().unwrap(), 2);
    let d = nvml.device_by_index(0).unwrap();
    assert_eq!(d.name().unwrap(), "NVIDIA H100 80GB HBM3");
    assert_eq!(d.uuid().unwrap(), "GPU-smoke-0");
    assert_eq!(d.pci_info().unwrap().pci_device_id >> 16, 0x2330);
    assert_eq!(d.clock_info(Clock::SM).unwrap(), 1755);
    assert_eq!(d.max_clock_info(Clock::SM).unwrap(), 1980);
    assert_eq!(d.utilization_rates().unwrap().gpu, 97);
    // Power at t = 2 is 100 + 600·0.2 = 220 W; energy ∫0..2 = 2·(100 + 220)/2 = 320 J.
    assert_eq!(d.power_usage().unwrap(), 220_000);
    assert_eq!(d.total_energy_consumption().unwrap(), 320_000);
    assert!(d.gpm_support().unwrap());

    let procs = d.running_compute_processes().unwrap();
    assert_eq!(procs.len(), 1, "pid 5678 starts at t = 3");
    assert_eq!(procs[0].pid, 1234);
    assert_eq!(procs[0].used_gpu_memory, UsedGpuMemory::Used(1024 << 20));
    let mem = d.memory_info().unwrap();
    assert_eq!(mem.used, 1024 << 20);
    assert_eq!(mem.total, 81559 << 20);

    let s1 = d.gpm_sample().unwrap();
    fake.set_time(8.0).unwrap();
    let s2 = d.gpm_sample().unwrap();
    let ids = [
        GpmMetricId::AnyTensorUtil,
        GpmMetricId::Fp32Util,
        GpmMetricId::Fp16Util,
        GpmMetricId::SmOccupancy,
    ];
    let got = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &s1, &s2, &ids).unwrap();
    // Tensor ramps 0→100 over 10 s: mean over [2, 8] is 50. FP32: 10 for 3 s, 30 for 3 s.
    let tensor = got[0].as_ref().unwrap();
    assert!((tensor.value - 50.0).abs() < 1e-9, "{tensor:?}");
    assert_eq!(tensor.metric_info.short_name, "ANY_TENSOR_UTIL");
    assert!((got[1].as_ref().unwrap().value - 20.0).abs() < 1e-9);
    assert!(
        matches!(got[2], Err(NvmlError::NotSupported)),
        "injected per-metric error"
    );
    assert!(
        matches!(got[3], Err(NvmlError::NotSupported)),
        "metric the fake does not model"
    );

    let procs = d.running_compute_processes().unwrap();
    assert_eq!(procs.len(), 2);
    let util = d.process_utilization_stats(None).unwrap();
    // sm_util defaults to tensor_util = 80 at t = 8; shares 0.5 and 0.25.
    let mut sm: Vec<_> = util.iter().map(|s| (s.pid, s.sm_util)).collect();
    sm.sort_unstable();
    assert_eq!(sm, vec![(1234, 40), (5678, 20)]);
    let newest = util.iter().map(|s| s.timestamp).max().unwrap();
    assert!(matches!(
        d.process_utilization_stats(newest),
        Err(NvmlError::NotFound)
    ));
}

#[test]
fn faults_lost_gpus_and_missing_functions() {
    let fake = FakeNvml::without_symbols(SCENARIO, &["nvmlDeviceGetPowerUsage"]).unwrap();
    fake.set_time(1.0).unwrap();
    let nvml = open(&fake);
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert!(matches!(
        d0.power_usage(),
        Err(NvmlError::FailedToLoadSymbol(_))
    ));
    assert!(d0.total_energy_consumption().is_ok());
    assert!(d0.temperature(TemperatureSensor::Gpu).is_ok());
    assert!(matches!(
        d1.temperature(TemperatureSensor::Gpu),
        Err(NvmlError::NotSupported)
    ));

    fake.set_time(4.5).unwrap();
    assert!(matches!(d1.uuid(), Err(NvmlError::GpuLost)));
    assert!(matches!(nvml.device_by_index(1), Err(NvmlError::GpuLost)));
    assert!(matches!(
        nvml.device_by_uuid("GPU-smoke-1"),
        Err(NvmlError::GpuLost)
    ));
    assert_eq!(
        d0.uuid().unwrap(),
        "GPU-smoke-0",
        "the other GPU keeps working"
    );

    fake.set_time(6.0).unwrap();
    let again = nvml.device_by_uuid("GPU-smoke-1").unwrap();
    assert_eq!(again.index().unwrap(), 1);
    assert!(matches!(
        nvml.device_by_uuid("GPU-nope"),
        Err(NvmlError::NotFound)
    ));
}

#[test]
fn init_failure_and_truth() {
    let no_driver = "driver_version = \"550.54.15\"\n[faults]\ninit_error = 9\n";
    let fake = FakeNvml::new(no_driver).unwrap();
    let err = Nvml::builder()
        .lib_path(OsStr::new(fake.lib_path()))
        .init()
        .unwrap_err();
    assert!(matches!(err, NvmlError::DriverNotLoaded), "{err:?}");

    // Truth over [0, 10]: tensor ramps 0→100%, so the mean activity is 0.5:
    // 0.5 · 132 · 4096 · 1755e6 · 10 s.
    let s = Scenario::parse(SCENARIO, "smoke").unwrap();
    let truth = s.true_flop(0, 0.0, 10.0).unwrap();
    let expected = 0.5 * 132.0 * 4096.0 * 1755e6 * 10.0;
    assert!((truth - expected).abs() / expected < 1e-12);
}
