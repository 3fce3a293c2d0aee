//! The shipper: streams the spool to the collector over gRPC and deletes what it acknowledges.
//!
//! Why it reads from the spool rather than from the sampler: the spool is the single source of
//! truth for what is unacknowledged, so a reconnect, a restart or a collector's `Resend` all
//! reduce to "send from sequence N", and nothing the sampler produced can bypass durability.
//!
//! Protocol (DESIGN.md §5, `ingest.proto`):
//! - open a stream, send `Hello` (agent id, node, GPU inventory), wait for `Welcome`;
//! - the `Welcome`'s high-water mark is what the collector already holds: delete it from the
//!   spool, raise the sequence counter past it if needed, and send from `hwm + 1`;
//! - send batches (bounded in records and bytes) in sequence order, with at most
//!   `max_in_flight` unacknowledged batches, so a collector that stalls cannot grow the
//!   agent's memory: the rest simply waits in the spool;
//! - `Ack{acked_through}` deletes up to that sequence (never beyond what was sent: a
//!   confused collector cannot make the agent delete records it never received); duplicate
//!   acks are no-ops; rejections in an ack are logged and counted (the collector has
//!   quarantined those records, so they are deleted too);
//! - `Resend{from_seq}` rewinds the cursor;
//! - no answer for `response_timeout` while batches are in flight, a stream error, or the
//!   stream ending: reconnect with jittered exponential backoff and resend everything
//!   unacknowledged (the spool still has it).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flopmeter_proto::v1::{
    AgentMessage, CollectorMessage, GpuInventory, Hello, RecordBatch, agent_message,
    collector_message, ingest_client::IngestClient,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};

use crate::gpu::Inventory;
use crate::metrics::AgentMetrics;
use crate::spool::{Spool, SpoolError};
use crate::time_source::TimeSource;

/// Why a stream to the collector ended.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The collector address is not a valid URI.
    #[error("invalid collector address {addr:?}: {source}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent token cannot be sent as a header.
    #[error("the agent token contains characters not allowed in an HTTP header")]
    BadToken,
    /// Connecting failed.
    #[error("connecting to the collector: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The collector answered with an error status.
    #[error("collector: {0}")]
    Status(#[from] tonic::Status),
    /// The collector closed the stream.
    #[error("the collector closed the stream")]
    Closed,
    /// The collector said something out of protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A spool operation on a blocking thread panicked (a bug; the stream restarts).
    #[error("spool task failed: {0}")]
    SpoolTask(#[source] tokio::task::JoinError),
    /// No answer within the response timeout.
    #[error("no answer from the collector within {0:?}")]
    Timeout(Duration),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The collector asks for records it acknowledged earlier; they were deleted.
    #[error(
        "the collector asks to resend from {from_seq}, but it acknowledged everything \
         through {acked_through} before and those records are deleted; its ledger may have \
         been restored from an older state (an operator must reconcile)"
    )]
    Unsatisfiable {
        /// What it asked for.
        from_seq: u64,
        /// What it had acknowledged.
        acked_through: u64,
    },
}

/// Shipper settings.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Collector address, `http://host:port` or `https://host:port`.
    pub collector: String,
    /// TLS settings for an `https://` collector (checked at start).
    pub tls: flopmeter_tls::ClientTls,
    /// Sent as `authorization: Bearer <token>` when set.
    pub agent_token: Option<String>,
    /// This agent's stable id.
    pub agent_id: String,
    /// Node name.
    pub node: String,
    /// The cluster this node belongs to (`Hello.cluster`), empty when unknown.
    pub cluster: String,
    /// The peak reported for uncatalogued GPUs (TFLOP/s), if the operator supplied one.
    pub operator_peak_tflops: Option<f64>,
    /// Records per batch.
    pub max_batch_records: usize,
    /// Encoded bytes per batch (a soft limit: a batch has at least one record).
    pub max_batch_bytes: usize,
    /// Unacknowledged batches on the wire.
    pub max_in_flight: usize,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// How long to wait for a `Welcome`, or for any answer while batches are in flight.
    pub response_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
}

impl ShipperConfig {
    /// Defaults for everything but the addressing.
    pub fn new(collector: String, agent_id: String, node: String) -> Self {
        ShipperConfig {
            collector,
            tls: flopmeter_tls::ClientTls::plaintext(),
            agent_token: None,
            agent_id,
            node,
            cluster: String::new(),
            operator_peak_tflops: None,
            max_batch_records: 256,
            max_batch_bytes: 1 << 20,
            max_in_flight: 4,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the agent wants the shipper to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipperControl {
    /// Ship forever.
    Run,
    /// Ship until the spool is empty or the deadline passes, then return.
    Drain {
        /// When to give up.
        deadline: Instant,
    },
    /// Return now.
    Stop,
}

/// The shipper. See the module docs.
#[derive(Debug)]
pub struct Shipper {
    cfg: ShipperConfig,
    spool: Arc<Spool>,
    metrics: Arc<AgentMetrics>,
    inventory: watch::Receiver<Option<Inventory>>,
    time: Arc<dyn TimeSource>,
    rng: u64,
}

enum SessionEnd {
    Done,
}

struct SessionError {
    error: ShipError,
    welcomed: bool,
}

impl Shipper {
    /// A shipper for `spool`. It waits for the first inventory before connecting, since
    /// the hello carries it.
    pub fn new(
        cfg: ShipperConfig,
        spool: Arc<Spool>,
        metrics: Arc<AgentMetrics>,
        inventory: watch::Receiver<Option<Inventory>>,
        time: Arc<dyn TimeSource>,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Shipper {
            cfg,
            spool,
            metrics,
            inventory,
            time,
            rng: seed | 1,
        }
    }

    /// Ships until told to stop (or, when draining, until the spool is empty or the
    /// deadline passes). Connection failures are retried forever; they are logged, counted
    /// and visible in `flopmeter_agent_collector_connected`.
    pub async fn run(mut self, mut control: watch::Receiver<ShipperControl>) {
        let mut attempt: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            if finished(&control, &self.spool) {
                return;
            }
            self.metrics.collector_connect_attempts_total.inc();
            let result = self.session(&mut control).await;
            self.metrics.collector_connected.set(0);
            match result {
                Ok(SessionEnd::Done) => return,
                Err(SessionError { error, welcomed }) => {
                    self.metrics.collector_stream_errors_total.inc();
                    if welcomed {
                        attempt = 0;
                        last_error = None;
                    }
                    let (reason, hint) = self.explain(&error);
                    self.metrics
                        .collector_errors_total
                        .with_label_values(&[reason])
                        .inc();
                    // A collector that is down for hours must not flood the log: each
                    // distinct failure is a warning once, repeats are debug.
                    let msg = match hint {
                        Some(hint) => format!("{hint} ({})", chain(&error)),
                        None => chain(&error),
                    };
                    if last_error.as_deref() == Some(msg.as_str()) {
                        tracing::debug!(error = %msg, "still cannot reach the collector");
                    } else {
                        tracing::warn!(
                            error = %msg,
                            collector = %self.cfg.collector,
                            "collector stream ended; reconnecting with backoff"
                        );
                        last_error = Some(msg);
                    }
                }
            }
            let delay = self.backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = until_exit(&mut control) => return,
            }
        }
    }

    /// A failed stream's reason label and, for the mistakes flopmeter can name (TLS on one
    /// side only, an expired certificate, the wrong CA, ...), what to do in plain words.
    fn explain(&self, error: &ShipError) -> (&'static str, Option<String>) {
        if let Some(d) = flopmeter_tls::diagnose(error, self.cfg.tls.is_tls()) {
            return (d.reason, Some(d.message));
        }
        let reason = match error {
            ShipError::Status(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                "refused"
            }
            ShipError::Connect(_) | ShipError::BadAddress { .. } => "connect",
            ShipError::Timeout(_) => "timeout",
            _ => "stream",
        };
        (reason, None)
    }

    /// Full jitter: uniform in [d/2, d] with d = min(max, initial × 2^attempt), so a fleet
    /// of agents that lost the collector together does not come back in lockstep.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = self
            .cfg
            .backoff_initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.cfg.backoff_max);
        // xorshift64: jitter needs no cryptographic randomness.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = 0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        base.mul_f64(frac)
    }

    fn hello(&self, inv: &Inventory) -> AgentMessage {
        let gpus = inv
            .gpus
            .iter()
            .map(|g| {
                let model = g.model();
                GpuInventory {
                    index: g.index,
                    uuid: g.uuid.clone().unwrap_or_default(),
                    name: g.name.clone().unwrap_or_default(),
                    pci_device_id: g.pci_device_id.map_or(0, u32::from),
                    catalogue_id: model.map(|m| m.id.to_string()).unwrap_or_default(),
                    gpm_supported: g.gpm_supported,
                    max_sm_clock_mhz: g.max_sm_clock_mhz.unwrap_or(0),
                    operator_peak_tflops: if model.is_none() {
                        self.cfg.operator_peak_tflops.unwrap_or(0.0)
                    } else {
                        0.0
                    },
                    name_catalogue_id: g
                        .name_conflict
                        .map(|m| m.id.to_string())
                        .unwrap_or_default(),
                    mig_enabled: g.mig_enabled,
                    mig_instances: g
                        .mig_instances
                        .iter()
                        .map(|m| flopmeter_proto::v1::MigInstance {
                            uuid: m.uuid.clone(),
                            profile: m.profile.clone(),
                            gpu_instance_id: m.gpu_instance_id.unwrap_or(u32::MAX),
                            compute_instance_id: m.compute_instance_id.unwrap_or(u32::MAX),
                            sm_count: m.sm_count.unwrap_or(0),
                            gpu_sm_count: g.gpu_sm_count().unwrap_or(0),
                        })
                        .collect(),
                }
            })
            .collect();
        AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                agent_id: self.cfg.agent_id.clone(),
                node: self.cfg.node.clone(),
                software_version: env!("CARGO_PKG_VERSION").to_string(),
                agent_time_unix_ms: self.time.now_unix_ms(),
                driver_version: inv.driver_version.clone().unwrap_or_default(),
                nvml_version: inv.nvml_version.clone().unwrap_or_default(),
                gpus,
                cluster: self.cfg.cluster.clone(),
            })),
        }
    }

    async fn ack(&self, through: u64) -> Result<u64, ShipError> {
        let spool = self.spool.clone();
        let removed = tokio::task::spawn_blocking(move || spool.ack(through))
            .await
            .map_err(ShipError::SpoolTask)??;
        self.metrics.records_acked_total.inc_by(removed);
        Ok(removed)
    }

    async fn session(
        &mut self,
        control: &mut watch::Receiver<ShipperControl>,
    ) -> Result<SessionEnd, SessionError> {
        let fail = |error: ShipError| SessionError {
            error,
            welcomed: false,
        };
        // The hello needs the inventory: wait for the sampler to read it.
        let inventory = tokio::select! {
            inv = self.inventory.wait_for(Option::is_some) => match inv {
                Ok(i) => i.clone().unwrap_or_else(empty_inventory),
                // The sampler is gone without ever producing an inventory: nothing to do
                // but ship what the spool holds, with an empty inventory.
                Err(_) => empty_inventory(),
            },
            _ = until_exit(control) => return Ok(SessionEnd::Done),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(self.cfg.collector.clone())
            .map_err(|source| {
                fail(ShipError::BadAddress {
                    addr: self.cfg.collector.clone(),
                    source,
                })
            })?
            .connect_timeout(self.cfg.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let endpoint = self.cfg.tls.apply(endpoint).map_err(|source| {
            fail(ShipError::BadAddress {
                addr: self.cfg.collector.clone(),
                source,
            })
        })?;
        let channel = tokio::select! {
            c = endpoint.connect() => c.map_err(|e| fail(ShipError::Connect(e)))?,
            _ = until_exit(control) => return Ok(SessionEnd::Done),
        };
        let token: Option<MetadataValue<Ascii>> = match &self.cfg.agent_token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| fail(ShipError::BadToken))?,
            ),
            None => None,
        };
        let mut client =
            IngestClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                if let Some(t) = &token {
                    req.metadata_mut().insert("authorization", t.clone());
                }
                Ok(req)
            });
        let (tx, rx) = mpsc::channel::<AgentMessage>(self.cfg.max_in_flight + 1);
        tx.send(self.hello(&inventory))
            .await
            .map_err(|_| fail(ShipError::Closed))?;
        let timeout = self.cfg.response_timeout;
        let mut inbound = tokio::select! {
            r = tokio::time::timeout(
                timeout,
                client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            ) => r
                .map_err(|_| fail(ShipError::Timeout(timeout)))?
                .map_err(|s| fail(s.into()))?
                .into_inner(),
            _ = until_exit(control) => return Ok(SessionEnd::Done),
        };
        let first = tokio::select! {
            m = tokio::time::timeout(timeout, inbound.message()) => m
                .map_err(|_| fail(ShipError::Timeout(timeout)))?
                .map_err(|s| fail(s.into()))?,
            _ = until_exit(control) => return Ok(SessionEnd::Done),
        };
        let welcome = match first.and_then(|m| m.kind) {
            Some(collector_message::Kind::Welcome(w)) => w,
            Some(_) => {
                return Err(fail(ShipError::Protocol(
                    "expected Welcome as the first message".into(),
                )));
            }
            None => return Err(fail(ShipError::Closed)),
        };
        self.metrics.collector_connected.set(1);
        tracing::info!(
            collector = %self.cfg.collector,
            high_water_mark = welcome.high_water_mark,
            collector_version = %welcome.collector_version,
            "connected to the collector"
        );
        // A stream that got its Welcome resets the reconnect backoff, unless it ended in a
        // way that reconnecting cannot fix soon.
        let welcomed = |error: ShipError| SessionError {
            welcomed: !matches!(error, ShipError::Unsatisfiable { .. }),
            error,
        };
        let mut s = Session {
            acked: 0,
            sent_through: 0,
            cursor: 1,
            in_flight: VecDeque::new(),
        };
        self.apply_high_water(&mut s, welcome.high_water_mark)
            .await
            .map_err(welcomed)?;
        let mut appended = self.spool.subscribe();
        let mut last_answer = Instant::now();
        loop {
            if finished(control, &self.spool) {
                return Ok(SessionEnd::Done);
            }
            let drain_deadline = match *control.borrow() {
                ShipperControl::Drain { deadline } => Some(deadline),
                _ => None,
            };
            let has_more = self.spool.stats().next_seq > s.cursor;
            let can_send = has_more && s.in_flight.len() < self.cfg.max_in_flight.max(1);
            let answer_deadline = last_answer + timeout;
            tokio::select! {
                msg = inbound.message() => {
                    let msg = msg.map_err(|st| welcomed(st.into()))?.ok_or_else(|| welcomed(ShipError::Closed))?;
                    last_answer = Instant::now();
                    self.handle(&mut s, msg).await.map_err(welcomed)?;
                }
                permit = tx.reserve(), if can_send => {
                    let permit = permit.map_err(|_| welcomed(ShipError::Closed))?;
                    let records = self.spool.read_from(
                        s.cursor,
                        self.cfg.max_batch_records.max(1),
                        self.cfg.max_batch_bytes,
                    ).map_err(|e| welcomed(e.into()))?;
                    let Some(last) = records.last().map(|r| r.seq) else {
                        // Everything from the cursor on was acknowledged meanwhile.
                        s.cursor = self.spool.stats().next_seq;
                        continue;
                    };
                    let n = records.len() as u64;
                    permit.send(AgentMessage {
                        kind: Some(agent_message::Kind::Batch(RecordBatch { records })),
                    });
                    self.metrics.records_sent_total.inc_by(n);
                    if s.in_flight.is_empty() {
                        last_answer = Instant::now();
                    }
                    s.in_flight.push_back(last);
                    s.cursor = last + 1;
                    s.sent_through = s.sent_through.max(last);
                }
                _ = appended.changed(), if !can_send => {}
                _ = tokio::time::sleep_until(answer_deadline), if !s.in_flight.is_empty() => {
                    return Err(welcomed(ShipError::Timeout(timeout)));
                }
                r = control.changed() => if r.is_err() {
                    // The agent is gone: nobody to ship for.
                    return Ok(SessionEnd::Done);
                },
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                    return Ok(SessionEnd::Done);
                }
            }
        }
    }

    /// The collector holds everything up to `hwm`: drop it, make sure new records get
    /// higher numbers, and send from `hwm + 1`.
    async fn apply_high_water(&self, s: &mut Session, hwm: u64) -> Result<(), ShipError> {
        if hwm > 0 {
            self.ack(hwm).await?;
            let spool = self.spool.clone();
            tokio::task::spawn_blocking(move || spool.raise_next_seq(hwm.saturating_add(1)))
                .await
                .map_err(ShipError::SpoolTask)??;
        }
        let st = self.spool.stats();
        s.acked = st.acked_through.max(hwm);
        s.sent_through = s.acked;
        s.cursor = s.acked + 1;
        s.in_flight.clear();
        Ok(())
    }

    async fn handle(&self, s: &mut Session, msg: CollectorMessage) -> Result<(), ShipError> {
        match msg.kind {
            Some(collector_message::Kind::Ack(ack)) => {
                for r in ack.rejections.iter().filter(|r| r.seq > s.acked) {
                    self.metrics
                        .records_rejected_total
                        .with_label_values(&[reason_label(&r.reason)])
                        .inc();
                    tracing::warn!(
                        seq = r.seq,
                        reason = %r.reason,
                        detail = %r.detail,
                        "collector rejected a record (quarantined there, not counted)"
                    );
                }
                // Never delete beyond what this session sent: an ack for records the
                // collector cannot have seen is a collector bug, not a reason to lose data.
                let through = ack.acked_through.min(s.sent_through);
                if through > s.acked {
                    self.ack(through).await?;
                    s.acked = through;
                    s.in_flight.retain(|last| *last > through);
                }
            }
            Some(collector_message::Kind::Resend(r)) => {
                self.metrics.resends_total.inc();
                if r.from_seq <= s.acked {
                    // The collector lost what it had acknowledged (a restored ledger?): those
                    // records are deleted here and cannot be sent again. Resending what the
                    // spool holds would only be answered with the same Resend, so end the
                    // stream and let the reconnect backoff pace the retries.
                    return Err(ShipError::Unsatisfiable {
                        from_seq: r.from_seq,
                        acked_through: s.acked,
                    });
                } else {
                    tracing::info!(from_seq = r.from_seq, reason = %r.reason, "collector asks to resend");
                }
                s.cursor = r.from_seq.min(s.cursor).max(s.acked + 1);
                s.in_flight.clear();
            }
            Some(collector_message::Kind::Welcome(w)) => {
                self.apply_high_water(s, w.high_water_mark).await?;
            }
            None => return Err(ShipError::Protocol("empty collector message".into())),
        }
        Ok(())
    }
}

struct Session {
    acked: u64,
    sent_through: u64,
    cursor: u64,
    in_flight: VecDeque<u64>,
}

/// An error with its causes, `a: b: c`, since tonic's own messages ("transport error") name
/// the layer but not the reason ("connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// Rejection reasons become a label: keep the machine-readable ones, fold anything odd into
/// "other" so a misbehaving collector cannot explode the label set.
fn reason_label(reason: &str) -> &str {
    let ok = !reason.is_empty()
        && reason.len() <= 40
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok { reason } else { "other" }
}

fn finished(control: &watch::Receiver<ShipperControl>, spool: &Spool) -> bool {
    match *control.borrow() {
        ShipperControl::Run => false,
        ShipperControl::Stop => true,
        ShipperControl::Drain { deadline } => {
            spool.stats().records == 0 || Instant::now() >= deadline
        }
    }
}

/// Resolves when the shipper must stop at once: `Stop`, or a drain deadline that passed.
async fn until_exit(control: &mut watch::Receiver<ShipperControl>) {
    loop {
        let state = *control.borrow_and_update();
        match state {
            ShipperControl::Stop => return,
            ShipperControl::Drain { deadline } => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return,
                    r = control.changed() => if r.is_err() { return },
                }
            }
            ShipperControl::Run => {
                if control.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn empty_inventory() -> Inventory {
    Inventory {
        driver_version: None,
        nvml_version: None,
        gpus: Vec::new(),
    }
}
