//! End to end, as on a node: a real `flopmeter agent` process reading the fake libnvidia-ml,
//! whose GPUs run a real process carrying `FLOPMETER_MODEL=demo-7b`, streams to a real
//! `flopmeter collector` process. The agent is killed with SIGKILL mid-run and restarted,
//! then stopped with SIGTERM. The collector's ledger must hold every record the agent ever
//! numbered, exactly once, all attributed to demo-7b, with FLOP matching the scenario.

use std::io::Read;
use std::path::Path;

use crate::support::{self, CollectorProc, Proc, eventually, flopmeter};

use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};
use fake_nvml::harness::FakeNvml;
use flopmeter_agent::spool::{Spool, SpoolOptions};

fn demo_records(collector: &CollectorProc) -> u64 {
    collector
        .get("/api/v1/models")
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|m| m["model"] == "demo-7b")
                .and_then(|m| m["records"].as_u64())
        })
        .unwrap_or(0)
}

fn spawn_agent(lib: &Path, spool: &Path, collector: &str) -> Proc {
    Proc(
        flopmeter(&["agent", "--nvml-lib"])
            .arg(lib)
            .arg("--spool-dir")
            .arg(spool)
            .args(["--collector", collector])
            .args(["--metrics-addr", "off", "--kube", "off"])
            .args(["--sample-interval", "100ms", "--report-interval", "500ms"])
            .args(["--drain-grace", "10s"])
            .spawn()
            .expect("flopmeter agent starts"),
    )
}

#[test]
fn agent_with_fake_nvml_streams_to_a_real_collector_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let trainer = support::trainer("demo-7b", "e2e-run");
    // Two H100s at 50% tensor activity at the 1830 MHz reference clock; the trainer runs
    // on both (the scenario names its real PID, so it is written after spawning).
    let fake = FakeNvml::new(
        &ScenarioBuilder::new()
            .gpu(
                GpuBuilder::h100()
                    .count(2)
                    .uuid("GPU-e2e00000-0000-4000-8000-00000000000{index}")
                    .training(trainer.0.id(), 50.0, 1830),
            )
            .toml(),
    )
    .unwrap();

    let collector = support::collector(&work.path().join("ledger")).start();

    let spool = work.path().join("agent");
    let mut a = spawn_agent(fake.lib_path(), &spool, &collector.url());
    eventually("records in the ledger", || demo_records(&collector) >= 6);
    // kill -9 mid-run, then restart on the same spool.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let before = demo_records(&collector);
    let b = spawn_agent(fake.lib_path(), &spool, &collector.url());
    eventually("delivery resumes", || {
        demo_records(&collector) >= before + 6
    });
    let mut b = b;
    let status = b.terminate();
    let mut stderr = String::new();
    if let Some(mut e) = b.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "SIGTERM drains and exits 0: {stderr}");

    // Every record the agent numbered is in the ledger exactly once, and the spool is empty.
    let s = Spool::open(&spool.join("spool"), SpoolOptions::default()).unwrap();
    let st = s.stats();
    assert_eq!(st.records, 0, "drained");
    let numbered = st.next_seq - 1;
    assert_eq!(st.acked_through, numbered);
    let m = collector
        .get("/api/v1/models/demo-7b")
        .expect("demo-7b is in the ledger");
    let summary = &m["summary"];
    assert_eq!(
        summary["records"].as_u64(),
        Some(numbered),
        "exactly once: {summary}"
    );
    assert_eq!(
        summary["agents"].as_u64(),
        Some(1),
        "one agent id across the restart"
    );
    let runs = collector.get("/api/v1/runs?model=demo-7b").unwrap();
    assert_eq!(runs[0]["run"], "e2e-run");
    // 0.5 × 989e12 FLOP per second of GPU time (declared BF16), to rounding.
    // u128 figures are decimal strings in the JSON API.
    let num = |v: &serde_json::Value| v.as_str().unwrap().parse::<f64>().unwrap();
    let gpu_ms = num(&summary["gpu_ms"]);
    let central = num(&summary["counted"]["central"]);
    let expected = 0.5 * 989e12 * gpu_ms / 1000.0;
    assert!(
        (central - expected).abs() / expected < 0.01,
        "{central} vs {expected} over {gpu_ms} GPU-ms"
    );
    drop(trainer);
}
