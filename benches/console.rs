//! The console's landing page at scale: 1,000 models with 10,000 runs (120,000 records, 50
//! models with a running clock, unattributed work on shared nodes) in a real collector; each
//! iteration is one `GET /ui/` over loopback, so the time is the server's (the ledger reads,
//! one report per model, the engine's views, sorting, rendering) plus a loopback round trip.
//! Prints the page weight.
//!
//! Run: `cargo bench --bench console`. Figures are recorded in BENCHMARKS.md
//! (targets: under 200 ms, under 500 KB).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flopmeter_collector::Collector;
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ingest::validate::{Inventory, Limits, verdict};
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch, LedgerStore, ModelEntry, Role};
use flopmeter_proto::v1::GpuInventory;
use flopmeter_sim::agent::{SimAgent, SimSpec};
use flopmeter_sim::loadgen::http_get;

const MODELS: usize = 1_000;
const RUNS_PER_MODEL: usize = 10;
const HOURS: i64 = 12;
const HOUR: i64 = 3_600_000;

fn fill(dir: &std::path::Path, now: i64) {
    let store = SledStore::open(dir).unwrap();
    for m in 0..MODELS {
        let model = format!("model-{m:04}");
        let agent_id = format!("agent-{m:04}");
        let node = format!("node-{:03}", m % 100);
        let mut records = Vec::new();
        let mut seq = 0;
        // The agent's Hello inventory: the GPUs its records name.
        let inventory = Inventory::from_hello(
            &(0..8)
                .map(|i| GpuInventory {
                    uuid: format!("GPU-{agent_id}-{i}"),
                    catalogue_id: "h100-sxm".into(),
                    ..GpuInventory::default()
                })
                .collect::<Vec<_>>(),
        );
        for r in 0..RUNS_PER_MODEL {
            let a = SimAgent::new(SimSpec {
                agent_id: agent_id.clone(),
                node: node.clone(),
                gpus: 8,
                model: model.clone(),
                run: format!("run-{r}"),
                stage: if r == 9 { "eval".into() } else { String::new() },
                interval: Duration::from_secs(10),
                token: None,
                cluster: String::new(),
            });
            for h in 0..HOURS {
                seq += 1;
                let record = a.record(seq, (h % 8) as u32, now - h * HOUR);
                let rejection = verdict(&record, &inventory, &Limits::default(), now);
                assert!(rejection.is_none(), "{rejection:?}");
                records.push(CheckedRecord::new(record, rejection));
            }
        }
        store
            .apply_batch(&IncomingBatch {
                agent_id,
                node,
                received_unix_ms: now,
                records,
            })
            .unwrap();
        if m % 20 == 0 {
            store
                .set_model_entry(&ModelEntry {
                    model,
                    role: Some(Role::Provider),
                    declared: flopmeter_core::declaration::Declaration {
                        planned_flop: Some(2 * 10u128.pow(25)),
                        ..Default::default()
                    },
                    updated_unix_ms: now - HOUR,
                    ..ModelEntry::default()
                })
                .unwrap();
        }
    }
    store.flush().unwrap();
}

fn landing_page(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = flopmeter_collector::now_unix_ms();
    fill(dir.path(), now);
    let collector = rt.block_on(async {
        let c = Collector::start(CollectorConfig::for_data_dir(dir.path()))
            .await
            .unwrap();
        let t = std::time::Instant::now();
        c.compliance().evaluate_now().await.unwrap();
        eprintln!(
            "engine pass over {MODELS} models: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        c
    });
    let url = format!("http://{}/ui/", collector.http_addr());
    let page = http_get(&url).unwrap();
    assert_eq!(page.matches("<tr").count(), MODELS + 1);
    // To look at what is being weighed: CONSOLE_BENCH_PAGE=/tmp/page.html.
    if let Some(path) = std::env::var_os("CONSOLE_BENCH_PAGE") {
        std::fs::write(path, &page).unwrap();
    }
    eprintln!(
        "landing page: {} bytes ({:.0} KB) for {MODELS} models, {} runs",
        page.len(),
        page.len() as f64 / 1024.0,
        MODELS * RUNS_PER_MODEL
    );
    let mut g = c.benchmark_group("console");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("GET /ui/ (1000 models, 10000 runs)", |b| {
        b.iter(|| http_get(&url).unwrap().len())
    });
    g.finish();
    rt.block_on(collector.shutdown()).unwrap();
}

criterion_group!(benches, landing_page);
criterion_main!(benches);
