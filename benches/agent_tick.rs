//! Criterion benchmarks of the agent's per-tick work: what one sampler tick costs on an
//! 8-GPU node (estimate, attribute, accumulate, metrics), and what one report interval's
//! spool write and acknowledgement cost (16 records, fsync included).
//!
//! Run: `cargo bench --bench agent_tick`. The whole-process figure (CPU % of one core and
//! peak RSS for 8 fake GPUs at 1 Hz over 60 s) comes from `scripts/agent-footprint`; both go
//! into BENCHMARKS.md.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flopmeter_agent::attribution::Attributor;
use flopmeter_agent::gpu::{GpuSource, Inventory, Tick};
use flopmeter_agent::metrics::AgentMetrics;
use flopmeter_agent::sampler::{Sampler, SamplerConfig};
use flopmeter_agent::simulated::{SimulatedSource, Workload};
use flopmeter_agent::spool::{Spool, SpoolOptions};
use flopmeter_proto::v1::{IntervalRecord, WorkloadIdentity};
use std::hint::black_box;

/// 8 H100s, one training rank per GPU, each with `FLOPMETER_*` labels in a fixture proc tree.
fn node() -> (Workload, tempfile::TempDir) {
    let mut toml = String::from("gpu = \"h100-sxm\"\ncount = 8\ntensor_util = 0.45\n");
    for g in 0..8 {
        toml.push_str(&format!(
            "[[process]]\npid = {}\ngpus = [{g}]\n[process.env]\nFLOPMETER_MODEL = \"bench-70b\"\n\
             FLOPMETER_RUN = \"bench-run\"\nFLOPMETER_STAGE = \"pretrain\"\n",
            4100 + g
        ));
    }
    let w = Workload::from_toml(&toml).unwrap();
    let proc_root = tempfile::tempdir().unwrap();
    w.write_proc_tree(proc_root.path()).unwrap();
    (w, proc_root)
}

fn sampler_tick(c: &mut Criterion) {
    let (workload, proc_root) = node();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(spool_dir.path(), SpoolOptions::default()).unwrap());
    let metrics = Arc::new(AgentMetrics::new().unwrap());
    let mut source = SimulatedSource::new(workload).unwrap();
    let inventory: Inventory = source.inventory().clone();
    let mut sampler = Sampler::new(
        SamplerConfig::default(),
        Attributor::new(proc_root.path(), None),
        spool,
        metrics,
    );
    // Two reads: a baseline, then a reading with an interval, replayed every iteration.
    source.read(Duration::from_secs(0));
    let tick: Tick = source.read(Duration::from_secs(1));
    let mut now_ms = 1_780_000_000_000i64;
    c.bench_function("sampler/tick-8-gpus", |b| {
        b.iter(|| {
            now_ms += 1000;
            sampler.tick(black_box(&inventory), black_box(&tick), now_ms);
        })
    });
    // Keep the accumulators from growing the next benchmark's work.
    sampler.flush(now_ms, false);
}

fn spool_interval(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let batch: Vec<IntervalRecord> = (0..16)
        .map(|g| IntervalRecord {
            start_unix_ms: 1_780_000_000_000,
            end_unix_ms: 1_780_000_010_000,
            gpu_uuid: format!("GPU-5151a7ed-0000-4000-8000-{g:012x}"),
            gpu_type: "h100-sxm".into(),
            flop_low: 3_780_000_000_000_000,
            flop_central: 4_450_000_000_000_000,
            flop_high: 9_170_000_000_000_000,
            gpu_ms: 10_000,
            energy_mj: 5_600_000,
            mean_sm_clock_mhz: 1830,
            mean_tensor_util: 0.45,
            identity: Some(WorkloadIdentity {
                model: "bench-70b".into(),
                run: "bench-run".into(),
                stage: "pretrain".into(),
                ..WorkloadIdentity::default()
            }),
            ..IntervalRecord::default()
        })
        .collect();
    c.bench_function("spool/append-and-ack-16-records", |b| {
        b.iter(|| {
            let mut recs = batch.clone();
            let range = spool.append(&mut recs).unwrap().unwrap();
            spool.ack(*range.end()).unwrap();
        })
    });
}

criterion_group!(benches, sampler_tick, spool_interval);
criterion_main!(benches);
