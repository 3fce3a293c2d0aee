//! The one simulated agent: a protocol client that behaves like an agent, for the load
//! generator, the demo and tests.
//!
//! It keeps every record it generated until the collector acknowledges it (its "spool"),
//! opens a stream with a Hello, drops what the Welcome's high-water mark covers, resends the
//! rest, follows `Resend` requests, and reconnects with backoff whenever the stream or the
//! collector goes away. That is the agent's side of exactly-once accounting, so the
//! kill -9 test drives the collector through crashes with it.
//!
//! Records are deterministic functions of (agent id, sequence number, GPU) and the agent's
//! [`SimLoad`]: two runs that generate the same sequence numbers carry the same FLOP, so
//! their totals can be compared exactly. Event time runs on the agent's own clock, one
//! interval per batch from its start ([`EVENT_HEADROOM`] ago by default, or a virtual day
//! for the demo: [`SimAgent::starting_at`]), so that however fast batches are generated, no
//! two records of a GPU overlap (the collector bounds overlapping records by the GPU's
//! ceiling).
//!
//! This is a simulated *protocol client*. The agent's `--simulate` GPU source
//! (`flopmeter_agent::simulated`) is another layer: simulated GPUs under the real sampler,
//! spool and shipper.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flopmeter_proto::v1::ingest_client::IngestClient;
use flopmeter_proto::v1::{
    AgentMessage, AttributionSource, GpuInventory, Hello, IntervalRecord, Method, Precision,
    RecordBatch, WorkloadIdentity, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use flopmeter_collector::now_unix_ms;

/// How far back a simulated agent's event clock starts: room for half a million batches at
/// 10 s before it reaches the present, inside the collector's default backfill window.
pub const EVENT_HEADROOM: Duration = Duration::from_secs(60 * 86_400);

/// What a simulated agent reports.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// Agent id (stable: the collector's high-water mark is per agent id).
    pub agent_id: String,
    /// Node name.
    pub node: String,
    /// GPUs; one record per GPU per batch.
    pub gpus: u32,
    /// Model the work is attributed to.
    pub model: String,
    /// Run id.
    pub run: String,
    /// Stage (empty = pretrain).
    pub stage: String,
    /// Interval each record covers.
    pub interval: Duration,
    /// Bearer token, when the collector requires one.
    pub token: Option<String>,
    /// Cluster the node belongs to (empty = none), stamped on every record and sent in the
    /// Hello as a real agent's `--cluster` is.
    pub cluster: String,
}

/// What a simulated agent's GPUs do, and so its inventory and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimLoad {
    /// H100 SXM GPUs at about 40% tensor activity in BF16 (989e12 × 0.4, ±10% per record,
    /// from a hash of agent, sequence number and GPU): the load generator's fleet.
    #[default]
    H100Bf16,
    /// GB200 GPUs in FP8, declared, `high` FLOP per GPU and interval; central = high / 1.3,
    /// low = central × 0.7: the demo's racks, sized so totals cross where its story needs.
    Gb200Fp8 {
        /// The high bound per record.
        high: u64,
    },
}

/// Counters shared by many simulated agents.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Records generated.
    pub generated: AtomicU64,
    /// Records acknowledged (applied or rejected).
    pub acked: AtomicU64,
    /// Records the collector rejected.
    pub rejected: AtomicU64,
    /// Streams that failed and were reopened.
    pub reconnects: AtomicU64,
    /// Resend requests followed.
    pub resends: AtomicU64,
    /// The first rejection the collector reported (reason and detail), for callers that
    /// expect none.
    pub first_rejection: Mutex<Option<String>>,
    /// Per-batch ack latency, microseconds (only batches acknowledged after `measure_from`).
    pub latencies_us: Mutex<Vec<u32>>,
    /// Records acknowledged after `measure_from`.
    pub acked_measured: AtomicU64,
    /// Start of the measured window (after warm-up); `None` measures from the start.
    pub measure_from: Option<Instant>,
}

/// How batches are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// One batch every `every`.
    Paced {
        /// Period.
        every: Duration,
    },
    /// The next batch as soon as the previous one is acknowledged.
    Max,
}

/// When a simulated agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopAt {
    /// Stop generating after this many batches, and return once all are acknowledged.
    pub batches: Option<u64>,
    /// Return at this instant, acknowledged or not.
    pub deadline: Option<Instant>,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection or RPC failed.
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    /// The collector closed the stream.
    #[error("the collector closed the stream")]
    Closed,
    /// The collector said something out of protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// One simulated agent.
#[derive(Debug)]
pub struct SimAgent {
    spec: SimSpec,
    load: SimLoad,
    /// Names the software in its Hello (`loadgen`, `demo`).
    software: &'static str,
    seed: u64,
    next_seq: u64,
    acked_through: u64,
    spool: VecDeque<IntervalRecord>,
    batches_generated: u64,
    /// Event time at which the first batch starts, Unix ms.
    event_start_ms: i64,
}

/// What a [`SimLoad`] runs on, as its Hello and records name it.
#[derive(Debug, Clone, Copy)]
struct SimGpu {
    name: &'static str,
    pci_device_id: u32,
    catalogue_id: &'static str,
    max_sm_clock_mhz: u32,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a cheap deterministic scramble.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl SimAgent {
    /// A fresh agent (sequence numbers from 1, or past the collector's mark on Welcome).
    pub fn new(spec: SimSpec) -> SimAgent {
        let seed = spec
            .agent_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        SimAgent {
            spec,
            load: SimLoad::default(),
            software: "loadgen",
            seed,
            next_seq: 1,
            acked_through: 0,
            spool: VecDeque::new(),
            batches_generated: 0,
            event_start_ms: now_unix_ms() - EVENT_HEADROOM.as_millis() as i64,
        }
    }

    /// Its GPUs' load (default [`SimLoad::H100Bf16`]).
    pub fn with_load(mut self, load: SimLoad) -> SimAgent {
        self.load = load;
        self
    }

    /// Its first batch starts at `event_start_ms` (default: [`EVENT_HEADROOM`] ago).
    pub fn starting_at(mut self, event_start_ms: i64) -> SimAgent {
        self.event_start_ms = event_start_ms;
        self
    }

    /// The software it names in its Hello (default `loadgen`).
    pub fn calling_itself(mut self, software: &'static str) -> SimAgent {
        self.software = software;
        self
    }

    /// The spec.
    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// Highest sequence number the collector acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// Records generated and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.spool.len()
    }

    /// The record with sequence number `seq` for GPU `gpu`, ending at `end_ms`. FLOP,
    /// energy and GPU time depend only on the load, the agent id, `seq` and `gpu`.
    pub fn record(&self, seq: u64, gpu: u32, end_ms: i64) -> IntervalRecord {
        let interval_ms = self.spec.interval.as_millis() as u64;
        let identity = Some(WorkloadIdentity {
            model: self.spec.model.clone(),
            run: self.spec.run.clone(),
            stage: self.spec.stage.clone(),
            cluster: self.spec.cluster.clone(),
            source: AttributionSource::ProcessEnv as i32,
            ..WorkloadIdentity::default()
        });
        let shared = IntervalRecord {
            seq,
            start_unix_ms: end_ms - interval_ms as i64,
            end_unix_ms: end_ms,
            gpu_uuid: format!("GPU-{}-{gpu}", self.spec.agent_id),
            gpu_type: self.gpu().catalogue_id.into(),
            gpu_ms: interval_ms,
            method: Method::GpmTensor as i32,
            identity,
            ..IntervalRecord::default()
        };
        match self.load {
            SimLoad::H100Bf16 => {
                let r = mix(self.seed ^ seq.wrapping_mul(0x1000_0000_01b3) ^ u64::from(gpu));
                // Central about 40% tensor activity on an H100 at BF16: 989e12 × 0.4 ± 10%,
                // per second of the interval.
                let per_s = 356_000_000_000_000 + r % 80_000_000_000_000;
                let central = per_s * interval_ms / 1000;
                IntervalRecord {
                    flop_low: central / 100 * 85,
                    flop_central: central,
                    flop_high: central * 2,
                    energy_mj: (500 + (r >> 20) % 200) * interval_ms,
                    mean_sm_clock_mhz: 1755,
                    mean_tensor_util: 0.4,
                    precision: Precision::Bf16 as i32,
                    ..shared
                }
            }
            SimLoad::Gb200Fp8 { high } => {
                let central = high / 13 * 10;
                IntervalRecord {
                    flop_low: central / 10 * 7,
                    flop_central: central,
                    flop_high: high,
                    // 900 W.
                    energy_mj: 900 * interval_ms,
                    mean_sm_clock_mhz: 1_900,
                    mean_tensor_util: 0.55,
                    precision: Precision::Fp8 as i32,
                    precision_declared: true,
                    ..shared
                }
            }
        }
    }

    /// The GPU model its load runs on.
    fn gpu(&self) -> SimGpu {
        match self.load {
            SimLoad::H100Bf16 => SimGpu {
                name: "NVIDIA H100 80GB HBM3",
                pci_device_id: 0x2330,
                catalogue_id: "h100-sxm",
                max_sm_clock_mhz: 1980,
            },
            SimLoad::Gb200Fp8 { .. } => SimGpu {
                name: "NVIDIA GB200",
                pci_device_id: 0x2941,
                catalogue_id: "gb200",
                max_sm_clock_mhz: 2062,
            },
        }
    }

    fn hello(&self) -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                agent_id: self.spec.agent_id.clone(),
                node: self.spec.node.clone(),
                software_version: format!("{}/{}", self.software, env!("CARGO_PKG_VERSION")),
                agent_time_unix_ms: now_unix_ms(),
                gpus: (0..self.spec.gpus)
                    .map(|i| {
                        let gpu = self.gpu();
                        GpuInventory {
                            index: i,
                            uuid: format!("GPU-{}-{i}", self.spec.agent_id),
                            name: gpu.name.into(),
                            pci_device_id: gpu.pci_device_id,
                            catalogue_id: gpu.catalogue_id.into(),
                            gpm_supported: true,
                            max_sm_clock_mhz: gpu.max_sm_clock_mhz,
                            ..GpuInventory::default()
                        }
                    })
                    .collect(),
                cluster: self.spec.cluster.clone(),
                ..Hello::default()
            })),
        }
    }

    /// Generates `batches` more batches now, whatever the pace: the demo queues a virtual
    /// day at a time and then [`SimAgent::run`]s until they are acknowledged.
    pub fn generate(&mut self, batches: u64, stats: &SimStats) {
        for _ in 0..batches {
            self.generate_batch(stats);
        }
    }

    /// Batches generated so far.
    pub fn batches_generated(&self) -> u64 {
        self.batches_generated
    }

    fn generate_batch(&mut self, stats: &SimStats) {
        let interval_ms = self.spec.interval.as_millis() as i64;
        let end = self.event_start_ms + (self.batches_generated as i64 + 1) * interval_ms;
        for gpu in 0..self.spec.gpus {
            let rec = self.record(self.next_seq, gpu, end);
            self.next_seq += 1;
            self.spool.push_back(rec);
        }
        self.batches_generated += 1;
        stats
            .generated
            .fetch_add(u64::from(self.spec.gpus), Ordering::Relaxed);
    }

    fn ack(&mut self, through: u64, stats: &SimStats) {
        let before = self.spool.len();
        while self.spool.front().is_some_and(|r| r.seq <= through) {
            self.spool.pop_front();
        }
        let n = (before - self.spool.len()) as u64;
        stats.acked.fetch_add(n, Ordering::Relaxed);
        if stats.measure_from.is_none_or(|t| Instant::now() >= t) {
            stats.acked_measured.fetch_add(n, Ordering::Relaxed);
        }
        self.acked_through = self.acked_through.max(through);
    }

    fn generating(&self, stop: &StopAt) -> bool {
        stop.batches.is_none_or(|n| self.batches_generated < n)
    }

    fn finished(&self, stop: &StopAt) -> bool {
        stop.batches.is_some() && !self.generating(stop) && self.spool.is_empty()
    }

    /// Runs until `stop`, reconnecting through failures.
    pub async fn run(
        &mut self,
        channel: Channel,
        pace: Pace,
        stop: StopAt,
        phase: Duration,
        stats: Arc<SimStats>,
    ) {
        let mut ticker = match pace {
            Pace::Paced { every } => {
                let mut t = tokio::time::interval_at(Instant::now() + phase, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(t)
            }
            Pace::Max => None,
        };
        let mut backoff = Duration::from_millis(20);
        loop {
            if self.finished(&stop) || stop.deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let session = self.session(channel.clone(), ticker.as_mut(), &stop, &stats);
            let result = match stop.deadline {
                Some(d) => match tokio::time::timeout_at(d, session).await {
                    Ok(r) => r,
                    Err(_) => return,
                },
                None => session.await,
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(agent = %self.spec.agent_id, error = %e, "reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    async fn session(
        &mut self,
        channel: Channel,
        mut ticker: Option<&mut Interval>,
        stop: &StopAt,
        stats: &SimStats,
    ) -> Result<(), SessionError> {
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        // The Hello goes in before the call, as a real agent's does.
        let _ = tx.send(self.hello()).await;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = &self.spec.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            request.metadata_mut().insert("authorization", v);
        }
        let mut inbound = IngestClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .stream(request)
            .await?
            .into_inner();
        let hwm = match inbound.message().await? {
            Some(m) => match m.kind {
                Some(collector_message::Kind::Welcome(w)) => w.high_water_mark,
                other => {
                    return Err(SessionError::Protocol(format!(
                        "expected Welcome, got {other:?}"
                    )));
                }
            },
            None => return Err(SessionError::Closed),
        };
        self.ack(hwm, stats);
        // A fresh agent against a ledger that knows it: continue after the mark, as a real
        // agent with a persisted sequence would.
        if self.spool.is_empty() && self.next_seq <= hwm {
            self.next_seq = hwm + 1;
        }
        let batch_len = self.spec.gpus.max(1) as usize;
        let mut sent_through = self.acked_through;
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
        let max = ticker.is_none();
        loop {
            // Send everything generated but not yet sent on this stream.
            let pending: Vec<IntervalRecord> = self
                .spool
                .iter()
                .filter(|r| r.seq > sent_through)
                .cloned()
                .collect();
            for chunk in pending.chunks(batch_len) {
                let last = chunk.last().map_or(sent_through, |r| r.seq);
                let msg = AgentMessage {
                    kind: Some(agent_message::Kind::Batch(RecordBatch {
                        records: chunk.to_vec(),
                    })),
                };
                tx.send(msg).await.map_err(|_| SessionError::Closed)?;
                in_flight.push_back((last, Instant::now()));
                sent_through = last;
            }
            if self.finished(stop) {
                return Ok(());
            }
            let can_generate = self.generating(stop);
            tokio::select! {
                msg = inbound.message() => {
                    let Some(msg) = msg? else {
                        return Err(SessionError::Closed);
                    };
                    match msg.kind {
                        Some(collector_message::Kind::Ack(a)) => {
                            self.ack(a.acked_through, stats);
                            stats.rejected.fetch_add(a.rejections.len() as u64, Ordering::Relaxed);
                            if let Some(r) = a.rejections.first() {
                                stats
                                    .first_rejection
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| format!("{}: {}", r.reason, r.detail));
                            }
                            let now = Instant::now();
                            let mut lat = Vec::new();
                            while in_flight.front().is_some_and(|(last, _)| *last <= a.acked_through) {
                                let (_, sent) = in_flight.pop_front().expect("checked");
                                lat.push((now - sent).as_micros().min(u128::from(u32::MAX)) as u32);
                            }
                            if !lat.is_empty() && stats.measure_from.is_none_or(|t| now >= t) {
                                stats.latencies_us.lock().expect("not poisoned").extend(lat);
                            }
                        }
                        Some(collector_message::Kind::Resend(r)) => {
                            stats.resends.fetch_add(1, Ordering::Relaxed);
                            sent_through = r.from_seq.saturating_sub(1).max(self.acked_through);
                            in_flight.clear();
                        }
                        other => {
                            return Err(SessionError::Protocol(format!("unexpected {other:?}")));
                        }
                    }
                }
                _ = async {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                }, if can_generate && (!max || in_flight.is_empty()) => {
                    self.generate_batch(stats);
                }
            }
        }
    }
}

/// Percentile (0..=100) of sorted microsecond latencies, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
}
