//! The whole agent in-process (`flopmeter_agent::run_with`): a real process carrying
//! `FLOPMETER_MODEL=demo-7b` in its environment, listed as a process of simulated GPUs, is
//! attributed to that model end to end, records reach an in-test collector, the metrics
//! endpoint reports, and shutdown drains.

use crate::collector_fake;

use std::process::Command;
use std::sync::Arc;

use collector_fake::{FakeCollector, Script, eventually};
use flopmeter_agent::config::KubeMode;
use flopmeter_agent::simulated::Workload;
use flopmeter_agent::time_source::VirtualTime;
use flopmeter_agent::{AgentArgs, RunOptions, SourceSpec};
use flopmeter_proto::v1::{AttributionSource, Method};
use tokio::sync::oneshot;

/// A `sleep` that is killed when the test ends, however it ends.
use crate::support::Proc as Sleeper;

fn labelled_sleep() -> Sleeper {
    Sleeper(
        Command::new("sleep")
            .arg("300")
            .env("FLOPMETER_MODEL", "demo-7b")
            .env("FLOPMETER_RUN", "demo-run-1")
            .env("FLOPMETER_STAGE", "pretrain")
            .spawn()
            .unwrap(),
    )
}

/// `GET path`: status line and body (off the runtime's threads: the client blocks).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let path = path.to_string();
    let r = tokio::task::spawn_blocking(move || crate::support::http::get(addr, &path))
        .await
        .unwrap()
        .expect("the agent's HTTP endpoint answers");
    format!("HTTP/1.1 {}\r\n\r\n{}", r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_process_is_attributed_end_to_end() {
    let sleeper = labelled_sleep();
    let pid = sleeper.0.id();
    let (fake, addr) = FakeCollector::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();

    let mut args = AgentArgs::defaults();
    args.collector = addr;
    args.spool_dir = dir.path().to_path_buf();
    args.metrics_addr = "127.0.0.1:0".into();
    args.kube = KubeMode::Off;
    args.agent_id = Some("node-a-agent".parse().unwrap());
    args.node_name = Some("node-a".into());

    // Two H100s at 50% tensor activity; the labelled process runs on GPU 1 only. GPU 0 has
    // an unlabelled (synthetic, invisible) process: its work is unattributed, not dropped.
    let workload = Workload::from_toml(&format!(
        r#"
        gpu = "h100-sxm"
        count = 2
        tensor_util = 0.5
        sm_clock_mhz = 1830
        [[process]]
        pid = {pid}
        gpus = [1]
        [[process]]
        pid = 999999999
        gpus = [0]
        "#
    ))
    .unwrap();
    let start_ms = 1_780_000_000_000;
    let time = VirtualTime::new(start_ms);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let opts = RunOptions {
        source: Some(SourceSpec::Simulated(workload)),
        time: Some(Arc::new(time)),
        ready: Some(ready_tx),
        ..RunOptions::default()
    };
    let agent = tokio::spawn(flopmeter_agent::run_with(args, opts, async move {
        let _ = stop_rx.await;
    }));
    let ready = ready_rx.await.unwrap();
    assert_eq!(ready.agent_id, "node-a-agent");

    let demo = |f: &FakeCollector| {
        f.state
            .lock()
            .unwrap()
            .applied
            .get("node-a-agent")
            .map_or(0, |v| {
                v.iter()
                    .filter(|r| r.identity.as_ref().is_some_and(|i| i.model == "demo-7b"))
                    .count()
            })
    };
    eventually("demo-7b records delivered", || demo(&fake) >= 20).await;

    let metrics_addr = ready.metrics_addr.unwrap();
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(text.contains("flopmeter_agent_run_flop_per_second{model=\"demo-7b\",run=\"demo-run-1\",stage=\"pretrain\"}"), "{text}");
    assert!(
        text.contains("flopmeter_agent_unattributed_flop_total{gpu=\"0\""),
        "{text}"
    );
    assert!(
        text.contains("flopmeter_agent_collector_connected 1"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(!text.contains(&format!("{pid}")), "no label carries a PID");
    let health = http_get(metrics_addr, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );

    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();

    // Everything the agent spooled reached the collector, in sequence, exactly once.
    let st = fake.state.lock().unwrap();
    let applied = &st.applied["node-a-agent"];
    let seqs: Vec<u64> = applied.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=applied.len() as u64).collect::<Vec<_>>());
    let hello = &st.hellos[0];
    assert_eq!((hello.node.as_str(), hello.gpus.len()), ("node-a", 2));

    // The labelled process's records: model, run, stage, source, and the FLOP of 10 s at
    // 50% tensor activity on an H100 at its 1830 MHz reference clock, by hand:
    // 0.5 × 989e12 × 10 = 4.945e15 (BF16 central), 0.5 × 1979e12 × 10 × the estimator's
    // high margin and clock headroom (FP8 high).
    let full: Vec<_> = applied
        .iter()
        .filter(|r| r.identity.as_ref().unwrap().model == "demo-7b" && r.gpu_ms == 10_000)
        .collect();
    assert!(full.len() >= 10, "{} full intervals", full.len());
    for r in &full {
        let id = r.identity.as_ref().unwrap();
        assert_eq!(id.run, "demo-run-1");
        assert_eq!(id.stage, "pretrain");
        assert_eq!(id.source, AttributionSource::ProcessEnv as i32);
        assert_eq!(r.gpu_uuid, flopmeter_agent::simulated::sim_uuid(1));
        assert_eq!(r.gpu_type, "h100-sxm");
        assert_eq!(r.method, Method::GpmTensor as i32);
        assert_eq!(r.end_unix_ms - r.start_unix_ms, 10_000);
        assert!(r.start_unix_ms >= start_ms);
        assert!(
            r.flop_central.abs_diff(4_945_000_000_000_000) <= 10,
            "{}",
            r.flop_central
        );
        // Undeclared: FP8 at the margin and the clock headroom (1980 / 1830 MHz).
        let high = 9.895e15 * flopmeter_core::estimator::HIGH_MARGIN * 1980.0 / 1830.0;
        assert!((r.flop_high as f64 - high).abs() <= 10.0, "{}", r.flop_high);
        assert!(!r.approximate);
        assert_eq!(r.mean_sm_clock_mhz, 1830);
        assert!((r.mean_tensor_util - 0.5).abs() < 1e-9);
        // Simulated power: 80% of the H100's 700 W TDP = 560 W for 10 s.
        assert_eq!(r.energy_mj, 5_600_000);
    }
    // GPU 0's work: unattributed, sent, never dropped.
    assert!(applied.iter().any(|r| {
        let id = r.identity.as_ref().unwrap();
        id.source == AttributionSource::Unattributed as i32
            && r.gpu_uuid == flopmeter_agent::simulated::sim_uuid(0)
            && r.flop_central > 0
    }));
    drop(sleeper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_gpu_is_split_by_sm_share_and_flagged_approximate() {
    let a = Sleeper(
        Command::new("sleep")
            .arg("300")
            .env("FLOPMETER_MODEL", "big")
            .spawn()
            .unwrap(),
    );
    let b = Sleeper(
        Command::new("sleep")
            .arg("300")
            .env("FLOPMETER_MODEL", "small")
            .spawn()
            .unwrap(),
    );
    let (fake, addr) = FakeCollector::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = AgentArgs::defaults();
    args.collector = addr;
    args.spool_dir = dir.path().to_path_buf();
    args.metrics_addr = "off".into();
    args.kube = KubeMode::Off;
    let workload = Workload::from_toml(&format!(
        "gpu = \"a100-sxm\"\ncount = 1\ntensor_util = 0.0\ngpu_util = 1.0\n\
         [[process]]\npid = {}\nsm_share = 0.75\n[[process]]\npid = {}\nsm_share = 0.25\n",
        a.0.id(),
        b.0.id()
    ))
    .unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let agent = tokio::spawn(flopmeter_agent::run_with(
        args,
        RunOptions {
            source: Some(SourceSpec::Simulated(workload)),
            time: Some(Arc::new(VirtualTime::new(1_780_000_000_000))),
            ready: Some(ready_tx),
            ..RunOptions::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let agent_id = ready_rx.await.unwrap().agent_id;
    let full = |f: &FakeCollector, model: &str| -> Vec<flopmeter_proto::v1::IntervalRecord> {
        f.state
            .lock()
            .unwrap()
            .applied
            .get(&agent_id)
            .map(|v| {
                v.iter()
                    .filter(|r| r.identity.as_ref().unwrap().model == model)
                    .filter(|r| r.end_unix_ms - r.start_unix_ms == 10_000)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually("both models reported", || {
        !full(&fake, "big").is_empty() && !full(&fake, "small").is_empty()
    })
    .await;
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    let big = &full(&fake, "big")[0];
    let small = &full(&fake, "small")[0];
    // A100, util×MFU: 1.0 × 312e12 × 10 s × 0.40 = 1.248e15 for the whole GPU, split 3:1.
    assert!(
        big.flop_central.abs_diff(936_000_000_000_000) <= 10,
        "{}",
        big.flop_central
    );
    assert!(
        small.flop_central.abs_diff(312_000_000_000_000) <= 10,
        "{}",
        small.flop_central
    );
    assert_eq!((big.gpu_ms, small.gpu_ms), (7_500, 2_500));
    assert!(big.approximate && small.approximate);
    assert_eq!(big.method, Method::UtilMfu as i32);
    drop((a, b));
}
