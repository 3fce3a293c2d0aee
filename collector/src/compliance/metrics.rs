//! The compliance metrics. Names are fixed: `deploy/prometheus/rules.yml` and the Grafana
//! dashboards query them.
//!
//! With several collector replicas on one ledger, the per-model gauges (projections,
//! levels, crossings, deadlines, `flopmeter_alert_open`) and `flopmeter_outbox_pending` are
//! exported by the compliance leader only (`Engine::leave_office` removes them), so a sum
//! over replicas counts once. `flopmeter_audit_chain_intact` and `_entries` are every
//! replica's own verdict (each verifies the chain when it opens; the leader again at each
//! pass), and `flopmeter_outbox_deliveries_total` counts what the replica sent.

use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};

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
    /// `flopmeter_audit_chain_intact`: 1 while every audit entry verifies, 0 once a broken
    /// link was found (at start or in a later pass).
    pub audit_intact: IntGauge,
    /// `flopmeter_audit_chain_entries`: entries the chain's head accounts for.
    pub audit_entries: IntGauge,
}

/// Why the metrics could not be registered (a name registered twice).
#[derive(Debug, thiserror::Error)]
#[error("cannot register compliance metrics: {0}")]
pub struct ComplianceMetricsError(#[from] prometheus::Error);

impl ComplianceMetrics {
    /// Creates the metrics and registers them in `r`.
    pub fn register(r: &Registry) -> Result<ComplianceMetrics, ComplianceMetricsError> {
        let g =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, ComplianceMetricsError> {
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
        let ig = |name: &str, help: &str| -> Result<IntGauge, ComplianceMetricsError> {
            let v = IntGauge::new(name, help)?;
            r.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let audit_intact = ig(
            "flopmeter_audit_chain_intact",
            "1 while every audit log entry verifies against the hash chain and its head, 0 once \
             a broken link (edited, deleted, reordered or truncated entries) was found.",
        )?;
        // Unknown until the first check: shown as broken rather than as fine.
        audit_intact.set(0);
        let audit_entries = ig(
            "flopmeter_audit_chain_entries",
            "Entries in the audit log's hash chain (as its separately stored head counts them).",
        )?;
        Ok(ComplianceMetrics {
            audit_intact,
            audit_entries,
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
