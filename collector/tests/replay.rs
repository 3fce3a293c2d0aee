//! Property: replaying the same batches 1, 2 or 10 times, in any order, across store
//! restarts, gives exactly the totals of applying each batch once in order. Deliveries that
//! arrive before their predecessors hit a gap and are refused (Resend); the simulated agents
//! then resend everything from the mark, as real agents do. On every store
//! (`support::stores`).

use crate::support;

use std::collections::BTreeMap;

use flopmeter_collector::ledger::{Aggregate, IncomingBatch, LedgerStore};
use flopmeter_proto::v1::IntervalRecord;
use proptest::prelude::*;
use support::{incoming, rec_at};

const AGENTS: [&str; 2] = ["agent-a", "agent-b"];
const END: i64 = 1_780_000_000_000;

/// A record whose identity and figures vary with (agent, seq): several models, runs and
/// stages (one excluded), and unattributed work.
fn record(agent: usize, seq: u64) -> IntervalRecord {
    let k = seq as usize + agent * 7;
    let (model, run, stage) = match k % 5 {
        0 => ("m1", "r1", ""),
        1 => ("m1", "r2", "sft"),
        2 => ("m2", "r1", "eval"),
        3 => ("", "", ""),
        _ => ("m1", "r1", "rl"),
    };
    let central = 1_000_000_000_000_000 + (k as u64 % 13) * 7_919_000_000_000;
    let mut r = rec_at(seq, model, run, stage, central, END + k as i64 * 3_600_000);
    r.energy_mj = 6_000_000 + seq;
    r.approximate = k.is_multiple_of(3);
    r
}

fn batches(sizes: &[Vec<usize>]) -> Vec<Vec<IncomingBatch>> {
    sizes
        .iter()
        .enumerate()
        .map(|(a, sizes)| {
            let mut seq = 0;
            sizes
                .iter()
                .map(|&n| {
                    let records = (0..n)
                        .map(|_| {
                            seq += 1;
                            record(a, seq)
                        })
                        .collect();
                    incoming(AGENTS[a], &format!("node-{a}"), records)
                })
                .collect()
        })
        .collect()
}

type Snapshot = (
    BTreeMap<String, (Aggregate, Vec<(String, Aggregate)>)>,
    Vec<(String, String, i64, Aggregate)>,
    Vec<u64>,
);

fn snapshot(s: &dyn LedgerStore) -> Snapshot {
    let mut models = BTreeMap::new();
    for m in s.model_names().unwrap() {
        let runs = s
            .runs(&m)
            .unwrap()
            .into_iter()
            .map(|r| (r.run, r.aggregate))
            .collect();
        models.insert(m.clone(), (s.model_aggregate(&m).unwrap().unwrap(), runs));
    }
    let unatt = s
        .unattributed(i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|b| (b.node, b.gpu_type, b.day, b.aggregate))
        .collect();
    let hwm = AGENTS
        .iter()
        .map(|a| s.high_water_mark(a).unwrap())
        .collect();
    (models, unatt, hwm)
}

fn copies() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(10)]
}

proptest! {
    // A new seed each run, printed; FLOPMETER_FUZZ_SEED replays one (fuzz/README.md).
    #![proptest_config(crate::support::seed::config(24))]

    #[test]
    fn replays_in_any_order_across_restarts_give_identical_totals(
        sizes in proptest::collection::vec(proptest::collection::vec(1usize..6, 1..6), 2..=2),
        times in proptest::collection::vec(copies(), 12),
        seed in any::<u64>(),
    ) {
        for (_, make) in support::stores::stores() {
            replay_on(make, &sizes, &times, seed)?;
        }
    }
}

/// One run of the property on the stores `make` builds.
fn replay_on(
    make: support::stores::Constructor,
    sizes: &[Vec<usize>],
    times: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let per_agent = batches(sizes);

    let reference_store = make();
    let reference = reference_store.ledger();
    for agent in &per_agent {
        for b in agent {
            reference.apply_batch(b).unwrap();
        }
    }
    let expected = snapshot(reference);

    // Every batch delivered 1, 2 or 10 times, in a shuffled order.
    let mut deliveries: Vec<&IncomingBatch> = Vec::new();
    for (i, b) in per_agent.iter().flatten().enumerate() {
        for _ in 0..times[i % times.len()] {
            deliveries.push(b);
        }
    }
    let mut s = seed | 1;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    for i in (1..deliveries.len()).rev() {
        let j = next() as usize % (i + 1);
        deliveries.swap(i, j);
    }

    let mut store = make();
    println!("--- on the {} store", store.name);
    // Deliveries go to the store singly or in commit groups of up to 5, as the writer
    // groups them.
    let mut i = 0;
    while i < deliveries.len() {
        let n = (next() % 5 + 1) as usize;
        let group = &deliveries[i..(i + n).min(deliveries.len())];
        i += group.len();
        if group.len() == 1 {
            store.ledger().apply_batch(group[0]).unwrap();
        } else {
            for r in store.ledger().apply_group(group) {
                r.unwrap();
            }
        }
        if next() % 7 == 0 {
            // A collector restart: nothing flushed explicitly since the last one.
            store.restart();
        }
    }
    // Each agent resends from its mark, in order, as after a Resend or a Welcome.
    for agent in &per_agent {
        for b in agent {
            let out = store.ledger().apply_batch(b).unwrap();
            prop_assert_eq!(out.resend_from, None);
        }
    }
    store.ledger().flush().unwrap();
    store.restart();
    prop_assert_eq!(snapshot(store.ledger()), expected);
    let v = store.ledger().verify().unwrap();
    prop_assert!(v.ok(), "{:?}", v.mismatches);
    Ok(())
}
