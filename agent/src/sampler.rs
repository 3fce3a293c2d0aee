//! The sampler: reads the GPUs every sample interval, estimates FLOP, attributes it to runs,
//! and every report interval turns what it accumulated into interval records in the spool.
//!
//! Why it is a plain blocking loop on its own thread: NVML calls block (a GPU falling off the
//! bus can stall a call for seconds), and an async worker stuck in NVML would stall the
//! shipper and the metrics endpoint with it.
//!
//! Per tick and GPU: the reading's interval is estimated by the core estimator (per distinct
//! declared precision of the processes on the GPU), energy comes from the NVML counter via
//! [`EnergyCounter`], and the GPU's processes split both by their SM share. The results are
//! added to one accumulator per (run identity, GPU, method, precision). At a report boundary
//! each accumulator becomes one record. FLOP is rounded once per tick and share, and summed as
//! integers from then on.
//!
//! Back-pressure: when the spool refuses (full, or a disk error), the accumulators are kept
//! and keep growing in *time*, not in number: the next boundary retries with records that
//! cover the longer interval. Once an interval spans `max_record_span` (the collector rejects
//! longer records) its records are closed into a held queue and a new interval starts, so
//! memory grows by one record per (run, GPU) per span. Past `max_held_records` the records
//! are written past the spool's cap rather than dropped: the hard ceiling on what the sampler
//! holds is `max_held_records` records plus the open interval's one per (run, GPU).
//!
//! Replay mode ([`Replay`], tests and demos only) runs in virtual time and makes the
//! records a pure function of the workload and the virtual span, whatever crashes happen:
//! each report boundary's records are appended together with the boundary's event time
//! ([`Spool::append_replay`]), a restarted agent resumes its virtual time from that position, a
//! partial interval is never flushed (it is redone after a restart), and a full spool pauses
//! virtual time instead of holding records, so interval boundaries never move. Time that
//! stands still while the collector is away is exactly back-pressure without loss.

mod book;
mod records;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flopmeter_core::catalogue::GpuModel;
use flopmeter_core::energy::EnergyCounter;
use flopmeter_core::units::{Method, Precision};
use flopmeter_proto::v1;

use crate::attribution::{Attribution, Attributor};
use crate::cluster::ClusterName;
use crate::gpu::{GpuSource, Inventory};
use crate::metrics::AgentMetrics;
use crate::spool::Spool;
use crate::time_source::{StopSignal, TimeSource};

/// Sampler settings.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Time between GPU reads.
    pub sample_interval: Duration,
    /// Time between records.
    pub report_interval: Duration,
    /// Records (held and open) kept in memory while the spool refuses, before they are
    /// written past its cap.
    pub max_held_records: usize,
    /// The longest interval one record may cover while the spool refuses (the collector
    /// rejects records longer than its `--max-interval`, 1 h by default).
    pub max_record_span: Duration,
    /// BF16 dense peak (TFLOP/s) to use for GPUs the catalogue does not know.
    pub unknown_gpu_peak_tflops: Option<f64>,
    /// Replay mode; `None` in real time.
    pub replay: Option<Replay>,
    /// The cluster each record is stamped with.
    pub cluster: ClusterName,
}

/// Replay mode (see the module docs): for a sampler on [`crate::time_source::VirtualTime`]
/// started at the spool's [`Spool::virtual_pos`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    /// Event time (Unix ms) at which sampling ends: the report interval that reaches it is
    /// the last one.
    pub stop_unix_ms: Option<i64>,
    /// Hold records in memory when the spool is full, as in real time, instead of
    /// pausing virtual time (to exercise the memory ceiling quickly).
    pub hold_when_full: bool,
}

/// Why [`Sampler::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop signal was raised.
    Stopped,
    /// Replay mode reached its stop time and spooled its last interval.
    ReplayDone,
}

/// Records per spool write when many are written at once (see `Sampler::append_chunked`).
const SPOOL_CHUNK: usize = 256;

/// How long a paused replay sampler waits (real time) between retries of a full spool.
const FULL_RETRY: Duration = Duration::from_millis(100);

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            sample_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(10),
            max_held_records: 10_000,
            max_record_span: Duration::from_secs(30 * 60),
            unknown_gpu_peak_tflops: None,
            replay: None,
            cluster: ClusterName::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    who: Arc<Attribution>,
    gpu: u32,
    /// The MIG instance's UUID, for a GPU in MIG mode.
    mig: Option<Arc<str>>,
    method: Method,
    precision: Precision,
    precision_declared: bool,
    /// Why there is no estimate (`Method::None`).
    no_estimate: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Acc {
    uuid: String,
    gpu_type: &'static str,
    unknown_peak: bool,
    peak_conflict: bool,
    energy_from_power: bool,
    mig: Option<v1::MigInstance>,
    low: u64,
    central: u64,
    high: u64,
    gpu_ms: f64,
    energy_mj: f64,
    clock_mhz_s: f64,
    clock_s: f64,
    tensor_s: f64,
    seconds: f64,
    approximate: bool,
    start_ms: i64,
    end_ms: i64,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Nothing to write.
    Empty,
    /// `n` records written.
    Written(usize),
    /// The spool refused; the accumulators are held and retried at the next boundary.
    Held,
}

/// The accumulating state of the sampler. [`Sampler::run`] drives it from a [`GpuSource`];
/// [`Sampler::tick`] and [`Sampler::flush`] are public so benchmarks and tests can drive it
/// step by step.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    attributor: Attributor,
    spool: Arc<Spool>,
    metrics: Arc<AgentMetrics>,
    energy: HashMap<u32, EnergyCounter>,
    open: HashMap<Key, Acc>,
    held: Vec<v1::IntervalRecord>,
    run_flop: HashMap<[String; 3], f64>,
    operator_model: Option<Arc<GpuModel>>,
    warned: HashSet<(u32, &'static str)>,
    last_method: HashMap<u32, &'static str>,
}

impl Sampler {
    /// A sampler writing to `spool`.
    pub fn new(
        cfg: SamplerConfig,
        attributor: Attributor,
        spool: Arc<Spool>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        let operator_model = cfg
            .unknown_gpu_peak_tflops
            .map(|p| Arc::new(GpuModel::operator_supplied(p)));
        Sampler {
            cfg,
            attributor,
            spool,
            metrics,
            energy: HashMap::new(),
            open: HashMap::new(),
            held: Vec::new(),
            run_flop: HashMap::new(),
            operator_model,
            warned: HashSet::new(),
            last_method: HashMap::new(),
        }
    }

    /// Samples until `stop` is raised, then flushes the partial interval into the spool
    /// (replay mode: until its stop time, and a partial interval is left to be redone).
    /// `inventory` receives the source's inventory at start and whenever it changes (the
    /// shipper's hello carries it).
    pub fn run(
        &mut self,
        source: &mut dyn GpuSource,
        time: &dyn TimeSource,
        stop: &StopSignal,
        inventory: &tokio::sync::watch::Sender<Option<Inventory>>,
    ) -> RunEnd {
        let replay = self.cfg.replay;
        if let Some(end) = replay.and_then(|r| r.stop_unix_ms)
            && time.now_unix_ms() >= end
        {
            return RunEnd::ReplayDone;
        }
        let sample = self.cfg.sample_interval.max(Duration::from_millis(1));
        let report = self.cfg.report_interval.max(sample);
        let start = time.monotonic();
        let mut next_tick = start;
        let mut next_report = start + report;
        let mut report_start_ms = time.now_unix_ms();
        loop {
            if !time.sleep_until(next_tick, stop) {
                break;
            }
            let now = time.monotonic();
            let tick = source.read(now);
            let now_ms = time.now_unix_ms();
            if inventory.borrow().as_ref() != Some(source.inventory()) {
                inventory.send_replace(Some(source.inventory().clone()));
            }
            self.tick(source.inventory(), &tick, now_ms);
            if time.monotonic() >= next_report {
                let outcome = self.report(report_start_ms, now_ms, false);
                if outcome == FlushOutcome::Held
                    && replay.is_some_and(|r| !r.hold_when_full)
                    && !self.wait_for_room(now_ms, stop)
                {
                    return RunEnd::Stopped;
                }
                report_start_ms = now_ms;
                while next_report <= time.monotonic() {
                    next_report += report;
                }
                if let Some(end) = replay.and_then(|r| r.stop_unix_ms)
                    && now_ms >= end
                {
                    return RunEnd::ReplayDone;
                }
            }
            next_tick += sample;
            let after = time.monotonic();
            while next_tick <= after {
                // The tick took longer than the interval: skip the deadlines it missed
                // rather than bursting to catch up, and count them.
                self.metrics.sampler_overruns_total.inc();
                next_tick += sample;
            }
        }
        if replay.is_some_and(|r| !r.hold_when_full) {
            // The spooled position stops at the last boundary; a restart redoes the rest.
            return RunEnd::Stopped;
        }
        let now_ms = time.now_unix_ms();
        self.report(report_start_ms, now_ms, true);
        RunEnd::Stopped
    }

    /// Replay mode with a full spool: virtual time stands still while the records of the
    /// boundary at `now_ms` wait (in real time) for room. False when stopped meanwhile.
    fn wait_for_room(&mut self, now_ms: i64, stop: &StopSignal) -> bool {
        loop {
            if !stop.wait_timeout(FULL_RETRY) {
                return false;
            }
            // Paused by design, not stalled: /healthz stays ok.
            self.metrics.sampler_alive();
            if self.flush(now_ms, false) != FlushOutcome::Held {
                return true;
            }
        }
    }

    /// Ends a report interval: publishes run rates and flushes the accumulators.
    fn report(&mut self, start_ms: i64, end_ms: i64, last: bool) -> FlushOutcome {
        let seconds = (end_ms - start_ms).max(1) as f64 / 1000.0;
        let rates: Vec<([String; 3], f64)> = self
            .run_flop
            .drain()
            .map(|(k, flop)| (k, flop / seconds))
            .collect();
        self.metrics.set_run_rates(&rates);
        self.flush(end_ms, last)
    }

    /// Number of accumulators in the current interval.
    pub fn open_series(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulated::{SimulatedSource, Workload};
    use crate::spool::SpoolOptions;
    use crate::time_source::VirtualTime;

    const START: i64 = 1_700_000_000_000;
    const STOP: i64 = START + 1_800_000;

    fn sampler(spool: &Arc<Spool>, dir: &std::path::Path) -> Sampler {
        Sampler::new(
            SamplerConfig {
                replay: Some(Replay {
                    stop_unix_ms: Some(STOP),
                    hold_when_full: false,
                }),
                ..SamplerConfig::default()
            },
            Attributor::new(dir.join("no-proc"), None),
            spool.clone(),
            Arc::new(AgentMetrics::new().unwrap()),
        )
    }

    /// One replay "process" on `spool`, from where the spool says, until the stop time or
    /// until `stop` is raised.
    fn replay(spool: &Arc<Spool>, dir: &std::path::Path, stop: &StopSignal) -> RunEnd {
        let w = Workload::from_toml(
            "gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 0.37\n[[process]]\npid = 7\n",
        )
        .unwrap();
        let mut src = SimulatedSource::new(w).unwrap();
        let time = VirtualTime::new(spool.virtual_pos().unwrap().unwrap_or(START));
        let (tx, _rx) = tokio::sync::watch::channel(None);
        sampler(spool, dir).run(&mut src, &time, stop, &tx)
    }

    /// What a record says about compute (energy follows the source's counter).
    fn key(r: &v1::IntervalRecord) -> (u64, i64, i64, String, u64, u64, u64, u64) {
        (
            r.seq,
            r.start_unix_ms,
            r.end_unix_ms,
            r.gpu_uuid.clone(),
            r.flop_low,
            r.flop_central,
            r.flop_high,
            r.gpu_ms,
        )
    }

    fn open(dir: &std::path::Path, max_bytes: u64) -> Arc<Spool> {
        Arc::new(
            Spool::open(
                dir,
                SpoolOptions {
                    max_bytes,
                    ..SpoolOptions::default()
                },
            )
            .unwrap(),
        )
    }

    #[test]
    fn replay_resumes_where_the_spool_ends_and_pauses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let reference = open(&dir.path().join("a"), 1 << 30);
        assert_eq!(
            replay(&reference, dir.path(), &StopSignal::new()),
            RunEnd::ReplayDone
        );
        let want: Vec<_> = reference
            .read_from(0, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        assert_eq!(want.len(), 2 * 180, "one record per GPU per 10 s");
        assert_eq!(reference.virtual_pos().unwrap(), Some(STOP));

        // Interrupted at arbitrary points (a stop mid-interval leaves the partial interval
        // to be redone), and with a spool so small it refuses most of the time: a helper
        // acknowledges slowly, like a collector, and virtual time waits for it. The helper
        // starts acknowledging in each run only once the spool has refused: otherwise, when
        // fsyncs are slow (a loaded disk), it drained the spool as fast as the sampler
        // filled it, the spool never refused, and `saw_full` failed about once in five runs.
        let path = dir.path().join("b");
        let mut got = Vec::new();
        let (mut runs, mut saw_full) = (0, false);
        loop {
            let spool = open(&path, 2_000);
            let stop = StopSignal::new();
            let acker = {
                let (spool, stop) = (spool.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut acks = 0;
                    while stop.wait_timeout(Duration::from_millis(5)) {
                        // Only once the spool has refused: however the machine's load
                        // schedules the two threads, every run meets a full spool.
                        if spool.stats().refused == 0 {
                            continue;
                        }
                        let mut batch = spool.read_from(0, 3, usize::MAX).unwrap();
                        if let Some(last) = batch.last().map(|r| r.seq) {
                            spool.ack(last).unwrap();
                            acks += 1;
                            got.append(&mut batch);
                        }
                        if acks == 25 {
                            stop.raise();
                        }
                    }
                    got
                })
            };
            let end = replay(&spool, dir.path(), &stop);
            stop.raise();
            got = acker.join().unwrap();
            // Counted by the spool, not sampled: a loaded machine may free the room between
            // two looks.
            saw_full |= spool.stats().refused > 0;
            runs += 1;
            if end == RunEnd::ReplayDone {
                got.extend(spool.read_from(0, usize::MAX, usize::MAX).unwrap());
                break;
            }
            assert!(runs < 1000, "replay makes progress");
        }
        assert!(runs > 3, "interrupted several times ({runs})");
        assert!(saw_full, "the spool refused and virtual time waited");
        let got: Vec<_> = got.iter().map(key).collect();
        assert_eq!(got, want);
    }
}
