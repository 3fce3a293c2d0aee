//! Collector memory and `/metrics` at many models (issue 12, item 3): a load generator that
//! prints figures, not a timed test.
//!
//! For each model count N (default 10000, 50000, 100000; pass others as arguments), a fresh
//! `flopmeter collector` process (release build) receives N one-record models through the
//! real ingest protocol from N / 500 agents; then the compliance engine evaluates them, and
//! `/metrics` is scraped `SCRAPES` times. Printed per N: RSS after ingest and evaluation,
//! RSS after the scrapes, peak RSS (`VmHWM`), the median scrape time, and the exposition's
//! series and size.
//!
//! Run: `cargo bench --bench model_scale` (or `-- 10000` for one size). Extra collector flags
//! can be given in `FLOPMETER_BENCH_COLLECTOR_ARGS` (space-separated); a wrapper to start the
//! collector through (`heaptrack`, for one) in `FLOPMETER_BENCH_COLLECTOR_WRAPPER` (the RSS
//! figures are then the wrapper's). Figures in BENCHMARKS.md.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flopmeter_proto::v1::ingest_client::IngestClient;
use flopmeter_proto::v1::{
    AgentMessage, GpuInventory, Hello, IntervalRecord, RecordBatch, WorkloadIdentity,
    agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Below the default `--new-runs-per-agent-per-hour` (600), so no record is refused.
const MODELS_PER_AGENT: u64 = 500;
const GPUS: u64 = 8;
const SCRAPES: usize = 5;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `VmRSS` and `VmHWM` of a process, bytes.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(300))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
}

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn record(agent: u64, k: u64, t0: i64) -> IntervalRecord {
    let start = t0 + (k / GPUS) as i64 * 10_000;
    IntervalRecord {
        seq: k + 1,
        start_unix_ms: start,
        end_unix_ms: start + 10_000,
        gpu_uuid: format!("GPU-{agent}-{}", k % GPUS),
        gpu_type: "h100-sxm".into(),
        flop_low: 3_000_000_000_000_000,
        flop_central: 4_000_000_000_000_000,
        flop_high: 8_000_000_000_000_000,
        gpu_ms: 10_000,
        energy_mj: 7_000_000,
        mean_tensor_util: 0.4,
        identity: Some(WorkloadIdentity {
            model: format!("scale-model-{:06}", agent * MODELS_PER_AGENT + k),
            run: "run-1".into(),
            ..WorkloadIdentity::default()
        }),
        ..IntervalRecord::default()
    }
}

/// One agent sends its models' records in batches of 250 and waits for the last Ack.
async fn agent(grpc: u16, a: u64, models: u64, t0: i64) {
    let (tx, rx) = mpsc::channel(64);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: format!("scale-agent-{a}"),
            node: format!("scale-node-{a}"),
            gpus: (0..GPUS)
                .map(|g| GpuInventory {
                    uuid: format!("GPU-{a}-{g}"),
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
        .unwrap();
    let mut rx = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        let recs: Vec<IntervalRecord> = (0..models).map(|k| record(a, k, t0)).collect();
        for chunk in recs.chunks(250) {
            tx.send(AgentMessage {
                kind: Some(agent_message::Kind::Batch(RecordBatch {
                    records: chunk.to_vec(),
                })),
            })
            .await
            .unwrap();
        }
        tx
    });
    let mut rejected = 0;
    loop {
        match rx.message().await.unwrap().and_then(|m| m.kind) {
            Some(collector_message::Kind::Ack(ack)) => {
                rejected += ack.rejections.len();
                if ack.acked_through == models {
                    break;
                }
            }
            Some(collector_message::Kind::Welcome(_)) => {}
            other => panic!("agent {a}: unexpected {other:?}"),
        }
    }
    assert_eq!(rejected, 0, "agent {a}: records rejected");
    drop(sender.await.unwrap());
}

fn run(n: u64) {
    let work = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut cmd = match std::env::var("FLOPMETER_BENCH_COLLECTOR_WRAPPER") {
        Ok(w) => {
            let mut c = Command::new(w);
            c.arg(env!("CARGO_BIN_EXE_flopmeter"));
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_flopmeter")),
    };
    cmd.arg("collector")
        .arg("--data-dir")
        .arg(work.path().join("ledger"))
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--min-free-mb", "0"])
        .env("FLOPMETER_LOG", "warn")
        // As the shipped systemd unit and Kubernetes manifest run it (unless the caller
        // says otherwise).
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Ok(extra) = std::env::var("FLOPMETER_BENCH_COLLECTOR_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let c = Collector(cmd.spawn().expect("flopmeter collector starts"));
    let pid = c.0.id();
    let up = Instant::now();
    while http_get(http, "/healthz").is_none() {
        assert!(up.elapsed() < Duration::from_secs(60), "collector not up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss_start, _) = rss(pid);

    let started = Instant::now();
    let agents = n.div_ceil(MODELS_PER_AGENT);
    let t0 = now_ms() - 86_400_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..agents {
            let models = (n - a * MODELS_PER_AGENT).min(MODELS_PER_AGENT);
            tasks.push(tokio::spawn(agent(grpc, a, models, t0)));
            // A few at a time: the figures are about what the collector keeps, not the
            // rate at which it takes it.
            if tasks.len() >= 8 {
                for t in tasks.drain(..) {
                    t.await.unwrap();
                }
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let ingest_s = started.elapsed().as_secs_f64();

    // Let the compliance engine evaluate everything: RSS settles once its passes are done.
    let mut last = rss(pid).0;
    let mut stable = 0;
    let settle = Instant::now();
    while stable < 3 && settle.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_secs(3));
        let now = rss(pid).0;
        if now.abs_diff(last) * 100 < last {
            stable += 1;
        } else {
            stable = 0;
        }
        last = now;
    }
    let (rss_ingested, _) = rss(pid);

    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..SCRAPES {
        let t = Instant::now();
        body = http_get(http, "/metrics").expect("/metrics answers");
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let (rss_scraped, peak) = rss(pid);
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!(
        "models {n:>7}: ingest {ingest_s:.1} s | RSS start {} | after ingest+evaluation {} | \
         after {SCRAPES} scrapes {} | peak {} | scrape median {:.3} s (max {:.3} s) | {series} \
         series, {:.1} MB",
        mib(rss_start),
        mib(rss_ingested),
        mib(rss_scraped),
        mib(peak),
        times[SCRAPES / 2],
        times[SCRAPES - 1],
        body.len() as f64 / 1e6,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are model counts.
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 50_000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n);
    }
}
