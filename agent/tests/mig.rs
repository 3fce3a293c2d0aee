//! MIG metering through the real sampler on the fake NVML: per-instance estimates against
//! the scenario's per-instance ground truth, MIG beside whole GPUs on one node, the
//! fallback without per-instance GPM, and instances destroyed and recreated mid-run.

use crate::support;
use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};

use std::collections::BTreeMap;

use flopmeter_proto::v1::{IntervalRecord, Method};
use support::{Rig, meter, rel, scenario_path};

const MODEL_A: &[(&str, &str)] = &[
    ("FLOPMETER_MODEL", "model-a"),
    ("FLOPMETER_PRECISION", "bf16"),
];
const MODEL_B: &[(&str, &str)] = &[
    ("FLOPMETER_MODEL", "model-b"),
    ("FLOPMETER_PRECISION", "bf16"),
];
const MODEL_C: &[(&str, &str)] = &[
    ("FLOPMETER_MODEL", "model-c"),
    ("FLOPMETER_PRECISION", "bf16"),
];

/// Sums (low, central, high, gpu_ms, energy_mj) of the records matching `pick`.
fn sum(
    records: &[IntervalRecord],
    pick: impl Fn(&IntervalRecord) -> bool,
) -> (f64, f64, f64, u64, u64) {
    records
        .iter()
        .filter(|r| pick(r))
        .fold((0.0, 0.0, 0.0, 0, 0), |a, r| {
            (
                a.0 + r.flop_low as f64,
                a.1 + r.flop_central as f64,
                a.2 + r.flop_high as f64,
                a.3 + r.gpu_ms,
                a.4 + r.energy_mj,
            )
        })
}

fn model(r: &IntervalRecord) -> &str {
    &r.identity.as_ref().unwrap().model
}

fn mig_uuid(r: &IntervalRecord) -> &str {
    r.mig.as_ref().map_or("", |m| m.uuid.as_str())
}

#[test]
fn mig_instances_are_metered_per_instance_beside_a_whole_gpu() {
    let rig = Rig::shipped("h100-mig.toml");
    let out = meter(
        &rig,
        &[(6100, MODEL_A), (6200, MODEL_B), (6300, MODEL_C)],
        40,
        None,
    );
    let inv = &out.inventory;
    assert!(inv.gpus[0].mig_enabled);
    assert!(!inv.gpus[1].mig_enabled);
    let profiles: Vec<&str> = inv.gpus[0]
        .mig_instances
        .iter()
        .map(|m| m.profile.as_str())
        .collect();
    assert_eq!(profiles, ["3g.40gb", "4g.40gb"]);
    assert_eq!(inv.gpus[0].mig_instances[0].gpu_instance_id, Some(1));

    let physical = "GPU-6d1c0000-0000-4000-8000-00000000a100";
    for (name, uuid, profile, sm, instance) in [
        (
            "model-a",
            "MIG-0a3c0000-0000-4000-8000-000000000301",
            "3g.40gb",
            60,
            0,
        ),
        (
            "model-b",
            "MIG-0a3c0000-0000-4000-8000-000000000402",
            "4g.40gb",
            64,
            1,
        ),
    ] {
        let mine: Vec<&IntervalRecord> = out.records.iter().filter(|r| model(r) == name).collect();
        assert!(!mine.is_empty(), "{name} has records");
        for r in &mine {
            // The physical GPU stays the record's GPU; the instance is named beside it.
            assert_eq!(r.gpu_uuid, physical);
            let m = r.mig.as_ref().expect("a MIG record names its instance");
            assert_eq!((m.uuid.as_str(), m.profile.as_str()), (uuid, profile));
            assert_eq!((m.sm_count, m.gpu_sm_count), (sm, 132));
            assert_eq!(r.method, Method::GpmTensor as i32);
        }
        let (low, central, high, gpu_ms, _) = sum(&out.records, |r| model(r) == name);
        let truth = rig.scenario.true_flop_mig(0, instance, 0.0, 40.0).unwrap();
        assert!(
            rel(central, truth) < 0.03,
            "{name}: central {central:e} vs truth {truth:e}"
        );
        assert!(
            low <= truth && truth <= high,
            "{name}: {truth:e} outside [{low:e}, {high:e}]"
        );
        assert_eq!(gpu_ms, 40_000, "{name}: one instance-second per second");
    }
    // Neither model's work leaks into the other's: each is far from the other's truth.
    let a = sum(&out.records, |r| model(r) == "model-a").1;
    let b = sum(&out.records, |r| model(r) == "model-b").1;
    assert!(
        a > 1.5 * b,
        "A ran 55% of 60 SMs, B 30% of 64: {a:e} vs {b:e}"
    );

    // The whole GPU beside them: as before, no instance.
    let (low, central, high, _, _) = sum(&out.records, |r| model(r) == "model-c");
    let truth = rig.scenario.true_flop(1, 0.0, 40.0).unwrap();
    assert!(
        rel(central, truth) < 0.03,
        "model-c {central:e} vs {truth:e}"
    );
    assert!(low <= truth && truth <= high);
    assert!(
        out.records
            .iter()
            .filter(|r| model(r) == "model-c")
            .all(|r| r.mig.is_none())
    );

    // The GPU's energy (450 W × 40 s) is split between the busy instances, none lost.
    let energy = sum(&out.records, |r| r.gpu_uuid == physical).4;
    assert!((energy as f64 - 18_000_000.0).abs() <= 10.0, "{energy}");
    assert!(out.records.iter().all(|r| r.no_estimate_reason.is_empty()));
}

#[test]
fn without_per_instance_gpm_the_fallback_bounds_each_instance() {
    let text = std::fs::read_to_string(scenario_path("h100-mig.toml")).unwrap()
        + "\n[[faults.errors]]\nfunction = \"nvmlGpmMigSampleGet\"\ncode = 3\n";
    let rig = Rig::inline(&text);
    let out = meter(
        &rig,
        &[(6100, MODEL_A), (6200, MODEL_B), (6300, MODEL_C)],
        20,
        None,
    );
    let mut centrals = 0.0;
    for (name, instance) in [("model-a", 0), ("model-b", 1)] {
        let mine: Vec<&IntervalRecord> = out.records.iter().filter(|r| model(r) == name).collect();
        assert!(!mine.is_empty());
        assert!(
            mine.iter().all(|r| r.method == Method::MigFallback as i32),
            "{name}"
        );
        assert!(mine.iter().all(|r| r.mig.is_some()));
        let (low, central, high, _, _) = sum(&out.records, |r| model(r) == name);
        let truth = rig.scenario.true_flop_mig(0, instance, 0.0, 20.0).unwrap();
        assert!(
            low <= truth && truth <= high,
            "{name}: {truth:e} outside [{low:e}, {high:e}]"
        );
        centrals += central;
    }
    // The centrals split the GPU's measured total: nothing created or lost.
    let gpu = rig.scenario.true_flop(0, 0.0, 20.0).unwrap();
    assert!(rel(centrals, gpu) < 0.03, "{centrals:e} vs {gpu:e}");
}

/// The operator destroys both instances at t = 20 (their jobs stopped at 19.5) and creates
/// a 2g.20gb and two 1g.10gb at t = 21, with new jobs from 22. Every instance's truth is
/// metered once, under its own UUID, and each model's total matches the sum of its truths.
#[test]
fn reconfiguration_mid_run_neither_loses_nor_double_counts() {
    let gpu = ScenarioBuilder::new()
        .gpu(
            GpuBuilder::h100()
                .uuid("GPU-reconf-0")
                .metric("sm_clock_mhz", 1755)
                .metric("power_w", 400),
        )
        .toml();
    let instance = |profile: &str,
                    uuid: &str,
                    gi: u32,
                    sm: u32,
                    from: f64,
                    until: Option<f64>,
                    tensor: &str,
                    pid: u32,
                    p_from: f64,
                    p_until: Option<f64>| {
        let until = until.map_or(String::new(), |u| format!("until = {u}\n"));
        let p_until = p_until.map_or(String::new(), |u| format!("until = {u}\n"));
        format!(
            "[[gpu.mig]]\nprofile = \"{profile}\"\nuuid = \"{uuid}\"\ngpu_instance_id = {gi}\n\
             sm_count = {sm}\nmemory_mib = 10000\nfrom = {from}\n{until}\
             [gpu.mig.metrics]\ntensor_util = {tensor}\n\
             [[gpu.mig.processes]]\npid = {pid}\nused_memory_mib = 5000\nfrom = {p_from}\n{p_until}"
        )
    };
    let text = [
        gpu,
        instance(
            "3g.40gb",
            "MIG-old-a",
            1,
            60,
            0.0,
            Some(20.0),
            "{ steps = [[0, 50], [19, 0]] }",
            7100,
            0.0,
            Some(19.5),
        ),
        instance(
            "4g.40gb",
            "MIG-old-b",
            2,
            64,
            0.0,
            Some(20.0),
            "{ steps = [[0, 35], [19, 0]] }",
            7200,
            0.0,
            Some(19.5),
        ),
        instance(
            "2g.20gb",
            "MIG-new-a",
            3,
            32,
            21.0,
            None,
            "{ steps = [[0, 0], [22, 60]] }",
            7101,
            22.0,
            None,
        ),
        instance(
            "1g.10gb",
            "MIG-new-b",
            7,
            16,
            21.0,
            None,
            "{ steps = [[0, 0], [22, 40]] }",
            7201,
            22.0,
            None,
        ),
        instance(
            "1g.10gb",
            "MIG-new-c",
            8,
            16,
            21.0,
            None,
            "{ steps = [[0, 0], [22, 70]] }",
            7102,
            22.0,
            None,
        ),
    ]
    .join("\n");
    let rig = Rig::inline(&text);
    let out = meter(
        &rig,
        &[
            (7100, MODEL_A),
            (7101, MODEL_A),
            (7102, MODEL_A),
            (7200, MODEL_B),
            (7201, MODEL_B),
        ],
        40,
        None,
    );
    let mut per_instance: BTreeMap<&str, f64> = BTreeMap::new();
    for r in &out.records {
        *per_instance.entry(mig_uuid(r)).or_default() += r.flop_central as f64;
    }
    assert_eq!(
        per_instance.keys().copied().collect::<Vec<_>>(),
        [
            "MIG-new-a",
            "MIG-new-b",
            "MIG-new-c",
            "MIG-old-a",
            "MIG-old-b"
        ],
        "every instance booked under its own UUID, nothing unattributed"
    );
    for (k, uuid) in [
        "MIG-old-a",
        "MIG-old-b",
        "MIG-new-a",
        "MIG-new-b",
        "MIG-new-c",
    ]
    .iter()
    .enumerate()
    {
        let truth = rig.scenario.true_flop_mig(0, k, 0.0, 40.0).unwrap();
        assert!(
            rel(per_instance[uuid], truth) < 0.03,
            "{uuid}: {:e} vs {truth:e}",
            per_instance[uuid]
        );
    }
    let truth_a: f64 = [0, 2, 4]
        .iter()
        .map(|&k| rig.scenario.true_flop_mig(0, k, 0.0, 40.0).unwrap())
        .sum();
    let truth_b: f64 = [1, 3]
        .iter()
        .map(|&k| rig.scenario.true_flop_mig(0, k, 0.0, 40.0).unwrap())
        .sum();
    let (la, a, ha, _, _) = sum(&out.records, |r| model(r) == "model-a");
    let (lb, b, hb, _, _) = sum(&out.records, |r| model(r) == "model-b");
    assert!(
        rel(a, truth_a) < 0.03 && la <= truth_a && truth_a <= ha,
        "A {a:e} vs {truth_a:e}"
    );
    assert!(
        rel(b, truth_b) < 0.03 && lb <= truth_b && truth_b <= hb,
        "B {b:e} vs {truth_b:e}"
    );
    // The new layout reached the inventory the next Hello carries.
    let now: Vec<&str> = out.inventory.gpus[0]
        .mig_instances
        .iter()
        .map(|m| m.uuid.as_str())
        .collect();
    assert_eq!(now, ["MIG-new-a", "MIG-new-b", "MIG-new-c"]);
}
