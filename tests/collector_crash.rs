//! A real `flopmeter collector` process killed with SIGKILL, twice, while simulated agents
//! stream to it; it is restarted on the same ledger each time. The agents behave like real
//! ones (they keep unacknowledged records, reconnect, drop what the Welcome's high-water mark
//! covers and resend the rest). The final totals must equal exactly, to the record and to the
//! FLOP, those of the same agents against a collector that never crashed, and the sums of the
//! records the agents generated.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{Aggregate, LedgerStore};
use flopmeter_sim::agent::{Pace, SimAgent, SimSpec, SimStats, StopAt};
use flopmeter_sim::loadgen::channel;

use crate::support::{self, CollectorProc};

const AGENTS: u64 = 3;
const GPUS: u32 = 8;
const BATCHES: u64 = 60;

fn spawn_collector(dir: &Path) -> CollectorProc {
    support::collector(dir).start()
}

/// The same collector again after a crash, where its agents reconnect: on the addresses the
/// first one was given.
fn respawn_collector(dir: &Path, was: &CollectorProc) -> CollectorProc {
    support::collector(dir).on(was.grpc, was.http).start()
}

fn spec(i: u64) -> SimSpec {
    SimSpec {
        agent_id: format!("crash-agent-{i}"),
        node: format!("crash-node-{i}"),
        gpus: GPUS,
        model: "crash-model".into(),
        run: format!("run-{}", i % 2),
        stage: if i == 2 { "eval".into() } else { String::new() },
        interval: Duration::from_secs(10),
        token: None,
        cluster: String::new(),
    }
}

/// Streams every agent's `BATCHES` batches to `url`; `during` runs meanwhile with the shared
/// counters (to crash the collector).
fn stream_all(url: &str, during: impl FnOnce(Arc<SimStats>) + Send + 'static) -> Arc<SimStats> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(SimStats::default());
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..AGENTS {
            let ch = channel(url).unwrap();
            let stats = stats.clone();
            tasks.push(tokio::spawn(async move {
                let mut a = SimAgent::new(spec(i));
                let stop = StopAt {
                    batches: Some(BATCHES),
                    deadline: None,
                };
                a.run(ch, Pace::Max, stop, Duration::ZERO, stats).await;
                assert_eq!(a.unacked(), 0);
                assert_eq!(a.acked_through(), BATCHES * u64::from(GPUS));
            }));
        }
        let s = stats.clone();
        let crasher = tokio::task::spawn_blocking(move || during(s));
        for t in tasks {
            t.await.unwrap();
        }
        crasher.await.unwrap();
    });
    stats
}

fn totals(dir: &Path) -> (Aggregate, Vec<(String, Aggregate)>) {
    let s = SledStore::open(dir).unwrap();
    let v = s.verify().unwrap();
    assert!(v.ok(), "{:?}", v.mismatches);
    let runs = s
        .runs("crash-model")
        .unwrap()
        .into_iter()
        .map(|r| (r.run, r.aggregate))
        .collect();
    (s.model_aggregate("crash-model").unwrap().unwrap(), runs)
}

#[test]
fn kill_9_mid_stream_loses_and_doubles_nothing() {
    let total_records = AGENTS * BATCHES * u64::from(GPUS);

    // With crashes.
    let crashed = tempfile::tempdir().unwrap();
    let dir = crashed.path().to_path_buf();
    let mut child = spawn_collector(&dir);
    let url = child.url();
    let (tx, rx) = std::sync::mpsc::channel();
    let stats = stream_all(&url, move |stats| {
        for fraction in [3, 2] {
            // Wait (bounded) until the agents are well into their streams, then crash.
            for _ in 0..6000 {
                if stats.acked.load(Ordering::Relaxed) >= total_records / fraction {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            child.kill9();
            child = respawn_collector(&dir, &child);
        }
        tx.send(child).unwrap();
    });
    let mut child = rx.recv().unwrap();
    child.kill9();
    assert!(
        stats.reconnects.load(Ordering::Relaxed) >= 2,
        "the agents saw the crashes"
    );
    assert_eq!(stats.acked.load(Ordering::Relaxed), total_records);
    let (with_crash, runs_with_crash) = totals(crashed.path());

    // Without.
    let calm = tempfile::tempdir().unwrap();
    let mut child = spawn_collector(calm.path());
    stream_all(&child.url(), |_| {});
    child.kill9();
    let (without, runs_without) = totals(calm.path());

    // Same record count, same u128 sums, per stage and per GPU type, per run. (Event times
    // are the agents' wall clock when they generated the records, so they differ by run.)
    let untimed = |a: &Aggregate| {
        let mut a = a.clone();
        for s in a.stages.values_mut() {
            s.first_event_unix_ms = None;
            s.last_event_unix_ms = None;
        }
        a.stages
    };
    assert_eq!(with_crash.records(), total_records);
    assert_eq!(untimed(&with_crash), untimed(&without));
    assert_eq!((with_crash.agents, with_crash.nodes), (AGENTS, AGENTS));
    let strip = |runs: Vec<(String, Aggregate)>| -> Vec<_> {
        runs.into_iter()
            .map(|(r, a)| {
                let flop: Vec<_> = a
                    .stages
                    .values()
                    .map(|s| (s.flop, s.records, s.energy_mj, s.gpu_ms))
                    .collect();
                (r, flop, a.agents, a.nodes)
            })
            .collect()
    };
    assert_eq!(strip(runs_with_crash), strip(runs_without));

    // And both equal the sums of what the agents generated.
    let mut expected_central = 0u128;
    let mut expected_high = 0u128;
    let mut expected_energy = 0u128;
    for i in 0..AGENTS {
        let a = SimAgent::new(spec(i));
        for seq in 1..=BATCHES * u64::from(GPUS) {
            let r = a.record(seq, ((seq - 1) % u64::from(GPUS)) as u32, 0);
            expected_central += u128::from(r.flop_central);
            expected_high += u128::from(r.flop_high);
            expected_energy += u128::from(r.energy_mj);
        }
    }
    let all = with_crash.all();
    assert_eq!(all.flop.central, expected_central);
    assert_eq!(all.flop.high, expected_high);
    assert_eq!(all.energy_mj, expected_energy);
}
