//! The NVML source against the fake library, through nvml-wrapper's real dlopen path: every
//! shipped scenario, every fault mode, and the estimates against the scenarios' ground truth.

use crate::support;

use std::time::Duration;

use flopmeter_agent::gpu::nvml::{NvmlLibrary, NvmlSource, NvmlSourceError, RetryPolicy};
use flopmeter_agent::gpu::{GpuSource, GpuStatus, IntervalSummary, Inventory, Tick, estimate_for};
use flopmeter_core::catalogue::{Lookup, MatchedBy};
use flopmeter_core::units::{FlopTotal, Precision};
use support::{Rig, eager_retry, rel, seconds, ticks};

/// Per GPU: (truth, estimate band) for every interval, and the sums.
struct Accuracy {
    intervals: Vec<(usize, f64, FlopTotal, String)>,
    truth: Vec<f64>,
    total: Vec<FlopTotal>,
}

fn accuracy(
    rig: &Rig,
    inventory: &Inventory,
    ticks: &[Tick],
    declared: Option<Precision>,
) -> Accuracy {
    let n = inventory.gpus.len();
    let mut acc = Accuracy {
        intervals: Vec::new(),
        truth: vec![0.0; n],
        total: vec![FlopTotal::ZERO; n],
    };
    for tick in ticks {
        for r in &tick.gpus {
            let Some(summary) = IntervalSummary::from_reading(r) else {
                continue;
            };
            let i = r.index as usize;
            let e = estimate_for(&inventory.gpus[i], &summary, declared).unwrap();
            let truth = rig
                .scenario
                .true_flop(i, tick.at_seconds - summary.seconds, tick.at_seconds)
                .unwrap();
            let mut band = FlopTotal::ZERO;
            band.add_band(e.estimate.flop);
            acc.intervals
                .push((i, truth, band, e.method.as_str().to_string()));
            acc.truth[i] += truth;
            acc.total[i].add_total(band);
        }
    }
    acc
}

fn inside(truth: f64, band: &FlopTotal) -> bool {
    // One FLOP per rounded interval of slack; nothing else.
    band.low as f64 - 64.0 <= truth && truth <= band.high as f64 + 64.0
}

#[test]
fn dgx_h100_inventory_readings_and_processes() {
    let rig = Rig::shipped("dgx-h100.toml");
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
    let inv = source.inventory().clone();
    assert_eq!(inv.driver_version.as_deref(), Some("550.90.07"));
    assert_eq!(inv.nvml_version.as_deref(), Some("12.550.90.07"));
    assert_eq!(inv.gpus.len(), 8);
    for (i, g) in inv.gpus.iter().enumerate() {
        assert_eq!(g.index as usize, i);
        assert_eq!(g.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(g.pci_device_id, Some(0x2330));
        assert!(
            matches!(g.catalogue, Lookup::Known(m, MatchedBy::PciDeviceId) if m.id == "h100-sxm")
        );
        assert_eq!(g.max_sm_clock_mhz, Some(1980));
        assert_eq!(g.max_mem_clock_mhz, Some(2619));
        assert!(g.gpm_supported);
        assert_eq!(
            g.uuid.as_deref(),
            Some(format!("GPU-9a1f3c2e-7b4d-4e0a-8c55-d6e1f20b300{i}").as_str())
        );
    }

    let t = ticks(&rig, &mut source, seconds(6));
    let baseline = &t[0].gpus[3];
    assert_eq!(baseline.status, GpuStatus::Ok);
    assert_eq!(
        baseline.interval_seconds, None,
        "the first reading is a baseline"
    );
    assert_eq!(baseline.gpm, None);

    let r = &t[6].gpus[3];
    assert_eq!(r.uuid, inv.gpus[3].uuid);
    assert_eq!(r.interval_seconds, Some(1.0));
    let gpm = r.gpm.unwrap();
    assert_eq!(gpm.any_tensor, Some(45.0));
    assert_eq!(gpm.hmma, Some(45.0));
    assert_eq!(gpm.fp32, Some(4.0));
    assert_eq!(gpm.fp16, Some(2.0));
    assert_eq!(gpm.fp64, Some(0.0));
    assert_eq!(gpm.sm_util, Some(82.0));
    assert_eq!(r.sm_clock_mhz, Some(1755));
    assert_eq!(r.mean_sm_clock_mhz, Some(1755.0));
    assert_eq!(r.gpu_util_percent, Some(99));
    assert_eq!(r.power_mw, Some(640_000));
    // ∫ power over [0, 6]: ramp 180→640 over the first second (410 J), then 640 W × 5 s.
    assert_eq!(r.energy_mj, Some(3_610_000));
    assert!(r.unavailable.is_empty(), "{:?}", r.unavailable);
    // Rank 4103 from the start, eval job 5203 from t = 5.
    let procs = r.processes.as_ref().unwrap();
    let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![4103, 5203]);
    assert_eq!(procs[0].used_memory_bytes, Some(62_000 << 20));
    // Per-process SM utilisation: shares 0.92 and 0.08 of SM util 82%.
    assert_eq!(procs[0].sm_util_percent, Some(75.0));
    assert_eq!(procs[1].sm_util_percent, Some(7.0));
    assert_eq!(r.memory_used_bytes, Some(71_000 << 20));
    assert_eq!(
        t[4].gpus[3].processes.as_ref().unwrap().len(),
        1,
        "eval job not yet"
    );
}

/// GPM with the declared precision: every interval and the total within ±3% of the truth,
/// through the checkpoint dip (20–23 s). Undeclared: the truth inside [low, high].
#[test]
fn dgx_h100_accuracy_against_ground_truth() {
    let rig = Rig::shipped("dgx-h100.toml");
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
    let t = ticks(&rig, &mut source, seconds(40));
    let inv = source.inventory().clone();

    let declared = accuracy(&rig, &inv, &t, Some(Precision::Bf16));
    assert_eq!(declared.intervals.len(), 8 * 40);
    for (gpu, truth, band, method) in &declared.intervals {
        assert_eq!(method, "gpm-tensor");
        assert!(
            rel(band.central as f64, *truth) < 0.03,
            "GPU {gpu}: {band:?} vs {truth}"
        );
    }
    for g in 0..8 {
        let (truth, est) = (declared.truth[g], declared.total[g].central as f64);
        assert!(rel(est, truth) < 0.03, "GPU {g}: {est} vs {truth}");
    }
    eprintln!(
        "dgx-h100 declared bf16, GPU 0 over 40 s: truth {:.4e}, central {:.4e} ({:+.3}%)",
        declared.truth[0],
        declared.total[0].central as f64,
        100.0 * (declared.total[0].central as f64 / declared.truth[0] - 1.0)
    );

    let open = accuracy(&rig, &inv, &t, None);
    for (gpu, truth, band, _) in &open.intervals {
        assert!(inside(*truth, band), "GPU {gpu}: {truth} outside {band:?}");
    }
    for g in 0..8 {
        assert!(inside(open.truth[g], &open.total[g]));
    }
    eprintln!(
        "dgx-h100 undeclared, GPU 0: truth {:.4e} in [{:.4e}, {:.4e}] (central {:.4e})",
        open.truth[0],
        open.total[0].low as f64,
        open.total[0].high as f64,
        open.total[0].central as f64
    );
}

/// FP8 training: undeclared, the truth is inside the band and above the central (BF16)
/// estimate, about twice it; declared fp8, within ±3%.
#[test]
fn h100_fp8_accuracy_against_ground_truth() {
    let rig = Rig::shipped("h100-fp8.toml");
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
    let t = ticks(&rig, &mut source, seconds(30));
    let inv = source.inventory().clone();

    let open = accuracy(&rig, &inv, &t, None);
    for (gpu, truth, band, method) in &open.intervals {
        assert_eq!(method, "gpm-tensor");
        assert!(inside(*truth, band), "GPU {gpu}: {truth} outside {band:?}");
        assert!(
            *truth > band.central as f64,
            "GPU {gpu}: {truth} not above {band:?}"
        );
    }
    for g in 0..8 {
        let ratio = open.truth[g] / open.total[g].central as f64;
        assert!(
            (1.8..=2.05).contains(&ratio),
            "GPU {g}: truth/central = {ratio}"
        );
        assert!(inside(open.truth[g], &open.total[g]));
    }
    eprintln!(
        "h100-fp8 undeclared, GPU 0: truth {:.4e} in [{:.4e}, {:.4e}], truth/central {:.3}",
        open.truth[0],
        open.total[0].low as f64,
        open.total[0].high as f64,
        open.truth[0] / open.total[0].central as f64
    );

    let fp8 = accuracy(&rig, &inv, &t, Some(Precision::Fp8));
    for (gpu, truth, band, _) in &fp8.intervals {
        assert!(
            rel(band.central as f64, *truth) < 0.03,
            "GPU {gpu}: {band:?} vs {truth}"
        );
    }
    eprintln!(
        "h100-fp8 declared fp8, GPU 0: truth {:.4e}, central {:.4e} ({:+.3}%)",
        fp8.truth[0],
        fp8.total[0].central as f64,
        100.0 * (fp8.total[0].central as f64 / fp8.truth[0] - 1.0)
    );
}

/// No GPM on A100: util × MFU, tagged as a fallback, with the truth inside [low, high].
#[test]
fn a100_util_mfu_brackets_the_truth() {
    let rig = Rig::shipped("a100-node.toml");
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
    let inv = source.inventory().clone();
    assert_eq!(inv.gpus.len(), 8);
    for g in &inv.gpus {
        assert!(!g.gpm_supported);
        assert_eq!(g.model().unwrap().id, "a100-sxm");
    }
    let t = ticks(&rig, &mut source, seconds(40));
    assert!(
        t.iter()
            .all(|tick| tick.gpus.iter().all(|r| r.gpm.is_none()))
    );
    let acc = accuracy(&rig, &inv, &t, None);
    for (gpu, truth, band, method) in &acc.intervals {
        assert_eq!(method, "util-mfu (gpm unsupported)");
        assert!(inside(*truth, band), "GPU {gpu}: {truth} outside {band:?}");
    }
    for g in 0..8 {
        assert!(inside(acc.truth[g], &acc.total[g]));
    }
    eprintln!(
        "a100-node util-mfu, GPU 0 over 40 s: truth {:.4e} in [{:.4e}, {:.4e}] (central {:.4e})",
        acc.truth[0],
        acc.total[0].low as f64,
        acc.total[0].high as f64,
        acc.total[0].central as f64
    );
}

/// GPU 1 is lost from 5 to 12 s: it is marked failed, the others keep being read and
/// estimated, it is retried, and after recovery it starts with a baseline so that no
/// interval spans the outage. GPU 2 is idle. GPU 3 cannot report power or FP64 activity,
/// and everything else about it still works.
#[test]
fn mixed_faults_each_behave_as_specified() {
    let rig = Rig::shipped("mixed-faults.toml");
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, eager_retry()).unwrap();
    let t = ticks(&rig, &mut source, seconds(16));
    let inv = source.inventory().clone();

    for tick in &t[5..12] {
        match &tick.gpus[1].status {
            GpuStatus::Failed {
                lost,
                reason,
                next_retry_seconds,
            } => {
                assert!(lost, "{reason}");
                assert!(*next_retry_seconds > tick.at_seconds);
            }
            other => panic!("GPU 1 at {}: {other:?}", tick.at_seconds),
        }
        assert!(tick.gpus[1].energy_mj.is_none());
        for g in [0, 2, 3] {
            assert_eq!(
                tick.gpus[g].status,
                GpuStatus::Ok,
                "GPU {g} at {}",
                tick.at_seconds
            );
        }
        let s = IntervalSummary::from_reading(&tick.gpus[0]).unwrap();
        assert!(estimate_for(&inv.gpus[0], &s, None).is_ok());
    }
    let back = &t[12].gpus[1];
    assert_eq!(back.status, GpuStatus::Ok, "re-acquired at 12 s");
    assert_eq!(
        back.interval_seconds, None,
        "a new baseline, not a 8-second interval"
    );
    assert_eq!(t[13].gpus[1].interval_seconds, Some(1.0));
    assert_eq!(t[13].gpus[1].gpm.unwrap().any_tensor, Some(45.0));

    let idle = &t[10].gpus[2];
    assert_eq!(idle.processes.as_deref(), Some(&[][..]));
    assert_eq!(idle.sm_clock_mhz, Some(345));
    let s = IntervalSummary::from_reading(idle).unwrap();
    let e = estimate_for(&inv.gpus[2], &s, None).unwrap();
    assert_eq!(e.method.as_str(), "gpm-tensor");
    assert_eq!(e.estimate.flop.high, 0);

    let r3 = &t[10].gpus[3];
    assert_eq!(r3.power_mw, None);
    assert_eq!(
        r3.energy_mj,
        Some(6_000_000),
        "600 W × 10 s from the power curve"
    );
    let fields: Vec<&str> = r3.unavailable.iter().map(|f| f.field).collect();
    assert_eq!(fields, vec!["power_mw", "gpm.fp64"]);
    let gpm = r3.gpm.unwrap();
    assert_eq!((gpm.any_tensor, gpm.fp64), (Some(40.0), None));
    assert_eq!(r3.gpu_util_percent, Some(97));
    let s = IntervalSummary::from_reading(r3).unwrap();
    assert_eq!(
        estimate_for(&inv.gpus[3], &s, None)
            .unwrap()
            .method
            .as_str(),
        "gpm-tensor"
    );

    let acc = accuracy(&rig, &inv, &t, Some(Precision::Bf16));
    for (gpu, truth, band, _) in &acc.intervals {
        if *truth > 0.0 {
            assert!(
                rel(band.central as f64, *truth) < 0.03,
                "GPU {gpu}: {band:?} vs {truth}"
            );
        } else {
            assert_eq!(band.central, 0, "GPU {gpu} is idle");
        }
    }
}

/// A lost GPU is retried with backoff, not on every tick.
#[test]
fn lost_gpus_are_retried_with_backoff() {
    let rig = Rig::shipped("mixed-faults.toml");
    let lib = rig.open();
    let retry = RetryPolicy {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(4),
    };
    let mut source = NvmlSource::new(&lib, retry).unwrap();
    let t = ticks(&rig, &mut source, seconds(20));
    let next = |i: usize| match &t[i].gpus[1].status {
        GpuStatus::Failed {
            next_retry_seconds, ..
        } => Some(*next_retry_seconds),
        GpuStatus::Ok => None,
    };
    // Lost at 5: retries due at 7, then 7 + 4 = 11, then 15 (capped at 4 s); back at 15.
    assert_eq!(next(5), Some(7.0));
    assert_eq!(next(6), Some(7.0));
    assert_eq!(next(7), Some(11.0));
    assert_eq!(next(11), Some(15.0));
    assert_eq!(next(14), Some(15.0));
    assert_eq!(next(15), None);
}

/// A GPU unreachable at start-up is listed by index, then identified once it answers.
#[test]
fn gpu_lost_at_startup_joins_the_inventory_later() {
    let text = std::fs::read_to_string(support::scenario_path("mixed-faults.toml"))
        .unwrap()
        .replace(
            "at = 5.0\nrecovered_at = 12.0",
            "at = 0.0\nrecovered_at = 3.0",
        );
    let rig = Rig::inline(&text);
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, eager_retry()).unwrap();
    let g1 = &source.inventory().gpus[1];
    assert_eq!((g1.uuid.as_deref(), g1.name.as_deref()), (None, None));
    assert!(matches!(g1.catalogue, Lookup::Unknown));
    let t = ticks(&rig, &mut source, seconds(4));
    assert!(matches!(
        t[0].gpus[1].status,
        GpuStatus::Failed { lost: true, .. }
    ));
    assert_eq!(t[3].gpus[1].status, GpuStatus::Ok);
    let g1 = &source.inventory().gpus[1];
    assert_eq!(
        g1.uuid.as_deref(),
        Some("GPU-0f7e6d5c-4b3a-4291-8f00-fa0170000001")
    );
    assert_eq!(g1.model().unwrap().id, "h100-sxm");
    assert!(g1.gpm_supported);
    assert!(IntervalSummary::from_reading(&t[4].gpus[1]).is_some());
}

/// GPM unsupported on a GPU that has it in the catalogue (NVML says no): util × MFU, and
/// the tag says why. GPM supported but its metrics failing: the same, tagged "unavailable".
#[test]
fn gpm_unsupported_or_failing_falls_back_to_util_mfu() {
    let base = std::fs::read_to_string(support::scenario_path("dgx-h100.toml")).unwrap();
    for (toml, tag) in [
        (
            base.replace("gpm = true", "gpm = false"),
            "util-mfu (gpm unsupported)",
        ),
        (
            format!("{base}\n[[faults.errors]]\nfunction = \"nvmlGpmMetricsGet\"\ncode = 999\n"),
            "util-mfu (gpm unavailable)",
        ),
    ] {
        let rig = Rig::inline(&toml);
        let lib = rig.open();
        let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
        let t = ticks(&rig, &mut source, seconds(3));
        let inv = source.inventory().clone();
        let acc = accuracy(&rig, &inv, &t, None);
        assert_eq!(acc.intervals.len(), 8 * 3);
        for (gpu, truth, band, method) in &acc.intervals {
            assert_eq!(method, tag);
            assert!(inside(*truth, band), "GPU {gpu}: {truth} outside {band:?}");
        }
    }
}

/// Functions missing from the library (an older driver): that field is absent, the rest
/// works. Without the GPM symbols the source falls back to util × MFU.
#[test]
fn missing_functions_cost_only_their_field() {
    let base = std::fs::read_to_string(support::scenario_path("dgx-h100.toml")).unwrap();
    let rig = Rig::with_hidden(
        &base,
        &[
            "nvmlDeviceGetTotalEnergyConsumption",
            "nvmlDeviceGetProcessUtilization",
        ],
    );
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
    let t = ticks(&rig, &mut source, seconds(2));
    let r = &t[2].gpus[0];
    assert_eq!(r.status, GpuStatus::Ok);
    assert_eq!(r.energy_mj, None);
    assert_eq!(r.power_mw, Some(640_000));
    let fields: Vec<&str> = r.unavailable.iter().map(|f| f.field).collect();
    assert_eq!(fields, vec!["energy_mj", "processes.sm_util_percent"]);
    assert!(
        r.unavailable[0].error.contains("symbol"),
        "{:?}",
        r.unavailable[0]
    );
    let procs = r.processes.as_ref().unwrap();
    assert_eq!(procs[0].pid, 4100);
    assert_eq!(procs[0].sm_util_percent, None);
    assert_eq!(r.gpm.unwrap().any_tensor, Some(45.0));

    let rig = Rig::with_hidden(&base, &["nvmlGpmQueryDeviceSupport"]);
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, RetryPolicy::default()).unwrap();
    assert!(!source.inventory().gpus[0].gpm_supported);
    let t = ticks(&rig, &mut source, seconds(1));
    let s = IntervalSummary::from_reading(&t[1].gpus[0]).unwrap();
    let e = estimate_for(&source.inventory().gpus[0], &s, None).unwrap();
    assert_eq!(e.method.as_str(), "util-mfu (gpm unsupported)");
}

#[test]
fn no_driver_is_a_clear_typed_error() {
    let rig = Rig::inline("driver_version = \"550.90.07\"\n[faults]\ninit_error = 9\n");
    let err = NvmlLibrary::open(rig.fake.lib_path()).unwrap_err();
    assert!(
        matches!(err, NvmlSourceError::DriverNotLoaded { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("no NVIDIA driver found"),
        "{err}"
    );

    let missing = rig.fake.dir().join("no-such-dir/libnvidia-ml.so.1");
    let err = NvmlLibrary::open(&missing).unwrap_err();
    assert!(
        matches!(err, NvmlSourceError::LibraryNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("no NVIDIA driver found: could not load"),
        "{msg}"
    );
    assert!(msg.contains("--nvml-lib"), "{msg}");
}
