//! Agent ingest: the `flopmeter.v1.Ingest` gRPC service.
//!
//! One session per agent stream: Hello (authenticated when tokens are required) → Welcome
//! with the agent's high-water mark → batches, each validated record by record
//! ([`validate`]) and queued to the ledger writer in arrival order; the Acks go back in the
//! same order, each only after the flush that made its batch durable (`crate::writer`).
//!
//! A session reads ahead: it queues the next batch while earlier ones wait for their flush,
//! so an agent that pipelines batches is not limited to one per flush. Refusals end the
//! stream with a gRPC status, after the Acks of the batches before them:
//! - a batch whose sequence numbers are zero or not strictly increasing: INVALID_ARGUMENT,
//!   nothing of it applied;
//! - an unknown agent or a wrong token, when tokens are required: UNAUTHENTICATED;
//! - a stream that does not start with a valid Hello ([`validate::check_hello`]):
//!   INVALID_ARGUMENT;
//! - a Hello with another agent's valid token: UNAUTHENTICATED (`forged-identity`);
//! - in mutual TLS, no client certificate: UNAUTHENTICATED; an agent id that is neither the
//!   certificate's CN nor one of its DNS names: PERMISSION_DENIED (`certificate-mismatch`);
//! - a message that does not decode (not protobuf, truncated): INVALID_ARGUMENT;
//! - a message above `--max-message-bytes`: RESOURCE_EXHAUSTED, before it is read into memory.
//!
//! Each refusal bumps `flopmeter_ingest_refused_total{reason}` ([`Refusal`]); a broken
//! connection is not a refusal and is not answered.

/// Public because `flopmeter certs dev` checks the certificates it issues against the very
/// rule the collector admits agents by.
pub mod auth;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use flopmeter_proto::v1::ingest_server::Ingest;
use flopmeter_proto::v1::{
    Ack, AgentMessage, CollectorMessage, Hello, Rejection, Resend, Welcome, agent_message,
    collector_message,
};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::durable_marks::DurableMarks;
use crate::ledger::{AgentInfo, ApplyOutcome, CheckedRecord, IncomingBatch, StoreError};
use crate::metrics::{Metrics, Refusal};
use crate::now_unix_ms;
use crate::writer::{Job, WriterHandle};
use validate::{Inventory, Limits, RejectReason, check_hello, verdict};

/// Batches a session reads ahead of their Acks.
const READ_AHEAD: usize = 64;

/// The ingest service.
#[derive(Debug, Clone)]
pub struct IngestService {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// What a Welcome or an Ack may name: only marks that are on disk.
    marks: Arc<DurableMarks>,
    writer: WriterHandle,
    metrics: Metrics,
    limits: Limits,
    timeouts: Timeouts,
    tokens: Option<HashMap<String, String>>,
    /// Mutual TLS: the agent id comes from the client certificate.
    client_certs: bool,
    shutdown: watch::Receiver<bool>,
}

impl IngestService {
    /// Creates the service. Sessions end when `shutdown` becomes true. With `client_certs`
    /// (mutual TLS), an agent must present a client certificate naming its agent id.
    pub fn new(
        marks: Arc<DurableMarks>,
        writer: WriterHandle,
        metrics: Metrics,
        door: Door,
        shutdown: watch::Receiver<bool>,
    ) -> IngestService {
        IngestService {
            shared: Arc::new(Shared {
                marks,
                writer,
                metrics,
                limits: door.limits,
                timeouts: door.timeouts,
                tokens: door.tokens,
                client_certs: door.client_certs,
                shutdown,
            }),
        }
    }
}

/// What the door checks: record limits, silence, credentials.
#[derive(Debug, Clone)]
pub struct Door {
    /// Per-record validation limits.
    pub limits: Limits,
    /// How long a stream may stay silent.
    pub timeouts: Timeouts,
    /// Agent id → token, when tokens are required.
    pub tokens: Option<HashMap<String, String>>,
    /// Mutual TLS: the agent id (and role) come from the client certificate.
    pub client_certs: bool,
}

type Outbound = mpsc::Sender<Result<CollectorMessage, Status>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let bearer = auth::bearer(request.metadata()).map(str::to_string);
        let peer = auth::peer_identity(request.peer_certs().as_deref().map(Vec::as_slice));
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        // The response starts at once and the Hello is read in the session: a client that
        // awaits the response before sending its Hello must not deadlock.
        tokio::spawn(session(self.shared.clone(), bearer, peer, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// How long a stream may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Before its Hello.
    pub hello: std::time::Duration,
    /// Between messages after the Hello.
    pub idle: std::time::Duration,
}

/// Waits for the next inbound message, or for shutdown (`None`). A stream silent for
/// `limit` is answered with DEADLINE_EXCEEDED.
async fn next_message(
    inbound: &mut Streaming<AgentMessage>,
    shutdown: &mut watch::Receiver<bool>,
    limit: std::time::Duration,
    waiting_for: &str,
) -> Option<Result<Option<AgentMessage>, Status>> {
    tokio::select! {
        m = tokio::time::timeout(limit, inbound.message()) => Some(m.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no {waiting_for} within {}; the collector ends silent streams",
                flopmeter_core::duration::HumanDuration(limit)
            )))
        })),
        _ = shutdown.wait_for(|stop| *stop) => None,
    }
}

/// The status to end a stream with when reading it failed because of what the peer sent (a
/// message that does not decode, or one above the size limit), counted; `None` when the
/// connection broke or was reset, which leaves no one to answer.
fn inbound_refusal(m: &Metrics, agent: &str, e: &Status) -> Option<Status> {
    // tonic's decoder builds its statuses itself, without a source; transport failures
    // (h2, hyper, I/O) always carry their cause as the source.
    if std::error::Error::source(e).is_some() || e.code() == tonic::Code::Cancelled {
        return None;
    }
    let (refusal, status) = match e.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => (
            Refusal::MessageTooLarge,
            Status::resource_exhausted(format!(
                "message refused, nothing of it was applied: {}",
                e.message()
            )),
        ),
        _ => (
            Refusal::MalformedMessage,
            Status::invalid_argument(format!(
                "malformed message, nothing of it was applied: {}",
                e.message()
            )),
        ),
    };
    m.refuse(refusal);
    tracing::warn!(%agent, reason = refusal.as_str(), error = %e.message(), "message refused");
    Some(status)
}

/// Marks the agent disconnected when the session ends, however it ends.
struct Connected {
    metrics: Metrics,
    agent: String,
    node: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.metrics.agent_connected(&self.agent, &self.node, false);
    }
}

enum Pending {
    Outcome {
        reply: oneshot::Receiver<Result<ApplyOutcome, StoreError>>,
        received: Instant,
    },
    Fail(Status),
}

async fn session(
    shared: Arc<Shared>,
    bearer: Option<String>,
    peer: Option<auth::Peer>,
    mut inbound: Streaming<AgentMessage>,
    out: Outbound,
) {
    let mut shutdown = shared.shutdown.clone();
    let m = &shared.metrics;
    let hello =
        match next_message(&mut inbound, &mut shutdown, shared.timeouts.hello, "Hello").await {
            Some(Ok(Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(h)),
            }))) => h,
            None | Some(Ok(None)) => return,
            Some(Err(e)) if e.code() == tonic::Code::DeadlineExceeded => {
                m.refuse(Refusal::HelloTimeout);
                let _ = out.send(Err(e)).await;
                return;
            }
            Some(Err(e)) => {
                if let Some(status) = inbound_refusal(m, "", &e) {
                    let _ = out.send(Err(status)).await;
                }
                return;
            }
            Some(Ok(Some(_))) => {
                m.refuse(Refusal::BadHello);
                let _ = out
                    .send(Err(Status::invalid_argument(
                        "the stream must start with a Hello",
                    )))
                    .await;
                return;
            }
        };
    let agent_id = match check_hello(&hello) {
        Ok(id) => id,
        Err(why) => {
            m.refuse(Refusal::BadHello);
            let _ = out
                .send(Err(Status::invalid_argument(why.to_string())))
                .await;
            return;
        }
    };
    if let Err(refusal) =
        auth::check_agent(shared.tokens.as_ref(), agent_id.as_str(), bearer.as_deref())
    {
        m.refuse(refusal);
        tracing::warn!(agent = %hello.agent_id, node = %hello.node, reason = refusal.as_str(), "agent refused");
        let _ = out
            .send(Err(Status::unauthenticated(format!(
                "agent {:?} is not allowed ({})",
                hello.agent_id,
                refusal.as_str()
            ))))
            .await;
        return;
    }
    if let Err(refusal) = auth::check_identity(shared.client_certs, peer.as_ref(), &agent_id) {
        m.refuse(refusal);
        tracing::warn!(agent = %hello.agent_id, node = %hello.node, certificate = ?peer, reason = refusal.as_str(), "agent refused");
        let status = match refusal {
            Refusal::NoClientCertificate => Status::unauthenticated(
                "mutual TLS is on: the agent must present a client certificate (--tls-cert, \
                 --tls-key) signed by the collector's --tls-client-ca",
            ),
            Refusal::CertificateRole => Status::permission_denied(format!(
                "the client certificate is not an agent certificate (its roles, the subject's \
                 OU: [{}]); ingest needs OU={} (flopmeter certs dev issues agent certificates \
                 with it; with cert-manager, set subject.organizationalUnits)",
                peer.as_ref()
                    .map(|p| p.roles.join(", "))
                    .unwrap_or_default(),
                flopmeter_tls::AGENT_ROLE
            )),
            _ => Status::permission_denied(format!(
                "agent id {:?} is not the name in the client certificate ({}); the agent id \
                 must be the certificate's CN or one of its DNS names",
                hello.agent_id,
                peer.as_ref()
                    .map(|p| p.names.join(", "))
                    .unwrap_or_default()
            )),
        };
        let _ = out.send(Err(status)).await;
        return;
    }
    let agent = hello.agent_id.clone();
    let node = hello.node.clone();
    // The durable mark, never the store's: the agent deletes what the Welcome names, and
    // the store's mark includes commits whose flush may still be under way. (On a shared
    // ledger, where a commit is durable, the store's mark read now: the agent may have sent
    // batches to another collector since this one saw it.)
    let hwm = match shared.marks.at_hello(&agent).await {
        Ok(hwm) => hwm,
        Err(e) => {
            tracing::warn!(%agent, error = %e, "cannot read the agent's high-water mark");
            let _ = out
                .send(Err(Status::unavailable(format!(
                    "the collector cannot read this agent's high-water mark from its ledger \
                     now ({e}); retry later"
                ))))
                .await;
            return;
        }
    };
    let now = now_unix_ms();
    let _ = shared
        .writer
        .submit(Job::RecordAgent(agent_info(&hello, now)))
        .await;
    m.agent_connected(&agent, &node, true);
    m.agent_seen(&agent, &node, now);
    let _guard = Connected {
        metrics: m.clone(),
        agent: agent.clone(),
        node: node.clone(),
    };
    tracing::info!(%agent, %node, hwm, version = %hello.software_version, "agent connected");
    let welcome = CollectorMessage {
        kind: Some(collector_message::Kind::Welcome(Welcome {
            high_water_mark: hwm,
            collector_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    };
    if out.send(Ok(welcome)).await.is_err() {
        return;
    }
    let inventory = Inventory::from_hello(&hello.gpus);
    let (pending_tx, pending_rx) = mpsc::channel(READ_AHEAD);
    let responder = tokio::spawn(respond(
        shared.metrics.clone(),
        shared.marks.clone(),
        agent.clone(),
        pending_rx,
        out,
    ));
    loop {
        let msg = match next_message(&mut inbound, &mut shutdown, shared.timeouts.idle, "message")
            .await
        {
            None => {
                let _ = pending_tx
                    .send(Pending::Fail(Status::unavailable(
                        "the collector is shutting down",
                    )))
                    .await;
                break;
            }
            Some(Ok(Some(msg))) => msg,
            // The agent closed its side, or the connection broke: the Acks still owed are
            // sent if the connection allows; nothing else to do.
            Some(Ok(None)) => break,
            Some(Err(e)) if e.code() == tonic::Code::DeadlineExceeded => {
                m.refuse(Refusal::HelloTimeout);
                tracing::info!(%agent, "agent stream silent for --idle-timeout: ended");
                let _ = pending_tx.send(Pending::Fail(e)).await;
                break;
            }
            // The same, unless the agent sent something undecodable or too large: then it
            // hears why, after the Acks of the batches before.
            Some(Err(e)) => {
                if let Some(status) = inbound_refusal(m, &agent, &e) {
                    let _ = pending_tx.send(Pending::Fail(status)).await;
                }
                break;
            }
        };
        let batch = match msg.kind {
            Some(agent_message::Kind::Batch(b)) => b,
            _ => {
                m.refuse(Refusal::BadHello);
                let _ = pending_tx
                    .send(Pending::Fail(Status::invalid_argument(
                        "only RecordBatch messages may follow the Hello",
                    )))
                    .await;
                break;
            }
        };
        let received = Instant::now();
        let now = now_unix_ms();
        m.ingest_batches.inc();
        m.ingest_bytes.inc_by(batch.encoded_len() as u64);
        m.agent_seen(&agent, &node, now);
        let seqs: Vec<u64> = batch.records.iter().map(|r| r.seq).collect();
        if !crate::ledger::sequence::well_formed(&seqs) {
            m.refuse(Refusal::SequenceNotIncreasing);
            tracing::warn!(%agent, "batch refused: sequence numbers not strictly increasing");
            let _ = pending_tx
                .send(Pending::Fail(Status::invalid_argument(
                    "RecordBatch sequence numbers must start above 0 and strictly increase; \
                     nothing of this batch was applied",
                )))
                .await;
            break;
        }
        let records = batch
            .records
            .into_iter()
            .map(|record| {
                let rejection = verdict(&record, &inventory, &shared.limits, now);
                let max = inventory
                    .ceiling_flop_per_s(&record)
                    .map(|c| c * shared.limits.peak_tolerance);
                CheckedRecord::new(record, rejection).with_max_flop_per_s(max)
            })
            .collect();
        let incoming = IncomingBatch {
            agent_id: agent.clone(),
            node: node.clone(),
            received_unix_ms: now,
            records,
        };
        let (reply_tx, reply) = oneshot::channel();
        if shared
            .writer
            .submit(Job::Apply(Box::new(incoming), reply_tx))
            .await
            .is_err()
        {
            let _ = pending_tx
                .send(Pending::Fail(Status::unavailable(
                    "the ledger writer has stopped",
                )))
                .await;
            break;
        }
        if pending_tx
            .send(Pending::Outcome { reply, received })
            .await
            .is_err()
        {
            break;
        }
    }
    drop(pending_tx);
    let _ = responder.await;
    tracing::info!(%agent, %node, "agent disconnected");
}

fn agent_info(h: &Hello, now: i64) -> AgentInfo {
    let mut gpus: Vec<(String, u32)> = Vec::new();
    for g in &h.gpus {
        let t = if g.catalogue_id.is_empty() {
            crate::ledger::aggregate::UNKNOWN_GPU_TYPE.to_string()
        } else {
            g.catalogue_id.clone()
        };
        match gpus.iter_mut().find(|(k, _)| *k == t) {
            Some((_, n)) => *n += 1,
            None => gpus.push((t, 1)),
        }
    }
    AgentInfo {
        agent_id: h.agent_id.clone(),
        node: h.node.clone(),
        software_version: h.software_version.clone(),
        gpus,
        last_hello_unix_ms: now,
        cluster: h.cluster.clone(),
    }
}

/// Sends the Acks (and Resends) in batch order, each once its batch is durable.
async fn respond(
    metrics: Metrics,
    marks: Arc<DurableMarks>,
    agent: String,
    mut pending: mpsc::Receiver<Pending>,
    out: Outbound,
) {
    while let Some(p) = pending.recv().await {
        let (reply, received) = match p {
            Pending::Outcome { reply, received } => (reply, received),
            Pending::Fail(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        let outcome = match reply.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "applying a batch failed");
                let _ = out.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                let _ = out
                    .send(Err(Status::unavailable("the ledger writer has stopped")))
                    .await;
                return;
            }
        };
        metrics.ingest_records.inc_by(outcome.applied as u64);
        metrics
            .ingest_duplicate_records
            .inc_by(outcome.duplicates as u64);
        let new_from = outcome.rejections.len() - outcome.newly_rejected;
        for r in &outcome.rejections[new_from..] {
            if let Some(reason) = RejectReason::parse(&r.reason) {
                metrics.record_rejected(reason);
            }
        }
        let progressed = outcome.applied + outcome.newly_rejected + outcome.duplicates > 0;
        if progressed || outcome.resend_from.is_none() {
            let ack = Ack {
                // The writer moved the durable mark before replying, so this is the
                // outcome's own mark; read through the durable one all the same, so that no
                // path can promise more than the disk holds.
                acked_through: marks.clamp(&agent, outcome.acked_through),
                rejections: outcome
                    .rejections
                    .iter()
                    .map(|r| Rejection {
                        seq: r.seq,
                        reason: r.reason.clone(),
                        detail: r.detail.clone(),
                    })
                    .collect(),
            };
            metrics
                .ack_latency
                .observe(received.elapsed().as_secs_f64());
            let msg = CollectorMessage {
                kind: Some(collector_message::Kind::Ack(ack)),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        if let Some(from_seq) = outcome.resend_from {
            metrics.ingest_resends.inc();
            let msg = CollectorMessage {
                kind: Some(collector_message::Kind::Resend(Resend {
                    from_seq,
                    reason: format!(
                        "sequence gap: the collector has everything through {} and needs {} next",
                        from_seq - 1,
                        from_seq
                    ),
                })),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    }
}
