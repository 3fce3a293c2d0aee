//! Agents in replay mode on the fake NVML, and the ledger totals a run ends with: what the
//! fault campaigns and the two-collector test compare exactly with a fault-free run.
//!
//! Why a faulted run can equal a fault-free one at all: with a real clock, a killed agent
//! misses the GPU work done while it was dead. So the agents run in replay mode (hidden
//! `--virtual-*` flags, tests and demos only): the sampler runs on a virtual clock that moves
//! one sample interval per tick, each report interval's records are spooled in one batch with
//! the interval's end, a restarted agent resumes from that position, and a full spool pauses
//! virtual time instead of stretching records. The records are then a function of the
//! scenario, the agent and the virtual span alone, whatever is killed when, and whichever
//! collector receives them. The fake's clock file is frozen, so every reading is exactly the
//! scenario's constant; the FLOP of a tick is then the same float computation in every run.
//! Energy follows NVML's counter and is not compared.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};
use fake_nvml::harness::FakeNvml;
use flopmeter_agent::spool::{Spool, SpoolOptions};
use serde::Deserialize;

use super::{Proc, flopmeter, http};

/// xorshift64*: enough randomness for a chaos plan, and the same plan for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// A seed from the environment variable `var` (decimal or `0x` hex), else `default`.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|s| {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|_| panic!("{var} is a u64 (decimal or 0x hex)"))
        })
        .unwrap_or(default)
}

/// One node: a trainer process carrying the run's labels and a private fake NVML whose two
/// H100s run it.
pub struct Node {
    pub id: String,
    pub fake: FakeNvml,
    _trainer: Proc,
}

/// Agents 0 and 1 train one model, 2 and 3 another: each model's totals sum two agents.
pub fn model_of(i: usize) -> &'static str {
    if i < 2 { "chaos-7b" } else { "chaos-70b" }
}

/// Node `i`: `chaos-node-<i>`, run `run-<i>` of [`model_of`]`(i)`.
pub fn node(i: usize) -> Node {
    let trainer = super::trainer(model_of(i), &format!("run-{i}"));
    // Constant activity and clocks; the clock file freezes scenario time (module docs).
    let fake = FakeNvml::new(
        &ScenarioBuilder::new()
            .gpu(
                GpuBuilder::h100()
                    .count(2)
                    .uuid(&format!(
                        "GPU-c{i}000000-0000-4000-8000-00000000000{{index}}"
                    ))
                    .training(trainer.0.id(), 45.0, 1755),
            )
            .toml(),
    )
    .unwrap();
    fake.set_time(1000.0).unwrap();
    Node {
        id: format!("chaos-node-{i}"),
        fake,
        _trainer: trainer,
    }
}

/// A replay's first event time: well in the past (the collector refuses events more than
/// 5 min ahead of it), on a `span_ms` boundary, so that every run of a test binary replays
/// the same events.
pub fn replay_start_ms(span_ms: i64) -> i64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now_ms - 3 * span_ms) / span_ms * span_ms
}

/// How an agent replays: the virtual span and pace, and its spool's cap.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    pub start_ms: i64,
    pub stop_ms: i64,
    /// Virtual seconds per real second; `None`: as fast as the CPU goes.
    pub speed: Option<f64>,
    /// `--spool-max-bytes`; `None`: the agent's default.
    pub spool_cap: Option<&'static str>,
}

impl Replay {
    /// `flopmeter agent` for `node`, spooling under `spool_dir`, sending to `collector_grpc`,
    /// writing its ready file to `ready` and its log to `log`. It exits 0 once it replayed
    /// to the stop and the collector acknowledged everything.
    pub fn agent(
        &self,
        node: &Node,
        spool_dir: &Path,
        collector_grpc: SocketAddr,
        ready: &Path,
        log: File,
    ) -> Command {
        let mut cmd = flopmeter(&["agent", "--nvml-lib"]);
        cmd.arg(node.fake.lib_path())
            .arg("--spool-dir")
            .arg(spool_dir)
            .args(["--agent-id", &node.id, "--node-name", &node.id])
            .args(["--collector", &format!("http://{collector_grpc}")])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(ready)
            .args(["--kube", "off", "--drain-grace", "1s"])
            .args(["--sample-interval", "1s", "--report-interval", "10s"])
            .args(["--virtual-clock-start", &self.start_ms.to_string()])
            .args(["--virtual-stop", &self.stop_ms.to_string()])
            .arg("--virtual-exit-when-drained")
            .stderr(Stdio::from(log));
        if let Some(cap) = self.spool_cap {
            cmd.args(["--spool-max-bytes", cap]);
        }
        if let Some(x) = self.speed {
            cmd.args(["--virtual-speed", &x.to_string()]);
        }
        cmd
    }
}

/// A `u128` of the JSON API, which writes them as decimal strings.
fn dec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Flop {
    #[serde(deserialize_with = "dec")]
    pub low: u128,
    #[serde(deserialize_with = "dec")]
    pub central: u128,
    #[serde(deserialize_with = "dec")]
    pub high: u128,
}

/// What is compared of a model (energy is not: it follows NVML's energy counter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ModelTotals {
    pub model: String,
    pub counted: Flop,
    pub excluded: Flop,
    pub runs: u32,
    #[serde(deserialize_with = "dec")]
    pub gpu_ms: u128,
    pub first_event_unix_ms: Option<i64>,
    pub last_event_unix_ms: Option<i64>,
    pub records: u64,
    pub agents: u64,
    pub nodes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunTotals {
    pub model: String,
    pub run: String,
    pub counted: Flop,
    pub excluded: Flop,
    #[serde(deserialize_with = "dec")]
    pub gpu_ms: u128,
    pub first_event_unix_ms: Option<i64>,
    pub last_event_unix_ms: Option<i64>,
    pub records: u64,
    pub approximate_records: u64,
    pub agents: u64,
    pub nodes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub models: Vec<ModelTotals>,
    pub runs: Vec<RunTotals>,
    /// Per agent: the numbers its spool assigned (next_seq − 1).
    pub numbered: Vec<u64>,
}

impl Totals {
    pub fn records(&self) -> u64 {
        self.models.iter().map(|m| m.records).sum()
    }
    pub fn flop(&self) -> Flop {
        let mut f = Flop {
            low: 0,
            central: 0,
            high: 0,
        };
        for m in &self.models {
            f.low += m.counted.low + m.excluded.low;
            f.central += m.counted.central + m.excluded.central;
            f.high += m.counted.high + m.excluded.high;
        }
        f
    }
    pub fn gpu_ms(&self) -> u128 {
        self.models.iter().map(|m| m.gpu_ms).sum()
    }

    /// Per model: records, runs and the exact figures, for a JSON summary.
    pub fn per_model_json(&self) -> serde_json::Value {
        self.models
            .iter()
            .map(|m| {
                (
                    m.model.clone(),
                    serde_json::json!({
                        "records": m.records,
                        "runs": m.runs,
                        "flop_low": (m.counted.low + m.excluded.low).to_string(),
                        "flop_central": (m.counted.central + m.excluded.central).to_string(),
                        "flop_high": (m.counted.high + m.excluded.high).to_string(),
                        "gpu_ms": m.gpu_ms.to_string(),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The ledger's totals from the collector API at `http`, and the spools of `nodes`
    /// under `dir` (`dir/<node id>/spool`), which must be drained, acknowledged through their
    /// last number and replayed to `stop_ms`. The ledger must hold exactly the records the
    /// agents numbered.
    pub fn read(http: SocketAddr, dir: &Path, nodes: &[Node], stop_ms: i64) -> Totals {
        let deadline = Instant::now() + Duration::from_secs(60);
        let models: Vec<ModelTotals> = loop {
            if let Some(body) = http::get_text(http, "/api/v1/models") {
                break serde_json::from_str(&body).unwrap();
            }
            assert!(Instant::now() < deadline, "collector API never answered");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut runs = Vec::new();
        for m in &models {
            let body = http::get_text(http, &format!("/api/v1/runs?model={}", m.model)).unwrap();
            runs.extend(serde_json::from_str::<Vec<RunTotals>>(&body).unwrap());
        }
        let rejections = http::get_text(http, "/api/v1/rejections").unwrap();
        assert_eq!(rejections.trim(), "[]", "no record was rejected");
        let mut numbered = Vec::new();
        for n in nodes {
            let s = Spool::open(&dir.join(&n.id).join("spool"), SpoolOptions::default()).unwrap();
            let st = s.stats();
            assert_eq!(st.records, 0, "{}: spool drained", n.id);
            assert_eq!(
                st.acked_through,
                st.next_seq - 1,
                "{}: acknowledged through its last sequence number",
                n.id
            );
            assert_eq!(
                s.virtual_pos().unwrap(),
                Some(stop_ms),
                "{}: replayed to the stop",
                n.id
            );
            numbered.push(st.next_seq - 1);
        }
        assert_eq!(
            models.iter().map(|m| m.records).sum::<u64>(),
            numbered.iter().sum::<u64>(),
            "the ledger holds every record the agents numbered, exactly once"
        );
        Totals {
            models,
            runs,
            numbered,
        }
    }
}

/// The address named `key` in a `--ready-file` (`None` while it is not written yet).
pub fn ready_addr(path: &Path, key: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v[key].as_str()?.parse().ok()
}

/// The last 30 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A log file opened for appending (a restarted process adds to its predecessor's log).
pub fn log_file(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// SIGKILLs a child, if there is one, and reaps it.
pub fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        c.kill().unwrap(); // SIGKILL on Unix
        c.wait().unwrap();
    }
}
