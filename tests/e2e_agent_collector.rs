//! End to end, as on a node: a real `flopmeter agent` process reading the fake libnvidia-ml,
//! whose GPUs run a real process carrying `FLOPMETER_MODEL=demo-7b`, streams to a real
//! `flopmeter collector` process. The agent is killed with SIGKILL mid-run and restarted,
//! then stopped with SIGTERM. The collector's ledger must hold every record the agent ever
//! numbered, exactly once, all attributed to demo-7b, with FLOP matching the scenario.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use support::{Proc, eventually, flopmeter, free_port, get};

use fake_nvml::harness::FakeNvml;
use flopmeter_agent::spool::{Spool, SpoolOptions};

fn demo_records(port: u16) -> u64 {
    get(port, "/api/v1/models")
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|m| m["model"] == "demo-7b")
                .and_then(|m| m["records"].as_u64())
        })
        .unwrap_or(0)
}

fn spawn_agent(lib: &Path, spool: &Path, grpc: u16) -> Proc {
    Proc(
        flopmeter(&["agent", "--nvml-lib"])
            .arg(lib)
            .arg("--spool-dir")
            .arg(spool)
            .args(["--collector", &format!("http://127.0.0.1:{grpc}")])
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
    let trainer = Proc(
        Command::new("sleep")
            .arg("600")
            .env("FLOPMETER_MODEL", "demo-7b")
            .env("FLOPMETER_RUN", "e2e-run")
            .env("FLOPMETER_PRECISION", "bf16")
            .spawn()
            .unwrap(),
    );
    // Two H100s at 50% tensor activity at the 1830 MHz reference clock; the trainer runs
    // on both (the scenario names its real PID, so it is written after spawning).
    let fake = FakeNvml::new(&format!(
        r#"
        driver_version = "550.90.07"
        [truth]
        precision = "bf16"
        tensor_flop_per_clk_per_sm = 4096
        [[gpu]]
        count = 2
        name = "NVIDIA H100 80GB HBM3"
        uuid = "GPU-e2e00000-0000-4000-8000-00000000000{{index}}"
        pci_device_id = 0x2330
        sm_count = 132
        max_sm_clock_mhz = 1980
        gpm = true
        memory_total_mib = 81559
        [gpu.metrics]
        sm_clock_mhz = 1830
        tensor_util = 50.0
        gpu_util = 99.0
        power_w = 600.0
        [[gpu.processes]]
        pid = {}
        used_memory_mib = 60000
        sm_share = 1.0
        "#,
        trainer.0.id()
    ))
    .unwrap();

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

    let spool = work.path().join("agent");
    let mut a = spawn_agent(fake.lib_path(), &spool, grpc);
    eventually("records in the ledger", || demo_records(http) >= 6);
    // kill -9 mid-run, then restart on the same spool.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let before = demo_records(http);
    let b = spawn_agent(fake.lib_path(), &spool, grpc);
    eventually("delivery resumes", || demo_records(http) >= before + 6);
    let ok = Command::new("kill")
        .args(["-TERM", &b.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut b = b;
    let status = b.0.wait().unwrap();
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
    let m = get(http, "/api/v1/models/demo-7b").expect("demo-7b is in the ledger");
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
    let runs = get(http, "/api/v1/runs?model=demo-7b").unwrap();
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
