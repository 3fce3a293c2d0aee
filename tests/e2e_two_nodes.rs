//! End to end across two "nodes": a real `flopmeter collector` process and two real
//! `flopmeter agent` processes, each reading its own fake libnvidia-ml (two H100s each), each
//! node running one run of the same model. The report's counted total must match the
//! scenarios' ground truth within 1%, with both runs and both nodes accounted.
//!
//! The truth is the scenarios' own arithmetic (SMs × dense FLOP per clock × clock × tensor
//! activity, integrated by `Scenario::true_flop`) over all the work they play, never the
//! estimator under test and nothing read back from the ledger: each GPU is busy for a fixed
//! window of scenario time and idle before and after it, so the whole window is metered
//! whatever the agents' timing, and an interval lost or counted twice (one record, a quarter
//! second of one GPU, is 1.6% of the total) moves the total out of the tolerance.
//!
//! The two nodes are on two clusters (`--cluster gpu-a`, `--cluster gpu-b`): one model
//! trained on two clusters. Each cluster's figures must be its run's exactly, and together
//! the model's total exactly, in the API, the report and the CLI; `--cluster` filters must
//! pick the right rows.

use std::path::Path;

use crate::support::{self, Proc, flopmeter};
use fake_nvml::builder::{GpuBuilder, ScenarioBuilder, steps};

/// Scenario seconds (since the agent's `nvmlInit`) when the GPUs start and stop working.
/// Before: the agent is up and sampling well before its GPUs do anything; after: idle.
const BUSY_FROM: f64 = 3.0;
const BUSY_UNTIL: f64 = 7.0;
/// GPU time each run must have accounted before the agents are stopped: both GPUs past the
/// end of the busy window (the agent samples from its start, `nvmlInit` being scenario 0).
const SETTLED_GPU_MS: u64 = 2 * 9_000;

fn scenario(pid: u32, node: &str) -> ScenarioBuilder {
    ScenarioBuilder::new().gpu(
        GpuBuilder::h100()
            .count(2)
            .uuid(&format!(
                "GPU-{node}0000-0000-4000-8000-00000000000{{index}}"
            ))
            .training(pid, 45.0, 1755)
            .metric(
                "tensor_util",
                steps(&[(0.0, 0.0), (BUSY_FROM, 45.0), (BUSY_UNTIL, 0.0)]),
            ),
    )
}

fn trainer(run: &str) -> Proc {
    support::trainer("demo-7b", run)
}

fn agent(lib: &Path, work: &Path, node: &str, cluster: &str, collector: &str) -> Proc {
    Proc(
        flopmeter(&["agent", "--nvml-lib"])
            .arg(lib)
            .arg("--spool-dir")
            .arg(work.join(node))
            .args([
                "--node-name",
                node,
                "--agent-id",
                node,
                "--cluster",
                cluster,
            ])
            .args(["--collector", collector])
            .args(["--metrics-addr", "off", "--kube", "off"])
            .args(["--sample-interval", "100ms", "--report-interval", "250ms"])
            .args(["--drain-grace", "10s"])
            .spawn()
            .expect("flopmeter agent starts"),
    )
}

#[test]
fn two_agents_two_runs_one_model_match_the_ground_truth() {
    let work = tempfile::tempdir().unwrap();
    let (ta, tb) = (trainer("run-a"), trainer("run-b"));
    let (sa, sb) = (scenario(ta.0.id(), "a"), scenario(tb.0.id(), "b"));
    let fa = fake_nvml::harness::FakeNvml::new(&sa.toml()).unwrap();
    let fb = fake_nvml::harness::FakeNvml::new(&sb.toml()).unwrap();

    let collector = support::collector(&work.path().join("ledger")).start();
    let mut agents = [
        agent(
            fa.lib_path(),
            work.path(),
            "node-a",
            "gpu-a",
            &collector.url(),
        ),
        agent(
            fb.lib_path(),
            work.path(),
            "node-b",
            "gpu-b",
            &collector.url(),
        ),
    ];
    // Wait until both runs' GPU time covers the busy window. This only says when to stop:
    // the truth below does not depend on it.
    support::eventually("both runs metered past the busy window", || {
        let runs = collector
            .get("/api/v1/runs?model=demo-7b")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        runs.len() == 2
            && runs.iter().all(|r| {
                r["gpu_ms"]
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|ms| ms >= SETTLED_GPU_MS)
            })
    });
    for a in &mut agents {
        assert!(a.terminate().success(), "SIGTERM drains and exits 0");
    }

    // The report, as a compliance officer would fetch it.
    let out = flopmeter(&["report", "--model", "demo-7b", "--format", "json"])
        .args(["--collector", &collector.url()])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let as_f64 = |v: &serde_json::Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap()
    };
    let central = as_f64(&report["computation"]["counted"]["central"]);
    let low = as_f64(&report["computation"]["counted"]["low"]);
    let high = as_f64(&report["computation"]["counted"]["high"]);
    assert_eq!(report["runs"].as_array().unwrap().len(), 2, "{report}");
    let summary = &collector.get("/api/v1/models/demo-7b").unwrap()["summary"];
    assert_eq!(summary["nodes"].as_u64(), Some(2), "{summary}");
    assert_eq!(summary["agents"].as_u64(), Some(2), "{summary}");

    // Ground truth: everything both scenarios' GPUs executed, from their own arithmetic.
    let mut truth = 0.0;
    for s in [&sa, &sb] {
        let s = s.scenario().unwrap();
        for gpu in 0..s.gpus.len() {
            truth += s.true_flop(gpu, 0.0, BUSY_UNTIL + 1.0).unwrap();
        }
    }
    // 4 GPUs × 4 s × 0.45 × 132 SMs × 4096 FLOP/clk × 1755 MHz: the scenario is what the
    // test says it is.
    let by_hand = 4.0 * (BUSY_UNTIL - BUSY_FROM) * 0.45 * 132.0 * 4096.0 * 1755e6;
    assert!(
        (truth - by_hand).abs() / by_hand < 1e-9,
        "{truth} vs {by_hand}"
    );
    assert!(
        (central - truth).abs() / truth <= 0.01,
        "report central {central:.4e} vs ground truth {truth:.4e}"
    );
    assert!(
        low <= truth && truth <= high,
        "truth {truth:.4e} outside [{low:.4e}, {high:.4e}]"
    );
    clusters_add_up_exactly(&collector, &report);
    drop((ta, tb));
}

fn u(v: &serde_json::Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an exact integer: {v}"))
}

fn band(v: &serde_json::Value) -> [u128; 3] {
    [u(&v["low"]), u(&v["central"]), u(&v["high"])]
}

fn add(a: [u128; 3], b: [u128; 3]) -> [u128; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

/// One model on two clusters: each cluster's figures are its run's, and their sum is the
/// model's total, exactly, everywhere they are shown; the filters pick the right rows.
fn clusters_add_up_exactly(collector: &support::CollectorProc, report: &serde_json::Value) {
    let summary = &collector.get("/api/v1/models/demo-7b").unwrap()["summary"];
    assert_eq!(summary["clusters"], serde_json::json!(["gpu-a", "gpu-b"]));
    let rows = summary["by_cluster"].as_array().unwrap();
    let names: Vec<_> = rows.iter().map(|r| (&r["kind"], &r["cluster"])).collect();
    assert_eq!(names.len(), 2, "{summary}");
    assert!(rows.iter().all(|r| r["kind"] == "cluster"), "{summary}");
    let runs = collector.get("/api/v1/runs?model=demo-7b").unwrap();
    let run = |id: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["run"] == id)
            .unwrap()
            .clone()
    };
    let mut sum = [0; 3];
    let (mut gpu_ms, mut energy, mut records) = (0, 0, 0);
    for (cluster, run_id) in [("gpu-a", "run-a"), ("gpu-b", "run-b")] {
        let row = rows.iter().find(|r| r["cluster"] == cluster).unwrap();
        let r = run(run_id);
        assert_eq!(
            band(&row["counted"]["flop"]),
            band(&r["counted"]),
            "{cluster} ran exactly {run_id}"
        );
        assert_eq!(u(&row["counted"]["gpu_ms"]), u(&r["gpu_ms"]), "{cluster}");
        assert_eq!(r["clusters"], serde_json::json!([cluster]));
        sum = add(sum, band(&row["counted"]["flop"]));
        gpu_ms += u(&row["counted"]["gpu_ms"]);
        energy += u(&row["counted"]["energy_mj"]);
        records += row["counted"]["records"].as_u64().unwrap();
    }
    assert_eq!(
        sum,
        band(&summary["counted"]),
        "the clusters sum to the total"
    );
    assert!(sum[1] > 0);
    assert_eq!(gpu_ms, u(&summary["gpu_ms"]));
    assert_eq!(energy, u(&summary["energy_mj"]));
    assert_eq!(
        u128::from(records),
        u128::from(summary["records"].as_u64().unwrap())
    );

    // The report (JSON, as the CLI fetched it): its per-cluster rows sum to its computation.
    let rows = report["clusters"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    let sum = rows.iter().fold([0; 3], |s, r| add(s, band(&r["counted"])));
    assert_eq!(sum, band(&report["computation"]["counted"]));
    let energy: u128 = rows.iter().map(|r| u(&r["energy_mj"])).sum();
    assert_eq!(energy, u(&report["energy"]["counted_mj"]));
    for run in report["runs"].as_array().unwrap() {
        let by = run["by_cluster"].as_array().unwrap();
        assert_eq!(by.len(), 1, "{run}");
        assert_eq!(band(&by[0]["counted"]), band(&run["counted"]));
    }

    // The CLI's filters, filtered by the collector.
    let cli = |args: &[&str]| {
        let out = flopmeter(args)
            .args(["--collector", &collector.url()])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&cli(args)).unwrap() };
    let models = json(&["models", "--cluster", "gpu-b", "--json"]);
    assert_eq!(models.as_array().unwrap().len(), 1, "{models}");
    assert_eq!(
        band(&models[0]["counted"]),
        band(&summary["counted"]),
        "a filter picks rows, never narrows a model's total"
    );
    assert_eq!(
        json(&["models", "--cluster", "gpu-c", "--json"]),
        serde_json::json!([])
    );
    for (cluster, run_id) in [("gpu-a", "run-a"), ("gpu-b", "run-b")] {
        let runs = json(&["runs", "--cluster", cluster, "--json"]);
        let ids: Vec<_> = runs.as_array().unwrap().iter().map(|r| &r["run"]).collect();
        assert_eq!(ids, [run_id], "{runs}");
    }
    let runs = json(&["runs", "--model", "demo-7b", "--cluster", "gpu-c", "--json"]);
    assert_eq!(runs, serde_json::json!([]));
    let text = cli(&["models", "--cluster", "gpu-a"]);
    assert!(
        text.contains("on gpu-a") && text.contains("gpu-a,gpu-b"),
        "{text}"
    );
    let text = cli(&["report", "--model", "demo-7b"]);
    assert!(text.contains("Per cluster"), "{text}");
    let csv = cli(&["report", "--model", "demo-7b", "--format", "csv"]);
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("cluster,")).count(),
        2,
        "{csv}"
    );
}
