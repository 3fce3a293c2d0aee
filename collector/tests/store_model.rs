//! Model test: random histories applied side by side to every store (`support::stores`)
//! through the ledger and the compliance engine must leave them identical. The in-memory
//! store is the model; a store that differs from it is wrong.
//!
//! A history mixes agents sending batches (some records malformed, hence quarantined; some
//! declaring a plan), batches lost in transit (the next one hits a gap), replays of old
//! batches, reconnects (a fresh `high_water_mark` read, then the unacknowledged records
//! resent), registry plan changes, engine passes, acknowledgements and dismissals, rollups
//! and time passing. Every step must answer the same on every store; at the end the
//! aggregates of every model and run (u128 totals included), the quarantine, the
//! high-water marks, the clocks, the alerts, the outbox and the audit chains must be equal,
//! and `ledger verify` and `audit verify` clean on each. Last, the sled store is migrated
//! (`storage::transfer::migrate`, behind `ledger migrate`) into an empty memory store and an
//! empty PostgreSQL store, which must equal the model as well.
//!
//! 32 cases per run with a new seed each run, printed; `FLOPMETER_FUZZ_SEED` replays one
//! (`tests/support/seed.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use flopmeter_collector::compliance::Engine;
use flopmeter_collector::ingest::validate::{Inventory, Limits, verdict};
use flopmeter_collector::ledger::memory_store::MemoryStore;
use flopmeter_collector::ledger::pg_store::PgStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch};
use flopmeter_collector::now_unix_ms;
use flopmeter_collector::storage::Stores;
use flopmeter_collector::storage::transfer::{Import, migrate};
use flopmeter_proto::v1::{GpuInventory, IntervalRecord, WorkloadDeclaration};
use proptest::prelude::*;

use crate::support::rec_at;
use crate::support::stores::{TestStore, engine, planned, postgres, stores};

const AGENTS: usize = 3;
const MODELS: [&str; 2] = ["m1", "m2"];
const THRESHOLD: &str = "eu-systemic-risk";
const RECORD_PLANS: [&str; 3] = ["5e24", "2e25", "3e25"];
const E24: u128 = 1_000_000_000_000_000_000_000_000;
const REGISTRY_PLANS: [u128; 3] = [5 * E24, 20 * E24, 40 * E24];
const HOUR: i64 = 3_600_000;

#[derive(Debug, Clone)]
enum Op {
    /// An agent sends `n` new records (bit i of `malformed` spoils record i; `plan` picks a
    /// declared plan or none), delivered or lost in transit.
    Send {
        agent: usize,
        n: usize,
        malformed: u8,
        model: usize,
        run: usize,
        plan: Option<usize>,
        delivered: bool,
    },
    /// An agent resends one of its delivered batches, `back` from the last.
    Replay { agent: usize, back: usize },
    /// An agent reconnects: reads its high-water mark and resends what is above it.
    Reconnect { agent: usize },
    /// A registry change declaring a plan.
    Registry { model: usize, plan: usize },
    /// An engine pass.
    Evaluate,
    /// Time passes.
    Advance { hours: i64 },
    /// Someone acknowledges a model's alert.
    Ack { model: usize },
    /// Someone dismisses a model's alert.
    Dismiss { model: usize },
    /// Raw batches past a cutoff are rolled up.
    RollUp { hours_back: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..AGENTS, 1usize..5, any::<u8>(), 0..MODELS.len(), 0usize..2,
              prop::option::weighted(0.3, 0..RECORD_PLANS.len()), prop::bool::weighted(0.85))
            .prop_map(|(agent, n, malformed, model, run, plan, delivered)| Op::Send {
                agent, n, malformed: malformed & 0b0101, model, run, plan, delivered,
            }),
        1 => (0..AGENTS, 0usize..4).prop_map(|(agent, back)| Op::Replay { agent, back }),
        2 => (0..AGENTS).prop_map(|agent| Op::Reconnect { agent }),
        1 => (0..MODELS.len(), 0..REGISTRY_PLANS.len())
            .prop_map(|(model, plan)| Op::Registry { model, plan }),
        3 => Just(Op::Evaluate),
        2 => (1i64..96).prop_map(|hours| Op::Advance { hours }),
        1 => (0..MODELS.len()).prop_map(|model| Op::Ack { model }),
        1 => (0..MODELS.len()).prop_map(|model| Op::Dismiss { model }),
        1 => (0i64..48).prop_map(|hours_back| Op::RollUp { hours_back }),
    ]
}

/// One agent as the stores see it: its sequence counter, what it sent but has not seen
/// acknowledged, and the batches delivered (for replays).
#[derive(Default)]
struct Agent {
    next_seq: u64,
    unacked: Vec<IntervalRecord>,
    delivered: Vec<Vec<IntervalRecord>>,
}

/// A store and the engine running on it.
struct Side {
    store: TestStore,
    engine: Engine,
}

struct World {
    sides: Vec<Side>,
    agents: Vec<Agent>,
    now: Arc<AtomicI64>,
    /// Event time of every agent's first record.
    base: i64,
}

fn inventory() -> Inventory {
    Inventory::from_hello(&[GpuInventory {
        uuid: "GPU-0".into(),
        catalogue_id: "h100-sxm".into(),
        ..GpuInventory::default()
    }])
}

impl World {
    fn new() -> World {
        let now = Arc::new(AtomicI64::new(now_unix_ms()));
        let sides = stores()
            .into_iter()
            .map(|(_, make)| {
                let store = make();
                let engine = engine(store.stores(), now.clone());
                Side { store, engine }
            })
            .collect();
        let base = now.load(Ordering::SeqCst) - 2 * 24 * HOUR;
        World {
            sides,
            agents: (0..AGENTS).map(|_| Agent::default()).collect(),
            now,
            base,
        }
    }

    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    /// Applies a batch of `agent`'s records to every store; every store must answer alike.
    fn deliver(&mut self, agent: usize, records: &[IntervalRecord]) -> Result<u64, TestCaseError> {
        let now = self.now();
        let batch = IncomingBatch {
            agent_id: format!("agent-{agent}"),
            node: format!("node-{agent}"),
            received_unix_ms: now,
            records: records
                .iter()
                .map(|r| {
                    let rejection = verdict(r, &inventory(), &Limits::default(), now);
                    CheckedRecord::new(r.clone(), rejection)
                })
                .collect(),
        };
        let outs: Vec<_> = self
            .sides
            .iter()
            .map(|s| s.store.ledger().apply_batch(&batch).unwrap())
            .collect();
        for (s, o) in self.sides.iter().zip(&outs).skip(1) {
            prop_assert_eq!(o, &outs[0], "{} answers unlike the model", s.store.name);
        }
        let acked = outs[0].acked_through;
        self.agents[agent].unacked.retain(|r| r.seq > acked);
        Ok(acked)
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Send {
                agent,
                n,
                malformed,
                model,
                run,
                plan,
                delivered,
            } => {
                let mut records = Vec::new();
                for i in 0..n {
                    let a = &mut self.agents[agent];
                    a.next_seq += 1;
                    let seq = a.next_seq;
                    let end = self.base + seq as i64 * 10_000;
                    let mut r = rec_at(
                        seq,
                        MODELS[model],
                        ["r1", "r2"][run],
                        "",
                        1_000_000_000_000_000,
                        end,
                    );
                    if malformed & (1 << i) != 0 {
                        // Above any GPU's peak: validation quarantines it.
                        r.flop_central = u64::MAX / 2;
                        r.flop_high = u64::MAX;
                    }
                    if let Some(p) = plan {
                        r.declaration = Some(WorkloadDeclaration {
                            planned_flop: RECORD_PLANS[p].into(),
                            ..WorkloadDeclaration::default()
                        });
                    }
                    a.unacked.push(r.clone());
                    records.push(r);
                }
                if delivered {
                    self.deliver(agent, &records)?;
                    self.agents[agent].delivered.push(records);
                }
            }
            Op::Replay { agent, back } => {
                let d = &self.agents[agent].delivered;
                if let Some(b) = d.len().checked_sub(back + 1).map(|i| d[i].clone()) {
                    self.deliver(agent, &b)?;
                }
            }
            Op::Reconnect { agent } => {
                let id = format!("agent-{agent}");
                let marks: Vec<u64> = self
                    .sides
                    .iter()
                    .map(|s| s.store.ledger().high_water_mark(&id).unwrap())
                    .collect();
                prop_assert!(marks.iter().all(|m| *m == marks[0]), "marks {:?}", marks);
                self.agents[agent].unacked.retain(|r| r.seq > marks[0]);
                let resend = self.agents[agent].unacked.clone();
                if !resend.is_empty() {
                    let acked = self.deliver(agent, &resend)?;
                    prop_assert_eq!(acked, resend.last().map_or(0, |r| r.seq));
                }
            }
            Op::Registry { model, plan } => {
                let entry = planned(MODELS[model], REGISTRY_PLANS[plan], self.now());
                for s in &self.sides {
                    s.store.ledger().set_model_entry(&entry).unwrap();
                }
            }
            Op::Evaluate => {
                let passes: Vec<_> = self
                    .sides
                    .iter()
                    .map(|s| s.engine.evaluate().unwrap())
                    .collect();
                prop_assert!(passes.iter().all(|p| *p == passes[0]), "{:?}", passes);
            }
            Op::Advance { hours } => {
                self.now.fetch_add(hours * HOUR, Ordering::SeqCst);
            }
            Op::Ack { model } | Op::Dismiss { model } => {
                let results: Vec<_> = self
                    .sides
                    .iter()
                    .map(|s| {
                        let e = &s.engine;
                        match op {
                            Op::Ack { .. } => {
                                e.acknowledge(MODELS[model], THRESHOLD, "alice", "ref-1")
                            }
                            _ => e.dismiss(MODELS[model], THRESHOLD, "bob", "not ours"),
                        }
                        .map_err(|e| e.to_string())
                    })
                    .collect();
                prop_assert!(results.iter().all(|r| *r == results[0]), "{:?}", results);
            }
            Op::RollUp { hours_back } => {
                let cutoff = self.now() - hours_back * HOUR;
                let stats: Vec<_> = self
                    .sides
                    .iter()
                    .map(|s| s.store.ledger().roll_up(cutoff, 4).unwrap())
                    .collect();
                prop_assert!(stats.iter().all(|s| *s == stats[0]), "{:?}", stats);
            }
        }
        Ok(())
    }
}

/// Everything a store holds that the stores must agree on.
fn snapshot(side: &Side) -> String {
    let (l, c) = (side.store.ledger(), side.store.compliance());
    let mut out = String::new();
    for m in l.model_names().unwrap() {
        let runs: Vec<_> = l
            .runs(&m)
            .unwrap()
            .into_iter()
            .map(|r| (r.run, r.aggregate, r.declaration))
            .collect();
        out += &format!(
            "model {m}: {:?}\nruns {runs:?}\nplans {:?}\nentry {:?}\nnodes {:?}\n",
            l.model_aggregate(&m).unwrap(),
            l.plan_histories(&m).unwrap(),
            l.model_entry(&m).unwrap(),
            l.model_nodes(&m).unwrap(),
        );
    }
    let outbox: Vec<_> = c
        .outbox()
        .unwrap()
        .into_iter()
        .map(|mut o| {
            o.seq = 0; // creation order is compared by position, not by number
            o
        })
        .collect();
    out += &format!(
        "unattributed {:?}\nmarks {:?}\nrejected {:?}\nclocks {:?}\nalerts {:?}\noutbox {outbox:?}\n\
         audit {:?}\nhead {:?}\nviews {:?}\n",
        l.unattributed(i64::MIN, i64::MAX).unwrap(),
        l.high_water_marks().unwrap(),
        l.rejections(None, usize::MAX).unwrap(),
        c.clocks().unwrap(),
        c.alerts().unwrap(),
        c.audit_entries().unwrap(),
        c.head().unwrap(),
        side.engine.alert_views().unwrap(),
    );
    out
}

proptest! {
    #![proptest_config(crate::support::seed::config(32))]

    #[test]
    fn every_store_ends_where_the_model_ends(ops in prop::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op)?;
        }
        // A final pass, so that every history ends assessed.
        w.step(&Op::Evaluate)?;
        let model = snapshot(&w.sides[0]);
        for s in &w.sides {
            prop_assert_eq!(&snapshot(s), &model, "{} differs from the model", s.store.name);
            let v = s.store.ledger().verify().unwrap();
            prop_assert!(v.ok(), "{}: {:?}", s.store.name, v.mismatches);
            let chain = s.store.compliance().chain_status().unwrap();
            prop_assert!(chain.ok(), "{}: {:?}", s.store.name, chain);
        }
        // `ledger migrate`: the sled ledger copied into an empty store ends where the
        // model ends too, and an engine opened on the copy carries on alike.
        for s in &w.sides {
            let Some(sled) = s.store.compliance().as_any().downcast_ref::<SledStore>() else {
                continue;
            };
            let memory = TestStore::wrap("memory", Stores::new(Arc::new(MemoryStore::new())));
            for store in [memory, postgres()] {
                let c = store.compliance().as_any();
                let target: &dyn Import = match (
                    c.downcast_ref::<MemoryStore>(),
                    c.downcast_ref::<PgStore>(),
                ) {
                    (Some(m), _) => m,
                    (_, Some(p)) => p,
                    _ => unreachable!("memory or postgres"),
                };
                migrate(sled, target, false, |_| {}).unwrap();
                let engine = engine(store.stores(), w.now.clone());
                let side = Side { store, engine };
                // Without the alert views: they show the last pass a long-lived engine
                // ran, which a fresh one has not.
                let stored = |s: &str| s.split("\nviews ").next().unwrap_or_default().to_string();
                prop_assert_eq!(
                    stored(&snapshot(&side)),
                    stored(&model),
                    "the sled store migrated to {} differs",
                    side.store.name
                );
            }
        }
    }
}
