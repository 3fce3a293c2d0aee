//! Criterion benchmarks of the collector's ledger hot path: applying one batch of 80
//! records (10 agents' worth of 8 GPUs, as one agent backfilling would send) to the sled
//! ledger, with and without the flush that group commit shares between batches.
//!
//! Run: `cargo bench --bench ingest`. Figures are recorded in BENCHMARKS.md.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flopmeter_collector::ingest::validate::{Inventory, Limits, verdict};
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch, LedgerStore};
use flopmeter_proto::v1::GpuInventory;
use flopmeter_sim::agent::{SimAgent, SimSpec};

const RECORDS: u64 = 80;
const NOW: i64 = 1_780_000_000_000;

fn agent() -> SimAgent {
    SimAgent::new(SimSpec {
        agent_id: "bench-agent".into(),
        node: "bench-node".into(),
        gpus: 8,
        model: "bench-model".into(),
        run: "bench-run".into(),
        stage: String::new(),
        interval: std::time::Duration::from_secs(10),
        token: None,
        cluster: String::new(),
    })
}

/// The agent's Hello inventory: the GPUs its records name.
fn inventory() -> Inventory {
    Inventory::from_hello(
        &(0..8)
            .map(|i| GpuInventory {
                uuid: format!("GPU-bench-agent-{i}"),
                catalogue_id: "h100-sxm".into(),
                ..GpuInventory::default()
            })
            .collect::<Vec<_>>(),
    )
}

/// The `n`-th batch: sequence numbers `n*80+1 ..= n*80+80`.
fn batch(a: &SimAgent, n: u64) -> IncomingBatch {
    let records = (0..RECORDS)
        .map(|i| {
            let seq = n * RECORDS + i + 1;
            let record = a.record(seq, (i % 8) as u32, NOW - 1000);
            let rejection = verdict(&record, &inventory(), &Limits::default(), NOW);
            CheckedRecord::new(record, rejection)
        })
        .collect();
    IncomingBatch {
        agent_id: "bench-agent".into(),
        node: "bench-node".into(),
        received_unix_ms: NOW,
        records,
    }
}

fn apply(c: &mut Criterion) {
    let a = agent();
    let mut g = c.benchmark_group("ledger/apply-80-records");
    g.throughput(Throughput::Elements(RECORDS));

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut n = 0;
    g.bench_function("apply+flush", |b| {
        b.iter(|| {
            let out = store.apply_batch(&batch(&a, n)).unwrap();
            store.flush().unwrap();
            n += 1;
            black_box(out)
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut n = 0;
    g.bench_function("apply (flush shared by the group)", |b| {
        b.iter(|| {
            let out = store.apply_batch(&batch(&a, n)).unwrap();
            n += 1;
            black_box(out)
        })
    });
    store.flush().unwrap();

    g.bench_function("validate+build only", |b| {
        b.iter(|| {
            let out = batch(&a, n);
            n += 1;
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
