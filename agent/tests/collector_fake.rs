//! A minimal collector implementing `ingest.proto` in the test process, with knobs for
//! misbehaviour: disconnects, duplicate acks, stalls, lost batches (→ Resend), rejections.
//!
//! Its accounting is the protocol's: records are applied strictly in sequence order above a
//! per-agent high-water mark; anything at or below it is ignored (and acknowledged); a gap
//! is answered with `Resend{from: hwm + 1}`. So "applied" below is exactly what a real
//! collector would have counted.

#![allow(dead_code)] // Shared with the top-level tests, which use only part of it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use flopmeter_proto::v1::{
    Ack, AgentMessage, CollectorMessage, Hello, IntervalRecord, Rejection, Resend, Welcome,
    agent_message, collector_message,
    ingest_server::{Ingest, IngestServer},
};
use tokio::sync::{Notify, mpsc};

/// Knobs, changeable while the fake runs.
#[derive(Debug, Default, Clone)]
pub struct Script {
    /// Close each stream after this many batches (without acking the last one, which is
    /// applied when the count is odd and lost when it is even).
    pub drop_after_batches: Option<u32>,
    /// Send every ack twice, plus a stale one.
    pub duplicate_acks: bool,
    /// Stop reading and answering (until `stall = false` and `unstall()`).
    pub stall: bool,
    /// Answer this many more batches, then stall (as `stall`): where a stall begins is then
    /// the fake's own doing, not a race with the test thread.
    pub stall_after_batches: Option<u32>,
    /// Silently lose the first batch that contains this sequence number (once).
    pub lose_batch_with: Option<u64>,
    /// Reject these sequence numbers (applied as quarantined, acked with a rejection).
    pub reject: HashSet<u64>,
    /// Require this bearer token.
    pub token: Option<String>,
}

/// What the fake saw and counted.
#[derive(Debug, Default)]
pub struct State {
    /// Per agent: high-water mark.
    pub hwm: HashMap<String, u64>,
    /// Per agent: records applied, in order.
    pub applied: HashMap<String, Vec<IntervalRecord>>,
    /// Records received, duplicates included.
    pub received: u64,
    /// Streams opened.
    pub connections: u32,
    /// Per stream (in opening order): the sequence numbers received, duplicates included.
    pub per_connection: Vec<Vec<u64>>,
    /// Hellos received.
    pub hellos: Vec<Hello>,
    /// (stream index, high-water mark) of every Welcome sent.
    pub welcomes: Vec<(usize, u64)>,
    /// Resends sent.
    pub resends: u32,
    /// Authorization headers seen.
    pub auth: Vec<Option<String>>,
    /// The script.
    pub script: Script,
}

/// The fake collector.
#[derive(Clone, Default)]
pub struct FakeCollector {
    pub state: Arc<Mutex<State>>,
    unstall: Arc<Notify>,
}

impl FakeCollector {
    /// Starts serving on a free loopback port; returns the `http://` address.
    pub async fn start(script: Script) -> (FakeCollector, String) {
        let fake = FakeCollector::default();
        fake.state.lock().unwrap().script = script;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let svc = IngestServer::new(fake.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (fake, format!("http://{addr}"))
    }

    /// Changes the script.
    pub fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.state.lock().unwrap().script);
    }

    /// Ends a stall.
    pub fn unstall(&self) {
        self.script(|s| s.stall = false);
        self.unstall.notify_waiters();
    }

    /// Records applied for `agent`, by sequence number.
    pub fn applied_seqs(&self, agent: &str) -> Vec<u64> {
        self.state
            .lock()
            .unwrap()
            .applied
            .get(agent)
            .map(|v| v.iter().map(|r| r.seq).collect())
            .unwrap_or_default()
    }

    /// Sets the high-water mark the collector already holds for `agent`.
    pub fn preset_hwm(&self, agent: &str, hwm: u64) {
        self.state.lock().unwrap().hwm.insert(agent.into(), hwm);
    }

    async fn wait_unstalled(&self) {
        loop {
            let notified = self.unstall.notified();
            if !self.state.lock().unwrap().script.stall {
                return;
            }
            notified.await;
        }
    }

    /// Applies a batch; returns the answers to send.
    fn on_batch(&self, agent: &str, records: Vec<IntervalRecord>) -> Vec<CollectorMessage> {
        let mut st = self.state.lock().unwrap();
        if let Some(lose) = st.script.lose_batch_with
            && records.iter().any(|r| r.seq == lose)
        {
            st.script.lose_batch_with = None;
            return Vec::new();
        }
        let mut hwm = st.hwm.get(agent).copied().unwrap_or(0);
        let mut rejections = Vec::new();
        let mut out = Vec::new();
        for r in records {
            if r.seq <= hwm {
                continue;
            }
            if r.seq != hwm + 1 {
                st.resends += 1;
                out.push(msg(collector_message::Kind::Resend(Resend {
                    from_seq: hwm + 1,
                    reason: format!("gap: expected {}, got {}", hwm + 1, r.seq),
                })));
                break;
            }
            hwm = r.seq;
            if st.script.reject.contains(&r.seq) {
                rejections.push(Rejection {
                    seq: r.seq,
                    reason: "flop-above-peak".into(),
                    detail: "test rejection".into(),
                });
            } else {
                st.applied.entry(agent.to_string()).or_default().push(r);
            }
        }
        st.hwm.insert(agent.to_string(), hwm);
        let ack = msg(collector_message::Kind::Ack(Ack {
            acked_through: hwm,
            rejections,
        }));
        if st.script.duplicate_acks {
            out.push(ack.clone());
            out.push(msg(collector_message::Kind::Ack(Ack {
                acked_through: hwm.saturating_sub(3),
                rejections: Vec::new(),
            })));
        }
        out.push(ack);
        out
    }
}

fn msg(kind: collector_message::Kind) -> CollectorMessage {
    CollectorMessage { kind: Some(kind) }
}

#[tonic::async_trait]
impl Ingest for FakeCollector {
    type StreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<CollectorMessage, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let conn = {
            let mut st = self.state.lock().unwrap();
            st.connections += 1;
            st.per_connection.push(Vec::new());
            st.auth.push(auth.clone());
            if let Some(t) = &st.script.token
                && auth.as_deref() != Some(format!("Bearer {t}").as_str())
            {
                return Err(tonic::Status::unauthenticated("bad agent token"));
            }
            st.per_connection.len() - 1
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let mut agent = String::new();
            let mut batches = 0u32;
            loop {
                me.wait_unstalled().await;
                let Ok(Some(m)) = inbound.message().await else {
                    return;
                };
                me.wait_unstalled().await;
                match m.kind {
                    Some(agent_message::Kind::Hello(h)) => {
                        agent = h.agent_id.clone();
                        let hwm = {
                            let mut st = me.state.lock().unwrap();
                            st.hellos.push(h);
                            let hwm = st.hwm.get(&agent).copied().unwrap_or(0);
                            st.welcomes.push((conn, hwm));
                            hwm
                        };
                        let welcome = msg(collector_message::Kind::Welcome(Welcome {
                            high_water_mark: hwm,
                            collector_version: "fake".into(),
                        }));
                        if tx.send(Ok(welcome)).await.is_err() {
                            return;
                        }
                    }
                    Some(agent_message::Kind::Batch(b)) => {
                        batches += 1;
                        {
                            let mut st = me.state.lock().unwrap();
                            st.received += b.records.len() as u64;
                            st.per_connection[conn].extend(b.records.iter().map(|r| r.seq));
                        }
                        let drop_after = me.state.lock().unwrap().script.drop_after_batches;
                        if drop_after.is_some_and(|n| batches >= n) {
                            // Every other time the batch is applied but never acked (the
                            // Welcome's high-water mark then tells the agent), otherwise lost
                            // on the wire (the agent must resend it). Then hang up.
                            if batches % 2 == 1 {
                                me.on_batch(&agent, b.records);
                            }
                            let _ = tx
                                .send(Err(tonic::Status::unavailable("test disconnect")))
                                .await;
                            return;
                        }
                        for answer in me.on_batch(&agent, b.records) {
                            if tx.send(Ok(answer)).await.is_err() {
                                return;
                            }
                        }
                        {
                            let mut st = me.state.lock().unwrap();
                            if let Some(n) = st.script.stall_after_batches {
                                let n = n.saturating_sub(1);
                                st.script.stall_after_batches = (n > 0).then_some(n);
                                st.script.stall |= n == 0;
                            }
                        }
                    }
                    None => return,
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// Waits (bounded, generously) until `cond` holds; only keeps a broken build from hanging.
/// (Included by path from the top-level tests too, whose harness has the same module.)
pub use crate::support::proc::eventually_async as eventually;
