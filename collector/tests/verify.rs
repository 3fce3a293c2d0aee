//! `verify` recomputes every aggregate from raw batches and rollups: it passes on a clean
//! ledger (before and after rollups) and names every tampered aggregate. The clean-ledger
//! tests run on every store (`support::stores`); tampering reaches into sled's trees.

use crate::support;

use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{Aggregate, LedgerStore, SeqRange, keys};
use support::stores::for_each_store;
use support::{incoming, rec_at};

const END: i64 = 1_780_000_000_000;
const C: u64 = 2_000_000_000_000_000;

fn build(dir: &std::path::Path) -> SledStore {
    let s = SledStore::open(dir).unwrap();
    fill(&s);
    s
}

/// Three days of two agents' records: runs, stages, unattributed work, Slurm jobs and work
/// that could not be estimated.
fn fill(s: &dyn LedgerStore) {
    let mut seq = 0;
    for day in 0..3i64 {
        for (agent, node) in [("a1", "n1"), ("a2", "n2")] {
            let mut recs = Vec::new();
            for (model, run, stage) in [("m1", "r1", ""), ("m1", "r2", "eval"), ("", "", "")] {
                seq += 1;
                recs.push(rec_at(seq, model, run, stage, C, END + day * 86_400_000));
            }
            // Unattributed work traceable to its Slurm job, and work that could not be
            // estimated, for a run and unattributed.
            let at = END + day * 86_400_000;
            let mut job = rec_at(0, "", "", "", C, at);
            let id = job.identity.as_mut().unwrap();
            (id.job, id.user, id.cluster) = (format!("{day}{agent}"), "alice".into(), "c1".into());
            recs.push(job);
            for model in ["m1", ""] {
                let mut u = rec_at(
                    0,
                    model,
                    if model.is_empty() { "" } else { "r1" },
                    "",
                    0,
                    at,
                );
                (u.flop_low, u.flop_high) = (0, 0);
                u.method = flopmeter_proto::v1::Method::None as i32;
                u.no_estimate_reason = "unknown-gpu-no-peak".into();
                u.gpu_type.clear();
                recs.push(u);
            }
            // Per-agent sequences: renumber for this agent.
            let base = s.high_water_mark(agent).unwrap();
            for (i, r) in recs.iter_mut().enumerate() {
                r.seq = base + i as u64 + 1;
            }
            s.apply_batch(&incoming(agent, node, recs)).unwrap();
        }
    }
    s.flush().unwrap();
}

fn tamper(s: &SledStore, tree: &str, key: &[u8], f: impl FnOnce(&mut Aggregate)) {
    let t = s.db().open_tree(tree).unwrap();
    let mut a: Aggregate = serde_json::from_slice(&t.get(key).unwrap().unwrap()).unwrap();
    f(&mut a);
    t.insert(key, serde_json::to_vec(&a).unwrap()).unwrap();
}

#[test]
fn clean_ledger_verifies_before_and_after_rollups() {
    for_each_store(|t| clean_ledger_verifies(t.ledger()));
}

#[test]
fn marks_read_together_equal_marks_read_one_by_one() {
    for_each_store(|t| {
        let s = t.ledger();
        fill(s);
        s.apply_batch(&incoming(
            "a3",
            "n3",
            vec![rec_at(1, "m1", "r1", "", C, END)],
        ))
        .unwrap();
        // Two agents with marks, one with a refused batch only (a gap), one never seen.
        s.apply_batch(&incoming(
            "a4",
            "n4",
            vec![rec_at(5, "m1", "r1", "", C, END)],
        ))
        .unwrap();
        let agents: Vec<String> = ["a1", "a3", "a4", "nobody"].map(String::from).into();
        let together = s.high_water_marks_of(&agents).unwrap();
        for a in &agents {
            assert_eq!(
                together[a],
                s.high_water_mark(a).unwrap(),
                "{} agent {a}",
                t.name
            );
        }
        assert_eq!(together["a3"], 1);
        assert_eq!(together["nobody"], 0);
        // A run that exists is still there when asked again (the PostgreSQL store keeps a
        // positive answer), and one that does not is not.
        assert!(s.run_exists("m1", "r1").unwrap() && s.run_exists("m1", "r1").unwrap());
        assert!(!s.run_exists("m1", "no-such-run").unwrap());
    });
}

#[test]
fn reads_and_writes_together_equal_them_one_by_one() {
    for_each_store(|t| {
        let s = t.ledger();
        fill(s);
        let all = crate::support::stores::all_raw_batches(s);
        let firsts: Vec<(&str, u64)> = all
            .iter()
            .map(|(id, _)| (id.agent_id.as_str(), id.first_seq))
            .collect();
        assert_eq!(
            firsts,
            [
                ("a1", 1),
                ("a1", 7),
                ("a1", 13),
                ("a2", 1),
                ("a2", 7),
                ("a2", 13)
            ],
            "{}",
            t.name
        );
        // Bounds: after exclusive, upto inclusive; an empty range, an unknown agent and
        // ranges given out of order.
        let range = |agent: &str, after, upto| SeqRange {
            agent_id: agent.into(),
            after,
            upto,
        };
        let got = s
            .raw_batches_between(
                &[
                    range("a2", 7, 100),
                    range("nobody", 0, 9),
                    range("a1", 1, 7),
                    range("a1x", 5, 5),
                ],
                usize::MAX,
            )
            .unwrap();
        let ids: Vec<(&str, u64)> = got
            .iter()
            .map(|(id, _)| (id.agent_id.as_str(), id.first_seq))
            .collect();
        assert_eq!(ids, [("a1", 7), ("a2", 13)], "{}", t.name);
        assert_eq!(got[0], all[1], "{}", t.name);
        // A limit cuts in (agent, first sequence) order.
        let ranges = [range("a1", 0, 13), range("a2", 0, 13)];
        for limit in [0, 1, 4, 6, 7] {
            let got = s.raw_batches_between(&ranges, limit).unwrap();
            assert_eq!(got, all[..limit.min(6)], "{} limit {limit}", t.name);
        }

        // The rollup generation moves only when a roll-up removed batches.
        let g0 = s.rollup_generation().unwrap();
        assert_eq!(s.roll_up(0, 100).unwrap().batches, 0);
        assert_eq!(s.rollup_generation().unwrap(), g0, "{}", t.name);
        assert!(s.roll_up(END + 1, 100).unwrap().batches > 0);
        assert_eq!(s.rollup_generation().unwrap(), g0 + 1, "{}", t.name);
        s.flush().unwrap();

        // The writer's read of its new agents' recent batches, with a limit below and above
        // what an agent holds, and an agent without batches.
        let agents: Vec<String> = ["a1", "a2", "nobody"].map(String::from).into();
        for max in [1, 2, 5] {
            let together = s.recent_records_of(&agents, max).unwrap();
            assert_eq!(together.len(), 3, "{}", t.name);
            for a in &agents {
                assert_eq!(
                    together[a],
                    s.recent_records(a, max).unwrap(),
                    "{} agent {a} max {max}",
                    t.name
                );
            }
        }
        assert!(
            s.recent_records_of(&agents, 1).unwrap()["a1"].1,
            "{}",
            t.name
        );

        // Hellos recorded together: the later of an agent's two wins.
        let hello = |agent: &str, version: &str| flopmeter_collector::ledger::AgentInfo {
            agent_id: agent.into(),
            software_version: version.into(),
            ..Default::default()
        };
        s.record_agents(&[hello("h1", "1"), hello("h2", "1"), hello("h1", "2")])
            .unwrap();
        s.record_agents(&[]).unwrap();
        let versions: Vec<(String, String)> = s
            .agents()
            .unwrap()
            .into_iter()
            .map(|i| (i.agent_id, i.software_version))
            .collect();
        assert_eq!(
            versions,
            [("h1", "2"), ("h2", "1")].map(|(a, v)| (a.to_string(), v.to_string())),
            "{}",
            t.name
        );
    });
}

fn clean_ledger_verifies(s: &dyn LedgerStore) {
    fill(s);
    let r = s.verify().unwrap();
    assert!(r.ok(), "{:?}", r.mismatches);
    assert_eq!((r.raw_batches, r.raw_records), (6, 36));
    assert_eq!((r.runs, r.models, r.unattributed_buckets), (2, 1, 12));
    let before = s.model_aggregate("m1").unwrap().unwrap();
    let unatt_before = s.unattributed(i64::MIN, i64::MAX).unwrap();

    // Roll up the first two days' batches (in bounded steps), then everything.
    let cutoff = END + 86_400_000 + 1;
    let first = s.roll_up(cutoff, 3).unwrap();
    assert_eq!((first.batches, first.more), (3, true));
    let second = s.roll_up(cutoff, 3).unwrap();
    assert_eq!((second.batches, second.more), (1, false));
    let r = s.verify().unwrap();
    assert!(r.ok(), "{:?}", r.mismatches);
    assert_eq!(r.raw_batches, 2);
    s.roll_up(i64::MAX, 100).unwrap();
    let r = s.verify().unwrap();
    assert!(r.ok(), "{:?}", r.mismatches);
    assert_eq!(r.raw_batches, 0);
    assert!(r.rollups > 0);
    assert_eq!(s.model_aggregate("m1").unwrap().unwrap(), before);
    assert_eq!(s.unattributed(i64::MIN, i64::MAX).unwrap(), unatt_before);

    // Ingest goes on after rollups and the ledger still verifies.
    let mut r1 = rec_at(s.high_water_mark("a1").unwrap() + 1, "m1", "r1", "", C, END);
    r1.energy_mj = 1;
    s.apply_batch(&incoming("a1", "n1", vec![r1])).unwrap();
    let r = s.verify().unwrap();
    assert!(r.ok(), "{:?}", r.mismatches);
}

#[test]
fn tampered_aggregates_are_detected() {
    type Tamper = fn(&SledStore);
    let cases: Vec<(&str, Tamper)> = vec![
        ("run m1/r1: stored FLOP central", |s| {
            tamper(s, "run_agg", &keys::join(&["m1", "r1"]), |a| {
                a.stages.get_mut("pretrain").unwrap().flop.central += 1
            })
        }),
        ("model m1: stored energy mJ", |s| {
            tamper(s, "model_agg", b"m1", |a| {
                a.stages.get_mut("eval").unwrap().energy_mj -= 1000
            })
        }),
        ("model m1: stored agents", |s| {
            tamper(s, "model_agg", b"m1", |a| a.agents = 7)
        }),
        ("unattributed n1/h100-sxm/day", |s| {
            let day = (END - 10_000).div_euclid(86_400_000);
            tamper(
                s,
                "unattributed",
                &keys::with_bucket(&["n1", "h100-sxm"], day),
                |a| a.stages.get_mut("pretrain").unwrap().records += 1,
            )
        }),
        ("run m1/r1: stored unestimated GPU ms", |s| {
            tamper(s, "run_agg", &keys::join(&["m1", "r1"]), |a| {
                a.stages
                    .get_mut("pretrain")
                    .unwrap()
                    .unestimated
                    .total
                    .gpu_ms += 1
            })
        }),
        ("model m1: per-stage, per-GPU-type, per-reason", |s| {
            tamper(s, "model_agg", b"m1", |a| {
                let u = &mut a.stages.get_mut("pretrain").unwrap().unestimated;
                let c = u.reasons.remove("unknown-gpu-no-peak").unwrap();
                u.reasons.insert("no-activity-reading".into(), c);
            })
        }),
        ("unattributed n1/h100-sxm/day", |s| {
            // A source renamed: the work pinned on another job.
            let day = (END - 10_000).div_euclid(86_400_000);
            tamper(
                s,
                "unattributed",
                &keys::with_bucket(&["n1", "h100-sxm"], day),
                |a| a.sources.named[0].key.job = "someone-else".into(),
            )
        }),
        ("run m1/r2:", |s| {
            let t = s.db().open_tree("raw").unwrap();
            // Remove one raw batch: the aggregates no longer match what is left.
            let (k, _) = t.iter().next().unwrap().unwrap();
            t.remove(k).unwrap();
        }),
        ("agent/node entry", |s| {
            let t = s.db().open_tree("seen").unwrap();
            t.insert(keys::Seen::RunAgent.key(&["m1", "r1", "intruder"]), &[][..])
                .unwrap();
        }),
        ("above the high-water mark", |s| {
            let t = s.db().open_tree("hwm").unwrap();
            t.insert("a1", &1u64.to_be_bytes()).unwrap();
        }),
    ];
    for (expect, f) in cases {
        let dir = tempfile::tempdir().unwrap();
        let s = build(dir.path());
        f(&s);
        let r = s.verify().unwrap();
        assert!(!r.ok(), "{expect}: tampering went unnoticed");
        assert!(
            r.mismatches.iter().any(|m| m.contains(expect)),
            "{expect}: {:?}",
            r.mismatches
        );
    }
}

#[test]
fn a_group_applies_like_its_batches_one_by_one() {
    for (_, make) in support::stores::stores() {
        let (one, group) = (make(), make());
        println!("--- on the {} store", one.name);
        group_applies_like_singles(one.ledger(), group.ledger());
    }
}

fn group_applies_like_singles(one: &dyn LedgerStore, group: &dyn LedgerStore) {
    let b1 = incoming(
        "a",
        "n",
        vec![
            rec_at(1, "m", "r", "", C, END),
            rec_at(2, "m", "r", "", C, END),
        ],
    );
    let b2 = incoming("a", "n", vec![rec_at(3, "m", "r", "", C, END)]);
    let gap = incoming("a", "n", vec![rec_at(9, "m", "r", "", C, END)]);
    let mut bad = incoming("b", "n", vec![rec_at(1, "m", "r", "", C, END)]);
    bad.agent_id = "b\0".into();
    let singles: Vec<_> = [&b1, &b2, &gap, &bad]
        .iter()
        .map(|b| one.apply_batch(b))
        .collect();
    let grouped = group.apply_group(&[&b1, &b2, &gap, &bad]);
    assert_eq!(grouped.len(), 4);
    for (s, g) in singles.iter().zip(&grouped) {
        match (s, g) {
            (Ok(s), Ok(g)) => assert_eq!(s, g),
            (Err(_), Err(_)) => {}
            other => panic!("differ: {other:?}"),
        }
    }
    assert_eq!(
        grouped[1].as_ref().unwrap().acked_through,
        3,
        "b2 saw b1's mark"
    );
    assert_eq!(grouped[2].as_ref().unwrap().resend_from, Some(4));
    assert_eq!(
        one.model_aggregate("m").unwrap(),
        group.model_aggregate("m").unwrap()
    );
    assert!(group.verify().unwrap().ok());
}

#[test]
fn more_unattributed_sources_than_a_bucket_names_still_verify() {
    for_each_store(|t| many_unattributed_sources_verify(t.ledger()));
}

fn many_unattributed_sources_verify(s: &dyn LedgerStore) {
    // Two agents on one node, applied in the opposite order to the one verify reads them in,
    // with 80 distinct jobs of different sizes: the named set can depend on the order, the
    // sums cannot.
    let job = |seq: u64, j: u64| {
        let mut r = rec_at(seq, "", "", "", C, END);
        r.gpu_ms = 100 + (j * 37) % 9_000;
        r.identity.as_mut().unwrap().job = j.to_string();
        r
    };
    for (agent, jobs) in [("a2", 0..40u64), ("a1", 40..80u64)] {
        let recs = jobs
            .enumerate()
            .map(|(i, j)| job(i as u64 + 1, j))
            .collect();
        s.apply_batch(&incoming(agent, "n1", recs)).unwrap();
    }
    let buckets = s.unattributed(i64::MIN, i64::MAX).unwrap();
    let src = &buckets[0].aggregate.sources;
    assert_eq!(src.named.len(), 32);
    assert!(!src.other.is_zero());
    assert_eq!(src.total().records, 80);
    let r = s.verify().unwrap();
    assert!(r.ok(), "{:?}", r.mismatches);
    s.roll_up(i64::MAX, 100).unwrap();
    let r = s.verify().unwrap();
    assert!(r.ok(), "{:?}", r.mismatches);
}
