//! The agent tests' harness: a private fake NVML per test, driven with virtual time, plus the
//! workspace's HTTP client, process helpers and proptest seed (`tests/support/`).
//!
//! The fake library is built by `fake_nvml::harness`, which runs `cargo build -p fake-nvml`
//! once per test process (a no-op when up to date) and copies the result into a temp dir
//! per test, beside that test's scenario and clock file. That makes `cargo test` work on a
//! fresh clone without relying on cargo happening to build the cdylib first, and lets the
//! tests run in parallel (one dlopen instance per copy).

#![allow(dead_code)] // Each test file uses a different part of the rig.

#[path = "../../../tests/support/http.rs"]
pub mod http;
#[path = "../../../tests/support/proc.rs"]
pub mod proc;
#[path = "../../../tests/support/seed.rs"]
pub mod seed;

pub use proc::Proc;

use std::path::PathBuf;
use std::time::Duration;

use fake_nvml::Scenario;
use fake_nvml::harness::FakeNvml;
use flopmeter_agent::gpu::nvml::{NvmlLibrary, RetryPolicy};
use flopmeter_agent::gpu::{GpuSource, Tick};

/// A shipped scenario file.
pub fn scenario_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/scenarios")
        .join(name)
}

/// A fake instance with its scenario and the scenario's ground truth.
pub struct Rig {
    pub fake: FakeNvml,
    pub scenario: Scenario,
}

impl Rig {
    /// A shipped scenario, at virtual time 0.
    pub fn shipped(name: &str) -> Rig {
        let text = std::fs::read_to_string(scenario_path(name)).unwrap();
        Rig::inline(&text)
    }

    /// An inline scenario, at virtual time 0.
    pub fn inline(toml: &str) -> Rig {
        Rig::with_hidden(toml, &[])
    }

    /// An inline scenario whose library lacks the named functions.
    pub fn with_hidden(toml: &str, hidden: &[&str]) -> Rig {
        let scenario = Scenario::parse(toml, "test").unwrap();
        let fake = FakeNvml::without_symbols(toml, hidden).unwrap();
        fake.set_time(0.0).unwrap();
        Rig { fake, scenario }
    }

    pub fn open(&self) -> NvmlLibrary {
        NvmlLibrary::open(self.fake.lib_path()).unwrap()
    }
}

/// Retry at every tick (1 s), so outage tests are short.
pub fn eager_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(1),
    }
}

/// Reads at each virtual time, setting the fake's clock to the same value first.
pub fn ticks(
    rig: &Rig,
    source: &mut dyn GpuSource,
    times: impl IntoIterator<Item = f64>,
) -> Vec<Tick> {
    times
        .into_iter()
        .map(|t| {
            rig.fake.set_time(t).unwrap();
            source.read(Duration::from_secs_f64(t))
        })
        .collect()
}

/// `0, 1, ..., n` seconds.
pub fn seconds(n: u32) -> impl Iterator<Item = f64> {
    (0..=n).map(f64::from)
}

/// Relative difference `|a - b| / b`.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b
}

/// The sampler driven by the NVML source on the fake, tick by tick on virtual time: what
/// the agent would spool, with attribution from a fixture proc tree (`pid → env`).
pub struct Metered {
    pub records: Vec<flopmeter_proto::v1::IntervalRecord>,
    pub inventory: flopmeter_agent::gpu::Inventory,
    pub metrics: String,
}

/// Runs the real sampler over `0..=n` virtual seconds of `rig`, one record flush at the end.
pub fn meter(
    rig: &Rig,
    processes: &[(u32, &[(&str, &str)])],
    n: u32,
    unknown_gpu_peak_tflops: Option<f64>,
) -> Metered {
    use std::sync::Arc;

    use flopmeter_agent::attribution::Attributor;
    use flopmeter_agent::gpu::nvml::NvmlSource;
    use flopmeter_agent::metrics::AgentMetrics;
    use flopmeter_agent::sampler::{Sampler, SamplerConfig};
    use flopmeter_agent::simulated::fake_stat;
    use flopmeter_agent::spool::{Spool, SpoolOptions};

    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    for (pid, env) in processes {
        let p = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        let mut environ = Vec::new();
        for (k, v) in *env {
            environ.extend_from_slice(format!("{k}={v}").as_bytes());
            environ.push(0);
        }
        std::fs::write(p.join("environ"), environ).unwrap();
        std::fs::write(p.join("stat"), fake_stat(*pid, u64::from(*pid) + 1000)).unwrap();
        std::fs::write(p.join("cgroup"), "0::/\n").unwrap();
    }
    let spool = Arc::new(Spool::open(&dir.path().join("spool"), SpoolOptions::default()).unwrap());
    let metrics = Arc::new(AgentMetrics::new().unwrap());
    let mut sampler = Sampler::new(
        SamplerConfig {
            unknown_gpu_peak_tflops,
            ..SamplerConfig::default()
        },
        Attributor::new(proc_root, None),
        spool.clone(),
        metrics.clone(),
    );
    let lib = rig.open();
    let mut source = NvmlSource::new(&lib, eager_retry()).unwrap();
    const START_MS: i64 = 1_700_000_000_000;
    for t in seconds(n) {
        rig.fake.set_time(t).unwrap();
        let tick = source.read(Duration::from_secs_f64(t));
        let inventory = source.inventory().clone();
        sampler.tick(&inventory, &tick, START_MS + (t * 1000.0) as i64);
    }
    sampler.flush(START_MS + i64::from(n) * 1000, true);
    let records = spool.read_from(0, usize::MAX, usize::MAX).unwrap();
    Metered {
        records,
        inventory: source.inventory().clone(),
        metrics: metrics.encode(),
    }
}
