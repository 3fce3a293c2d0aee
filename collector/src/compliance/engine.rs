//! The engine driver: turns the ledger into evidence, runs the core's clock and alert rules
//! at `now`, and records what happened (state, audit, outbox) in one transaction per pair.
//!
//! Why a driver around pure functions: the rules ([`flopmeter_core::clock`],
//! [`flopmeter_core::alert`]) are pure and idempotent (evaluating twice at the same inputs
//! emits nothing the second time), so the driver can evaluate as often as it likes — on a
//! timer for reminders and deadlines, and shortly after ingest for crossings — and the only
//! state it needs is what the rules return, persisted before anyone is told.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flopmeter_core::alert::{self, Alert, AlertConfig, AlertContent, AlertEvent};
use flopmeter_core::audit::{AuditKind, ChainHead, Json, to_json};
use flopmeter_core::clock::{self, Assessment, ClockEvent, ClockState, ComplianceSettings};
use flopmeter_core::evidence::ModelEvidence;
use flopmeter_core::format;
use flopmeter_core::threshold::Threshold;
use flopmeter_core::threshold_config::ThresholdConfig;
use flopmeter_core::units::Bound;
use flopmeter_core::utc::format_utc;
use serde::Serialize;

use super::evidence::BucketCache;
use super::metrics::ComplianceMetrics;
use super::store::{
    AuditRecord, Change, ComplianceStore, ComplianceStoreError, DeliveryState, OutboxItem,
    meta_value,
};
use crate::leadership::Leadership;
use crate::ledger::{LedgerStore, StoreError};
use crate::storage::Stores;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The compliance store failed.
    #[error(transparent)]
    Store(#[from] ComplianceStoreError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] StoreError),
    /// The threshold configuration is invalid.
    #[error("threshold configuration: {0}")]
    Thresholds(#[from] flopmeter_core::threshold_config::ThresholdConfigError),
    /// No alert for that model and threshold.
    #[error("no alert for model {model:?} and threshold {threshold:?}")]
    NoAlert {
        /// Model.
        model: String,
        /// Threshold.
        threshold: String,
    },
    /// The core refused the action (already closed, missing field).
    #[error(transparent)]
    Refused(#[from] alert::AlertError),
    /// A payload could not be converted for the audit log.
    #[error("audit payload: {0}")]
    Payload(#[from] flopmeter_core::audit::PayloadError),
    /// An evaluation pass panicked on its blocking thread (a bug); the next pass retries.
    #[error("evaluation pass failed: {0}")]
    Pass(#[source] tokio::task::JoinError),
    /// A person's action on a replica that does not run the engine: the leader records it.
    /// Nothing was written.
    #[error("{}", crate::leadership::not_leader_message(holder.as_deref()))]
    NotLeader {
        /// Who holds the engine lease now, if anyone does.
        holder: Option<String>,
    },
}

impl EngineError {
    /// Whether the store refused a leader-only write because this replica does not (or no
    /// longer) hold the lease: leadership lost, not a failure.
    pub fn is_not_leader(&self) -> bool {
        matches!(
            self,
            EngineError::NotLeader { .. }
                | EngineError::Store(ComplianceStoreError::NotLeader { .. })
        )
    }
}

/// The engine's time source: its notion of "now" (Unix ms UTC). Injectable so that the demo
/// and tests run the rules in virtual time; the collector uses the wall clock. ("Clock" is
/// kept for the Art. 52 notification clock the engine runs.)
#[derive(Clone)]
pub struct EngineTime(Arc<dyn Fn() -> i64 + Send + Sync>);

/// The former name of [`EngineTime`], for code written before the rename; removed once every
/// branch uses the new one.
pub type EngineClock = EngineTime;

impl EngineTime {
    /// The wall clock.
    pub fn wall() -> EngineTime {
        EngineTime(Arc::new(crate::now_unix_ms))
    }

    /// Any function of nothing.
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> EngineTime {
        EngineTime(Arc::new(f))
    }

    /// Now, Unix ms.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl fmt::Debug for EngineTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EngineTime({})", self.now())
    }
}

impl Default for EngineTime {
    fn default() -> Self {
        EngineTime::wall()
    }
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// An Alertmanager, base URL (`http://host:9093`).
    Alertmanager {
        /// Base URL.
        url: String,
    },
    /// A webhook receiving signed JSON.
    Webhook {
        /// Name (sink label `webhook:<name>`).
        name: String,
        /// URL to POST to.
        url: String,
        /// HMAC-SHA256 key.
        secret: String,
    },
    /// The collector's log.
    Log,
}

impl SinkConfig {
    /// The sink's name, as used in the outbox and metrics.
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Alertmanager { .. } => "alertmanager".to_string(),
            SinkConfig::Webhook { name, .. } => format!("webhook:{name}"),
            SinkConfig::Log => "log".to_string(),
        }
    }
}

/// The compliance part of the collector configuration.
#[derive(Debug, Clone)]
pub struct ComplianceConfig {
    /// Threshold changes and the deciding bound (`--thresholds FILE`).
    pub thresholds: ThresholdConfig,
    /// Reminder schedule and overdue re-notification.
    pub alert: AlertConfig,
    /// Whether an open-ended extrapolation starts the clock (default: only a forecast).
    pub forecast_starts_clock: bool,
    /// Sinks. The log sink is always added.
    pub sinks: Vec<SinkConfig>,
    /// The engine's time source.
    pub time: EngineTime,
    /// Full evaluation period (reminders and deadlines advance with time alone).
    pub interval: Duration,
    /// Shortest gap between ingest-triggered evaluations.
    pub debounce: Duration,
    /// A run without records for this long is no longer extrapolated.
    pub idle: Duration,
    /// Alertmanager re-post period for active alerts (Prometheus' resend delay is 1 min).
    pub resend: Duration,
    /// Outbox retry backoff: first delay and cap.
    pub backoff: (Duration, Duration),
    /// Who changes the threshold configuration (for the audit log).
    pub config_actor: String,
    /// Models whose compliance gauges are exported besides those with a clock or an alert:
    /// the largest by projection (`--metrics-max-models`). Bounds `/metrics` whatever the
    /// number of models.
    pub metrics_max_models: usize,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        ComplianceConfig {
            thresholds: ThresholdConfig::default(),
            alert: AlertConfig::default(),
            forecast_starts_clock: false,
            sinks: Vec::new(),
            time: EngineTime::wall(),
            interval: Duration::from_secs(60),
            debounce: Duration::from_secs(2),
            idle: Duration::from_secs(6 * flopmeter_core::utc::SECONDS_PER_HOUR),
            resend: Duration::from_secs(60),
            backoff: (Duration::from_secs(1), Duration::from_secs(300)),
            config_actor: "collector-config".to_string(),
            metrics_max_models: crate::metrics::DEFAULT_MAX_MODEL_SERIES,
        }
    }
}

/// Delivery status of one alert at one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    /// Sink.
    pub sink: String,
    /// Messages delivered.
    pub delivered: u32,
    /// Messages pending (retrying).
    pub pending: u32,
    /// The last error of a pending message.
    pub last_error: Option<String>,
}

/// One alert as the CLI and the JSON API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertView {
    /// Model.
    pub model: String,
    /// Threshold id.
    pub threshold: String,
    /// Status.
    pub status: String,
    /// Effective clock start (ISO 8601 UTC) and reason.
    pub clock_start: Option<String>,
    /// Reason letter and words.
    pub reason: Option<String>,
    /// Deadline in force.
    pub deadline: Option<String>,
    /// Deadline, Unix ms.
    pub deadline_ms: Option<i64>,
    /// Distance to the deadline at the engine's now: `13 d 04 h left`, or `overdue by 31 d
    /// 07 h` once it passed.
    pub time_left: Option<String>,
    /// Whether the deadline in force has passed (at the engine's now).
    pub overdue: bool,
    /// Who acknowledged, and the reference.
    pub acknowledged: Option<String>,
    /// Who dismissed, and why.
    pub dismissed: Option<String>,
    /// Delivery per sink.
    pub delivery: Vec<DeliveryStatus>,
    /// What the alert says, as of the last evaluation.
    pub content: Option<AlertContent>,
}

/// What one evaluation pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Models evaluated.
    pub models: usize,
    /// Clock events recorded.
    pub clock_events: usize,
    /// Alert events recorded.
    pub alert_events: usize,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    ledger: Arc<dyn LedgerStore>,
    store: Arc<dyn ComplianceStore>,
    cfg: ComplianceConfig,
    /// The thresholds and settings in force: resolved at open, and again against what the
    /// store holds when this replica becomes the leader (another may have recorded a
    /// configuration since).
    rules: Mutex<Arc<Rules>>,
    stage_policy: flopmeter_core::stage::StagePolicy,
    leadership: Leadership,
    /// Whether this replica took office: it holds the lease and reloaded its state from the
    /// store ([`Engine::take_office`]). Passes and deliveries run only then.
    in_office: AtomicBool,
    cache: Mutex<BucketCache>,
    /// What the last pass kept, swapped whole at the end of each pass (readers clone the
    /// `Arc`, not the maps).
    last: Mutex<Arc<LastPass>>,
    metrics: ComplianceMetrics,
    sinks: Vec<SinkConfig>,
    /// One delivery pass at a time: two concurrent passes would send the same item twice.
    deliver_lock: tokio::sync::Mutex<()>,
    /// The audit chain's head as far as it was verified; `None` once it was found broken.
    verified: Mutex<Option<ChainHead>>,
}

/// The thresholds in force and the settings the rules run with.
#[derive(Debug)]
struct Rules {
    thresholds: Vec<Threshold>,
    settings: ComplianceSettings,
}

/// What a pass keeps. Why not every assessment: a model's assessment against one threshold
/// holds its projection, plans and method mix, and keeping one per (model, threshold) for
/// every model was most of the collector's memory (issue 12: 360 of 630 MiB of heap at
/// 10,000 models). Only alerts need the whole of it (their content is rebuilt from it); the
/// gauges need three figures.
#[derive(Debug, Default)]
struct LastPass {
    /// Pairs with an alert.
    full: BTreeMap<(String, String), Assessment>,
    /// The models whose gauges are exported: every one with a clock or an alert, and the
    /// `metrics_max_models` with the largest projection (deciding bound). Kept bounded
    /// during the pass, not sorted after it.
    gauges: Vec<ModelGauges>,
}

/// The figures of one model the gauges show.
#[derive(Debug, Clone)]
struct ModelGauges {
    model: String,
    projected: flopmeter_core::units::FlopTotal,
    /// Per threshold.
    pairs: Vec<PairView>,
}

/// What a pass found for one (model, threshold): the level and the crossings, enough for a
/// row of a table (the whole [`Assessment`] is kept only where an alert needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairView {
    /// Threshold id.
    pub threshold: String,
    /// The level for this model (a modifier's depends on its base).
    pub level: u128,
    /// When the measured total crossed, event time.
    pub measured_crossing_ms: Option<i64>,
    /// When the extrapolated trajectory crosses.
    pub projected_crossing_ms: Option<i64>,
}

/// The largest `n` models by projection, kept with a min-heap as the pass goes.
struct Largest {
    n: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u128, String)>>,
    gauges: std::collections::HashMap<String, ModelGauges>,
}

impl Largest {
    fn new(n: usize) -> Largest {
        Largest {
            n,
            heap: Default::default(),
            gauges: Default::default(),
        }
    }

    fn offer(&mut self, size: u128, g: ModelGauges) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() == self.n {
            match self.heap.peek() {
                Some(std::cmp::Reverse((smallest, _))) if *smallest >= size => return,
                _ => {}
            }
            if let Some(std::cmp::Reverse((_, out))) = self.heap.pop() {
                self.gauges.remove(&out);
            }
        }
        self.heap.push(std::cmp::Reverse((size, g.model.clone())));
        self.gauges.insert(g.model.clone(), g);
    }
}

fn payload<T: Serialize>(v: &T) -> Result<Json, EngineError> {
    Ok(to_json(v)?)
}

impl Engine {
    /// Opens the engine on both halves of one backend: resolves the threshold configuration
    /// against the one applied last and records any change in the audit log. On a replica
    /// that does not lead (it shares its store with others) nothing is recorded: the
    /// configuration is recorded when it takes office ([`Engine::take_office`]).
    pub fn open(
        stores: Stores,
        cfg: ComplianceConfig,
        stage_policy: flopmeter_core::stage::StagePolicy,
        metrics: ComplianceMetrics,
    ) -> Result<Engine, EngineError> {
        Engine::open_as(stores, cfg, stage_policy, metrics, Leadership::sole())
    }

    /// [`Engine::open`] for a replica whose leadership is `leadership`.
    pub fn open_as(
        stores: Stores,
        cfg: ComplianceConfig,
        stage_policy: flopmeter_core::stage::StagePolicy,
        metrics: ComplianceMetrics,
        leadership: Leadership,
    ) -> Result<Engine, EngineError> {
        let Stores {
            ledger,
            compliance: store,
        } = stores;
        let rules = resolve_rules(store.as_ref(), &cfg, &stage_policy, leadership.leads())?;
        let mut sinks = cfg.sinks.clone();
        if !sinks.contains(&SinkConfig::Log) {
            sinks.push(SinkConfig::Log);
        }
        let verified = check_chain_at_start(store.as_ref(), &metrics, cfg.time.now())?;
        Ok(Engine {
            verified: Mutex::new(verified),
            ledger,
            store,
            in_office: AtomicBool::new(leadership.is_sole()),
            leadership,
            rules: Mutex::new(Arc::new(rules)),
            stage_policy,
            cache: Mutex::default(),
            last: Mutex::default(),
            metrics,
            sinks,
            cfg,
            deliver_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether this replica runs the engine now: it holds the lease (always, on an embedded
    /// store) and has taken office.
    pub fn in_office(&self) -> bool {
        self.in_office.load(Ordering::SeqCst) && self.leadership.leads()
    }

    /// This replica's leadership.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Takes office after gaining the lease (blocking): forgets everything cached, reads the
    /// store as it is now (the thresholds another leader may have recorded, the audit
    /// chain's head), records this replica's threshold configuration if it differs, and only
    /// then lets passes and deliveries run. Clocks, alerts and the outbox are read from the
    /// store at every step, never cached, so the first pass starts from what the former
    /// leader committed.
    pub fn take_office(&self) -> Result<(), EngineError> {
        self.leave_office();
        let rules = resolve_rules(self.store.as_ref(), &self.cfg, &self.stage_policy, true)?;
        *self.rules.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        let verified = check_chain_at_start(self.store.as_ref(), &self.metrics, self.now())?;
        *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = verified;
        self.in_office.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Leaves office (the lease was lost, or a write was refused for it): drops what the
    /// passes cached and the model-level gauges, which only the leader exports, so that a sum
    /// over replicas counts each model once.
    pub fn leave_office(&self) {
        self.in_office.store(false, Ordering::SeqCst);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = BucketCache::default();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Arc::default();
        let m = &self.metrics;
        for g in [
            &m.projected,
            &m.level,
            &m.crossing,
            &m.deadline,
            &m.alert_open,
            &m.outbox_pending,
        ] {
            g.reset();
        }
    }

    /// Refuses a person's action on a replica out of office, naming the leader (blocking:
    /// it may read the lease).
    fn require_office(&self) -> Result<(), EngineError> {
        if self.in_office() {
            return Ok(());
        }
        Err(EngineError::NotLeader {
            holder: self.leadership.holder(),
        })
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The engine's configuration.
    pub fn config(&self) -> &ComplianceConfig {
        &self.cfg
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Vec<Threshold> {
        self.rules().thresholds.clone()
    }

    /// The sinks (the log included).
    pub fn sinks(&self) -> &[SinkConfig] {
        &self.sinks
    }

    /// The compliance store.
    pub fn store(&self) -> &Arc<dyn ComplianceStore> {
        &self.store
    }

    /// The delivery lock (held by an outbox pass).
    pub fn deliver_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.deliver_lock
    }

    /// The metrics.
    pub fn metrics(&self) -> &ComplianceMetrics {
        &self.metrics
    }

    /// Now, by the engine's time source.
    pub fn now(&self) -> i64 {
        self.cfg.time.now()
    }

    fn outbox_items(
        &self,
        ev: &AlertEvent,
        content: &AlertContent,
        active: bool,
    ) -> Vec<OutboxItem> {
        self.sinks
            .iter()
            .map(|s| OutboxItem {
                seq: 0,
                sink: s.name(),
                key: ev.key.clone(),
                event: ev.clone(),
                content: content.clone(),
                active,
                state: DeliveryState::Pending,
                attempts: 0,
                next_attempt_unix_ms: 0,
                last_error: None,
                delivered_unix_ms: None,
            })
            .collect()
    }

    /// Verifies the whole audit chain now (`audit verify`, `/api/v1/audit/verify`), and shows
    /// a break in the metric as a pass would.
    pub fn verify_chain(&self) -> Result<super::store::ChainStatus, EngineError> {
        let status = self.store.chain_status()?;
        if !status.ok() {
            self.metrics.audit_intact.set(0);
            *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(status)
    }

    /// Verifies the audit entries appended since the last check (the start verified the
    /// whole chain): cheap, and a break found is logged and shown at once.
    fn check_chain(&self) -> Result<(), EngineError> {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let Some(from) = verified.clone() else {
            return Ok(()); // broken already: said at the time, and the metric stays 0
        };
        match self.store.verify_since(&from)? {
            Ok(head) => {
                self.metrics.audit_entries.set(head.next_seq as i64);
                *verified = Some(head);
            }
            Err(b) => {
                self.metrics.audit_intact.set(0);
                tracing::error!(
                    broken_index = b.index,
                    reason = %b.reason,
                    "THE AUDIT LOG NO LONGER VERIFIES: {b}. Entries from {} on cannot be \
                     trusted; stop the collector and run `flopmeter audit verify --data-dir`",
                    b.index
                );
                *verified = None;
            }
        }
        Ok(())
    }

    /// One evaluation pass at the engine's now. Durable (flushed) before it returns, so the
    /// outbox may deliver what it recorded.
    pub fn evaluate(&self) -> Result<PassSummary, EngineError> {
        let now = self.now();
        self.check_chain()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.refresh(self.ledger.as_ref())?;
        let mut summary = PassSummary::default();
        let mut last = LastPass::default();
        let mut largest = Largest::new(self.cfg.metrics_max_models);
        let rules = self.rules();
        let bound = rules.settings.decision_bound;
        let idle = self.cfg.idle.as_millis() as i64;
        cache.for_each_evidence(self.ledger.as_ref(), now, idle, |ev| {
            summary.models += 1;
            let mut g = ModelGauges {
                model: ev.model.clone(),
                projected: flopmeter_core::units::FlopTotal::ZERO,
                pairs: Vec::new(),
            };
            let mut keep = false;
            for t in &rules.thresholds {
                let Some(a) = clock::assess(&ev, t, &rules.settings, now) else {
                    continue;
                };
                let mut alerted = false;
                if t.notify_days().is_some() {
                    let (c, n, engaged) = self.step(&a, now)?;
                    summary.clock_events += c;
                    summary.alert_events += n;
                    keep |= engaged.0 || engaged.1;
                    alerted = engaged.1;
                }
                if a.projection.projected.get(bound) >= g.projected.get(bound) {
                    g.projected = a.projection.projected;
                }
                g.pairs.push(PairView {
                    threshold: t.id.clone(),
                    level: a.level.flop,
                    measured_crossing_ms: a.measured_crossing_ms,
                    projected_crossing_ms: a.projected_crossing_ms,
                });
                if alerted {
                    last.full.insert((ev.model.clone(), t.id.clone()), a);
                }
            }
            if keep {
                last.gauges.push(g);
            } else {
                largest.offer(g.projected.get(bound), g);
            }
            Ok::<(), EngineError>(())
        })?;
        drop(cache);
        last.gauges.extend(largest.gauges.into_values());
        self.store.flush()?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(last);
        self.refresh_metrics()?;
        Ok(summary)
    }

    /// Runs clock and alert rules for one pair and commits the result: the events recorded,
    /// and whether the pair has (a clock, an alert).
    fn step(&self, a: &Assessment, now: i64) -> Result<(usize, usize, (bool, bool)), EngineError> {
        let (model, tid) = (&a.model, &a.threshold.id);
        let prev_clock = self.store.clock(model, tid)?;
        let prev_alert = self.store.alert(model, tid)?;
        let (clock_state, clock_events) = clock::evaluate(prev_clock.clone(), a, now);
        let (alert_state, alert_events) = alert::evaluate(
            prev_alert.clone(),
            a,
            clock_state.as_ref(),
            now,
            &self.cfg.alert,
        );
        let mut change = Change::default();
        if clock_state != prev_clock {
            change.clock = clock_state.clone();
        }
        if alert_state != prev_alert {
            change.alert = alert_state.clone();
        }
        for e in &clock_events {
            let kind = match e {
                ClockEvent::Started { .. } => AuditKind::ClockStarted,
                ClockEvent::FactAdded { .. } => AuditKind::ClockFact,
            };
            change.audit.push(AuditRecord {
                time_ms: now,
                actor: "engine".into(),
                kind,
                payload: payload(e)?,
            });
        }
        if let Some(al) = &alert_state {
            let content = alert::content(al, a, clock_state.as_ref(), now);
            for e in &alert_events {
                change.audit.push(AuditRecord {
                    time_ms: now,
                    actor: "engine".into(),
                    kind: AuditKind::Alert,
                    payload: payload(e)?,
                });
                change
                    .outbox
                    .extend(self.outbox_items(e, &content, al.status.is_active()));
            }
        }
        self.store.commit(&change)?;
        Ok((
            clock_events.len(),
            alert_events.len(),
            (clock_state.is_some(), alert_state.is_some()),
        ))
    }

    /// The last assessment of a pair (evaluating first if there is none).
    fn assessment(&self, model: &str, threshold: &str) -> Result<Option<Assessment>, EngineError> {
        let key = (model.to_string(), threshold.to_string());
        if let Some(a) = self.last_pass().full.get(&key) {
            return Ok(Some(a.clone()));
        }
        self.evaluate()?;
        Ok(self.last_pass().full.get(&key).cloned())
    }

    fn person_action(
        &self,
        model: &str,
        threshold: &str,
        by: &str,
        kind: AuditKind,
        act: impl FnOnce(Alert, i64) -> Result<(Alert, AlertEvent), alert::AlertError>,
    ) -> Result<Alert, EngineError> {
        self.require_office()?;
        let now = self.now();
        let Some(prev) = self.store.alert(model, threshold)? else {
            return Err(EngineError::NoAlert {
                model: model.into(),
                threshold: threshold.into(),
            });
        };
        let (al, ev) = act(prev, now)?;
        let clock = self.store.clock(model, threshold)?;
        /// The audit record of a person's action: the event, and what the person said (the
        /// notification's reference, or the reason for a dismissal) with who said it, so the
        /// hash chain holds it and not only the alert record.
        #[derive(Serialize)]
        struct Action<'a> {
            #[serde(flatten)]
            event: &'a AlertEvent,
            #[serde(skip_serializing_if = "Option::is_none")]
            acknowledgement: Option<&'a alert::Acknowledgement>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dismissal: Option<&'a alert::Dismissal>,
        }
        let said = Action {
            event: &ev,
            acknowledgement: al
                .acknowledgement
                .as_ref()
                .filter(|_| kind == AuditKind::Acknowledged),
            dismissal: al
                .dismissal
                .as_ref()
                .filter(|_| kind == AuditKind::Dismissed),
        };
        let mut change = Change {
            alert: Some(al.clone()),
            audit: vec![AuditRecord {
                time_ms: now,
                actor: by.trim().to_string(),
                kind,
                payload: payload(&said)?,
            }],
            ..Change::default()
        };
        if let Some(a) = self.assessment(model, threshold)? {
            let content = alert::content(&al, &a, clock.as_ref(), now);
            change.outbox = self.outbox_items(&ev, &content, false);
        }
        match self.store.commit(&change) {
            Err(ComplianceStoreError::NotLeader { .. }) => {
                // The lease was lost between the check and the commit.
                return Err(EngineError::NotLeader {
                    holder: self.leadership.holder(),
                });
            }
            r => r?,
        };
        self.store.flush()?;
        self.refresh_metrics()?;
        Ok(al)
    }

    /// Records the notification (`flopmeter ack`).
    pub fn acknowledge(
        &self,
        model: &str,
        threshold: &str,
        by: &str,
        reference: &str,
    ) -> Result<Alert, EngineError> {
        self.person_action(model, threshold, by, AuditKind::Acknowledged, |al, now| {
            alert::acknowledge(al, by, reference, now)
        })
    }

    /// Dismisses an alert (`flopmeter dismiss`).
    pub fn dismiss(
        &self,
        model: &str,
        threshold: &str,
        by: &str,
        reason: &str,
    ) -> Result<Alert, EngineError> {
        self.person_action(model, threshold, by, AuditKind::Dismissed, |al, now| {
            alert::dismiss(al, by, reason, now)
        })
    }

    /// The current content of every active alert, for the Alertmanager re-post.
    pub fn active_contents(&self) -> Result<Vec<(Alert, AlertContent)>, EngineError> {
        let now = self.now();
        let last = self.last_pass();
        let mut out = Vec::new();
        for al in self.store.alerts()? {
            if !al.status.is_active() {
                continue;
            }
            let Some(a) = last.full.get(&(al.model.clone(), al.threshold_id.clone())) else {
                continue;
            };
            let clock = self.store.clock(&al.model, &al.threshold_id)?;
            let content = alert::content(&al, a, clock.as_ref(), now);
            out.push((al, content));
        }
        Ok(out)
    }

    /// Every alert with its clock, delivery status and content.
    pub fn alert_views(&self) -> Result<Vec<AlertView>, EngineError> {
        let now = self.now();
        let last = self.last_pass();
        let outbox = self.store.outbox()?;
        let mut out = Vec::new();
        for al in self.store.alerts()? {
            let clock: Option<ClockState> = self.store.clock(&al.model, &al.threshold_id)?;
            let mut delivery: BTreeMap<String, DeliveryStatus> = BTreeMap::new();
            for o in outbox
                .iter()
                .filter(|o| o.event.model == al.model && o.event.threshold_id == al.threshold_id)
            {
                let d = delivery.entry(o.sink.clone()).or_insert(DeliveryStatus {
                    sink: o.sink.clone(),
                    delivered: 0,
                    pending: 0,
                    last_error: None,
                });
                match o.state {
                    DeliveryState::Delivered => d.delivered += 1,
                    DeliveryState::Pending => {
                        d.pending += 1;
                        if o.last_error.is_some() {
                            d.last_error = o.last_error.clone();
                        }
                    }
                }
            }
            let deadline_ms = clock.as_ref().map(ClockState::effective_deadline_ms);
            let content = last
                .full
                .get(&(al.model.clone(), al.threshold_id.clone()))
                .map(|a| alert::content(&al, a, clock.as_ref(), now));
            out.push(AlertView {
                model: al.model.clone(),
                threshold: al.threshold_id.clone(),
                status: al.status.as_str().to_string(),
                clock_start: clock.as_ref().map(|c| format_utc(c.effective_start().0)),
                reason: clock.as_ref().map(|c| {
                    let r = c.effective_start().1;
                    format!("({}) {}", r.letter(), r.describe())
                }),
                deadline: deadline_ms.map(format_utc),
                deadline_ms,
                time_left: deadline_ms.map(|d| format::time_left(d - now)),
                overdue: deadline_ms.is_some_and(|d| d <= now),
                acknowledged: al
                    .acknowledgement
                    .as_ref()
                    .map(|a| format!("by {} at {}: {}", a.by, format_utc(a.at_ms), a.reference)),
                dismissed: al
                    .dismissal
                    .as_ref()
                    .map(|d| format!("by {} at {}: {}", d.by, format_utc(d.at_ms), d.reason)),
                delivery: delivery.into_values().collect(),
                content,
            });
        }
        Ok(out)
    }

    /// The bound threshold decisions use (`decision_bound`).
    pub fn decision_bound(&self) -> Bound {
        self.rules().settings.decision_bound
    }

    fn last_pass(&self) -> Arc<LastPass> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the last pass found per (model, threshold), for tables such as the console's:
    /// every model with a clock or an alert and the `metrics_max_models` largest by
    /// projection (the bound that keeps memory flat at many models; a model outside it is
    /// far from every level and has no alert). Empty before the first pass.
    pub fn pair_views(&self) -> BTreeMap<(String, String), PairView> {
        let last = self.last_pass();
        let mut out = BTreeMap::new();
        for g in &last.gauges {
            for p in &g.pairs {
                out.insert((g.model.clone(), p.threshold.clone()), p.clone());
            }
        }
        out
    }

    /// The assessments of one model against every threshold that applies, computed now
    /// from its evidence (what one model's page and chart show). Empty when the ledger does
    /// not know the model.
    pub fn assess_model(&self, model: &str) -> Result<Vec<Assessment>, EngineError> {
        let Some(ev) = self.model_evidence(model)? else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let rules = self.rules();
        Ok(rules
            .thresholds
            .iter()
            .filter_map(|t| clock::assess(&ev, t, &rules.settings, now))
            .collect())
    }

    /// One model's evidence as the engine reads it now (registry, runs and their hourly
    /// event-time buckets): what the console charts. `None` when the ledger does not know the
    /// model.
    pub fn model_evidence(&self, model: &str) -> Result<Option<ModelEvidence>, EngineError> {
        if self.ledger.model_entry(model)?.is_none()
            && self.ledger.model_aggregate(model)?.is_none()
        {
            return Ok(None);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.refresh(self.ledger.as_ref())?;
        Ok(Some(cache.model_evidence(
            self.ledger.as_ref(),
            model.to_string(),
            self.now(),
            self.cfg.idle.as_millis() as i64,
        )?))
    }

    /// Sets the compliance gauges from the last pass and the stored state. Per-model gauges
    /// are exported for every model with a clock or an alert and for the
    /// `metrics_max_models` largest by projection (deciding bound), as the pass kept them,
    /// so `/metrics` stays bounded whatever the number of models.
    pub fn refresh_metrics(&self) -> Result<(), EngineError> {
        if !self.in_office() {
            // Only the leader exports model-level gauges (`leave_office` removed them).
            return Ok(());
        }
        let last = self.last_pass();
        let clocks = self.store.clocks()?;
        let alerts = self.store.alerts()?;
        let m = &self.metrics;
        m.projected.reset();
        m.level.reset();
        m.crossing.reset();
        m.deadline.reset();
        m.alert_open.reset();
        for g in &last.gauges {
            let model = g.model.as_str();
            for b in [Bound::Low, Bound::Central, Bound::High] {
                m.projected
                    .with_label_values(&[model, b.as_str()])
                    .set(g.projected.get(b) as f64);
            }
            for p in &g.pairs {
                let tid = p.threshold.as_str();
                m.level.with_label_values(&[model, tid]).set(p.level as f64);
                // Once the measured total has crossed, the crossing is a fact: show its
                // instant.
                if let Some(t) = p.projected_crossing_ms.or(p.measured_crossing_ms) {
                    m.crossing
                        .with_label_values(&[model, tid])
                        .set(t as f64 / 1000.0);
                }
            }
        }
        for c in &clocks {
            m.deadline
                .with_label_values(&[c.model.as_str(), c.threshold_id.as_str()])
                .set(c.effective_deadline_ms() as f64 / 1000.0);
        }
        for al in &alerts {
            m.alert_open
                .with_label_values(&[
                    al.model.as_str(),
                    al.threshold_id.as_str(),
                    al.status.as_str(),
                ])
                .set(if al.status.is_terminal() { 0.0 } else { 1.0 });
        }
        Ok(())
    }
}

/// Resolves the threshold configuration against the one the store recorded last and, when
/// `record` (this replica leads), records a change in the audit log. A store that refuses the
/// write (the lease was lost meanwhile) leaves it to the next leader.
fn resolve_rules(
    store: &dyn ComplianceStore,
    cfg: &ComplianceConfig,
    stage_policy: &flopmeter_core::stage::StagePolicy,
    record: bool,
) -> Result<Rules, EngineError> {
    let previous: Vec<Threshold> = store.meta("thresholds")?.unwrap_or_default();
    let resolved = cfg.thresholds.resolve(&previous)?;
    let now = cfg.time.now();
    let prev_bound: Option<Bound> = store.meta("decision_bound")?;
    if record && (!resolved.changes.is_empty() || prev_bound != Some(resolved.decision_bound)) {
        #[derive(Serialize)]
        struct ConfigChange<'a> {
            changes: &'a [flopmeter_core::threshold_config::ThresholdChange],
            decision_bound: Bound,
            previous_decision_bound: Option<Bound>,
            disabled: &'a [String],
            thresholds: &'a [Threshold],
        }
        let recorded = store.commit(&Change {
            audit: vec![AuditRecord {
                time_ms: now,
                actor: cfg.config_actor.clone(),
                kind: AuditKind::ThresholdConfigChange,
                payload: payload(&ConfigChange {
                    changes: &resolved.changes,
                    decision_bound: resolved.decision_bound,
                    previous_decision_bound: prev_bound,
                    disabled: &resolved.disabled,
                    thresholds: &resolved.thresholds,
                })?,
            }],
            meta: vec![
                ("thresholds".into(), meta_value(&resolved.thresholds)?),
                (
                    "decision_bound".into(),
                    meta_value(&resolved.decision_bound)?,
                ),
            ],
            ..Change::default()
        });
        match recorded {
            Err(ComplianceStoreError::NotLeader { .. }) => {}
            r => {
                r?;
                store.flush()?;
            }
        }
    }
    Ok(Rules {
        thresholds: resolved.thresholds,
        settings: ComplianceSettings {
            decision_bound: resolved.decision_bound,
            stage_policy: stage_policy.clone(),
            forecast_starts_clock: cfg.forecast_starts_clock,
            ..ComplianceSettings::default()
        },
    })
}

/// Verifies the whole audit chain when the engine opens. A broken chain is logged at error
/// level, shown as `flopmeter_audit_chain_intact 0` (the `FlopmeterAuditChainBroken` rule
/// fires on it) and recorded in the chain itself, once per break.
///
/// The collector still serves: refusing to start would stop ingest (agents' spools fill) and
/// the notification clocks (deadlines run on), for a log that can be verified, exported and
/// restored from a backup meanwhile. Returns the verified head, or `None` when broken.
fn check_chain_at_start(
    store: &dyn ComplianceStore,
    metrics: &ComplianceMetrics,
    now: i64,
) -> Result<Option<ChainHead>, EngineError> {
    let status = store.chain_status()?;
    metrics.audit_entries.set(status.head_entries as i64);
    let Some(b) = &status.broken else {
        metrics.audit_intact.set(1);
        return Ok(Some(store.head()?));
    };
    metrics.audit_intact.set(0);
    tracing::error!(
        broken_index = b.index,
        entries = status.entries,
        head_entries = status.head_entries,
        reason = %b.reason,
        "THE AUDIT LOG FAILS VERIFICATION: {b}. Entries 0..{} verify; from {} on the log was \
         edited, deleted, reordered or cut short. The collector keeps serving (ingest and \
         deadlines must not stop) and records this in the log. Restore the ledger directory \
         from a backup, or keep `flopmeter audit export` of the verified part as evidence",
        b.index,
        b.index
    );
    #[derive(Serialize, serde::Deserialize, PartialEq)]
    struct Break {
        broken_index: u64,
        reason: String,
        entries: u64,
        head_entries: u64,
    }
    let found = Break {
        broken_index: b.index as u64,
        reason: b.reason.to_string(),
        entries: status.entries,
        head_entries: status.head_entries,
    };
    let reported: Option<Break> = store.meta("audit_break_reported")?;
    if reported.as_ref().map(|r| (r.broken_index, &r.reason))
        != Some((found.broken_index, &found.reason))
    {
        let recorded = store.commit(&Change {
            audit: vec![AuditRecord {
                time_ms: now,
                actor: "collector".into(),
                kind: AuditKind::AuditChainBroken,
                payload: payload(&found)?,
            }],
            meta: vec![("audit_break_reported".into(), meta_value(&found)?)],
            ..Change::default()
        });
        match recorded {
            // Not the leader: the leader records the break when it takes office.
            Err(ComplianceStoreError::NotLeader { .. }) => {}
            r => {
                r?;
                store.flush()?;
            }
        }
    }
    Ok(None)
}
