//! The collector tests' harness: records, batches, an in-process collector and a raw stream
//! client, plus the workspace's HTTP client, process helpers and proptest seed
//! (`tests/support/`).

#![allow(dead_code)]

#[path = "../../../tests/support/http.rs"]
pub mod http;
#[path = "../../../tests/support/proc.rs"]
pub mod proc;
#[path = "../../../tests/support/seed.rs"]
pub mod seed;
pub mod stores;

use std::time::Duration;

use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch};
use flopmeter_collector::{Collector, now_unix_ms};
use flopmeter_proto::v1::ingest_client::IngestClient;
use flopmeter_proto::v1::{
    AgentMessage, AttributionSource, CollectorMessage, GpuInventory, Hello, IntervalRecord, Method,
    RecordBatch, WorkloadIdentity, agent_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// A valid H100 record of 10 s, the `seq`-th interval from a day ago: an agent's records for
/// one GPU follow each other in time (overlapping ones share the GPU's ceiling).
pub fn rec(seq: u64, model: &str, run: &str, stage: &str, central: u64) -> IntervalRecord {
    static DAY_AGO: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *DAY_AGO.get_or_init(|| now_unix_ms() - 86_400_000);
    rec_at(seq, model, run, stage, central, base + seq as i64 * 10_000)
}

/// A valid H100 record of 10 s ending at `end_ms`.
pub fn rec_at(
    seq: u64,
    model: &str,
    run: &str,
    stage: &str,
    central: u64,
    end_ms: i64,
) -> IntervalRecord {
    IntervalRecord {
        seq,
        start_unix_ms: end_ms - 10_000,
        end_unix_ms: end_ms,
        gpu_uuid: "GPU-0".into(),
        gpu_type: "h100-sxm".into(),
        flop_low: central / 2,
        flop_central: central,
        flop_high: central * 2,
        gpu_ms: 10_000,
        energy_mj: 7_000_000,
        mean_tensor_util: 0.4,
        method: Method::GpmTensor as i32,
        identity: Some(WorkloadIdentity {
            model: model.into(),
            run: run.into(),
            stage: stage.into(),
            source: if model.is_empty() {
                AttributionSource::Unattributed as i32
            } else {
                AttributionSource::ProcessEnv as i32
            },
            ..WorkloadIdentity::default()
        }),
        ..IntervalRecord::default()
    }
}

/// A batch for the store, every record valid.
pub fn incoming(agent: &str, node: &str, records: Vec<IntervalRecord>) -> IncomingBatch {
    IncomingBatch {
        agent_id: agent.into(),
        node: node.into(),
        received_unix_ms: now_unix_ms(),
        records: records
            .into_iter()
            .map(|record| CheckedRecord::new(record, None))
            .collect(),
    }
}

/// Starts a collector on loopback ports in `dir`.
pub async fn start(dir: &std::path::Path) -> Collector {
    Collector::start(CollectorConfig::for_data_dir(dir))
        .await
        .expect("collector starts")
}

/// A raw agent stream: send messages, read replies.
pub struct Stream {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: Streaming<CollectorMessage>,
}

impl Stream {
    /// Opens a stream and sends the Hello (with `token` as bearer, if any).
    pub async fn open(addr: std::net::SocketAddr, agent: &str, token: Option<&str>) -> Stream {
        Stream::open_with(addr, hello(agent), token).await
    }

    /// Opens a stream with this Hello.
    pub async fn open_with(
        addr: std::net::SocketAddr,
        hello: AgentMessage,
        token: Option<&str>,
    ) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        tx.send(hello).await.unwrap();
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let mut client = IngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let rx = client.stream(req).await.unwrap().into_inner();
        Stream { tx, rx }
    }

    /// Sends a batch.
    pub async fn send(&self, records: Vec<IntervalRecord>) {
        self.tx
            .send(AgentMessage {
                kind: Some(agent_message::Kind::Batch(RecordBatch { records })),
            })
            .await
            .unwrap();
    }

    /// The next reply (`Err` for a gRPC status), failing the test after 30 s.
    pub async fn next(&mut self) -> Result<Option<CollectorMessage>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(30), self.rx.message())
            .await
            .expect("a reply within 30 s")
    }
}

/// A Hello for `agent` on node `<agent>-node` with one H100.
pub fn hello(agent: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: agent.into(),
            node: format!("{agent}-node"),
            software_version: "test".into(),
            gpus: vec![GpuInventory {
                uuid: "GPU-0".into(),
                catalogue_id: "h100-sxm".into(),
                ..GpuInventory::default()
            }],
            ..Hello::default()
        })),
    }
}

/// `GET path` on a collector's HTTP port, from a thread of its own (the client blocks, and
/// the collector runs on the test's runtime): the body of a 200, else `HTTP <status>:
/// <body>` (or why nothing answered).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let path = path.to_string();
    std::thread::spawn(move || match http::request(addr, "GET", &path, &[], "") {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
        Err(e) => Err(format!("no answer: {e}")),
    })
    .join()
    .unwrap()
}
