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

fn agent(lib: &Path, work: &Path, node: &str, collector: &str) -> Proc {
    Proc(
        flopmeter(&["agent", "--nvml-lib"])
            .arg(lib)
            .arg("--spool-dir")
            .arg(work.join(node))
            .args(["--node-name", node, "--agent-id", node])
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
        agent(fa.lib_path(), work.path(), "node-a", &collector.url()),
        agent(fb.lib_path(), work.path(), "node-b", &collector.url()),
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
    drop((ta, tb));
}
