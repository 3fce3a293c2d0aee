//! The compliance metrics. Names are fixed: `deploy/prometheus/rules.yml` and the Grafana
//! dashboards query them.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

/// Compliance gauges and counters, registered in the collector's registry.
#[derive(Debug, Clone)]
pub struct ComplianceMetrics {
    /// `flopmeter_model_projected_flop{model,bound}`.
    pub projected: GaugeVec,
    /// `flopmeter_threshold_level_flop{model,threshold}`.
    pub level: GaugeVec,
    /// `flopmeter_notification_deadline_timestamp_seconds{model,threshold}`.
    pub deadline: GaugeVec,
    /// `flopmeter_alert_open{model,threshold,state}`.
    pub alert_open: GaugeVec,
    /// `flopmeter_projected_crossing_timestamp_seconds{model,threshold}`.
    pub crossing: GaugeVec,
    /// `flopmeter_outbox_pending{sink}`.
    pub outbox_pending: GaugeVec,
    /// `flopmeter_outbox_deliveries_total{sink,result}`.
    pub deliveries: IntCounterVec,
}

/// Why the metrics could not be registered (a name registered twice).
#[derive(Debug, thiserror::Error)]
#[error("cannot register compliance metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl ComplianceMetrics {
    /// Creates the metrics and registers them in `r`.
    pub fn register(r: &Registry) -> Result<ComplianceMetrics, MetricsError> {
        let g = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, MetricsError> {
            let v = GaugeVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let deliveries = IntCounterVec::new(
            Opts::new(
                "flopmeter_outbox_deliveries_total",
                "Alert deliveries attempted, by sink and result (ok, error).",
            ),
            &["sink", "result"],
        )?;
        r.register(Box::new(deliveries.clone()))?;
        Ok(ComplianceMetrics {
            projected: g(
                "flopmeter_model_projected_flop",
                "Projected total FLOP of the model (plans and rates extrapolated), per bound.",
                &["model", "bound"],
            )?,
            level: g(
                "flopmeter_threshold_level_flop",
                "The threshold level that applies to the model (modifier levels included).",
                &["model", "threshold"],
            )?,
            deadline: g(
                "flopmeter_notification_deadline_timestamp_seconds",
                "Effective Art. 52(1) notification deadline while a clock exists.",
                &["model", "threshold"],
            )?,
            alert_open: g(
                "flopmeter_alert_open",
                "1 for the alert's current state while not acknowledged or dismissed, 0 after.",
                &["model", "threshold", "state"],
            )?,
            crossing: g(
                "flopmeter_projected_crossing_timestamp_seconds",
                "When the projection crosses the threshold (the measured crossing once it happened).",
                &["model", "threshold"],
            )?,
            outbox_pending: g(
                "flopmeter_outbox_pending",
                "Alert messages waiting for delivery, per sink.",
                &["sink"],
            )?,
            deliveries,
        })
    }
}
