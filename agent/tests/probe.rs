//! `probe` (the library function behind `flopmeter probe`) against the fake.
//!
//! The probe samples in real time (1 s per reading). To compare with the ground truth
//! without asserting anything about timing, the fake's clock is frozen at a steady moment
//! of the scenario: every GPM window is then that moment's exact activity, so each
//! reading's FLOP divided by its (real, reported) interval must match the scenario's rate.

use crate::support;

use flopmeter_agent::gpu::nvml::NvmlSourceError;
use flopmeter_agent::probe::{ProbeArgs, ProbeError, run};
use flopmeter_core::units::Precision;
use serde_json::Value;
use support::{Rig, rel};

fn probe(rig: &Rig, json: bool, seconds: u32, precision: Option<Precision>) -> String {
    let args = ProbeArgs {
        nvml_lib: rig.fake.lib_path().to_path_buf(),
        json,
        seconds,
        precision,
        unknown_gpu_peak_tflops: None,
    };
    let mut out = Vec::new();
    run(&args, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// FLOP per second of scenario time at a steady moment `t`.
fn truth_rate(rig: &Rig, gpu: usize, t: f64) -> f64 {
    rig.scenario.true_flop(gpu, t, t + 1.0).unwrap()
}

#[test]
fn json_lists_the_node_and_agrees_with_the_ground_truth() {
    let rig = Rig::shipped("dgx-h100.toml");
    rig.fake.set_time(10.0).unwrap();
    for (precision, declared) in [(None, false), (Some(Precision::Bf16), true)] {
        let doc: Value = serde_json::from_str(&probe(&rig, true, 2, precision)).unwrap();
        assert_eq!(doc["driver_version"], "550.90.07");
        let gpus = doc["gpus"].as_array().unwrap();
        assert_eq!(gpus.len(), 8);
        for g in gpus {
            assert_eq!(g["name"], "NVIDIA H100 80GB HBM3");
            assert_eq!(g["pci_device_id"], "0x2330");
            assert_eq!(g["catalogue"]["id"], "h100-sxm");
            assert_eq!(g["catalogue"]["matched_by"], "pci-device-id");
            assert_eq!(g["gpm_supported"], true);
        }
        let readings = doc["readings"].as_array().unwrap();
        assert_eq!(readings.len(), 2);
        for second in readings {
            for r in second["gpus"].as_array().unwrap() {
                let i = r["index"].as_u64().unwrap() as usize;
                assert_eq!(r["method"], "gpm-tensor");
                assert_eq!(r["precision_declared"], declared);
                assert_eq!(r["status"]["state"], "ok");
                let secs = r["interval_seconds"].as_f64().unwrap();
                let truth = truth_rate(&rig, i, 10.0) * secs;
                let [low, central, high] =
                    ["low", "central", "high"].map(|k| r["flop"][k].as_u64().unwrap() as f64);
                if declared {
                    // A declared precision narrows the band to [0.85·c, c]; the bar is ±3%.
                    assert!(rel(central, truth) < 0.03, "GPU {i}: {central} vs {truth}");
                } else {
                    assert!(
                        low <= truth && truth <= high,
                        "GPU {i}: {truth} outside [{low}, {high}]"
                    );
                }
                assert_eq!(r["gpm"]["any_tensor"], 45.0);
                assert_eq!(r["processes"][0]["pid"], 4100 + i as u64);
            }
        }
        let totals = doc["totals"].as_array().unwrap();
        assert_eq!(totals.len(), 8);
        assert_eq!(totals[0]["method"], "gpm-tensor");
        assert!(totals[0]["flop"]["central"].as_u64().unwrap() > 0);
    }
}

#[test]
fn text_output_shows_inventory_method_and_faults() {
    let rig = Rig::shipped("mixed-faults.toml");
    rig.fake.set_time(6.0).unwrap();
    let text = probe(&rig, false, 1, None);
    assert!(text.contains("driver 550.90.07"), "{text}");
    assert!(text.contains("4 GPU(s)"), "{text}");
    assert!(text.contains("h100-sxm"), "{text}");
    assert!(text.contains("GPU 0  gpm-tensor"), "{text}");
    assert!(text.contains("GPU 1  LOST"), "{text}");
    assert!(text.contains("unavailable: power_mw"), "{text}");
    assert!(text.contains("no processes"), "{text}");
    assert!(text.contains("totals"), "{text}");
}

#[test]
fn a100_json_says_util_mfu_and_why() {
    let rig = Rig::shipped("a100-node.toml");
    rig.fake.set_time(5.0).unwrap();
    let doc: Value = serde_json::from_str(&probe(&rig, true, 1, None)).unwrap();
    let r = &doc["readings"][0]["gpus"][0];
    assert_eq!(r["method"], "util-mfu (gpm unsupported)");
    assert_eq!(r["gpm"], Value::Null);
    let secs = r["interval_seconds"].as_f64().unwrap();
    let truth = truth_rate(&rig, 0, 5.0) * secs;
    let (low, high) = (
        r["flop"]["low"].as_u64().unwrap() as f64,
        r["flop"]["high"].as_u64().unwrap() as f64,
    );
    assert!(
        low <= truth && truth <= high,
        "{truth} outside [{low}, {high}]"
    );
}

#[test]
fn inventory_only_and_no_driver() {
    let rig = Rig::shipped("a100-node.toml");
    let doc: Value = serde_json::from_str(&probe(&rig, true, 0, None)).unwrap();
    assert_eq!(doc["gpus"].as_array().unwrap().len(), 8);
    assert_eq!(doc["readings"].as_array().unwrap().len(), 0);

    let args = ProbeArgs {
        nvml_lib: rig.fake.dir().join("missing/libnvidia-ml.so.1"),
        json: false,
        seconds: 1,
        precision: None,
        unknown_gpu_peak_tflops: None,
    };
    let err = run(&args, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            ProbeError::Nvml(NvmlSourceError::LibraryNotFound { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("no NVIDIA driver found"),
        "{err}"
    );
}

/// MIG instances are listed under their GPU, with profile, ids, SMs and UUID.
#[test]
fn text_lists_mig_instances() {
    let rig = Rig::shipped("h100-mig.toml");
    rig.fake.set_time(3.0).unwrap();
    let text = probe(&rig, false, 0, None);
    assert!(text.contains("MIG mode: 2 instance(s)"), "{text}");
    assert!(
        text.contains(
            "3g.40gb   GI 1  CI 0  60 of 132 SMs  MIG-0a3c0000-0000-4000-8000-000000000301"
        ),
        "{text}"
    );
    assert!(
        text.contains("4g.40gb   GI 2  CI 0  64 of 132 SMs"),
        "{text}"
    );
}

/// An uncatalogued GPU: no estimate without a peak; with `--unknown-gpu-peak-tflops` set to
/// its true peak (100 SMs × 4096 × 1500 MHz = 614.4 TFLOP/s) the probe shows what the
/// agent will report, with the truth inside the band.
#[test]
fn unknown_gpu_peak_tflops_lets_an_operator_check_before_deploying() {
    let rig = Rig::inline(
        r#"
driver_version = "550.90.07"
[truth]
precision = "bf16"
tensor_flop_per_clk_per_sm = 4096
[[gpu]]
name = "NVIDIA Future GPU"
uuid = "GPU-future-0"
pci_device_id = 0x2B00
sm_count = 100
max_sm_clock_mhz = 1500
gpm = true
memory_total_mib = 81559
[gpu.metrics]
tensor_util = 40.0
"#,
    );
    let without: Value = serde_json::from_str(&probe(&rig, true, 1, None)).unwrap();
    let r = &without["readings"][0]["gpus"][0];
    assert!(r["flop"].is_null(), "{r}");
    assert!(
        r["no_estimate"]
            .as_str()
            .unwrap()
            .contains("not in the catalogue"),
        "{r}"
    );

    let args = ProbeArgs {
        nvml_lib: rig.fake.lib_path().to_path_buf(),
        json: true,
        seconds: 1,
        precision: None,
        unknown_gpu_peak_tflops: Some(100.0 * 4096.0 * 1500e6 / 1e12),
    };
    let mut out = Vec::new();
    run(&args, &mut out).unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    let r = &doc["readings"][0]["gpus"][0];
    assert_eq!(r["method"], "gpm-tensor", "{r}");
    let truth = 0.4 * 100.0 * 4096.0 * 1500e6 * r["interval_seconds"].as_f64().unwrap();
    let (low, high) = (
        r["flop"]["low"].as_f64().unwrap(),
        r["flop"]["high"].as_f64().unwrap(),
    );
    assert!(
        low <= truth && truth <= high,
        "{truth:e} outside [{low:e}, {high:e}]"
    );
}
