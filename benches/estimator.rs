//! Criterion benchmarks of the estimator hot path: what the agent runs per GPU per sample
//! and what the collector runs per record.
//!
//! Run: `cargo bench --bench estimator`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flopmeter_core::catalogue::find;
use flopmeter_core::estimator::{Activity, GpmActivity, Interval, estimate};
use flopmeter_core::units::{FlopBand, FlopTotal};
use std::hint::black_box;

fn estimate_one_interval(c: &mut Criterion) {
    let h100 = find("h100-sxm").unwrap();
    let a100 = find("a100-sxm").unwrap();
    let gpm = Interval {
        seconds: 1.0,
        activity: Activity::Gpm(GpmActivity {
            tensor: 0.45,
            fp32: 0.05,
            fp16: 0.01,
            fp64: 0.0,
            pipes_unread: false,
        }),
        mean_sm_clock_mhz: Some(1755.0),
        declared_precision: None,
    };
    let util = Interval {
        activity: Activity::Util { gpu_util: 0.9 },
        ..gpm
    };
    c.bench_function("estimate/gpm-tensor", |b| {
        b.iter(|| estimate(black_box(h100), black_box(&gpm)))
    });
    c.bench_function("estimate/util-mfu", |b| {
        b.iter(|| estimate(black_box(a100), black_box(&util)))
    });
}

fn aggregate(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregate");
    for n in [80usize, 8_000] {
        let bands: Vec<FlopBand> = (0..n as u64)
            .map(|i| FlopBand {
                low: i * 3,
                central: i * 4,
                high: i * 8,
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &bands, |b, bands| {
            b.iter(|| black_box(bands.iter().copied().collect::<FlopTotal>()))
        });
    }
    group.finish();
}

criterion_group!(benches, estimate_one_interval, aggregate);
criterion_main!(benches);
