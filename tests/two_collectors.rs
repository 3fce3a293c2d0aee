//! Two collectors, one database (issue 15): four replay agents on the fake NVML switch between
//! two replicas sharing one PostgreSQL ledger at random, seeded, each switch a SIGKILL and a
//! restart pointed at the other replica, so batches one replica applied but did not
//! acknowledge are sent again to the other. The final u128 totals must equal those of a
//! single collector on its own database exactly: nothing lost, nothing applied twice.
//!
//! `FLOPMETER_TWO_COLLECTORS_SEED` picks the switching plan (default fixed; printed).

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use flopmeter_pg::test_support;

use crate::support::replay::{Node, Replay, Rng, Totals, log_file, node, replay_start_ms, tail};
use crate::support::{CollectorProc, collector_on_store, scratch};

const AGENTS: usize = 4;
/// Ten virtual minutes per agent: 60 report intervals, 120 records (2 GPUs).
const SPAN_MS: i64 = 600_000;
/// The ten minutes in about 15 s, so that switches land mid-replay.
const SPEED: f64 = 40.0;
const DEFAULT_SEED: u64 = 0x2c01_1ec7;
const FINISH_BOUND: Duration = Duration::from_secs(60);

/// Runs the agents against `replicas` until each has replayed to the stop and everything is
/// acknowledged. With a plan, agent `i` starts on replica `i % n` and each planned switch
/// moves it to the next one. Returns the number of switches made.
fn replay(
    nodes: &[Node],
    dir: &Path,
    replay: &Replay,
    replicas: &[CollectorProc],
    mut rng: Option<Rng>,
) -> usize {
    let n = replicas.len();
    let mut on: Vec<usize> = (0..nodes.len()).map(|i| i % n).collect();
    let start = |i: usize, on: usize| -> Child {
        let node = &nodes[i];
        replay
            .agent(
                node,
                &dir.join(&node.id),
                replicas[on].grpc,
                &dir.join(format!("{}.ready.json", node.id)),
                log_file(&dir.join(format!("{}.log", node.id))),
            )
            .spawn()
            .expect("flopmeter agent starts")
    };
    let mut agents: Vec<Option<Child>> = (0..nodes.len()).map(|i| Some(start(i, on[i]))).collect();
    let mut switches = 0;
    let mut next_switch = rng.as_mut().map(|r| Instant::now() + r.range_ms(500, 1500));
    let deadline = Instant::now() + FINISH_BOUND;
    while agents.iter().any(Option::is_some) {
        for (i, slot) in agents.iter_mut().enumerate() {
            if let Some(c) = slot
                && let Some(status) = c.try_wait().unwrap()
            {
                assert!(
                    status.success(),
                    "agent {i} exited with {status}:\n{}",
                    tail(&dir.join(format!("{}.log", nodes[i].id)))
                );
                *slot = None;
            }
        }
        if let (Some(r), Some(at)) = (rng.as_mut(), next_switch)
            && Instant::now() >= at
        {
            let i = r.below(nodes.len() as u64) as usize;
            if let Some(mut c) = agents[i].take() {
                c.kill().unwrap(); // SIGKILL: unacknowledged batches are sent again
                c.wait().unwrap();
                on[i] = (on[i] + 1) % n;
                agents[i] = Some(start(i, on[i]));
                switches += 1;
            }
            next_switch = Some(Instant::now() + r.range_ms(300, 1500));
        }
        assert!(
            Instant::now() < deadline,
            "agents not finished after {FINISH_BOUND:?}:\n{}",
            nodes
                .iter()
                .map(|n| tail(&dir.join(format!("{}.log", n.id))))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    switches
}

#[test]
fn agents_switching_between_two_collectors_give_a_single_collectors_totals() {
    let t0 = Instant::now();
    let seed = crate::support::replay::seed_from_env("FLOPMETER_TWO_COLLECTORS_SEED", DEFAULT_SEED);
    let server = test_support::shared();
    let nodes: Vec<Node> = (0..AGENTS).map(node).collect();
    let start_ms = replay_start_ms(SPAN_MS);
    let paced = Replay {
        start_ms,
        stop_ms: start_ms + SPAN_MS,
        speed: Some(SPEED),
        spool_cap: None,
    };

    // The reference: one collector on a database of its own, agents as fast as they go.
    let single_db = server.fresh_database();
    let single = collector_on_store(&single_db.socket_dsn(), "single").start();
    let dir = scratch("two-collectors-single");
    let unpaced = Replay {
        speed: None,
        ..paced
    };
    replay(&nodes, &dir, &unpaced, std::slice::from_ref(&single), None);
    let reference = Totals::read(single.http, &dir, &nodes, paced.stop_ms);
    drop(single);
    let t1 = Instant::now();

    // Two replicas on one database, one through the socket and one over TCP.
    let db = server.fresh_database();
    let a = collector_on_store(&db.socket_dsn(), "a").start();
    let b = collector_on_store(&db.tcp_dsn("localhost", "verify-full"), "b").start();
    let dir = scratch("two-collectors-pair");
    let pair = [a, b];
    let switches = replay(&nodes, &dir, &paced, &pair, Some(Rng::new(seed)));
    let totals = Totals::read(pair[0].http, &dir, &nodes, paced.stop_ms);
    let totals_b = Totals::read(pair[1].http, &dir, &nodes, paced.stop_ms);
    let t2 = Instant::now();
    println!(
        "two collectors, seed={seed}: {switches} switches; {} records, FLOP central {} \
         (single collector: {} records, {}); reference {:.1} s, pair {:.1} s",
        totals.records(),
        totals.flop().central,
        reference.records(),
        reference.flop().central,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64()
    );
    assert!(switches >= 2 * AGENTS, "only {switches} switches");
    assert_eq!(totals_b, totals, "both replicas serve the same ledger");
    assert_eq!(
        totals.numbered, reference.numbered,
        "per-agent record numbering"
    );
    assert_eq!(totals.models, reference.models, "per-model totals");
    assert_eq!(totals.runs, reference.runs, "per-run totals");
}
