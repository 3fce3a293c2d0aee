//! Issue 13 §3 on the agent: the high bound never undercounts, and work that cannot be
//! estimated is still reported. Each case runs the real sampler on the fake NVML and
//! compares with the scenario's own ground truth.

use crate::support;

use flopmeter_proto::v1::{AttributionSource, IntervalRecord, Method};
use support::{Rig, meter, rel};

const TRAIN: &[(&str, &str)] = &[("FLOPMETER_MODEL", "m")];

fn totals(records: &[IntervalRecord]) -> (f64, f64, f64) {
    records.iter().fold((0.0, 0.0, 0.0), |a, r| {
        (
            a.0 + r.flop_low as f64,
            a.1 + r.flop_central as f64,
            a.2 + r.flop_high as f64,
        )
    })
}

/// One GPU; `gpu` is the `[[gpu]]` body after `name`, `pci_device_id`, `sm_count` and
/// `max_sm_clock_mhz`, which the caller gives.
fn scenario(name: &str, pci: &str, sm: u32, max_clock: u32, rate: f64, extra: &str) -> String {
    format!(
        r#"
driver_version = "550.90.07"
{extra}
[truth]
precision = "bf16"
tensor_flop_per_clk_per_sm = {rate}
[[gpu]]
name = "{name}"
uuid = "GPU-undercount-0"
pci_device_id = {pci}
sm_count = {sm}
max_sm_clock_mhz = {max_clock}
gpm = true
memory_total_mib = 81559
[gpu.metrics]
tensor_util = {{ steps = [[0, 60.0], [10, 35.0]] }}
gpu_util = 99
power_w = 500
[[gpu.processes]]
pid = 8100
used_memory_mib = 60000
sm_share = 1.0
"#
    )
}

/// An uncatalogued GPU (PCI 0x2B00) with GPM and the operator's true peak: 120 SMs × 4096
/// FLOP/clk × 1600 MHz = 786.432 TFLOP/s BF16. Before issue 13 the MFU band was applied on
/// top of tensor activity and the truth came out 1.8× above the high bound.
#[test]
fn operator_supplied_peak_with_gpm_contains_the_truth() {
    let rig = Rig::inline(&scenario(
        "NVIDIA Future GPU",
        "0x2B00",
        120,
        1600,
        4096.0,
        "",
    ));
    let peak = 120.0 * 4096.0 * 1600e6 / 1e12;
    let out = meter(&rig, &[(8100, TRAIN)], 20, Some(peak));
    let truth = rig.scenario.true_flop(0, 0.0, 20.0).unwrap();
    let (low, central, high) = totals(&out.records);
    assert!(
        out.records
            .iter()
            .all(|r| r.method == Method::GpmTensor as i32 && r.unknown_peak)
    );
    assert!(
        low <= truth && truth <= high,
        "{truth:e} outside [{low:e}, {high:e}]"
    );
    assert!(
        rel(central, truth) < 0.03,
        "central {central:e} vs {truth:e}"
    );
}

/// The same GPU without a peak: records with METHOD_NONE, zero FLOP, the reason, and the
/// real GPU time and energy (500 W × 20 s), attributed as usual.
#[test]
fn uncatalogued_gpu_without_a_peak_sends_no_estimate_records() {
    let rig = Rig::inline(&scenario(
        "NVIDIA Future GPU",
        "0x2B00",
        120,
        1600,
        4096.0,
        "",
    ));
    let out = meter(&rig, &[(8100, TRAIN)], 20, None);
    assert!(
        !out.records.is_empty(),
        "work that cannot be estimated is still reported"
    );
    for r in &out.records {
        assert_eq!(r.method, Method::None as i32);
        assert_eq!(r.no_estimate_reason, "unknown-gpu-no-peak");
        assert_eq!((r.flop_low, r.flop_central, r.flop_high), (0, 0, 0));
        assert_eq!(r.identity.as_ref().unwrap().model, "m");
    }
    assert_eq!(out.records.iter().map(|r| r.gpu_ms).sum::<u64>(), 20_000);
    assert_eq!(
        out.records.iter().map(|r| r.energy_mj).sum::<u64>(),
        10_000_000
    );
}

/// A catalogued GPU whose activity cannot be read (no GPM, utilization.gpu not supported):
/// METHOD_NONE with `no-activity-reading`, GPU time and energy kept.
#[test]
fn no_activity_reading_sends_no_estimate_records() {
    let text = scenario("NVIDIA A100-SXM4-80GB", "0x20B2", 108, 1410, 2048.0, "")
        .replace("gpm = true", "gpm = false")
        + "[[faults.errors]]\nfunction = \"nvmlDeviceGetUtilizationRates\"\ncode = 3\n";
    let rig = Rig::inline(&text);
    let out = meter(&rig, &[(8100, TRAIN)], 10, None);
    assert!(!out.records.is_empty());
    assert!(out.records.iter().all(|r| r.method == Method::None as i32
        && r.no_estimate_reason == "no-activity-reading"
        && r.flop_high == 0));
    assert_eq!(out.records.iter().map(|r| r.gpu_ms).sum::<u64>(), 10_000);
}

/// An H20 (78 SMs, firmware-capped at 148 TFLOP/s BF16) whose PCI id is the H100 SXM's: the
/// truth at its real rate must sit inside the band, and the conflict is said everywhere.
#[test]
fn h20_name_on_the_h100_pci_id_is_flagged_and_bounded() {
    // 148e12 / (78 SMs × 1755 MHz) FLOP per clock per SM reproduces the H20's datasheet peak.
    let rate = 148e12 / (78.0 * 1755e6);
    let text = scenario("NVIDIA H20", "0x2330", 78, 1980, rate, "")
        .replace("gpu_util = 99", "gpu_util = 99\nsm_clock_mhz = 1755");
    let rig = Rig::inline(&text);
    let out = meter(&rig, &[(8100, TRAIN)], 20, None);
    assert_eq!(
        out.inventory.gpus[0].name_conflict.map(|m| m.id),
        Some("h20")
    );
    assert!(
        out.records
            .iter()
            .all(|r| r.peak_conflict && r.gpu_type == "h100-sxm")
    );
    let truth = rig.scenario.true_flop(0, 0.0, 20.0).unwrap();
    let (low, _, high) = totals(&out.records);
    assert!(
        low <= truth && truth <= high,
        "{truth:e} outside [{low:e}, {high:e}]"
    );
    assert!(out.metrics.contains(
        "flopmeter_agent_gpu_peak_conflict{gpu=\"0\",name_model=\"h20\",pci_model=\"h100-sxm\",uuid=\"GPU-undercount-0\"} 1"
    ), "{}", out.metrics);
}

/// A GB200 (148 SMs, 8192 FLOP/clk/SM BF16 at 2062 MHz = 2.5 PFLOP/s) on the H100 SXM id:
/// estimated with the H100's peak the truth was above the high bound; now inside.
#[test]
fn gb200_name_on_the_h100_pci_id_keeps_the_truth_below_the_high_bound() {
    let text = scenario("NVIDIA GB200", "0x2330", 148, 2062, 8192.0, "");
    let rig = Rig::inline(&text);
    let out = meter(&rig, &[(8100, TRAIN)], 20, None);
    let truth = rig.scenario.true_flop(0, 0.0, 20.0).unwrap();
    let (low, _, high) = totals(&out.records);
    assert!(out.records.iter().all(|r| r.peak_conflict));
    assert!(
        low <= truth && truth <= high,
        "{truth:e} outside [{low:e}, {high:e}]"
    );
}

/// The null-buffer count answered with SUCCESS and the count: nvml-wrapper returns no
/// processes, but the per-process utilisation samples name them, so the work stays
/// attributed to its model instead of becoming unattributed. The documented answer
/// (INSUFFICIENT_SIZE) gives the same records.
#[test]
fn processes_survive_either_answer_to_the_count_query() {
    for protocol in ["success", "insufficient-size"] {
        let text = scenario(
            "NVIDIA H100 80GB HBM3",
            "0x2330",
            132,
            1980,
            4096.0,
            &format!("process_count_protocol = \"{protocol}\""),
        )
        .replace("gpu_util = 99", "gpu_util = 99\nsm_util = 80");
        let rig = Rig::inline(&text);
        let out = meter(&rig, &[(8100, TRAIN)], 10, None);
        assert!(!out.records.is_empty());
        for r in &out.records {
            let id = r.identity.as_ref().unwrap();
            assert_eq!(
                id.source,
                AttributionSource::ProcessEnv as i32,
                "{protocol}: {r:?}"
            );
            assert_eq!(id.model, "m", "{protocol}");
        }
        let truth = rig.scenario.true_flop(0, 0.0, 10.0).unwrap();
        let (low, _, high) = totals(&out.records);
        assert!(low <= truth && truth <= high, "{protocol}");
    }
}

/// An energy counter frozen from t = 5 while the board draws 500 W: flagged, and the energy
/// taken from the power integral (500 W × 10 s in all).
#[test]
fn a_stuck_energy_counter_is_flagged_and_replaced_by_power() {
    let text = scenario("NVIDIA H100 80GB HBM3", "0x2330", 132, 1980, 4096.0, "")
        + "[[faults.energy_frozen]]\ngpu = 0\nfrom = 5.0\n";
    let rig = Rig::inline(&text);
    let out = meter(&rig, &[(8100, TRAIN)], 10, None);
    assert!(out.records.iter().any(|r| r.energy_from_power));
    assert_eq!(
        out.records.iter().map(|r| r.energy_mj).sum::<u64>(),
        5_000_000
    );
}

/// A driver reload at t = 5.5 restarts the counter from zero: the interval across it takes
/// its energy from power (flagged), and the total is still 500 W × 10 s.
#[test]
fn a_driver_reload_loses_no_energy() {
    let text = scenario(
        "NVIDIA H100 80GB HBM3",
        "0x2330",
        132,
        1980,
        4096.0,
        "[[driver_reload]]\nat = 5.5",
    );
    let rig = Rig::inline(&text);
    let out = meter(&rig, &[(8100, TRAIN)], 10, None);
    assert!(out.records.iter().any(|r| r.energy_from_power));
    assert_eq!(
        out.records.iter().map(|r| r.energy_mj).sum::<u64>(),
        5_000_000
    );
}
