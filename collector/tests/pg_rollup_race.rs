//! Rollups run on every collector replica sharing a PostgreSQL ledger: two stores rolling
//! up the same raw batches at the same moment must roll each batch up once, leaving the
//! totals and `verify` as they were.

use std::sync::{Arc, Barrier};

use flopmeter_collector::ledger::LedgerStore;
use flopmeter_collector::now_unix_ms;

use crate::support::stores::open_pg;
use crate::support::{incoming, rec};

#[test]
fn two_stores_rolling_up_at_once_roll_each_batch_up_once() {
    let dsn = flopmeter_pg::test_support::shared()
        .fresh_database()
        .socket_dsn();
    let (one, two) = (Arc::new(open_pg(&dsn)), Arc::new(open_pg(&dsn)));
    // 40 batches of 3 records from two agents, a day old (`rec`): all past a cutoff of now.
    for (agent, run) in [("agent-a", "r1"), ("agent-b", "r2")] {
        for b in 0..20u64 {
            let seqs = (b * 3 + 1)..=(b * 3 + 3);
            let batch = incoming(
                agent,
                "node",
                seqs.map(|s| rec(s, "m", run, "pretrain", 1_000 + s))
                    .collect(),
            );
            assert_eq!(one.apply_batch(&batch).unwrap().applied, 3);
        }
    }
    let before = one.model_aggregate("m").unwrap().unwrap();
    assert_eq!(before.all().records, 120);

    let cutoff = now_unix_ms();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [one.clone(), two.clone()]
        .into_iter()
        .map(|store| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut rolled = 0;
                // Small steps, so that the two interleave over many transactions.
                loop {
                    let s = store.roll_up(cutoff, 3).unwrap();
                    rolled += s.batches;
                    if !s.more {
                        return rolled;
                    }
                }
            })
        })
        .collect();
    let rolled: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        rolled.iter().sum::<u64>(),
        40,
        "every batch rolled up exactly once between the two: {rolled:?}"
    );
    assert!(crate::support::stores::all_raw_batches(one.as_ref()).is_empty());
    assert_eq!(
        one.rollup_generation().unwrap(),
        two.rollup_generation().unwrap()
    );
    assert!(one.rollup_generation().unwrap() >= 1);
    assert_eq!(one.model_aggregate("m").unwrap().unwrap(), before);
    assert_eq!(two.model_aggregate("m").unwrap().unwrap(), before);
    let report = two.verify().unwrap();
    assert!(report.ok(), "{:?}", report.mismatches);
}
