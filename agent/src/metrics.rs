//! The agent's own metrics and health endpoint (`--metrics-addr`: `/metrics`, `/healthz`).
//!
//! Why these and no more: an operator needs to see that the agent measures (per-GPU readings
//! and the method behind them, per-run FLOP rate, unattributed work), that it delivers (spool
//! depth, records sent and acknowledged, connection state) and that it stays small (its own
//! CPU and RSS, sampler overruns). The ledger itself is the collector's; these are gauges of
//! one node, not totals anyone should sum for compliance.
//!
//! Rules: names follow Prometheus conventions (`flopmeter_agent_` prefix, base units,
//! `_total` for counters); one [`prometheus::Registry`] owned here with typed handles, so no
//! metric is registered twice or looked up by string; no label carries a PID, and per-run
//! series are removed when the run stops reporting on this node, so cardinality stays bounded
//! by what is running now.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{
    CounterVec, Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::spool::Spool;

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be created or registered (a programming error: names clash).
    #[error("registering metrics: {0}")]
    Register(#[from] prometheus::Error),
    /// The HTTP listener could not bind.
    #[error("binding the metrics endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Every metric of the agent, with typed handles.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    started: Instant,
    last_tick_ms: AtomicU64,
    /// SM clock now, Hz, by GPU.
    pub gpu_sm_clock_hertz: GaugeVec,
    /// Any-tensor activity over the last sample (0..1), GPM GPUs only.
    pub gpu_tensor_active_ratio: GaugeVec,
    /// `utilization.gpu` over the last sample (0..1).
    pub gpu_utilization_ratio: GaugeVec,
    /// Board power, watts.
    pub gpu_power_watts: GaugeVec,
    /// Energy measured on the GPU, joules.
    pub gpu_energy_joules_total: CounterVec,
    /// Central FLOP estimated on the GPU.
    pub gpu_flop_total: CounterVec,
    /// 1 for the estimation method the GPU's last sample used.
    pub gpu_method_info: IntGaugeVec,
    /// 1 for a GPU whose PCI id and NVML name name different catalogue models.
    pub gpu_peak_conflict: IntGaugeVec,
    /// 1 when the GPU was read on the last tick, 0 when it failed.
    pub gpu_up: IntGaugeVec,
    /// Central FLOP/s of each run on this node over the last report interval.
    pub run_flop_per_second: GaugeVec,
    /// Central FLOP no source could attribute, by GPU.
    pub unattributed_flop_total: CounterVec,
    /// Intervals whose FLOP could not be estimated, by GPU and reason.
    pub estimate_errors_total: IntCounterVec,
    /// Sampler ticks.
    pub sampler_ticks_total: IntCounter,
    /// Sample deadlines missed because a tick took longer than the interval.
    pub sampler_overruns_total: IntCounter,
    /// Records and accumulators held in memory because the spool refused them.
    pub sampler_held_series: IntGauge,
    /// Records written to the spool.
    pub records_spooled_total: IntCounter,
    /// Records sent to the collector (resends included).
    pub records_sent_total: IntCounter,
    /// Records acknowledged by the collector and deleted from the spool.
    pub records_acked_total: IntCounter,
    /// Records the collector acknowledged as rejected, by reason.
    pub records_rejected_total: IntCounterVec,
    /// Resend requests from the collector.
    pub resends_total: IntCounter,
    /// 1 while a stream to the collector is established.
    pub collector_connected: IntGauge,
    /// Connection attempts to the collector.
    pub collector_connect_attempts_total: IntCounter,
    /// Streams that ended with an error.
    pub collector_stream_errors_total: IntCounter,
    /// Streams that ended with an error, by reason (`tls-unknown-issuer`, `refused`, ...).
    pub collector_errors_total: IntCounterVec,
    /// Records held in the spool.
    pub spool_records: IntGauge,
    /// Bytes of records held in the spool.
    pub spool_bytes: IntGauge,
    /// The spool's cap.
    pub spool_capacity_bytes: IntGauge,
    /// 1 while the spool refuses appends (alert on this).
    pub spool_full: IntGauge,
    /// 1 while the spool is above its high-water mark.
    pub spool_above_high_water: IntGauge,
    /// Records written past the cap because the sampler's memory ceiling was reached.
    pub spool_over_cap_records: IntGauge,
    /// Undecodable spool records quarantined (each replaced by a placeholder the collector
    /// rejects).
    pub spool_corrupt_records_total: IntCounter,
    /// Values held in the spool's quarantine.
    pub spool_quarantined_records: IntGauge,
    /// 0 once a spool fsync failed: nothing appended since is durable until restart.
    pub spool_durable: IntGauge,
    run_series: std::sync::Mutex<HashSet<[String; 3]>>,
}

const GPU_LABELS: &[&str] = &["gpu", "uuid"];

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<AgentMetrics, MetricsError> {
        let registry = Registry::new();
        let p = "flopmeter_agent";
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            GaugeVec::new(Opts::new(format!("{p}_{name}"), help), labels)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            CounterVec::new(Opts::new(format!("{p}_{name}"), help), labels)
        };
        let int_counter = |name: &str, help: &str| IntCounter::new(format!("{p}_{name}"), help);
        let int_gauge = |name: &str, help: &str| IntGauge::new(format!("{p}_{name}"), help);

        let m = AgentMetrics {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            gpu_sm_clock_hertz: reg!(gauge_vec(
                "gpu_sm_clock_hertz",
                "SM clock now.",
                GPU_LABELS
            )?),
            gpu_tensor_active_ratio: reg!(gauge_vec(
                "gpu_tensor_active_ratio",
                "Any-tensor pipe activity over the last sample (NVML GPM), 0 to 1.",
                GPU_LABELS
            )?),
            gpu_utilization_ratio: reg!(gauge_vec(
                "gpu_utilization_ratio",
                "utilization.gpu over the last sample, 0 to 1.",
                GPU_LABELS
            )?),
            gpu_power_watts: reg!(gauge_vec("gpu_power_watts", "Board power.", GPU_LABELS)?),
            gpu_energy_joules_total: reg!(counter_vec(
                "gpu_energy_joules_total",
                "Energy measured on the GPU since the agent started.",
                GPU_LABELS
            )?),
            gpu_flop_total: reg!(counter_vec(
                "gpu_flop_total",
                "Central FLOP estimate on the GPU since the agent started.",
                GPU_LABELS
            )?),
            gpu_method_info: reg!(IntGaugeVec::new(
                Opts::new(
                    format!("{p}_gpu_method_info"),
                    "1 for the estimation method of the GPU's last sample (gpm-tensor, util-mfu)."
                ),
                &["gpu", "uuid", "method"]
            )?),
            gpu_peak_conflict: reg!(IntGaugeVec::new(
                Opts::new(
                    format!("{p}_gpu_peak_conflict"),
                    "1 when the GPU's PCI id names catalogue model pci_model but its NVML name \
                     names name_model; its band covers both peaks."
                ),
                &["gpu", "uuid", "pci_model", "name_model"]
            )?),
            gpu_up: reg!(IntGaugeVec::new(
                Opts::new(
                    format!("{p}_gpu_up"),
                    "1 when the GPU was read on the last tick, 0 when it failed."
                ),
                GPU_LABELS
            )?),
            run_flop_per_second: reg!(gauge_vec(
                "run_flop_per_second",
                "Central FLOP/s of a run on this node over the last report interval.",
                &["model", "run", "stage"]
            )?),
            unattributed_flop_total: reg!(counter_vec(
                "unattributed_flop_total",
                "Central FLOP on this GPU that no source attributed to a model (still sent).",
                GPU_LABELS
            )?),
            estimate_errors_total: reg!(IntCounterVec::new(
                Opts::new(
                    format!("{p}_estimate_errors_total"),
                    "Sample intervals whose FLOP could not be estimated."
                ),
                &["gpu", "reason"]
            )?),
            sampler_ticks_total: reg!(int_counter("sampler_ticks_total", "Sampler ticks.")?),
            sampler_overruns_total: reg!(int_counter(
                "sampler_overruns_total",
                "Sample deadlines missed because a tick took longer than the sample interval."
            )?),
            sampler_held_series: reg!(int_gauge(
                "sampler_held_series",
                "Records and run-GPU accumulators held in memory because the spool refused them."
            )?),
            records_spooled_total: reg!(int_counter(
                "records_spooled_total",
                "Interval records written to the spool."
            )?),
            records_sent_total: reg!(int_counter(
                "records_sent_total",
                "Interval records sent to the collector, resends included."
            )?),
            records_acked_total: reg!(int_counter(
                "records_acked_total",
                "Interval records acknowledged by the collector and deleted from the spool."
            )?),
            records_rejected_total: reg!(IntCounterVec::new(
                Opts::new(
                    format!("{p}_records_rejected_total"),
                    "Records the collector quarantined as invalid."
                ),
                &["reason"]
            )?),
            resends_total: reg!(int_counter(
                "resends_total",
                "Resend requests received from the collector."
            )?),
            collector_connected: reg!(int_gauge(
                "collector_connected",
                "1 while a stream to the collector is established."
            )?),
            collector_connect_attempts_total: reg!(int_counter(
                "collector_connect_attempts_total",
                "Connection attempts to the collector."
            )?),
            collector_stream_errors_total: reg!(int_counter(
                "collector_stream_errors_total",
                "Streams to the collector that ended with an error."
            )?),
            collector_errors_total: reg!(IntCounterVec::new(
                Opts::new(
                    format!("{p}_collector_errors_total"),
                    "Streams to the collector that ended with an error, by reason: a TLS \
                     problem (tls-server-cert-expired, tls-unknown-issuer, ...), refused, \
                     connect, timeout or stream."
                ),
                &["reason"]
            )?),
            spool_records: reg!(int_gauge("spool_records", "Records held in the spool.")?),
            spool_bytes: reg!(int_gauge(
                "spool_bytes",
                "Bytes of records held in the spool."
            )?),
            spool_capacity_bytes: reg!(int_gauge("spool_capacity_bytes", "The spool's size cap.")?),
            spool_full: reg!(int_gauge(
                "spool_full",
                "1 while the spool refuses appends; records are held in memory (alert)."
            )?),
            spool_above_high_water: reg!(int_gauge(
                "spool_above_high_water",
                "1 while the spool is above its high-water mark."
            )?),
            spool_over_cap_records: reg!(int_gauge(
                "spool_over_cap_records",
                "Records written past the cap because the sampler's memory ceiling was reached."
            )?),
            spool_corrupt_records_total: reg!(int_counter(
                "spool_corrupt_records_total",
                "Undecodable spool records moved to the quarantine; each is sent as a placeholder \
                 the collector rejects (bad-interval)."
            )?),
            spool_quarantined_records: reg!(int_gauge(
                "spool_quarantined_records",
                "Values held in the spool's quarantine (inspect, then move the spool aside)."
            )?),
            spool_durable: reg!(int_gauge(
                "spool_durable",
                "0 once a spool fsync failed: records are still stored and sent, but nothing \
                 the spool holds is durable until the agent restarts (alert on this)."
            )?),
            run_series: std::sync::Mutex::new(HashSet::new()),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new(format!("{p}_build_info"), "The agent's version."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Sets the per-run FLOP rates of the report interval that just ended and removes the
    /// series of runs that no longer report on this node.
    pub fn set_run_rates(&self, rates: &[([String; 3], f64)]) {
        let mut series = self.run_series.lock().unwrap_or_else(|e| e.into_inner());
        let now: HashSet<[String; 3]> = rates.iter().map(|(k, _)| k.clone()).collect();
        for gone in series.difference(&now) {
            let labels: Vec<&str> = gone.iter().map(String::as_str).collect();
            let _ = self.run_flop_per_second.remove_label_values(&labels);
        }
        for (k, rate) in rates {
            let labels: Vec<&str> = k.iter().map(String::as_str).collect();
            self.run_flop_per_second
                .with_label_values(&labels)
                .set(*rate);
        }
        *series = now;
    }

    /// Records that the sampler completed a tick (for `/healthz`).
    pub fn sampler_alive(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_tick_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Time since the sampler's last tick; `None` before the first.
    pub fn since_last_tick(&self) -> Option<Duration> {
        match self.last_tick_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// Copies the spool's state into its gauges.
    pub fn refresh_spool(&self, spool: &Spool) {
        let s = spool.stats();
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.spool_records.set(i(s.records));
        self.spool_bytes.set(i(s.bytes));
        self.spool_capacity_bytes.set(i(s.max_bytes));
        self.spool_full.set(i64::from(s.full));
        self.spool_above_high_water
            .set(i64::from(s.above_high_water));
        self.spool_over_cap_records.set(i(s.over_cap_records));
        self.spool_quarantined_records.set(i(s.quarantined));
        self.spool_durable.set(i64::from(s.durable));
        // The spool counts since open; the counter follows it.
        let seen = self.spool_corrupt_records_total.get();
        self.spool_corrupt_records_total
            .inc_by(s.corrupt_records.saturating_sub(seen));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// What `/healthz` needs besides the metrics.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// The sampler is unhealthy when it has not ticked for this long.
    pub max_tick_age: Duration,
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<AgentMetrics>,
    spool: Arc<Spool>,
    health: HealthConfig,
}

/// Binds the metrics endpoint. Binding is separate from serving so that a bad address is a
/// start-up error, and so tests can bind port 0 and read the port back.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    spool: Arc<Spool>,
    health: HealthConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let state = HttpState {
        metrics,
        spool,
        health,
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(
    axum::extract::State(s): axum::extract::State<HttpState>,
) -> impl axum::response::IntoResponse {
    s.metrics.refresh_spool(&s.spool);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn health_handler(
    axum::extract::State(s): axum::extract::State<HttpState>,
) -> impl axum::response::IntoResponse {
    let age = s.metrics.since_last_tick();
    let sampler_ok = age.is_some_and(|a| a <= s.health.max_tick_age);
    let st = s.spool.stats();
    let body = serde_json::json!({
        "status": if sampler_ok { "ok" } else { "sampler-stalled" },
        "sampler_last_tick_seconds_ago": age.map(|a| a.as_secs_f64()),
        "collector_connected": s.metrics.collector_connected.get() == 1,
        "spool_records": st.records,
        "spool_bytes": st.bytes,
        "spool_full": st.full,
        "spool_durable": st.durable,
    });
    let code = if sampler_ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions_and_runs_are_removed() {
        let m = AgentMetrics::new().unwrap();
        m.set_run_rates(&[(["demo-7b".into(), "r1".into(), "pretrain".into()], 1e15)]);
        assert!(
            m.encode()
                .contains("flopmeter_agent_run_flop_per_second{model=\"demo-7b\"")
        );
        m.set_run_rates(&[]);
        let text = m.encode();
        assert!(!text.contains("model=\"demo-7b\""), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (name, kind) = (parts[2], parts[3]);
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            assert!(!line.contains("pid"), "{line}");
        }
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
