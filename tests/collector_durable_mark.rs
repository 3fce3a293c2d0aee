//! A Welcome must name only a high-water mark that is on disk (issue 12, item 1).
//!
//! The sequence that lost acknowledged data: stream 1 sends a large batch; while its commit
//! group is being flushed, the same agent opens a second stream and is welcomed with the
//! mark the batch moved to; the collector dies before the flush completes; after the restart
//! the mark is back where it was, but the agent, told so by the Welcome, has already deleted
//! the records.
//!
//! Deterministic here: a real `flopmeter collector` process runs with the test-only
//! failpoint `FLOPMETER_TEST_HOLD_FLUSH` (`collector/src/failpoint.rs`), which holds the
//! writer between applying a group and flushing it for as long as a file exists. The test
//! waits until the flush is held, opens the second stream, then SIGKILLs the collector.
//! Whatever a Welcome or an Ack said before the kill must still be in the restarted ledger,
//! and after the agent resends the rest, the totals must be exact.

use std::path::Path;
use std::time::Duration;

use crate::support::{self, CollectorProc, eventually};
use flopmeter_proto::v1::ingest_client::IngestClient;
use flopmeter_proto::v1::{
    AgentMessage, CollectorMessage, GpuInventory, Hello, IntervalRecord, RecordBatch,
    WorkloadIdentity, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const AGENT: &str = "durable-agent";
const GPUS: u64 = 8;
const RECORDS: u64 = 20_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn spawn(data: &Path, hold: Option<&Path>) -> CollectorProc {
    let mut c = support::collector(data);
    if let Some(h) = hold {
        c = c.env(flopmeter_collector::failpoint::HOLD_FLUSH_ENV, h);
    }
    c.start()
}

/// Record `seq`: eight GPUs, ten-second intervals from eight hours ago; FLOP vary with `seq` so
/// the sums identify the records.
fn record(t0: i64, seq: u64) -> IntervalRecord {
    let slot = ((seq - 1) / GPUS) as i64;
    let start = t0 + slot * 10_000;
    IntervalRecord {
        seq,
        start_unix_ms: start,
        end_unix_ms: start + 10_000,
        gpu_uuid: format!("GPU-{}", (seq - 1) % GPUS),
        gpu_type: "h100-sxm".into(),
        flop_low: 300_000_000_000_000 + seq,
        flop_central: 400_000_000_000_000 + 7 * seq,
        flop_high: 500_000_000_000_000 + 13 * seq,
        gpu_ms: 10_000,
        energy_mj: 7_000_000,
        mean_tensor_util: 0.4,
        identity: Some(WorkloadIdentity {
            model: "durable-model".into(),
            run: "durable-run".into(),
            ..WorkloadIdentity::default()
        }),
        ..IntervalRecord::default()
    }
}

struct Stream {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<CollectorMessage>,
}

impl Stream {
    /// Opens a stream, says Hello, and returns it with the Welcome's high-water mark.
    async fn open(grpc: u16) -> (Stream, u64) {
        let (tx, rx) = mpsc::channel(4);
        tx.send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                agent_id: AGENT.into(),
                node: "durable-node".into(),
                software_version: "test".into(),
                gpus: (0..GPUS)
                    .map(|i| GpuInventory {
                        index: i as u32,
                        uuid: format!("GPU-{i}"),
                        catalogue_id: "h100-sxm".into(),
                        ..GpuInventory::default()
                    })
                    .collect(),
                ..Hello::default()
            })),
        })
        .await
        .unwrap();
        let mut client = IngestClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let rx = client
            .stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut s = Stream { tx, rx };
        let hwm = match s.next().await {
            Some(collector_message::Kind::Welcome(w)) => w.high_water_mark,
            other => panic!("expected a Welcome, got {other:?}"),
        };
        (s, hwm)
    }

    async fn send(&self, records: Vec<IntervalRecord>) {
        self.tx
            .send(AgentMessage {
                kind: Some(agent_message::Kind::Batch(RecordBatch { records })),
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Option<collector_message::Kind> {
        tokio::time::timeout(Duration::from_secs(60), self.rx.message())
            .await
            .expect("a reply within 60 s")
            .expect("no error status")
            .and_then(|m| m.kind)
    }

    /// Every Ack mark that has already arrived, without waiting.
    fn acks_so_far(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Ok(Some(m))) = futures_now(self.rx.message()) {
            if let Some(collector_message::Kind::Ack(a)) = m.kind {
                out.push(a.acked_through);
            }
        }
        out
    }
}

/// Polls a future once: `None` if it is not ready yet.
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_never_names_a_mark_that_is_not_on_disk() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("ledger");
    let hold = work.path().join("hold-flush");
    let held = flopmeter_collector::failpoint::held_marker(&hold);
    let t0 = now_ms() - 8 * 3_600_000;
    let records: Vec<IntervalRecord> = (1..=RECORDS).map(|s| record(t0, s)).collect();

    let mut collector = spawn(&data, Some(&hold));
    let grpc = collector.grpc.port();
    std::fs::write(&hold, b"hold\n").unwrap();

    // Stream 1: a large batch, applied in memory; its flush is held open.
    let (mut s1, w1) = Stream::open(grpc).await;
    assert_eq!(w1, 0);
    s1.send(records.clone()).await;
    let h = held.clone();
    tokio::task::spawn_blocking(move || eventually("the flush is held", || h.exists()))
        .await
        .unwrap();

    // Stream 2: the same agent reconnects inside the window, and resends the same batch (an
    // Ack for duplicates is the other way to learn a mark).
    let (mut s2, w2) = Stream::open(grpc).await;
    s2.send(records[..100].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut promised: Vec<u64> = vec![w1, w2];
    promised.extend(s1.acks_so_far());
    promised.extend(s2.acks_so_far());
    assert_eq!(
        w2, 0,
        "the Welcome named {w2} while the flush that would make it durable was still held"
    );

    // SIGKILL inside the window, then a restart without the failpoint.
    collector.kill9();
    drop((s1, s2));
    let _ = std::fs::remove_file(&hold);
    // A new process on new ports: the agent's streams are opened afresh below.
    let collector = spawn(&data, None);
    let grpc = collector.grpc.port();

    let (mut s3, w3) = Stream::open(grpc).await;
    let max_promised = promised.iter().copied().max().unwrap();
    assert!(
        max_promised <= w3,
        "the collector promised {max_promised} before the kill and holds only {w3} after it"
    );

    // The agent resends what it still holds; the totals are then exact.
    s3.send(records[w3 as usize..].to_vec()).await;
    loop {
        match s3.next().await {
            Some(collector_message::Kind::Ack(a)) => {
                assert!(a.rejections.is_empty(), "{:?}", &a.rejections[..1]);
                if a.acked_through == RECORDS {
                    break;
                }
            }
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
    let models = collector.get("/api/v1/models").unwrap();
    let m = &models.as_array().unwrap()[0];
    assert_eq!(m["records"], RECORDS);
    let sum = |f: fn(&IntervalRecord) -> u64| -> String {
        records
            .iter()
            .map(|r| u128::from(f(r)))
            .sum::<u128>()
            .to_string()
    };
    assert_eq!(
        m["counted"]["low"].as_str(),
        Some(sum(|r| r.flop_low).as_str())
    );
    assert_eq!(
        m["counted"]["central"].as_str(),
        Some(sum(|r| r.flop_central).as_str())
    );
    assert_eq!(
        m["counted"]["high"].as_str(),
        Some(sum(|r| r.flop_high).as_str())
    );
}
