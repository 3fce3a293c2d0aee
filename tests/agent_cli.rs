//! `flopmeter agent` as operators run it: `--print-config` with flags, environment and the
//! config file; usage errors; a missing NVML driver; and `kill -9` mid-run followed by a
//! restart, after which exactly the unacknowledged records are resent.

#[path = "../agent/tests/collector_fake.rs"]
mod collector_fake;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use collector_fake::{FakeCollector, Script, eventually};

fn flopmeter() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flopmeter"));
    // Keep the developer's own FLOPMETER_* settings out of the test.
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("flopmeter runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn print_config_shows_flags_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flopmeter.toml");
    std::fs::write(
        &file,
        "[agent]\nspool-dir = \"/srv/spool\"\nreport-interval = \"30s\"\nkube = \"off\"\n",
    )
    .unwrap();
    let o = run(flopmeter()
        .args(["agent", "--print-config", "--config"])
        .arg(&file)
        .args(["--report-interval", "20s"])
        .env("FLOPMETER_COLLECTOR", "http://collector.example:7443")
        .env("FLOPMETER_AGENT_TOKEN", "s3cret"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let v: toml::Table = out.parse().expect("--print-config prints TOML");
    let agent = v["agent"].as_table().unwrap();
    assert_eq!(
        agent["collector"].as_str(),
        Some("http://collector.example:7443")
    );
    assert_eq!(
        agent["spool-dir"].as_str(),
        Some("/srv/spool"),
        "from the file"
    );
    assert_eq!(
        agent["report-interval"].as_str(),
        Some("20s"),
        "flag beats file"
    );
    assert_eq!(agent["kube"].as_str(), Some("off"));
    assert_eq!(agent["agent-token"].as_str(), Some("<redacted>"));
    assert!(!out.contains("s3cret"));
}

#[test]
fn usage_errors_exit_2_and_a_missing_driver_exits_1_with_a_message() {
    let o = run(flopmeter().args([
        "agent",
        "--sample-interval",
        "5s",
        "--report-interval",
        "1s",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--report-interval"));

    let o = run(flopmeter().args(["agent", "--kube", "sometimes"]));
    assert_eq!(o.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let o = run(flopmeter()
        .args([
            "agent",
            "--metrics-addr",
            "off",
            "--kube",
            "off",
            "--spool-dir",
        ])
        .arg(dir.path())
        .args(["--nvml-lib", "/nonexistent/libnvidia-ml.so.1"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.to_lowercase().contains("nvml") || err.contains("driver"),
        "{err}"
    );
}

fn workload(dir: &Path) -> std::path::PathBuf {
    let w = dir.join("workload.toml");
    std::fs::write(
        &w,
        r#"
gpu = "h100-sxm"
count = 2
tensor_util = 0.45
[[process]]
pid = 4242
[process.env]
FLOPMETER_MODEL = "demo-7b"
FLOPMETER_RUN = "demo-run"
"#,
    )
    .unwrap();
    w
}

fn spawn_agent(addr: &str, spool: &Path, w: &Path) -> Child {
    flopmeter()
        .args(["agent", "--collector", addr, "--spool-dir"])
        .arg(spool)
        .arg("--simulate")
        .arg(w)
        .args([
            "--metrics-addr",
            "off",
            "--kube",
            "off",
            "--sample-interval",
            "20ms",
            "--report-interval",
            "100ms",
            "--drain-grace",
            "5s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_resends_exactly_the_unacked_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("agent");
    let w = workload(dir.path());
    let (fake, addr) = FakeCollector::start(Script::default()).await;
    let applied = |f: &FakeCollector| -> usize {
        f.state.lock().unwrap().applied.values().map(Vec::len).sum()
    };

    // Run, deliver some records, then stall the collector so records pile up unacked.
    let mut a = spawn_agent(&addr, &spool, &w);
    eventually("first records delivered", || applied(&fake) >= 10).await;
    fake.script(|s| s.stall = true);
    let hwm_at_stall = {
        let st = fake.state.lock().unwrap();
        st.hwm.values().copied().max().unwrap()
    };
    // Let several report intervals' records reach the spool, unacknowledged.
    tokio::time::sleep(Duration::from_millis(600)).await;
    signal(&a, "-KILL");
    a.wait().unwrap();
    let hwm_at_kill = fake
        .state
        .lock()
        .unwrap()
        .hwm
        .values()
        .copied()
        .max()
        .unwrap();
    let conns_before = fake.state.lock().unwrap().connections as usize;
    fake.unstall();

    // Restart on the same spool: same agent id, resends from the collector's mark on.
    let b = spawn_agent(&addr, &spool, &w);
    eventually("delivery resumes past the kill", || {
        fake.state
            .lock()
            .unwrap()
            .hwm
            .values()
            .copied()
            .max()
            .unwrap()
            > hwm_at_kill + 10
    })
    .await;
    signal(&b, "-TERM");
    let out = b.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SIGTERM drains and exits 0: {}",
        text(&out.stderr)
    );

    let st = fake.state.lock().unwrap();
    assert_eq!(st.applied.len(), 1, "one agent id across the restart");
    let (agent_id, recs) = st.applied.iter().next().unwrap();
    assert!(st.hellos.iter().all(|h| &h.agent_id == agent_id));
    // Exactly once, in order, no gap: 1..=N.
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() as u64 > hwm_at_stall);
    // The restarted agent sent nothing the collector had acknowledged: each of its streams
    // starts exactly after the high-water mark its Welcome carried.
    let mut restarted_streams = 0;
    for (conn, hwm) in st.welcomes.iter().filter(|(c, _)| *c >= conns_before) {
        let sent = &st.per_connection[*conn];
        if let Some(first) = sent.first() {
            restarted_streams += 1;
            assert_eq!(*first, hwm + 1, "stream {conn} resends from its hwm + 1");
            assert!(
                sent.iter().all(|s| s > hwm),
                "no acknowledged record resent"
            );
        }
    }
    assert!(restarted_streams >= 1);
    assert!(hwm_at_kill >= hwm_at_stall);
    assert!(
        recs.iter()
            .all(|r| r.identity.as_ref().unwrap().model == "demo-7b"),
        "every record attributed to demo-7b"
    );
}
