//! The collector's Prometheus metrics: one registry, typed handles.
//!
//! Why one owner: metric names and label sets are defined once, here; call sites use typed
//! methods (`record_rejected(RejectReason)`) and cannot misspell a name or invent a label
//! value, which keeps cardinality bounded: labels are model, run, stage, bound, GPU type and
//! reason (no-estimate reasons folded to at most 17 values, like the ledger's); node names
//! appear only on per-agent series; never PIDs, Slurm job ids, users or pod names (those are
//! in `/api/v1/unattributed`).
//!
//! **Bounded series, whatever the number of models.** Per-model gauges are exported for the
//! `--metrics-max-models` models with the most counted FLOP (high bound), per-run gauges for
//! the `--metrics-max-runs` runs that reported most recently (since the collector started);
//! the rest is summed under
//! `model="_other"` (and `run="_other"`), so totals over all series stay right. The figures
//! behind them are cached between scrapes and read again only for the models the writer
//! changed since ([`Metrics::mark_models_dirty`]): at 10,000 one-record models the previous
//! exposition had 190,000 series, 17.6 MB, and re-read every aggregate on every scrape.
//!
//! **Several replicas, one ledger** (`--store`, PostgreSQL): every replica exports
//! `flopmeter_compliance_leader` (1 on the replica running the compliance engine, 0 on the
//! others; always 1 on a sled collector, its own engine's leader) and its own per-replica
//! series: ingest counters, refusals, connected agents and their last-seen times. The
//! model-level series describe the shared ledger, and **only the leader exports them**
//! (`flopmeter_model_*`, `flopmeter_run_flop`, `flopmeter_unattributed_*`,
//! `flopmeter_unestimated_gpu_seconds`, and the compliance gauges: projections, levels,
//! crossings, deadlines, `flopmeter_alert_open`, `flopmeter_outbox_pending`); a replica that
//! loses the lease removes them. So a `sum` over replicas counts each model once. On a shared
//! ledger the leader reads every model's figures at each scrape (other replicas' writers do
//! not mark them changed here), and the runs with series of their own are those this
//! replica's writer touched (the rest is in `_other`, so totals stay right).
//!
//! **Gauges, not counters, for ledger totals.** `flopmeter_model_flop` and
//! `flopmeter_run_flop` are the ledger's cumulative totals, read from the durable store at
//! scrape time. Prometheus counters are process-lifetime counts that restart at zero with
//! the process; these values do not (they survive restarts, and a stage-policy change may
//! legitimately lower a counted total), so they are gauges. `deriv()` or `delta()` over them
//! gives rates. Process-local event counts (records ingested, rejections) are counters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use flopmeter_core::stage::StagePolicy;
use flopmeter_core::units::{Bound, FlopTotal};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::ingest::validate::RejectReason;
use crate::ledger::aggregate::Unestimated;
use crate::ledger::{LedgerStore, StoreError};

/// Default `--metrics-max-models`.
pub const DEFAULT_MAX_MODEL_SERIES: usize = 1000;

/// Default `--metrics-max-runs`.
pub const DEFAULT_MAX_RUN_SERIES: usize = 1000;

/// The label value under which what is not exported one by one is summed.
pub const OTHER: &str = "_other";

/// One model's figures, as the gauges need them.
#[derive(Debug, Clone, Default)]
struct ModelFigures {
    counted: FlopTotal,
    excluded: FlopTotal,
    gpu_seconds: Vec<(String, f64)>,
    energy_joules: f64,
    /// All its runs together, per stage (what the runs without series of their own add to
    /// `_other`).
    stages: Vec<(String, FlopTotal)>,
    /// GPU time that could not be estimated, per reason.
    unestimated: Unestimated,
}

/// The ledger gauges' figures between scrapes, and what changed since the last one.
#[derive(Debug, Default)]
struct LedgerFigures {
    models: HashMap<String, ModelFigures>,
    dirty: HashSet<String>,
    /// Everything must be read (at start).
    all_dirty: bool,
    /// Runs the writer touched, with the order of their last touch (the most recent get
    /// series); at most twice the run bound.
    recent_runs: HashMap<(String, String), u64>,
    touches: u64,
}

/// How many per-model and per-run series are exported.
#[derive(Debug, Clone, Copy)]
struct SeriesBounds {
    models: usize,
    runs: usize,
}

/// Why a stream or batch was refused with a gRPC error (as opposed to a record quarantined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Tokens are required and the agent id is not in the tokens file.
    UnknownAgent,
    /// The agent is known but its bearer token does not match.
    BadToken,
    /// The stream did not start with a valid Hello.
    BadHello,
    /// A batch's sequence numbers were zero or not strictly increasing.
    SequenceNotIncreasing,
    /// A message that does not decode: not protobuf, truncated, or a broken gRPC frame.
    MalformedMessage,
    /// A message above the collector's decoding limit (`--max-message-bytes`).
    MessageTooLarge,
    /// A Hello naming one agent with the valid token of another: an authenticated agent
    /// impersonating a different one, told apart from a plain wrong token because it means
    /// a credential leaked or an agent is misbehaving, not a typo.
    ForgedIdentity,
    /// Mutual TLS is on and the agent presented no client certificate.
    NoClientCertificate,
    /// Mutual TLS is on and the Hello's agent id is neither the client certificate's CN
    /// nor one of its DNS names.
    CertificateMismatch,
    /// Mutual TLS is on and the client certificate lacks the agent role (OU
    /// `flopmeter-agent`): the CLI's admin certificate, or one issued for something else.
    CertificateRole,
    /// The connection sent nothing, or its stream no Hello, within `--hello-timeout`; or an
    /// agent stream fell silent for `--idle-timeout`.
    HelloTimeout,
    /// A request on the gRPC port whose content type is not gRPC (answered HTTP 415).
    NotGrpc,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownAgent => "unknown-agent",
            Refusal::BadToken => "bad-token",
            Refusal::BadHello => "bad-hello",
            Refusal::SequenceNotIncreasing => "sequence-not-increasing",
            Refusal::MalformedMessage => "malformed-message",
            Refusal::MessageTooLarge => "message-too-large",
            Refusal::ForgedIdentity => "forged-identity",
            Refusal::NoClientCertificate => "no-client-certificate",
            Refusal::CertificateMismatch => "certificate-mismatch",
            Refusal::CertificateRole => "certificate-role",
            Refusal::HelloTimeout => "hello-timeout",
            Refusal::NotGrpc => "not-grpc",
        }
    }

    /// Every refusal, for metric initialisation and docs.
    pub const ALL: [Refusal; 12] = [
        Refusal::UnknownAgent,
        Refusal::BadToken,
        Refusal::BadHello,
        Refusal::SequenceNotIncreasing,
        Refusal::MalformedMessage,
        Refusal::MessageTooLarge,
        Refusal::ForgedIdentity,
        Refusal::NoClientCertificate,
        Refusal::CertificateMismatch,
        Refusal::CertificateRole,
        Refusal::HelloTimeout,
        Refusal::NotGrpc,
    ];
}

/// Every collector metric.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records applied to totals.
    pub ingest_records: IntCounter,
    /// Records resent at or below the high-water mark, acknowledged and ignored.
    pub ingest_duplicate_records: IntCounter,
    /// Batches received.
    pub ingest_batches: IntCounter,
    /// Encoded bytes of the batches received.
    pub ingest_bytes: IntCounter,
    /// Resend requests sent (gaps).
    pub ingest_resends: IntCounter,
    rejected_records: IntCounterVec,
    refused: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    accept_errors: IntCounterVec,
    /// From receipt of a batch to its Ack being sent (after the flush).
    pub ack_latency: Histogram,
    /// Batches committed per flush (group commit).
    pub commit_group_batches: Histogram,
    /// Duration of one ledger flush (fsync).
    pub flush_seconds: Histogram,
    /// Ledger writes or flushes that failed; nothing in them was acknowledged.
    pub ledger_write_errors: IntCounter,
    /// Agent streams open now.
    pub agents_connected: IntGauge,
    agent_connected: IntGaugeVec,
    agent_last_seen: GaugeVec,
    ledger_size: IntGauge,
    compliance_leader: IntGauge,
    /// Other processes write the ledger too (PostgreSQL): no figure can be kept between
    /// scrapes.
    shared_ledger: Arc<std::sync::atomic::AtomicBool>,
    model_flop: GaugeVec,
    model_excluded_flop: GaugeVec,
    run_flop: GaugeVec,
    model_gpu_seconds: GaugeVec,
    model_energy: GaugeVec,
    unattributed_flop: GaugeVec,
    unattributed_gpu_seconds: GaugeVec,
    unestimated_gpu_seconds: GaugeVec,
    model_unestimated_gpu_seconds: GaugeVec,
    /// Collector start time, Unix seconds.
    pub start_time: Gauge,
    figures: Arc<Mutex<LedgerFigures>>,
    bounds: Arc<Mutex<SeriesBounds>>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique and valid");
    m
}

impl Metrics {
    /// Creates the registry with every metric, plus the process collector (RSS, CPU, fds).
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            reg(
                &r,
                IntCounter::with_opts(Opts::new(name, help)).expect("valid"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let secs = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid"),
            )
        };
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Metrics {
            ingest_records: counter(
                "flopmeter_ingest_records_total",
                "Interval records applied to the ledger's totals.",
            ),
            ingest_duplicate_records: counter(
                "flopmeter_ingest_duplicate_records_total",
                "Records resent at or below the agent's high-water mark: acknowledged, ignored.",
            ),
            ingest_batches: counter("flopmeter_ingest_batches_total", "Record batches received."),
            ingest_bytes: counter(
                "flopmeter_ingest_bytes_total",
                "Encoded bytes of the record batches received.",
            ),
            ingest_resends: counter(
                "flopmeter_ingest_resends_total",
                "Resend requests sent to agents because of a sequence gap.",
            ),
            ledger_write_errors: counter(
                "flopmeter_ledger_write_errors_total",
                "Ledger writes or flushes that failed (disk full, I/O error); nothing in them \
                 was acknowledged, so agents keep and resend those records.",
            ),
            rejected_records: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "flopmeter_ingest_rejected_records_total",
                        "Records quarantined by validation, by reason; never part of a total.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            refused: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "flopmeter_ingest_refused_total",
                        "Agent streams or batches refused with a gRPC error, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            tls_handshake_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "flopmeter_tls_handshake_failures_total",
                        "TLS handshakes that failed, by listener (grpc, http) and reason \
                         (not-tls, client-cert-unknown-issuer, client-cert-expired, ...).",
                    ),
                    &["listener", "reason"],
                )
                .expect("valid"),
            ),
            accept_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "flopmeter_accept_errors_total",
                        "Failed accepts of new connections, by listener and reason \
                         (fd-exhausted: out of file descriptors; the loop backs off).",
                    ),
                    &["listener", "reason"],
                )
                .expect("valid"),
            ),
            ack_latency: secs(
                "flopmeter_ingest_ack_latency_seconds",
                "From receipt of a batch to its acknowledgement, which follows the flush.",
                latency_buckets.clone(),
            ),
            commit_group_batches: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flopmeter_ledger_commit_group_batches",
                        "Batches made durable by one flush (group commit).",
                    )
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                    ]),
                )
                .expect("valid"),
            ),
            flush_seconds: secs(
                "flopmeter_ledger_flush_seconds",
                "Duration of one ledger flush to disk.",
                latency_buckets,
            ),
            agents_connected: reg(
                &r,
                IntGauge::new("flopmeter_agents_connected", "Agent streams open now.")
                    .expect("valid"),
            ),
            agent_connected: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "flopmeter_agent_connected",
                        "1 while the agent has a stream open, 0 after it closed.",
                    ),
                    &["agent", "node"],
                )
                .expect("valid"),
            ),
            agent_last_seen: gauge_vec(
                "flopmeter_agent_last_seen_timestamp_seconds",
                "When the collector last heard from the agent (Hello or batch), Unix seconds.",
                &["agent", "node"],
            ),
            ledger_size: reg(
                &r,
                IntGauge::new("flopmeter_ledger_size_bytes", "Ledger size on disk.")
                    .expect("valid"),
            ),
            compliance_leader: reg(
                &r,
                IntGauge::new(
                    "flopmeter_compliance_leader",
                    "1 on the collector replica that runs the compliance engine (holds the \
                     engine lease; a sled collector always does), 0 on the others. Only the \
                     leader exports model-level series.",
                )
                .expect("valid"),
            ),
            shared_ledger: Arc::default(),
            model_flop: gauge_vec(
                "flopmeter_model_flop",
                "Cumulative FLOP of the model that counts toward the regulatory total under \
                 the stage policy (ledger total; a gauge because it survives restarts).",
                &["model", "bound"],
            ),
            model_excluded_flop: gauge_vec(
                "flopmeter_model_excluded_flop",
                "Cumulative FLOP of the model measured but excluded by the stage policy.",
                &["model", "bound"],
            ),
            run_flop: gauge_vec(
                "flopmeter_run_flop",
                "Cumulative FLOP of one stage of a run (ledger total).",
                &["model", "run", "stage", "bound"],
            ),
            model_gpu_seconds: gauge_vec(
                "flopmeter_model_gpu_seconds",
                "Cumulative GPU time attributed to the model, all stages, per GPU type.",
                &["model", "gpu_type"],
            ),
            model_energy: gauge_vec(
                "flopmeter_model_energy_joules",
                "Cumulative GPU energy attributed to the model, all stages.",
                &["model"],
            ),
            unattributed_flop: gauge_vec(
                "flopmeter_unattributed_flop",
                "Cumulative FLOP no run claimed, per GPU type.",
                &["gpu_type", "bound"],
            ),
            unattributed_gpu_seconds: gauge_vec(
                "flopmeter_unattributed_gpu_seconds",
                "Cumulative GPU time no run claimed, per GPU type.",
                &["gpu_type"],
            ),
            unestimated_gpu_seconds: gauge_vec(
                "flopmeter_unestimated_gpu_seconds",
                "Cumulative GPU time that could not be estimated (uncatalogued GPU without a \
                 peak, no activity reading), models and unattributed work together, per reason: \
                 hardware time no FLOP figure covers.",
                &["reason"],
            ),
            model_unestimated_gpu_seconds: gauge_vec(
                "flopmeter_model_unestimated_gpu_seconds",
                "Cumulative GPU time of the model that could not be estimated, all stages, per \
                 reason.",
                &["model", "reason"],
            ),
            start_time: reg(
                &r,
                Gauge::new(
                    "flopmeter_collector_start_time_seconds",
                    "When this collector process started, Unix seconds.",
                )
                .expect("valid"),
            ),
            registry: r,
            figures: Arc::new(Mutex::new(LedgerFigures {
                all_dirty: true,
                ..LedgerFigures::default()
            })),
            bounds: Arc::new(Mutex::new(SeriesBounds {
                models: DEFAULT_MAX_MODEL_SERIES,
                runs: DEFAULT_MAX_RUN_SERIES,
            })),
        };
        for reason in RejectReason::ALL {
            m.rejected_records.with_label_values(&[reason.as_str()]);
        }
        for refusal in Refusal::ALL {
            m.refused.with_label_values(&[refusal.as_str()]);
        }
        for listener in ["grpc", "http"] {
            for reason in ["fd-exhausted", "other"] {
                m.accept_errors.with_label_values(&[listener, reason]);
            }
            for reason in crate::tls::FAILURE_REASONS {
                m.tls_handshake_failures
                    .with_label_values(&[listener, reason]);
            }
        }
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        m
    }

    /// Counts a quarantined record.
    pub fn record_rejected(&self, reason: RejectReason) {
        self.rejected_records
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Quarantined records so far for `reason`.
    pub fn rejected_count(&self, reason: RejectReason) -> u64 {
        self.rejected_records
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// Counts a refused stream or batch.
    pub fn refuse(&self, reason: Refusal) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts a failed TLS handshake (`reason` from `crate::tls::FAILURE_REASONS`).
    pub fn tls_handshake_failed(&self, listener: &str, reason: &str) {
        self.tls_handshake_failures
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Counts a failed accept (`reason`: `fd-exhausted` or `other`).
    pub fn accept_failed(&self, listener: &str, reason: &str) {
        self.accept_errors
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Failed TLS handshakes so far.
    pub fn tls_handshake_failures(&self, listener: &str, reason: &str) -> u64 {
        self.tls_handshake_failures
            .with_label_values(&[listener, reason])
            .get()
    }

    /// Refusals so far for `reason`.
    pub fn refused_count(&self, reason: Refusal) -> u64 {
        self.refused.with_label_values(&[reason.as_str()]).get()
    }

    /// Marks an agent's stream open or closed.
    pub fn agent_connected(&self, agent: &str, node: &str, connected: bool) {
        self.agent_connected
            .with_label_values(&[agent, node])
            .set(i64::from(connected));
        if connected {
            self.agents_connected.inc();
        } else {
            self.agents_connected.dec();
        }
    }

    /// Records when an agent was last heard from.
    pub fn agent_seen(&self, agent: &str, node: &str, unix_ms: i64) {
        self.agent_last_seen
            .with_label_values(&[agent, node])
            .set(unix_ms as f64 / 1000.0);
    }

    /// How many models and runs get series of their own (`--metrics-max-models`,
    /// `--metrics-max-runs`).
    pub fn set_series_bounds(&self, models: usize, runs: usize) {
        *self.bounds.lock().unwrap_or_else(|e| e.into_inner()) = SeriesBounds { models, runs };
    }

    /// Notes models whose ledger figures changed (the writer, after a flush; the registry).
    pub fn mark_models_dirty<'a>(&self, models: impl IntoIterator<Item = &'a str>) {
        let mut f = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        if f.all_dirty {
            return;
        }
        for m in models {
            if !f.dirty.contains(m) {
                f.dirty.insert(m.to_string());
            }
        }
    }

    /// Notes runs that reported (the writer, after a flush): the most recent get series.
    pub fn mark_runs_active<'a>(&self, runs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let keep = self
            .bounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .runs
            .saturating_mul(2)
            .max(16);
        let mut f = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        for (model, run) in runs {
            f.touches += 1;
            let t = f.touches;
            match f.recent_runs.get_mut(&(model.to_string(), run.to_string())) {
                Some(v) => *v = t,
                None => {
                    f.recent_runs
                        .insert((model.to_string(), run.to_string()), t);
                }
            }
        }
        if f.recent_runs.len() > keep {
            let mut order: Vec<u64> = f.recent_runs.values().copied().collect();
            let cut = order.len() - keep;
            order.select_nth_unstable(cut);
            let oldest_kept = order[cut];
            f.recent_runs.retain(|_, t| *t >= oldest_kept);
        }
    }

    /// Notes that other collectors write the same ledger (PostgreSQL): every scrape then
    /// reads every model's figures afresh.
    pub fn set_shared_ledger(&self, shared: bool) {
        self.shared_ledger
            .store(shared, std::sync::atomic::Ordering::Relaxed);
    }

    /// The ledger's model-level gauges, which only the compliance leader exports.
    fn model_level(&self) -> [&GaugeVec; 9] {
        [
            &self.model_flop,
            &self.model_excluded_flop,
            &self.run_flop,
            &self.model_gpu_seconds,
            &self.model_energy,
            &self.unattributed_flop,
            &self.unattributed_gpu_seconds,
            &self.unestimated_gpu_seconds,
            &self.model_unestimated_gpu_seconds,
        ]
    }

    /// Sets the ledger gauges (called at scrape time). Figures are read from the store for
    /// the models changed since the previous scrape (all of them the first time, and every
    /// time on a shared ledger), so each value is the durable total as of the last flush the
    /// writer reported. `leader`: whether this replica runs the compliance engine; one that
    /// does not exports no model-level series (see the module's documentation).
    pub fn refresh_ledger(
        &self,
        store: &dyn LedgerStore,
        policy: &StagePolicy,
        leader: bool,
    ) -> Result<(), StoreError> {
        self.compliance_leader.set(i64::from(leader));
        self.ledger_size.set(store.size_on_disk()? as i64);
        let bounds = *self.bounds.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        if !leader {
            for g in self.model_level() {
                g.reset();
            }
            // When it leads again, everything is read afresh.
            f.all_dirty = true;
            return Ok(());
        }
        if self
            .shared_ledger
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            f.all_dirty = true;
        }
        let stale: Vec<String> = if f.all_dirty {
            f.models.clear();
            store.model_names()?
        } else {
            f.dirty.drain().collect()
        };
        f.all_dirty = false;
        f.dirty.clear();
        for model in stale {
            match model_figures(store, &model, policy) {
                Ok(Some(fig)) => {
                    f.models.insert(model, fig);
                }
                Ok(None) => {
                    f.models.remove(&model);
                }
                Err(e) => {
                    // Read again next time.
                    f.dirty.insert(model);
                    return Err(e);
                }
            }
        }
        for g in self.model_level() {
            g.reset();
        }
        // One fleet-wide total per reason, folded like a stage's reasons so the label stays
        // bounded whatever agents send.
        let mut fleet = Unestimated::default();
        for fig in f.models.values() {
            fleet.merge(&fig.unestimated);
        }
        // The models with the most counted compute get series of their own.
        let mut ranked: Vec<(&String, &ModelFigures)> = f.models.iter().collect();
        ranked.sort_unstable_by(|a, b| {
            b.1.counted
                .high
                .cmp(&a.1.counted.high)
                .then_with(|| a.0.cmp(b.0))
        });
        let mut other = ModelFigures::default();
        let mut other_gpu: BTreeMap<String, f64> = BTreeMap::new();
        for (i, (model, fig)) in ranked.iter().enumerate() {
            if i < bounds.models {
                self.set_model(model, fig);
            } else {
                other.counted.add_total(fig.counted);
                other.excluded.add_total(fig.excluded);
                other.energy_joules += fig.energy_joules;
                other.unestimated.merge(&fig.unestimated);
                for (t, s) in &fig.gpu_seconds {
                    *other_gpu.entry(t.clone()).or_default() += s;
                }
            }
        }
        if ranked.len() > bounds.models {
            other.gpu_seconds = other_gpu.into_iter().collect();
            self.set_model(OTHER, &other);
        }
        // The runs that reported most recently get series of their own; the rest of every
        // model's work, per stage, is summed under `_other`.
        let mut rest: BTreeMap<String, FlopTotal> = BTreeMap::new();
        for fig in f.models.values() {
            for (stage, t) in &fig.stages {
                rest.entry(stage.clone()).or_default().add_total(*t);
            }
        }
        let mut recent: Vec<(&(String, String), &u64)> = f.recent_runs.iter().collect();
        recent.sort_unstable_by(|a, b| b.1.cmp(a.1));
        recent.truncate(bounds.runs);
        let recent: Vec<(String, String)> = recent.into_iter().map(|(k, _)| k.clone()).collect();
        drop(f);
        for (model, run) in &recent {
            let Some(agg) = store.run_aggregate(model, run)? else {
                continue;
            };
            for (stage, t) in &agg.stages {
                for b in Bound::ALL {
                    self.run_flop
                        .with_label_values(&[model.as_str(), run.as_str(), stage, b.as_str()])
                        .set(t.flop.get(b) as f64);
                }
                if let Some(r) = rest.get_mut(stage) {
                    r.sub_total(t.flop);
                }
            }
        }
        for (stage, t) in rest {
            if t == FlopTotal::ZERO {
                continue;
            }
            for b in Bound::ALL {
                self.run_flop
                    .with_label_values(&[OTHER, OTHER, stage.as_str(), b.as_str()])
                    .set(t.get(b) as f64);
            }
        }
        let mut by_type: BTreeMap<String, (FlopTotal, u128)> = BTreeMap::new();
        for bucket in store.unattributed(i64::MIN, i64::MAX)? {
            fleet.merge(&bucket.aggregate.unestimated());
            for (gpu_type, g) in bucket.aggregate.all().gpu_types {
                let e = by_type.entry(gpu_type).or_default();
                e.0.add_total(g.flop);
                e.1 += g.gpu_ms;
            }
        }
        for (gpu_type, (flop, gpu_ms)) in by_type {
            for b in Bound::ALL {
                self.unattributed_flop
                    .with_label_values(&[gpu_type.as_str(), b.as_str()])
                    .set(flop.get(b) as f64);
            }
            self.unattributed_gpu_seconds
                .with_label_values(&[gpu_type.as_str()])
                .set(gpu_ms as f64 / 1000.0);
        }
        for (reason, c) in &fleet.reasons {
            self.unestimated_gpu_seconds
                .with_label_values(&[reason.as_str()])
                .set(c.gpu_ms as f64 / 1000.0);
        }
        Ok(())
    }

    fn set_model(&self, model: &str, fig: &ModelFigures) {
        for b in Bound::ALL {
            self.model_flop
                .with_label_values(&[model, b.as_str()])
                .set(fig.counted.get(b) as f64);
            self.model_excluded_flop
                .with_label_values(&[model, b.as_str()])
                .set(fig.excluded.get(b) as f64);
        }
        for (gpu_type, secs) in &fig.gpu_seconds {
            self.model_gpu_seconds
                .with_label_values(&[model, gpu_type.as_str()])
                .set(*secs);
        }
        self.model_energy
            .with_label_values(&[model])
            .set(fig.energy_joules);
        for (reason, c) in &fig.unestimated.reasons {
            self.model_unestimated_gpu_seconds
                .with_label_values(&[model, reason.as_str()])
                .set(c.gpu_ms as f64 / 1000.0);
        }
    }

    /// The registry, so that other parts (the compliance engine) register their metrics in
    /// the same `/metrics` exposition.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a family that fails to encode is a bug
        // in a metric definition, and an empty page makes it visible.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A model's figures from the store (`None`: no measured work).
fn model_figures(
    store: &dyn LedgerStore,
    model: &str,
    policy: &StagePolicy,
) -> Result<Option<ModelFigures>, StoreError> {
    let Some(agg) = store.model_aggregate(model)? else {
        return Ok(None);
    };
    let all = agg.all();
    Ok(Some(ModelFigures {
        counted: agg.counted(policy),
        excluded: agg.excluded(policy),
        gpu_seconds: all
            .gpu_types
            .iter()
            .map(|(t, g)| (t.clone(), g.gpu_ms as f64 / 1000.0))
            .collect(),
        energy_joules: all.energy_mj as f64 / 1000.0,
        stages: agg
            .stages
            .iter()
            .map(|(s, t)| (s.clone(), t.flop))
            .collect(),
        unestimated: agg.unestimated(),
    }))
}
