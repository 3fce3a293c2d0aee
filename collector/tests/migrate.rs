//! `ledger migrate`'s core (`storage::transfer`): a sled ledger filled through the real
//! validation, ledger and compliance engine (quarantined records, declared plans,
//! unattributed records, a registry plan, a clock start, an alert acknowledged, deliveries,
//! rollups) copied into the in-memory store. The copy must read the same through every
//! store API (totals, marks, clocks, alerts, outbox, audit chain), hold the same facts, and
//! pass `ledger verify` and `audit verify`; an engine opened on it must write nothing new
//! and show the same alerts. A non-empty target is refused untouched, and a migration that
//! stops before the audit head fails `audit verify` until a re-run completes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use flopmeter_collector::compliance::ComplianceStore;
use flopmeter_collector::compliance::outbox::deliver_due;
use flopmeter_collector::ingest::validate::{Inventory, Limits, verdict};
use flopmeter_collector::ledger::memory_store::MemoryStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch, LedgerStore};
use flopmeter_collector::now_unix_ms;
use flopmeter_collector::storage::Stores;
use flopmeter_collector::storage::transfer::{
    Export, Import, Item, ItemKind, Progress, TransferError, migrate,
};
use flopmeter_proto::v1::{GpuInventory, IntervalRecord, WorkloadDeclaration};

use crate::support::rec_at;
use crate::support::stores::{engine, open_pg, planned};

const HOUR: i64 = 3_600_000;
const E24: u128 = 1_000_000_000_000_000_000_000_000;
const THRESHOLD: &str = "eu-systemic-risk";

fn batch(agent: &str, records: Vec<IntervalRecord>, now: i64) -> IncomingBatch {
    let inv = Inventory::from_hello(&[GpuInventory {
        uuid: "GPU-0".into(),
        catalogue_id: "h100-sxm".into(),
        ..GpuInventory::default()
    }]);
    IncomingBatch {
        agent_id: agent.into(),
        node: format!("node-{agent}"),
        received_unix_ms: now,
        records: records
            .into_iter()
            .map(|r| {
                let rejection = verdict(&r, &inv, &Limits::default(), now);
                CheckedRecord::new(r, rejection)
            })
            .collect(),
    }
}

/// Delivers the engine's due outbox items (to the log sink), on a runtime of its own: the
/// PostgreSQL harness must not be called from inside one.
fn deliver(eng: &flopmeter_collector::compliance::Engine) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(deliver_due(eng))
        .unwrap();
}

/// A sled ledger with a history of every kind of fact, and its directory.
fn filled_sled() -> (Arc<SledStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(SledStore::open(dir.path()).unwrap());
    let stores = Stores::new(sled.clone());
    let now = Arc::new(AtomicI64::new(now_unix_ms()));
    let eng = engine(&stores, now.clone());
    let base = now.load(Ordering::SeqCst) - 2 * 24 * HOUR;
    let ledger = stores.ledger.as_ref();
    for (agent, model, run) in [("a-0", "m1", "r1"), ("a-1", "m1", "r2"), ("a-2", "", "")] {
        for b in 0..6u64 {
            let records = (1..=4)
                .map(|i| {
                    let seq = b * 4 + i;
                    let mut r = rec_at(
                        seq,
                        model,
                        run,
                        "",
                        1_000_000_000_000_000,
                        base + seq as i64 * 600_000,
                    );
                    if seq == 7 {
                        // Above any GPU's peak: quarantined.
                        r.flop_central = u64::MAX / 2;
                        r.flop_high = u64::MAX;
                    }
                    if seq == 9 && !model.is_empty() {
                        r.declaration = Some(WorkloadDeclaration {
                            planned_flop: "3e25".into(),
                            ..WorkloadDeclaration::default()
                        });
                    }
                    r
                })
                .collect();
            let now_ms = now.load(Ordering::SeqCst);
            let out = ledger.apply_batch(&batch(agent, records, now_ms)).unwrap();
            assert_eq!(out.acked_through, b * 4 + 4);
        }
    }
    ledger
        .set_model_entry(&planned("m2", 20 * E24, now.load(Ordering::SeqCst)))
        .unwrap();
    eng.evaluate().unwrap();
    deliver(&eng);
    now.fetch_add(HOUR, Ordering::SeqCst);
    eng.acknowledge("m1", THRESHOLD, "alice", "ref-1").unwrap();
    eng.evaluate().unwrap();
    deliver(&eng);
    // Some raw batches rolled up, some kept.
    let rolled = ledger.roll_up(base + 10 * 600_000, 1000).unwrap();
    assert!(rolled.batches > 0);
    ledger.flush().unwrap();
    (sled, dir)
}

/// What a store holds, read through the store APIs.
fn contents(l: &dyn LedgerStore, c: &dyn ComplianceStore) -> String {
    let mut out = String::new();
    for m in l.model_names().unwrap() {
        out += &format!(
            "model {m}: {:?}\nruns {:?}\nplans {:?}\nentry {:?}\nnodes {:?}\n",
            l.model_aggregate(&m).unwrap(),
            l.runs(&m).unwrap(),
            l.plan_histories(&m).unwrap(),
            l.model_entry(&m).unwrap(),
            l.model_nodes(&m).unwrap(),
        );
    }
    let raw = crate::support::stores::all_raw_batches(l);
    out += &format!(
        "unattributed {:?}\nmarks {:?}\nrejected {:?}\nagents {:?}\nstage {:?}\nraw {raw:?}\n\
         rollups {:?}\nclocks {:?}\nalerts {:?}\noutbox {:?}\nthresholds {:?}\naudit {:?}\n\
         head {:?}\n",
        l.unattributed(i64::MIN, i64::MAX).unwrap(),
        l.high_water_marks().unwrap(),
        l.rejections(None, usize::MAX).unwrap(),
        l.agents().unwrap(),
        l.stage_policy().unwrap(),
        l.run_rollups().unwrap(),
        c.clocks().unwrap(),
        c.alerts().unwrap(),
        c.outbox().unwrap(),
        c.meta_bytes("thresholds").unwrap(),
        c.audit_entries().unwrap(),
        c.head().unwrap(),
    );
    out
}

/// Every item a store exports, in a canonical order.
fn facts(s: &dyn Export) -> Vec<String> {
    let mut v = Vec::new();
    s.export(&mut |i| {
        v.push(format!("{i:?}"));
        Ok(())
    })
    .unwrap();
    v.sort();
    v
}

/// Migrates the filled sled ledger into `target` and checks everything the module docs
/// promise, but the item-by-item comparison (a target that cannot export).
fn migrates_verbatim<T>(target: Arc<T>) -> Arc<SledStore>
where
    T: Import + LedgerStore + ComplianceStore + 'static,
{
    let (sled, dir) = filled_sled();
    // The source stays open for the checks; its directory goes with the test.
    std::mem::forget(dir);
    let source = contents(sled.as_ref(), sled.as_ref());
    let counts = sled.counts().unwrap();
    for kind in [
        ItemKind::RawBatch,
        ItemKind::Rejected,
        ItemKind::RunRollup,
        ItemKind::UnattributedRollup,
        ItemKind::Declaration,
        ItemKind::PlanHistory,
        ItemKind::ModelEntry,
        ItemKind::Clock,
        ItemKind::Alert,
        ItemKind::Outbox,
        ItemKind::ComplianceMeta,
        ItemKind::AuditEntry,
        ItemKind::AuditHead,
    ] {
        assert!(
            counts.0.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind} in {counts}"
        );
    }
    assert!(
        sled.outbox()
            .unwrap()
            .iter()
            .any(|o| o.delivered_unix_ms.is_some()),
        "a delivered item"
    );
    assert!(!sled.clocks().unwrap().is_empty(), "a clock start");

    let mut seen = Vec::<Progress>::new();
    let copied = migrate(sled.as_ref(), target.as_ref(), false, |p| seen.push(p)).unwrap();
    assert_eq!(copied, counts, "exported what it counted");
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (counts.total(), counts.total()));
    assert!(seen.windows(2).all(|w| w[0].done < w[1].done));

    assert_eq!(contents(target.as_ref(), target.as_ref()), source);
    let v = target.verify().unwrap();
    assert!(v.ok(), "{:?}", v.mismatches);
    assert!(v.raw_batches > 0 && v.rollups > 0, "{v:?}");
    let chain = target.chain_status().unwrap();
    assert!(chain.ok(), "{chain:?}");
    assert_eq!(chain.entries, sled.audit_entries().unwrap().len() as u64);

    // The engine carries on on the copy: its configuration is there (opening it appends no
    // configuration change), and it sees the same alerts.
    let now = Arc::new(AtomicI64::new(now_unix_ms() + HOUR));
    let on_source = engine(&Stores::new(sled.clone()), now.clone());
    let on_target = engine(&Stores::new(target.clone()), now.clone());
    assert_eq!(target.head().unwrap(), sled.head().unwrap());
    assert_eq!(
        format!("{:?}", on_target.alert_views().unwrap()),
        format!("{:?}", on_source.alert_views().unwrap())
    );
    assert_eq!(on_target.evaluate().unwrap(), on_source.evaluate().unwrap());
    assert_eq!(
        contents(target.as_ref(), target.as_ref()),
        contents(sled.as_ref(), sled.as_ref())
    );
    sled
}

#[test]
fn a_sled_ledger_migrates_verbatim_into_the_memory_store() {
    let target = Arc::new(MemoryStore::new());
    let sled = migrates_verbatim(target.clone());
    // Item by item too: the same facts, nothing more.
    assert_eq!(facts(target.as_ref()), facts(sled.as_ref()));
}

#[test]
fn a_sled_ledger_migrates_verbatim_into_postgres() {
    let db = flopmeter_pg::test_support::shared().fresh_database();
    let target = Arc::new(open_pg(&db.socket_dsn()));
    assert!(target.is_empty().unwrap(), "a new database is empty");
    migrates_verbatim(target.clone());
    assert!(!target.is_empty().unwrap());
    // A second run is refused, and with --allow-non-empty rewrites the same values.
    let (sled, _dir) = filled_sled();
    let err = migrate(sled.as_ref(), target.as_ref(), false, |_| {}).unwrap_err();
    assert!(matches!(err, TransferError::TargetNotEmpty), "{err}");
}

#[test]
fn a_target_that_holds_something_is_refused_untouched() {
    let (sled, _dir) = filled_sled();
    let target = MemoryStore::new();
    target
        .set_model_entry(&planned("other", 5 * E24, now_unix_ms()))
        .unwrap();
    let before = contents(&target, &target);
    let err = migrate(sled.as_ref(), &target, false, |_| {}).unwrap_err();
    assert!(matches!(err, TransferError::TargetNotEmpty), "{err}");
    assert!(err.to_string().contains("--allow-non-empty"), "{err}");
    assert_eq!(contents(&target, &target), before);
}

/// A target that fails once on the chunk holding the audit entries: the migration stops
/// where a crash before its last chunk would stop it.
struct FailsOnce {
    inner: MemoryStore,
    failed: std::sync::atomic::AtomicBool,
}

impl Import for FailsOnce {
    fn is_empty(&self) -> Result<bool, TransferError> {
        self.inner.is_empty()
    }

    fn import(&self, items: Vec<Item>) -> Result<(), TransferError> {
        if items.iter().any(|i| matches!(i, Item::AuditEntry(_)))
            && !self.failed.swap(true, Ordering::SeqCst)
        {
            return Err(TransferError::TargetNotEmpty);
        }
        self.inner.import(items)
    }

    fn finish(&self) -> Result<(), TransferError> {
        self.inner.finish()
    }
}

#[test]
fn a_half_finished_migration_fails_audit_verify_until_a_rerun_completes_it() {
    let (sled, _dir) = filled_sled();
    let target = FailsOnce {
        inner: MemoryStore::new(),
        failed: false.into(),
    };
    migrate(sled.as_ref(), &target, false, |_| {}).unwrap_err();
    let chain = target.inner.chain_status().unwrap();
    assert!(
        !chain.ok(),
        "a head without its entries must not verify: {chain:?}"
    );
    assert_eq!(chain.head_entries, sled.head().unwrap().next_seq);
    // Without the flag the re-run is refused; with it, it completes.
    let err = migrate(sled.as_ref(), &target, false, |_| {}).unwrap_err();
    assert!(matches!(err, TransferError::TargetNotEmpty), "{err}");
    migrate(sled.as_ref(), &target, true, |_| {}).unwrap();
    assert!(target.inner.chain_status().unwrap().ok());
    assert_eq!(
        contents(&target.inner, &target.inner),
        contents(sled.as_ref(), sled.as_ref())
    );
    assert!(target.inner.verify().unwrap().ok());
}
