//! End to end across two "nodes": a real `flopmeter collector` process and two real
//! `flopmeter agent` processes, each reading its own fake libnvidia-ml (two H100s each), each
//! node running one run of the same model. The report's counted total must match the
//! scenarios' ground truth within ±3%, with both runs and both nodes accounted.
//!
//! The truth comes from the fake's scenario arithmetic (SMs × dense FLOP per clock × clock ×
//! tensor activity), never from the estimator under test.

mod support;

use std::path::Path;
use std::process::Command;

use fake_nvml::harness::FakeNvml;
use fake_nvml::scenario::Scenario;
use support::{Proc, eventually, flopmeter, free_port, get};

fn scenario(pid: u32, node: &str) -> String {
    format!(
        r#"
        driver_version = "550.90.07"
        [truth]
        precision = "bf16"
        tensor_flop_per_clk_per_sm = 4096
        [[gpu]]
        count = 2
        name = "NVIDIA H100 80GB HBM3"
        uuid = "GPU-{node}0000-0000-4000-8000-00000000000{{index}}"
        pci_device_id = 0x2330
        sm_count = 132
        max_sm_clock_mhz = 1980
        gpm = true
        memory_total_mib = 81559
        [gpu.metrics]
        sm_clock_mhz = 1755
        tensor_util = 45.0
        gpu_util = 99.0
        power_w = 600.0
        [[gpu.processes]]
        pid = {pid}
        used_memory_mib = 60000
        sm_share = 1.0
        "#
    )
}

fn trainer(run: &str) -> Proc {
    Proc(
        Command::new("sleep")
            .arg("600")
            .env("FLOPMETER_MODEL", "demo-7b")
            .env("FLOPMETER_RUN", run)
            .env("FLOPMETER_PRECISION", "bf16")
            .spawn()
            .unwrap(),
    )
}

fn agent(lib: &Path, work: &Path, node: &str, grpc: u16) -> Proc {
    Proc(
        flopmeter(&["agent", "--nvml-lib"])
            .arg(lib)
            .arg("--spool-dir")
            .arg(work.join(node))
            .args(["--node-name", node, "--agent-id", node])
            .args(["--collector", &format!("http://127.0.0.1:{grpc}")])
            .args(["--metrics-addr", "off", "--kube", "off"])
            .args(["--sample-interval", "100ms", "--report-interval", "500ms"])
            .args(["--drain-grace", "10s"])
            .spawn()
            .expect("flopmeter agent starts"),
    )
}

fn runs(http: u16) -> Vec<serde_json::Value> {
    get(http, "/api/v1/runs?model=demo-7b")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn two_agents_two_runs_one_model_match_the_ground_truth() {
    let work = tempfile::tempdir().unwrap();
    let (ta, tb) = (trainer("run-a"), trainer("run-b"));
    let (sa, sb) = (scenario(ta.0.id(), "a"), scenario(tb.0.id(), "b"));
    let (fa, fb) = (FakeNvml::new(&sa).unwrap(), FakeNvml::new(&sb).unwrap());

    let (grpc, http) = (free_port(), free_port());
    let _collector = Proc(
        flopmeter(&["collector", "--data-dir"])
            .arg(work.path().join("ledger"))
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .spawn()
            .expect("flopmeter collector starts"),
    );
    eventually("collector up", || get(http, "/api/v1/models").is_some());

    let agents = [
        agent(fa.lib_path(), work.path(), "node-a", grpc),
        agent(fb.lib_path(), work.path(), "node-b", grpc),
    ];
    eventually("both runs have records", || {
        let r = runs(http);
        r.len() == 2 && r.iter().all(|r| r["records"].as_u64().unwrap_or(0) >= 8)
    });
    for a in &agents {
        assert!(
            Command::new("kill")
                .args(["-TERM", &a.0.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
    for mut a in agents {
        assert!(a.0.wait().unwrap().success(), "SIGTERM drains and exits 0");
    }

    // The report, as a compliance officer would fetch it.
    let out = flopmeter(&["report", "--model", "demo-7b", "--format", "json"])
        .args(["--collector", &format!("http://127.0.0.1:{grpc}")])
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

    // Ground truth: the scenario's true FLOP per GPU-second at a steady moment, times the GPU
    // time the ledger accounted (both nodes play the same steady workload).
    let truth_rate = Scenario::parse(&sa, "node-a")
        .unwrap()
        .true_flop(0, 10.0, 11.0)
        .unwrap();
    let truth_rate_b = Scenario::parse(&sb, "node-b")
        .unwrap()
        .true_flop(0, 10.0, 11.0)
        .unwrap();
    assert_eq!(truth_rate, truth_rate_b);
    let summary = &get(http, "/api/v1/models/demo-7b").unwrap()["summary"];
    assert_eq!(summary["nodes"].as_u64(), Some(2), "{summary}");
    assert_eq!(summary["agents"].as_u64(), Some(2), "{summary}");
    let gpu_s = as_f64(&summary["gpu_ms"]) / 1000.0;
    let truth = truth_rate * gpu_s;
    assert!(
        (central - truth).abs() / truth <= 0.03,
        "report central {central:.4e} vs ground truth {truth:.4e} over {gpu_s} GPU-s"
    );
    assert!(
        low <= truth && truth <= high,
        "truth {truth:.4e} outside [{low:.4e}, {high:.4e}]"
    );
    drop((ta, tb));
}
