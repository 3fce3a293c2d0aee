//! The agent on the real NVML code path: the fake libnvidia-ml lists a real process (a
//! `sleep` carrying `FLOPMETER_MODEL=demo-7b`), and the agent attributes that GPU's work to
//! demo-7b end to end, through the spool and the shipper to an in-test collector.

use crate::collector_fake;

use std::process::Command;

use collector_fake::{FakeCollector, Script, eventually};
use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};
use fake_nvml::harness::FakeNvml;
use flopmeter_agent::config::{HumanDuration, KubeMode};
use flopmeter_agent::{AgentArgs, RunOptions, SourceSpec};
use flopmeter_proto::v1::{AttributionSource, Method, Precision};
use tokio::sync::oneshot;

use crate::support::Proc as Sleeper;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_nvml_process_is_attributed_to_its_model() {
    let sleeper = Sleeper(
        Command::new("sleep")
            .arg("300")
            .env("FLOPMETER_MODEL", "demo-7b")
            .env("FLOPMETER_RUN", "nvml-run")
            .env("FLOPMETER_PRECISION", "bf16")
            .spawn()
            .unwrap(),
    );
    let pid = sleeper.0.id();
    // The scenario is written after spawning, so it can name the real PID.
    let fake = FakeNvml::new(
        &ScenarioBuilder::new()
            .gpu(
                GpuBuilder::h100()
                    .uuid("GPU-0e2e0000-0000-4000-8000-000000000000")
                    .training(pid, 50.0, 1830),
            )
            .toml(),
    )
    .unwrap();

    let (collector, addr) = FakeCollector::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = AgentArgs::defaults();
    args.collector = addr;
    args.spool_dir = dir.path().to_path_buf();
    args.metrics_addr = "off".into();
    args.kube = KubeMode::Off;
    args.sample_interval = HumanDuration(std::time::Duration::from_millis(50));
    args.report_interval = HumanDuration(std::time::Duration::from_millis(200));
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(flopmeter_agent::run_with(
        args,
        RunOptions {
            source: Some(SourceSpec::Nvml(fake.lib_path().to_path_buf())),
            ready: Some(ready_tx),
            ..RunOptions::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let Ok(ready) = ready_rx.await else {
        panic!("the agent did not start: {:?}", agent.await);
    };
    let agent_id = ready.agent_id;
    let demo = |c: &FakeCollector| -> Vec<flopmeter_proto::v1::IntervalRecord> {
        c.state
            .lock()
            .unwrap()
            .applied
            .get(&agent_id)
            .map(|v| {
                v.iter()
                    .filter(|r| r.identity.as_ref().unwrap().model == "demo-7b")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually("three demo-7b records", || demo(&collector).len() >= 3).await;
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();

    let recs = demo(&collector);
    let hello = collector.state.lock().unwrap().hellos[0].clone();
    assert_eq!(hello.driver_version, "550.90.07");
    assert_eq!(hello.gpus[0].catalogue_id, "h100-sxm");
    for r in &recs {
        let id = r.identity.as_ref().unwrap();
        assert_eq!(id.run, "nvml-run");
        assert_eq!(id.source, AttributionSource::ProcessEnv as i32);
        assert_eq!(r.gpu_uuid, "GPU-0e2e0000-0000-4000-8000-000000000000");
        assert_eq!(r.method, Method::GpmTensor as i32);
        assert_eq!(r.precision, Precision::Bf16 as i32);
        assert!(r.precision_declared, "FLOPMETER_PRECISION narrows the band");
        assert!(r.declaration.is_some());
        // 50% tensor at the reference clock: 0.5 × 989e12 FLOP/s of GPU time, to within
        // the millisecond rounding of gpu_ms.
        let expected = 0.5 * 989e12 * r.gpu_ms as f64 / 1000.0;
        let rel = (r.flop_central as f64 - expected).abs() / expected;
        assert!(rel < 0.01, "{} vs {expected}", r.flop_central);
        // Declared: the band is [0.85, HIGH_MARGIN × clock headroom] × central, with no FP8
        // high bound (the clock is at the reference, so central has no clock scaling).
        let headroom = flopmeter_core::catalogue::find("h100-sxm")
            .unwrap()
            .clock_headroom();
        let high = r.flop_central as f64 * flopmeter_core::estimator::HIGH_MARGIN * headroom;
        assert!((r.flop_high as f64 - high).abs() / high < 1e-6, "{r:?}");
        assert!(r.flop_low < r.flop_central, "{r:?}");
    }
    drop(sleeper);
}
