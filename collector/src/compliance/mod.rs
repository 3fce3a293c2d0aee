//! The collector side of the compliance engine (issue 6): the pure rules of
//! `flopmeter_core` (`clock`, `alert`, `audit`, `projection`, `threshold_config`) driven
//! against the ledger, with durable state, an audit chain and an outbox.
//!
//! Code map:
//! - `evidence`: ledger → `ModelEvidence` (registry, runs, hourly event-time buckets);
//! - `engine`: one evaluation pass (assess, clock, alert, commit), person actions (ack,
//!   dismiss), views for the CLI and API, gauges;
//! - [`store`]: the [`store::ComplianceStore`] trait (clocks, alerts, audit log and head,
//!   outbox, meta) and the one-transaction [`store::Change`]; its implementations live
//!   with the ledger's (`crate::ledger::sled_store`, `crate::ledger::memory_store`);
//! - `chain`: what an audit append carries ([`store::AuditRecord`]) and how it fails;
//! - [`outbox`]: delivery with retries and backoff to Alertmanager, webhooks, the log;
//! - `metrics`: the metric families `deploy/prometheus/rules.yml` queries;
//! - `admin`: the `Compliance` gRPC service (alerts, ack, dismiss, audit);
//! - `http`: `/api/v1/alerts` and `/api/v1/audit/verify`.
//!
//! Invariants: a recorded clock start never moves; the audit log is append-only and its
//! chain verifies; nothing is sent before it is durable; the outbox never drops a message.
//!
//! [`Compliance::start`] runs two tasks: the **engine loop** (evaluates at once when kicked,
//! i.e. when a registry change or a newly declared plan became durable; at most every
//! `debounce` after the ledger's applied-record counter moved, i.e. after a committed ingest
//! group, or on a shared ledger after another replica's commit was notified; and at least
//! every `interval`), and the **outbox loop** (delivers due items every
//! half second or when kicked, re-posts active alerts to Alertmanager every `resend`).

pub(crate) mod admin;
pub(crate) mod chain;
pub(crate) mod engine;
pub(crate) mod evidence;
pub(crate) mod http;
pub mod metrics;
pub mod outbox;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use engine::{
    AlertView, ComplianceConfig, Engine, EngineClock, EngineError, EngineTime, SinkConfig,
};
pub use store::{ComplianceStore, ComplianceStoreError};

/// The running compliance engine.
#[derive(Debug)]
pub struct Compliance {
    engine: Arc<Engine>,
    kick: Arc<Notify>,
    deliver: Arc<Notify>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Compliance {
    /// Starts the engine and outbox loops. `applied` is the ledger's applied-record counter:
    /// when it moves, ingest committed something new. On a shared ledger `elsewhere` moves
    /// when another replica committed (`flopmeter_pg::notify`). `kick` asks for an
    /// evaluation now: the ledger writer notifies it when a registry change or a new plan
    /// became durable.
    pub fn start(
        engine: Engine,
        applied: IntCounter,
        elsewhere: Option<watch::Receiver<u64>>,
        kick: Arc<Notify>,
        stop: watch::Receiver<bool>,
    ) -> Compliance {
        let engine = Arc::new(engine);
        let deliver = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(engine_loop(
                engine.clone(),
                Changes { applied, elsewhere },
                kick.clone(),
                deliver.clone(),
                stop.clone(),
            )),
            tokio::spawn(outbox_loop(engine.clone(), deliver.clone(), stop)),
        ];
        Compliance {
            engine,
            kick,
            deliver,
            tasks: std::sync::Mutex::new(tasks),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Asks for an evaluation soon (after a registry change, say).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Evaluates now and then delivers what is due; for the demo and tests, which drive
    /// time themselves.
    pub async fn evaluate_now(&self) -> Result<engine::PassSummary, EngineError> {
        let summary = evaluate_blocking(self.engine.clone()).await?;
        self.deliver.notify_one();
        Ok(summary)
    }

    /// Delivers what is due now.
    pub async fn deliver_now(&self) -> Result<(usize, usize), EngineError> {
        outbox::deliver_due(&self.engine).await
    }

    /// Waits until the loops, told to stop by the stop signal given to [`Compliance::start`]
    /// (send it first), have let go of the engine (and with it the database, which an
    /// offline tool or a restarted collector may want to open next).
    ///
    /// Why wait rather than abort: an evaluation runs as a blocking task, which an abort does
    /// not stop; the loop ends at its next wait once that evaluation is done. A loop that
    /// does not end within a minute is aborted.
    pub async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for mut t in tasks {
            if tokio::time::timeout(Duration::from_secs(60), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
    }
}

async fn evaluate_blocking(engine: Arc<Engine>) -> Result<engine::PassSummary, EngineError> {
    tokio::task::spawn_blocking(move || engine.evaluate())
        .await
        .unwrap_or_else(|e| Err(EngineError::Pass(e)))
}

/// Waits until this replica holds the lease and takes office, then evaluates as the module
/// says, until the lease is lost (or a write is refused for it, mid-pass): then leaves office
/// and waits for the lease again. On an embedded store the engine is always in office.
/// What says the ledger changed since the engine last looked: this replica's ingest, and on
/// a shared ledger the other replicas' commits.
struct Changes {
    applied: IntCounter,
    elsewhere: Option<watch::Receiver<u64>>,
}

impl Changes {
    fn now(&self) -> (u64, u64) {
        (
            self.applied.get(),
            self.elsewhere.as_ref().map_or(0, |e| *e.borrow()),
        )
    }
}

async fn engine_loop(
    engine: Arc<Engine>,
    changes: Changes,
    kick: Arc<Notify>,
    deliver: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = engine.config().clone();
    let mut leadership = engine.leadership().clone();
    let mut last_seen = (u64::MAX, u64::MAX);
    let mut last_full = tokio::time::Instant::now() - cfg.interval;
    // A deadline, not a fresh `sleep(debounce)` per turn: lease renewals wake the loop below
    // every `--lease-renew-every`, and with renewals more frequent than the debounce a sleep
    // restarted at each wake-up would never end, so ingest would never be evaluated.
    let mut next_look = tokio::time::Instant::now() + cfg.debounce;
    loop {
        if !engine.in_office() {
            if engine.leadership().leads() {
                let e = engine.clone();
                match tokio::task::spawn_blocking(move || e.take_office()).await {
                    Ok(Ok(())) => {
                        tracing::info!(
                            epoch = engine.leadership().epoch(),
                            "this replica leads the compliance engine now"
                        );
                        // The first pass at once: the former leader may have left work.
                        last_seen = (u64::MAX, u64::MAX);
                        last_full = tokio::time::Instant::now() - cfg.interval;
                        deliver.notify_one();
                    }
                    Ok(Err(e)) if e.is_not_leader() => {
                        tracing::info!("lost the engine lease while taking office");
                        engine.leave_office();
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot take office as the compliance leader; retrying");
                        engine.leave_office();
                        tokio::select! {
                            _ = tokio::time::sleep(cfg.debounce.max(Duration::from_secs(1))) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "taking office panicked; retrying"),
                }
            }
            if !engine.in_office() {
                tokio::select! {
                    () = leadership.changed() => {}
                    // The lease may also lapse by this replica's own clock, unannounced.
                    _ = tokio::time::sleep(cfg.debounce.max(Duration::from_secs(1))) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
        }
        let kicked = tokio::select! {
            _ = tokio::time::sleep_until(next_look) => {
                next_look = tokio::time::Instant::now() + cfg.debounce;
                false
            }
            _ = kick.notified() => true,
            () = leadership.changed() => {
                if !engine.leadership().leads() {
                    tracing::info!("lost the engine lease: this replica stops the compliance engine");
                    engine.leave_office();
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        };
        if !engine.in_office() {
            tracing::info!("the engine lease lapsed: this replica stops the compliance engine");
            engine.leave_office();
            continue;
        }
        let n = changes.now();
        if !kicked && n == last_seen && last_full.elapsed() < cfg.interval {
            continue;
        }
        last_seen = n;
        last_full = tokio::time::Instant::now();
        match evaluate_blocking(engine.clone()).await {
            Ok(s) if s.clock_events + s.alert_events > 0 => {
                tracing::info!(
                    clock_events = s.clock_events,
                    alert_events = s.alert_events,
                    "compliance evaluation recorded events"
                );
                deliver.notify_one();
            }
            Ok(_) => {}
            Err(e) if e.is_not_leader() => {
                // Not a failure: another replica took the lease during the pass. What this
                // pass committed before stays; the rest is the new leader's.
                tracing::info!(
                    "lost the engine lease during an evaluation pass: this replica stops the \
                     compliance engine and waits for the lease"
                );
                engine.leave_office();
            }
            Err(e) => tracing::error!(error = %e, "compliance evaluation failed"),
        }
    }
}

async fn outbox_loop(engine: Arc<Engine>, deliver: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let resend = engine.config().resend;
    let mut last_repost = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = deliver.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match outbox::deliver_due(&engine).await {
            Ok(_) => {}
            // The engine loop notices the loss too and leaves office.
            Err(e) if e.is_not_leader() => {
                tracing::info!("lost the engine lease during a delivery pass; deliveries stop");
            }
            Err(e) => tracing::error!(error = %e, "outbox delivery pass failed"),
        }
        if last_repost.elapsed() >= resend {
            last_repost = tokio::time::Instant::now();
            if let Err(e) = outbox::repost_active(&engine).await {
                tracing::error!(error = %e, "Alertmanager re-post failed");
            }
        }
    }
}
