//! `flopmeter demo`: the compliance story end to end, on one machine, in seconds.
//!
//! It starts an embedded collector (real gRPC ingest and admin, real HTTP) in a temporary
//! directory and a local webhook receiver that verifies each delivery's HMAC signature. Then
//! it plays weeks of training on a **virtual clock**: simulated agents
//! ([`crate::agent::SimAgent`], GB200 racks) stream event-time interval records over the real
//! ingest protocol, one virtual day at a time, and the compliance engine (whose clock is the
//! same virtual clock) evaluates after each day. The story, in order:
//!
//! 1. `frontier-400b`: a plan of 2.1e25 FLOP registered on day 0 → the clock starts on day 0,
//!    reason (a);
//! 2. `atlas-70b`: no plan; its open-ended trend raises a *forecast* first, and the clock
//!    starts when its measured total crosses 1e25, dated at the crossing's event time,
//!    reason (c);
//! 3. `helper-8b-ft`: a fine-tune of a third-party base model (3.0e24 FLOP per its model
//!    card) crossing a third of the base's compute → `eu-modifier`;
//! 4. the alerts arriving at the webhook, an acknowledgement through the admin API, the
//!    final report and `audit verify`.
//!
//! Why event times ahead of the wall clock: day 0 is the wall-clock start, so that plans
//! registered through the real admin API (stamped with the collector's clock) fall on day 0.
//! The demo's collector accepts event times up to 60 days ahead (`Limits::max_future_ms`),
//! because its agents live on the virtual clock.
//!
//! Short mode (`--fast`, used by the test suite) scales every FLOP figure and threshold level
//! by 1e-3 through the threshold configuration (itself audited), so a debug build plays the
//! same story with a few thousand records.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use flopmeter_core::threshold_config::ThresholdConfig;
use flopmeter_core::utc::{MS_PER_DAY, MS_PER_HOUR, format_utc};
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::admin_client::AdminClient;

use flopmeter_collector::compliance::{EngineTime, SinkConfig, outbox};
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::{Collector, report};

use crate::agent::{Pace, SimAgent, SimLoad, SimSpec, SimStats, StopAt};

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The collector failed.
    #[error(transparent)]
    Serve(#[from] flopmeter_collector::ServeError),
    /// A gRPC call failed.
    #[error("gRPC: {0}")]
    Grpc(String),
    /// I/O (temp dir, output).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] flopmeter_collector::compliance::EngineError),
    /// Something the story expects did not happen.
    #[error("demo: {0}")]
    Story(String),
}

impl From<tonic::Status> for DemoError {
    fn from(s: tonic::Status) -> Self {
        DemoError::Grpc(s.to_string())
    }
}

impl From<tonic::transport::Error> for DemoError {
    fn from(e: tonic::transport::Error) -> Self {
        DemoError::Grpc(e.to_string())
    }
}

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Short mode: FLOP figures and levels × 1e-3.
    pub fast: bool,
    /// gRPC address (port 0: any free port).
    pub listen: SocketAddr,
    /// HTTP address.
    pub http_addr: SocketAddr,
    /// Keep the data dir in this directory instead of a temporary one.
    pub data_dir: Option<PathBuf>,
    /// Admin token the demo collector requires (and the demo's ack uses).
    pub admin_token: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            fast: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            admin_token: "demo-admin-token".into(),
        }
    }
}

/// What the demo ends with, for tests and `--keep-running`.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The running collector (stop it with [`Collector::shutdown`]).
    pub collector: Collector,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Whether the data directory is temporary (remove it after shutdown).
    pub temporary: bool,
    /// Webhook deliveries received (idempotency key, status, signature valid).
    pub webhook: Vec<(String, String, bool)>,
    /// Alert status per (model, threshold) at the end.
    pub alerts: BTreeMap<(String, String), String>,
    /// Clock start reason letter per (model, threshold).
    pub reasons: BTreeMap<(String, String), String>,
    /// Audit entries, verified.
    pub audit_entries: u64,
    /// Records ingested.
    pub records: u64,
}

const WEBHOOK_SECRET: &str = "demo-webhook-secret";

/// The demo's named admin for the console: the audit log records acknowledgements made
/// through the console under this name.
pub const CONSOLE_ADMIN: &str = "dana";
/// Dana's token (the demo prints it; a demo collector listens on loopback only by default).
pub const CONSOLE_ADMIN_TOKEN: &str = "demo-dana-token";
const GPUS_PER_AGENT: u32 = 64;

#[derive(Debug, Default)]
struct Hook {
    received: Mutex<Vec<(String, String, bool)>>,
}

impl Hook {
    /// Prints the deliveries received after the first `shown`; returns how many there are.
    fn show_since(&self, shown: usize, out: &mut (dyn Write + Send)) -> std::io::Result<usize> {
        let got = self
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (key, status, ok) in got.iter().skip(shown) {
            writeln!(
                out,
                "        webhook ← {key} [{status}] signature {}",
                if *ok { "valid" } else { "INVALID" }
            )?;
        }
        Ok(got.len())
    }
}

async fn hook(
    State(h): State<Arc<Hook>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let sig = headers
        .get("x-flopmeter-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = outbox::verify_signature(WEBHOOK_SECRET, &body, sig);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let key = v["key"].as_str().unwrap_or("").to_string();
    let status = v["content"]["status"].as_str().unwrap_or("").to_string();
    h.received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((key, status, ok));
    if ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// A run played by several agents between two virtual days.
struct Run {
    agents: Vec<SimAgent>,
    /// How many agents it has (they are lent to tasks each day).
    count: usize,
    from_day: i64,
    to_day: i64,
}

impl Run {
    fn new(agents: Vec<SimAgent>, from_day: i64, to_day: i64) -> Run {
        Run {
            count: agents.len(),
            agents,
            from_day,
            to_day,
        }
    }
}

fn sci(x: f64) -> u128 {
    x as u128
}

/// Runs the demo, writing progress to `out`. Returns with the collector still running.
pub async fn run(
    opts: DemoOptions,
    out: &mut (dyn Write + Send),
) -> Result<DemoOutcome, DemoError> {
    let wall0 = Instant::now();
    let s = if opts.fast { 1e-3 } else { 1.0 };
    let t0 = flopmeter_collector::now_unix_ms();
    let vnow = Arc::new(AtomicI64::new(t0));
    let (data_dir, temporary) = match &opts.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let d =
                std::env::temp_dir().join(format!("flopmeter-demo-{}-{}", std::process::id(), t0));
            (d, true)
        }
    };
    std::fs::create_dir_all(&data_dir)?;

    // Webhook receiver.
    let hook_state = Arc::new(Hook::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let hook_addr = listener.local_addr()?;
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(hook_state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The collector, its engine on the virtual clock.
    let mut cfg = CollectorConfig::for_data_dir(&data_dir);
    cfg.listen = opts.listen;
    cfg.http_addr = opts.http_addr;
    cfg.admin_token = Some(opts.admin_token.clone());
    cfg.admin_tokens = [(CONSOLE_ADMIN.to_string(), CONSOLE_ADMIN_TOKEN.to_string())].into();
    cfg.limits.max_future_ms = 60 * MS_PER_DAY;
    let v = vnow.clone();
    cfg.compliance.time = EngineTime::from_fn(move || v.load(Ordering::SeqCst));
    cfg.compliance.sinks = vec![SinkConfig::Webhook {
        name: "demo".into(),
        url: format!("http://{hook_addr}/hook"),
        secret: WEBHOOK_SECRET.into(),
    }];
    cfg.compliance.config_actor = "demo".into();
    // The demo drives evaluation itself after each virtual day; the background loop only
    // adds idempotent passes.
    cfg.compliance.interval = Duration::from_secs(3600);
    cfg.compliance.debounce = Duration::from_secs(3600);
    if opts.fast {
        cfg.compliance.thresholds = toml::from_str::<ThresholdConfig>(
            r#"
            [thresholds.eu-systemic-risk]
            level = "1e22"
            [thresholds.eu-gpai-indicative]
            level = "1e20"
            [thresholds.eu-modifier]
            fallback_systemic = "3.33e21"
            fallback_other = "3.33e19"
            [thresholds.us-ca-sb53]
            level = "1e23"
            [thresholds.us-ny-raise]
            level = "1e23"
            [thresholds.kr-basic-act]
            level = "1e23"
            "#,
        )
        .map_err(|e| DemoError::Story(format!("short-mode thresholds: {e}")))?;
    }
    let collector = Collector::start(cfg).await?;
    let grpc = collector.grpc_addr();
    let http = collector.http_addr();
    writeln!(
        out,
        "flopmeter demo: embedded collector in {}",
        data_dir.display()
    )?;
    writeln!(out, "  gRPC (ingest, admin)  http://{grpc}")?;
    writeln!(
        out,
        "  console               http://{http}/ui/  (log in as {CONSOLE_ADMIN} with token {CONSOLE_ADMIN_TOKEN} to acknowledge)"
    )?;
    writeln!(out, "  metrics               http://{http}/metrics")?;
    writeln!(
        out,
        "  JSON API              http://{http}/api/v1/models  http://{http}/api/v1/alerts"
    )?;
    writeln!(
        out,
        "  webhook receiver      http://{hook_addr}/hook (HMAC-SHA256 verified)"
    )?;
    if opts.fast {
        writeln!(
            out,
            "  short mode: every FLOP figure and threshold level × 1e-3 (audited as a threshold config change)"
        )?;
    }
    writeln!(out, "  virtual day 0 = {}", format_utc(t0))?;
    writeln!(out)?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| DemoError::Grpc(e.to_string()))?
        .connect()
        .await?;
    let mut admin = AdminClient::new(channel.clone());
    let token = format!("Bearer {}", opts.admin_token);
    let mut set_model = async |entry: pb::ModelEntry| -> Result<(), DemoError> {
        let mut req = tonic::Request::new(pb::SetModelRequest {
            entry: Some(entry),
            by: "carol".into(),
        });
        req.metadata_mut().insert(
            "authorization",
            token
                .parse()
                .map_err(|_| DemoError::Story("token".into()))?,
        );
        admin.set_model(req).await?;
        Ok(())
    };

    // Day 0: the registry.
    set_model(pb::ModelEntry {
        model: "frontier-400b".into(),
        role: pb::ModelRole::Provider as i32,
        planned_flop: sci(2.1e25 * s).to_string(),
        planned_end_unix_ms: t0 + 90 * MS_PER_DAY,
        ..pb::ModelEntry::default()
    })
    .await?;
    writeln!(
        out,
        "day  0  registry: frontier-400b plans {} FLOP (declared before pre-training starts)",
        flopmeter_core::format::sig2(2.1e25 * s)
    )?;
    set_model(pb::ModelEntry {
        model: "helper-8b-ft".into(),
        role: pb::ModelRole::Modifier as i32,
        base_model: "open-base-405b".into(),
        base_flop: sci(3.0e24 * s).to_string(),
        base_flop_source: "base model card".into(),
        ..pb::ModelEntry::default()
    })
    .await?;
    writeln!(
        out,
        "day  0  registry: helper-8b-ft is a modifier of open-base-405b ({} FLOP per its model card)",
        flopmeter_core::format::sig2(3.0e24 * s)
    )?;

    // The runs. High FLOP per GPU-hour is set so that the totals cross where the story
    // needs them: atlas-70b at 1e25 late on day 13, helper-8b-ft at 1e24 late on day 8.
    let atlas_gpus: u32 = if opts.fast { 128 } else { 2304 };
    let helper_gpus: u32 = if opts.fast { 64 } else { 512 };
    let frontier_gpus: u32 = 64;
    let per_hour =
        |total: f64, gpus: u32, hours: f64| (total * s / (f64::from(gpus) * hours)) as u64;
    let atlas_high = per_hour(1.0e25, atlas_gpus, 14.0 * 24.0 - 6.0);
    let helper_high = per_hour(1.0e24, helper_gpus, 6.0 * 24.0 - 6.0);
    let frontier_high = per_hour(2.0e23, frontier_gpus, 16.0 * 24.0);
    let stats = Arc::new(SimStats::default());
    let mut runs = Vec::new();
    for (model, run, stage, gpus, high, from_day, to_day) in [
        (
            "frontier-400b",
            "pretrain-1",
            "pretrain",
            frontier_gpus,
            frontier_high,
            1,
            14,
        ),
        (
            "atlas-70b",
            "pretrain-1",
            "pretrain",
            atlas_gpus,
            atlas_high,
            0,
            14,
        ),
        (
            "helper-8b-ft",
            "sft-1",
            "finetune",
            helper_gpus,
            helper_high,
            3,
            12,
        ),
    ] {
        // One rack of GB200s per agent, hourly records of one run from its first day.
        let agents = (0..gpus / GPUS_PER_AGENT)
            .map(|i| {
                let id = format!("{model}-rack-{i:02}");
                SimAgent::new(SimSpec {
                    agent_id: id.clone(),
                    node: id,
                    gpus: GPUS_PER_AGENT,
                    model: model.into(),
                    run: run.into(),
                    stage: stage.into(),
                    interval: Duration::from_millis(MS_PER_HOUR as u64),
                    token: None,
                    cluster: String::new(),
                })
                .with_load(SimLoad::Gb200Fp8 { high })
                .starting_at(t0 + from_day * MS_PER_DAY)
                .calling_itself("demo")
            })
            .collect();
        runs.push(Run::new(agents, from_day, to_day));
    }
    writeln!(
        out,
        "        agents: {} racks × {GPUS_PER_AGENT} GB200 (atlas-70b {atlas_gpus}, helper-8b-ft {helper_gpus}, frontier-400b {frontier_gpus} GPUs), hourly event-time records",
        runs.iter().map(|r| r.agents.len()).sum::<usize>()
    )?;
    writeln!(out)?;

    let compliance = collector.compliance();
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut hooks_shown = 0;
    let mut records = 0u64;
    let days = 14;
    for day in 0..=days {
        let from = t0 + day * MS_PER_DAY;
        if day > 0 {
            // Feed the day, every agent at once, each returning once all it generated is
            // acknowledged (durable).
            let mut tasks = Vec::new();
            for r in &mut runs {
                let active = day > r.from_day && day <= r.to_day;
                for mut a in std::mem::take(&mut r.agents) {
                    let (channel, stats) = (channel.clone(), stats.clone());
                    if active {
                        a.generate(24, &stats);
                        records += 24 * u64::from(GPUS_PER_AGENT);
                    }
                    tasks.push(tokio::spawn(async move {
                        let stop = StopAt {
                            batches: Some(a.batches_generated()),
                            deadline: None,
                        };
                        a.run(channel, Pace::Max, stop, Duration::ZERO, stats).await;
                        a
                    }));
                }
            }
            let mut back = Vec::with_capacity(tasks.len());
            for t in tasks {
                back.push(
                    t.await
                        .map_err(|e| DemoError::Story(format!("agent task: {e}")))?,
                );
            }
            for r in &mut runs {
                let n = r.count;
                r.agents.extend(back.drain(..n));
            }
            if let Some(why) = stats
                .first_rejection
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Err(DemoError::Story(format!("records rejected: {why}")));
            }
        }
        // Day 0 is evaluated just after the registrations (stamped by the collector's clock).
        vnow.store(
            if day == 0 {
                flopmeter_collector::now_unix_ms()
            } else {
                from
            },
            Ordering::SeqCst,
        );
        compliance.evaluate_now().await?;
        compliance.deliver_now().await?;
        // Report what changed.
        for v in compliance.engine().alert_views()? {
            let key = (v.model.clone(), v.threshold.clone());
            if seen.get(&key) == Some(&v.status) {
                continue;
            }
            let what = match v.status.as_str() {
                "forecast" => format!(
                    "FORECAST {} / {}: the open-ended trend crosses within the horizon (no clock yet: {})",
                    v.model,
                    v.threshold,
                    v.content
                        .as_ref()
                        .and_then(|c| c.projected_crossing.clone())
                        .map_or("—".to_string(), |c| format!("projected crossing {c}"))
                ),
                "clock-started" => format!(
                    "CLOCK STARTED {} / {}: reason {}, start {}, deadline {} ({})",
                    v.model,
                    v.threshold,
                    v.reason.clone().unwrap_or_default(),
                    v.clock_start.clone().unwrap_or_default(),
                    v.deadline.clone().unwrap_or_default(),
                    v.time_left.clone().unwrap_or_default()
                ),
                other => format!("{} / {}: {other}", v.model, v.threshold),
            };
            writeln!(out, "day {day:>2}  {what}")?;
            if let Some(c) = &v.content
                && v.status == "clock-started"
            {
                writeln!(out, "        {}", c.summary)?;
            }
            seen.insert(key, v.status.clone());
        }
        hooks_shown = hook_state.show_since(hooks_shown, out)?;
    }

    // The acknowledgement, through the admin API as `flopmeter ack` does it.
    writeln!(out)?;
    let mut client = flopmeter_proto::v1::compliance_client::ComplianceClient::new(channel.clone());
    let mut req = tonic::Request::new(pb::AcknowledgeRequest {
        model: "frontier-400b".into(),
        threshold: "eu-systemic-risk".into(),
        by: "alice".into(),
        reference: "AI Office notification GPAI-2026-0042".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", opts.admin_token)
            .parse()
            .map_err(|_| DemoError::Story("token".into()))?,
    );
    let acked = client.acknowledge(req).await?.into_inner();
    writeln!(
        out,
        "ack     frontier-400b / eu-systemic-risk acknowledged by alice (reference \"AI Office notification GPAI-2026-0042\"): {}",
        acked.alert.map(|a| a.status).unwrap_or_default()
    )?;
    compliance.deliver_now().await?;
    hook_state.show_since(hooks_shown, out)?;

    // Alerts, report, audit.
    writeln!(out)?;
    writeln!(out, "flopmeter alerts")?;
    let listed = client
        .list_alerts(pb::ListAlertsRequest {})
        .await?
        .into_inner()
        .alerts;
    for a in &listed {
        writeln!(
            out,
            "  {:<14} {:<17} {:<13} start {:<25} deadline {:<25} {:<24} webhook {}",
            a.model,
            a.threshold,
            a.status,
            a.clock_start,
            a.deadline,
            a.time_left,
            a.delivery
                .iter()
                .map(|d| format!(
                    "{}: {} delivered/{} pending",
                    d.sink, d.delivered, d.pending
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    writeln!(out)?;
    let store = collector.store();
    let now = vnow.load(Ordering::SeqCst);
    if let Some(r) = report::build(
        store.as_ref(),
        "atlas-70b",
        &flopmeter_core::stage::StagePolicy::default(),
        now,
    )
    .map_err(|e| DemoError::Story(e.to_string()))?
    {
        writeln!(out, "flopmeter report atlas-70b")?;
        for l in report::render_text(&r).lines() {
            writeln!(out, "  {l}")?;
        }
    }
    let verified = client
        .verify_audit(pb::VerifyAuditRequest {})
        .await?
        .into_inner();
    writeln!(out)?;
    if verified.ok {
        writeln!(
            out,
            "flopmeter audit verify: OK, {} entries, every link verified",
            verified.entries
        )?;
    } else {
        writeln!(
            out,
            "flopmeter audit verify: BROKEN at entry {}: {}",
            verified.broken_index, verified.broken_reason
        )?;
    }
    writeln!(
        out,
        "\n{records} records over {days} virtual days in {:.1} s",
        wall0.elapsed().as_secs_f64()
    )?;

    let mut alerts = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for v in compliance.engine().alert_views()? {
        alerts.insert((v.model.clone(), v.threshold.clone()), v.status.clone());
        if let Some(r) = &v.reason {
            reasons.insert(
                (v.model, v.threshold),
                r.chars().nth(1).map(String::from).unwrap_or_default(),
            );
        }
    }
    drop(runs);
    let webhook = hook_state
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(DemoOutcome {
        collector,
        data_dir,
        temporary,
        webhook,
        alerts,
        reasons,
        audit_entries: if verified.ok { verified.entries } else { 0 },
        records,
    })
}
