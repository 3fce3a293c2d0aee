//! Fuzz target `batch_decode`: bytes off the wire → `AgentMessage::decode` → the collector's
//! door (`check_hello`, `sequence::well_formed`, `validate::verdict`) → the ledger.
//!
//! Property: nothing panics; every record of a decoded batch gets a verdict (accepted, or a
//! known reason with a detail); an accepted record satisfies the invariants
//! (`fuzz_support::check_verdict`: FLOP ≤ the physical ceiling of its GPU over its
//! interval, low ≤ central ≤ high, sane timestamps, bounded names); a well-formed batch
//! applies whole to a sled ledger, every record either applied or quarantined, and at the
//! end `verify` finds every aggregate equal to its recomputation (no total moved by
//! anything but accepted records).
//!
//! Inputs: every file of `fuzz/corpus/batch_decode` as is, then `FLOPMETER_FUZZ_CASES`
//! (default 3000) byte-level mutations of them and as many arbitrary byte strings.
//! `fuzz/README.md` says how to run long and how to add a crash to the corpus.

use crate::fuzz_support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flopmeter_collector::ingest::validate::{self, Limits};
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch, LedgerStore, sequence};
use flopmeter_proto::v1::{AgentMessage, agent_message};
use fuzz_support::{NOW, check_verdict, corpus, inventory, mutate, mutation, no_panic};
use proptest::prelude::*;
use prost::Message as _;

const TARGET: &str = "batch_decode";

struct Ledger {
    store: SledStore,
    agents: AtomicU64,
}

/// The ledger both test functions apply to, opened once per process. It lives in a static,
/// which is never dropped, so not in a `TempDir` (that left one `/tmp/.tmpXXXXXX` ledger
/// behind per run): under the target directory, one per process, and the directories of
/// earlier processes that have exited are removed here.
fn ledger() -> &'static Ledger {
    static L: std::sync::OnceLock<Ledger> = std::sync::OnceLock::new();
    L.get_or_init(|| {
        let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-batch-decode");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !std::path::Path::new("/proc").join(&pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SledStore::open_with_cache(&dir, 16 << 20).unwrap();
        Ledger {
            store,
            agents: AtomicU64::new(0),
        }
    })
}

/// The two test functions share the ledger; `verify` must not see a half-applied batch.
static APPLY: Mutex<()> = Mutex::new(());

/// The door, as `ingest::session` runs it, and the ledger behind it.
fn door(bytes: &[u8], limits: &Limits) -> Result<(), String> {
    let Ok(msg) = AgentMessage::decode(bytes) else {
        // tonic answers a message that does not decode with a status; nothing reaches the
        // ledger.
        return Ok(());
    };
    let batch = match msg.kind {
        Some(agent_message::Kind::Hello(h)) => {
            let _ = validate::check_hello(&h);
            let _ = validate::Inventory::from_hello(&h.gpus);
            return Ok(());
        }
        Some(agent_message::Kind::Batch(b)) => b,
        None => return Ok(()),
    };
    let seqs: Vec<u64> = batch.records.iter().map(|r| r.seq).collect();
    if !sequence::well_formed(&seqs) {
        // Refused whole (INVALID_ARGUMENT); nothing applied.
        return Ok(());
    }
    let inv = inventory();
    let mut records = Vec::new();
    for record in batch.records {
        let rejection = validate::verdict(&record, &inv, limits, NOW);
        let v = rejection
            .as_ref()
            .map(|r| (r.reason.clone(), r.detail.clone()));
        check_verdict(&record, v.as_ref(), limits)?;
        records.push(CheckedRecord::new(record, rejection));
    }
    // A fresh agent per case, numbered from 1, so every batch is applied rather than seen
    // as a gap or a duplicate.
    let l = ledger();
    let agent = format!("fuzz-{}", l.agents.fetch_add(1, Ordering::Relaxed));
    for (i, r) in records.iter_mut().enumerate() {
        r.record.seq = i as u64 + 1;
    }
    let n = records.len();
    let accepted = records.iter().filter(|r| r.rejection.is_none()).count();
    let _guard = APPLY.lock().unwrap_or_else(|e| e.into_inner());
    let out = l
        .store
        .apply_batch(&IncomingBatch {
            agent_id: agent,
            node: "fuzz-node".into(),
            received_unix_ms: NOW,
            records,
        })
        .map_err(|e| format!("a validated batch failed to apply: {e}"))?;
    if out.applied != accepted || out.applied + out.newly_rejected != n {
        return Err(format!(
            "{n} records, {accepted} accepted: applied {} and quarantined {}",
            out.applied, out.newly_rejected
        ));
    }
    Ok(())
}

fn run(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    no_panic(bytes, || door(bytes, &limits))?
        .map_err(|e| TestCaseError::fail(format!("{e} (input hex {})", fuzz_support::hex(bytes))))
}

fn verify_ledger() {
    let _guard = APPLY.lock().unwrap_or_else(|e| e.into_inner());
    let report = ledger().store.verify().unwrap();
    assert!(
        report.mismatches.is_empty(),
        "a total moved by something other than accepted records: {:?}",
        report.mismatches
    );
}

#[test]
fn batch_decode_corpus_replays() {
    let c = corpus(TARGET);
    assert!(c.len() >= 5, "the corpus is missing");
    for (name, bytes) in &c {
        if let Err(e) = run(bytes) {
            panic!("corpus entry {name}: {e}");
        }
    }
    verify_ledger();
}

proptest! {
    #![proptest_config(fuzz_support::config(3000))]

    #[test]
    fn batch_decode_mutated_corpus(
        seed in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let c = corpus_cached();
        let bytes = mutate(&c[seed.index(c.len())].1, &muts, c);
        run(&bytes)?;
    }

    #[test]
    fn batch_decode_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        run(&bytes)?;
    }
}

fn corpus_cached() -> &'static [(String, Vec<u8>)] {
    static C: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    C.get_or_init(|| corpus(TARGET))
}

#[test]
fn batch_decode_ledger_stays_consistent() {
    // Whatever the other tests of this binary applied so far (they may run in parallel):
    // every stored aggregate equals its recomputation.
    let limits = Limits::default();
    for (_, bytes) in corpus_cached() {
        let _ = door(bytes, &limits);
    }
    verify_ledger();
}

/// Writes the generated part of the corpora of `batch_decode` and `record_validation`:
/// `FLOPMETER_FUZZ_WRITE_CORPUS=1 cargo test -p flopmeter-collector --test fuzz_batch_decode
/// write_corpus`. Without the variable it checks that the committed files are still what
/// the generator makes (a protocol change shows up here, like the proto drift test).
#[test]
fn write_corpus() {
    use flopmeter_proto::v1::{
        GpuInventory, Hello, IntervalRecord, RecordBatch, WorkloadDeclaration, WorkloadIdentity,
    };
    let write = std::env::var_os("FLOPMETER_FUZZ_WRITE_CORPUS").is_some();
    let good = |seq: u64| IntervalRecord {
        seq,
        start_unix_ms: NOW - 10_000,
        end_unix_ms: NOW,
        gpu_uuid: "GPU-1".into(),
        gpu_type: "h100-sxm".into(),
        flop_low: 3_000_000_000_000_000,
        flop_central: 4_000_000_000_000_000,
        flop_high: 8_000_000_000_000_000,
        gpu_ms: 10_000,
        energy_mj: 7_000_000,
        mean_sm_clock_mhz: 1_755,
        mean_tensor_util: 0.4,
        method: 1,
        precision: 2,
        identity: Some(WorkloadIdentity {
            model: "acme-7b".into(),
            run: "run-1".into(),
            stage: "pretrain".into(),
            source: 1,
            namespace: "ml".into(),
            job: "job-1".into(),
            ..WorkloadIdentity::default()
        }),
        ..IntervalRecord::default()
    };
    let each_rule: Vec<IntervalRecord> = {
        let mut v = Vec::new();
        let mut push = |f: &dyn Fn(&mut IntervalRecord)| {
            let mut r = good(v.len() as u64 + 1);
            f(&mut r);
            v.push(r);
        };
        push(&|r| r.flop_high = u64::MAX);
        push(&|r| r.end_unix_ms = r.start_unix_ms - 1);
        push(&|r| r.start_unix_ms = r.end_unix_ms - 3_600_001);
        push(&|r| {
            r.start_unix_ms += 400_000;
            r.end_unix_ms += 400_000
        });
        push(&|r| r.flop_low = r.flop_high + 1);
        push(&|r| r.gpu_type = "x999".into());
        push(&|r| r.gpu_ms = 20_000);
        push(&|r| r.energy_mj = u64::MAX);
        push(&|r| r.mean_tensor_util = f64::NAN);
        push(&|r| r.identity.as_mut().unwrap().model = "a\u{1b}[31m".into());
        push(&|r| r.gpu_type = "h".repeat(300));
        v
    };
    let extremes = |seq: u64| IntervalRecord {
        seq,
        start_unix_ms: i64::MIN,
        end_unix_ms: i64::MAX,
        gpu_uuid: "\0".into(),
        gpu_type: " H100-SXM ".into(),
        flop_low: u64::MAX,
        flop_central: u64::MAX,
        flop_high: u64::MAX,
        gpu_ms: u64::MAX,
        energy_mj: u64::MAX,
        mean_sm_clock_mhz: u32::MAX,
        mean_tensor_util: f64::INFINITY,
        method: i32::MIN,
        precision: i32::MAX,
        ..IntervalRecord::default()
    };
    let batch = |records: Vec<IntervalRecord>| AgentMessage {
        kind: Some(agent_message::Kind::Batch(RecordBatch { records })),
    };
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: "agent-1".into(),
            node: "node-1".into(),
            software_version: "0.1.0".into(),
            agent_time_unix_ms: NOW,
            gpus: fuzz_support::hello_gpus()
                .into_iter()
                .chain([GpuInventory {
                    uuid: "GPU-1".into(),
                    catalogue_id: "h100-sxm".into(),
                    ..GpuInventory::default()
                }])
                .collect(),
            ..Hello::default()
        })),
    };
    let operator = IntervalRecord {
        gpu_uuid: "GPU-op".into(),
        gpu_type: String::new(),
        flop_low: 1,
        flop_central: 2,
        flop_high: 4_000_000_000_000_000,
        ..good(1)
    };
    let declared = IntervalRecord {
        declaration: Some(WorkloadDeclaration {
            precision: 2,
            planned_flop: "3.8e25".into(),
            params: "7e9".into(),
            tokens: "1e99999".into(),
            base_model: "base\u{7}".into(),
            planned_end_unix_ms: i64::MAX,
        }),
        ..good(1)
    };
    let unattributed = IntervalRecord {
        identity: None,
        ..good(1)
    };
    let good_batch = batch(vec![good(1), good(2), good(3)]).encode_to_vec();
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("good_batch.bin", good_batch.clone()),
        ("hello.bin", hello.encode_to_vec()),
        (
            "each_rule_a.bin",
            batch(each_rule[..5].to_vec()).encode_to_vec(),
        ),
        (
            "each_rule_b.bin",
            batch(each_rule[5..10].to_vec()).encode_to_vec(),
        ),
        (
            "extremes.bin",
            batch(vec![extremes(1), extremes(2)]).encode_to_vec(),
        ),
        (
            "operator_peak.bin",
            batch(vec![operator.clone()]).encode_to_vec(),
        ),
        (
            "declaration.bin",
            batch(vec![declared.clone()]).encode_to_vec(),
        ),
        (
            "unattributed.bin",
            batch(vec![unattributed.clone()]).encode_to_vec(),
        ),
        (
            "seq_not_increasing.bin",
            batch(vec![good(2), good(2)]).encode_to_vec(),
        ),
        ("seq_zero.bin", batch(vec![good(0)]).encode_to_vec()),
        ("empty_batch.bin", batch(vec![]).encode_to_vec()),
        ("empty.bin", vec![]),
        ("truncated.bin", good_batch[..good_batch.len() / 2].to_vec()),
        // Field 99, varint: an unknown field is skipped by prost.
        (
            "unknown_field.bin",
            [good_batch.clone(), vec![0x98, 0x06, 0x01]].concat(),
        ),
        // A length prefix far beyond the input.
        (
            "huge_length.bin",
            vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x0a],
        ),
    ];
    let mut records: Vec<(String, Vec<u8>)> = each_rule
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("rule_{i:02}.bin"), r.encode_to_vec()))
        .collect();
    records.push(("good.bin".into(), good(1).encode_to_vec()));
    records.push(("extremes.bin".into(), extremes(1).encode_to_vec()));
    records.push(("operator_peak.bin".into(), operator.encode_to_vec()));
    records.push(("declaration.bin".into(), declared.encode_to_vec()));
    records.push(("unattributed.bin".into(), unattributed.encode_to_vec()));
    type Files = Vec<(String, Vec<u8>)>;
    let sets: [(&str, Files); 2] = [
        (
            TARGET,
            entries
                .into_iter()
                .map(|(n, b)| (n.to_string(), b))
                .collect(),
        ),
        ("record_validation", records),
    ];
    for (target, files) in sets {
        let dir = fuzz_support::corpus_dir(target);
        for (name, bytes) in files {
            assert!(bytes.len() <= 1024, "{name}: corpus entries stay small");
            let path = dir.join(&name);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let stored = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; regenerate with FLOPMETER_FUZZ_WRITE_CORPUS=1",
                        path.display()
                    )
                });
                assert_eq!(
                    stored,
                    bytes,
                    "{} drifted; regenerate with FLOPMETER_FUZZ_WRITE_CORPUS=1",
                    path.display()
                );
            }
        }
    }
}
