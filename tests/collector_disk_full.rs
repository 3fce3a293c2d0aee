//! The collector's disk fills up while agents stream to it. It must stop acknowledging before
//! the volume is full (so the agents keep their records, and the storage engine never meets
//! ENOSPC, which it does not recover from cleanly), say so in a counter and a log line, resume
//! by itself once there is room, and every record must then be in the ledger exactly once.
//!
//! The ledger lives on a small tmpfs the test mounts, so "disk full" is the kernel's ENOSPC,
//! not an imitation. Mounting needs root: CI runs as root; elsewhere the test says it skipped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{self, CollectorProc, http};
use flopmeter_collector::ledger::LedgerStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_sim::agent::{Pace, SimAgent, SimSpec, SimStats, StopAt};
use flopmeter_sim::loadgen::channel;

const AGENTS: u64 = 2;
const GPUS: u32 = 8;
const BATCHES: u64 = 1500;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "remount {size}");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The collector on the tmpfs, warning about nothing but errors; `on`: where a crashed one
/// listened (its agents reconnect there).
fn spawn_collector(dir: &Path, on: Option<&CollectorProc>) -> CollectorProc {
    let mut c = support::collector(dir)
        .args(["--min-free-mb", "4"])
        .env("FLOPMETER_LOG", "error");
    if let Some(was) = on {
        c = c.on(was.grpc, was.http);
    }
    c.start()
}

/// Stops the collector and returns what it logged.
fn stop(p: &mut CollectorProc) -> String {
    p.kill9()
}

fn spec(i: u64) -> SimSpec {
    SimSpec {
        agent_id: format!("disk-agent-{i}"),
        node: format!("disk-node-{i}"),
        gpus: GPUS,
        model: "disk-model".into(),
        run: format!("run-{i}"),
        stage: String::new(),
        interval: Duration::from_secs(10),
        token: None,
        cluster: String::new(),
    }
}

/// A counter's value from the collector's /metrics text (`None` while it is down).
fn metric(c: &CollectorProc, name: &str) -> Option<f64> {
    http::sample(&http::get_text(c.http, "/metrics")?, name)
}

#[test]
fn a_full_disk_stops_acks_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount("10m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root (it mounts a tmpfs to fill)"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let data = fs.path().join("ledger");
    let mut collector = spawn_collector(&data, None);
    let total = AGENTS * BATCHES * u64::from(GPUS);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(SimStats::default());
    let url = collector.url();
    let (errors_seen, acked_when_full, restarted, first_log) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..AGENTS {
            let ch = channel(&url).unwrap();
            let stats = stats.clone();
            tasks.push(tokio::spawn(async move {
                let mut a = SimAgent::new(spec(i));
                let stop = StopAt {
                    batches: Some(BATCHES),
                    deadline: None,
                };
                a.run(ch, Pace::Max, stop, Duration::ZERO, stats).await;
                (a.unacked(), a.acked_through())
            }));
        }
        // Wait for the disk to fill: the collector counts the failed writes.
        let mut errors = 0.0;
        for _ in 0..2400 {
            errors = metric(&collector, "flopmeter_ledger_write_errors_total").unwrap_or(0.0);
            if errors > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Acks stop: once the disk is full, nothing more is acknowledged. (A flush that
        // still found room may acknowledge what it made durable, so wait for the stall.)
        let mut acked_when_full = stats.acked.load(Ordering::SeqCst);
        let mut stalled = false;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = stats.acked.load(Ordering::SeqCst);
            if now == acked_when_full {
                stalled = true;
                break;
            }
            acked_when_full = now;
        }
        assert!(
            stalled,
            "acknowledgements went on while the ledger could not be written"
        );
        // Make room. A storage engine that gave up after the error needs a restart, as a
        // supervisor would do; either way the agents resend what was not acknowledged.
        fs.resize("256m");
        let restarted = match collector.proc.0.try_wait().unwrap() {
            Some(status) => {
                eprintln!(
                    "collector exited by itself: {status}\n{}",
                    collector.log.text()
                );
                true
            }
            None => {
                // Resumed = acknowledgements move again (bounded wait).
                let mut resumed = false;
                for _ in 0..600 {
                    if stats.acked.load(Ordering::SeqCst) > acked_when_full {
                        resumed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                !resumed
            }
        };
        let mut first_log = String::new();
        if restarted {
            first_log = stop(&mut collector);
            collector = spawn_collector(&data, Some(&collector));
        }
        for t in tasks {
            let (unacked, through) = tokio::time::timeout(Duration::from_secs(300), t)
                .await
                .expect(
                    "the agents finish once there is room (an agent whose acknowledged \
                         records vanished would resend forever)",
                )
                .unwrap();
            assert_eq!(unacked, 0);
            assert_eq!(through, BATCHES * u64::from(GPUS));
        }
        (errors, acked_when_full, restarted, first_log)
    });
    let stderr = first_log + &stop(&mut collector);
    drop(collector);
    assert!(
        !restarted,
        "the collector resumes by itself once there is room"
    );
    assert!(
        stderr.contains("below --min-free-mb 4"),
        "the collector says why it stopped acknowledging:\n{stderr}"
    );
    eprintln!(
        "disk full after {acked_when_full} of {total} records acknowledged; \
         write errors counted: {errors_seen}; restart needed: {restarted}"
    );
    assert!(errors_seen > 0.0, "the disk never filled");
    assert!(acked_when_full < total);

    let s = SledStore::open(&data).unwrap();
    let v = s.verify().unwrap();
    assert!(v.ok(), "{:?}", v.mismatches);
    let agg = s.model_aggregate("disk-model").unwrap().unwrap();
    assert_eq!(agg.records(), total, "every record exactly once");
    let mut central = 0u128;
    for i in 0..AGENTS {
        let a = SimAgent::new(spec(i));
        for seq in 1..=BATCHES * u64::from(GPUS) {
            central += u128::from(
                a.record(seq, ((seq - 1) % u64::from(GPUS)) as u32, 0)
                    .flop_central,
            );
        }
    }
    assert_eq!(agg.all().flop.central, central);
}
