//! The fault campaign: four real `flopmeter agent` processes on the fake libnvidia-ml stream to
//! a real `flopmeter collector` while a seeded chaos loop SIGKILLs agents and the collector at
//! random times (at least 20 kills), restarts them after random short delays, and takes the
//! collector away for 60 s, long enough for the agents' small spools to fill to their cap.
//! The ledger's totals must then **equal exactly** those of the same scenario run without
//! faults: the same record count and the same u128 FLOP sums and GPU time, per model and per
//! run.
//!
//! Why a faulted run can equal a fault-free one at all: with a real clock, a killed agent
//! misses the GPU work done while it was dead. So the agents run in replay mode (hidden
//! `--virtual-*` flags, tests and demos only): the sampler runs on a virtual clock that moves
//! one sample interval per tick, each report interval's records are spooled in one batch with
//! the interval's end, a restarted agent resumes from that position, and a full spool pauses
//! virtual time instead of stretching records. The records are then a function of the
//! scenario, the agent and the virtual span alone, whatever is killed when. The fake's clock
//! file is frozen, so every reading is exactly the scenario's constant (GPM activity over an
//! empty window is the curve's value, not an integral divided by a duration); the FLOP of a
//! tick is then the same float computation in both runs. Energy follows NVML's counter and is
//! not compared.
//!
//! It takes a few minutes, so it runs only when `FLOPMETER_FAULT_CAMPAIGN=1` is set;
//! `scripts/test` runs it as its own step, with its summary shown:
//! `FLOPMETER_FAULT_CAMPAIGN=1 cargo test --locked --test fault_campaign -- --nocapture`.
//! `FLOPMETER_CHAOS_SEED` picks the chaos plan (default fixed; printed). The summary is also
//! written as JSON to `<target dir>/fault-campaign.json`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};
use fake_nvml::harness::FakeNvml;
use flopmeter_agent::spool::{Spool, SpoolOptions};
use serde::Deserialize;
use support::{flopmeter, http};

const AGENTS: usize = 4;
const DEFAULT_SEED: u64 = 0x5eed_f10b;
/// One virtual hour per agent: 3600 ticks, 360 report intervals, 720 records (2 GPUs).
const SPAN_MS: i64 = 3_600_000;
/// Phase 2 plays the hour in about 90 s of sampling, so kills land mid-run.
const SPEED: f64 = 40.0;
/// About 150 records: full roughly 20 s into the collector's absence.
const SPOOL_CAP: &str = "32KiB";
const OUTAGE: Duration = Duration::from_secs(60);
const MIN_KILLS: usize = 20;
/// Bound on waiting for the agents to finish (a broken build must not hang).
const FINISH_BOUND: Duration = Duration::from_secs(300);

/// xorshift64*: enough randomness for a chaos plan, and the same plan for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// One node: a trainer process carrying the run's labels and a private fake NVML whose two
/// H100s run it.
struct Node {
    id: String,
    fake: FakeNvml,
    _trainer: support::Proc,
}

fn model_of(i: usize) -> &'static str {
    if i < 2 { "chaos-7b" } else { "chaos-70b" }
}

fn node(i: usize) -> Node {
    let trainer = support::trainer(model_of(i), &format!("run-{i}"));
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

/// A `u128` of the JSON API, which writes them as decimal strings.
fn dec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
struct Flop {
    #[serde(deserialize_with = "dec")]
    low: u128,
    #[serde(deserialize_with = "dec")]
    central: u128,
    #[serde(deserialize_with = "dec")]
    high: u128,
}

/// What is compared of a model (energy is not: it follows NVML's energy counter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ModelTotals {
    model: String,
    counted: Flop,
    excluded: Flop,
    runs: u32,
    #[serde(deserialize_with = "dec")]
    gpu_ms: u128,
    first_event_unix_ms: Option<i64>,
    last_event_unix_ms: Option<i64>,
    records: u64,
    agents: u64,
    nodes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct RunTotals {
    model: String,
    run: String,
    counted: Flop,
    excluded: Flop,
    #[serde(deserialize_with = "dec")]
    gpu_ms: u128,
    first_event_unix_ms: Option<i64>,
    last_event_unix_ms: Option<i64>,
    records: u64,
    approximate_records: u64,
    agents: u64,
    nodes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Totals {
    models: Vec<ModelTotals>,
    runs: Vec<RunTotals>,
    /// Per agent: the numbers its spool assigned (next_seq − 1).
    numbered: Vec<u64>,
}

impl Totals {
    fn records(&self) -> u64 {
        self.models.iter().map(|m| m.records).sum()
    }
    fn flop(&self) -> Flop {
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
    fn gpu_ms(&self) -> u128 {
        self.models.iter().map(|m| m.gpu_ms).sum()
    }
}

/// `GET path`: the body of a 200 answer, `None` otherwise (down, starting, error).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http::get_text(addr, path)
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    http::sample(text, name)
}

/// The address named `key` in a `--ready-file` (`None` while it is not written yet).
fn ready_addr(path: &Path, key: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v[key].as_str()?.parse().ok()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Agent(usize),
    Collector,
}

#[derive(Debug)]
enum Event {
    Kill { target: Target, down: Duration },
    Outage,
}

/// The chaos plan: events at offsets from the start of phase 2, a pure function of the seed.
fn plan(seed: u64) -> Vec<(Duration, Event)> {
    let mut rng = Rng::new(seed);
    let kills = MIN_KILLS + 2 + rng.below(4) as usize;
    // Early enough that the agents still have most of their hour to play when it starts.
    let outage_at = 3 + rng.below(3) as usize;
    let mut t = Duration::ZERO;
    let mut events = Vec::new();
    let mut planned = 0;
    while planned < kills {
        t += rng.range_ms(1200, 3200);
        if planned == outage_at {
            events.push((t, Event::Outage));
            planned += 1;
            // Agents keep being killed while the collector is away (their spools are full).
            for _ in 0..3 {
                let at = t + rng.range_ms(5_000, 55_000);
                let target = Target::Agent(rng.below(AGENTS as u64) as usize);
                let down = rng.range_ms(100, 1500);
                events.push((at, Event::Kill { target, down }));
                planned += 1;
            }
            t += OUTAGE + Duration::from_secs(1);
            continue;
        }
        // Every fourth kill, and some more at random, is the collector's.
        let target = if planned % 4 == 1 || rng.below(5) == 0 {
            Target::Collector
        } else {
            Target::Agent(rng.below(AGENTS as u64) as usize)
        };
        let down = rng.range_ms(100, 1500);
        events.push((t, Event::Kill { target, down }));
        planned += 1;
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

#[derive(Default, Debug)]
struct AgentState {
    child: Option<Child>,
    finished: bool,
    full: bool,
}

/// Four agents, one collector, their processes and what the chaos did to them.
struct Cluster<'a> {
    nodes: &'a [Node],
    dir: PathBuf,
    /// Where the collector listens: port 0 at its first start, then the ports the kernel
    /// gave it, for every restart (its agents reconnect there).
    grpc: SocketAddr,
    http: SocketAddr,
    speed: Option<f64>,
    start_ms: i64,
    stop_ms: i64,
    collector: Option<Child>,
    agents: Vec<AgentState>,
    kills_agents: usize,
    kills_collector: usize,
    spool_full_episodes: usize,
    outage_until: Option<Instant>,
    full_seen_in_outage: bool,
    restarts: Vec<(Instant, Target)>,
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        for c in self
            .agents
            .iter_mut()
            .filter_map(|a| a.child.as_mut())
            .chain(self.collector.as_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl<'a> Cluster<'a> {
    fn new(nodes: &'a [Node], dir: PathBuf, speed: Option<f64>, start_ms: i64) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        Cluster {
            nodes,
            dir,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            speed,
            start_ms,
            stop_ms: start_ms + SPAN_MS,
            collector: None,
            agents: nodes.iter().map(|_| AgentState::default()).collect(),
            kills_agents: 0,
            kills_collector: 0,
            spool_full_episodes: 0,
            outage_until: None,
            full_seen_in_outage: false,
            restarts: Vec::new(),
        }
    }

    fn in_outage(&self) -> bool {
        self.outage_until.is_some_and(|end| Instant::now() < end)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn log_file(&self, name: &str) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(self.log(name))
            .unwrap()
    }

    fn start_collector(&mut self) {
        let ready = self.dir.join("collector.ready.json");
        let _ = std::fs::remove_file(&ready);
        let mut child = flopmeter(&["collector", "--data-dir"])
            .arg(self.dir.join("ledger"))
            .args(["--listen", &self.grpc.to_string()])
            .args(["--http-addr", &self.http.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .stderr(Stdio::from(self.log_file("collector")))
            .spawn()
            .expect("flopmeter collector starts");
        if self.grpc.port() == 0 {
            // The first start: learn the ports before any agent needs them.
            let deadline = Instant::now() + Duration::from_secs(120);
            while ready_addr(&ready, "http").is_none() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "the collector exited at start ({status}):\n{}",
                        tail(&self.log("collector"))
                    );
                }
                assert!(Instant::now() < deadline, "the collector never got ready");
                std::thread::sleep(Duration::from_millis(20));
            }
            self.grpc = ready_addr(&ready, "grpc").unwrap();
            self.http = ready_addr(&ready, "http").unwrap();
        }
        self.collector = Some(child);
    }

    /// Where agent `i` writes its `--ready-file` (its metrics port, new at each start).
    fn agent_ready(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.ready.json", self.nodes[i].id))
    }

    fn start_agent(&mut self, i: usize) {
        let node = &self.nodes[i];
        let ready = self.agent_ready(i);
        let _ = std::fs::remove_file(&ready);
        let mut cmd = flopmeter(&["agent", "--nvml-lib"]);
        cmd.arg(node.fake.lib_path())
            .arg("--spool-dir")
            .arg(self.dir.join(&node.id))
            .args(["--agent-id", &node.id, "--node-name", &node.id])
            .args(["--collector", &format!("http://{}", self.grpc)])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--kube", "off", "--drain-grace", "1s"])
            .args(["--sample-interval", "1s", "--report-interval", "10s"])
            .args(["--spool-max-bytes", SPOOL_CAP])
            .args(["--virtual-clock-start", &self.start_ms.to_string()])
            .args(["--virtual-stop", &self.stop_ms.to_string()])
            .arg("--virtual-exit-when-drained")
            .stderr(Stdio::from(self.log_file(&node.id)));
        if let Some(x) = self.speed {
            cmd.args(["--virtual-speed", &x.to_string()]);
        }
        self.agents[i].child = Some(cmd.spawn().expect("flopmeter agent starts"));
        self.agents[i].full = false;
    }

    fn kill9(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            c.kill().unwrap(); // SIGKILL on Unix
            c.wait().unwrap();
        }
    }

    /// Kills `target` (or, when it cannot be killed now, another process that can) and
    /// schedules its restart after `down`. False when nothing can be killed.
    fn kill(&mut self, target: Target, down: Duration) -> bool {
        let running: Vec<usize> = (0..self.agents.len())
            .filter(|&i| self.agents[i].child.is_some())
            .collect();
        let collector_up = self.collector.is_some() && !self.in_outage();
        let target = match target {
            Target::Agent(i) if running.contains(&i) => Target::Agent(i),
            Target::Agent(i) if !running.is_empty() => {
                Target::Agent(*running.iter().find(|&&j| j > i).unwrap_or(&running[0]))
            }
            Target::Collector if collector_up => Target::Collector,
            _ if !running.is_empty() => Target::Agent(running[0]),
            _ if collector_up => Target::Collector,
            _ => return false,
        };
        match target {
            Target::Agent(i) => {
                Self::kill9(&mut self.agents[i].child);
                self.agents[i].full = false;
                self.kills_agents += 1;
            }
            Target::Collector => {
                Self::kill9(&mut self.collector);
                self.kills_collector += 1;
            }
        }
        self.restarts.push((Instant::now() + down, target));
        true
    }

    /// Reaps, restarts what is due, and watches the agents' spool-full gauge.
    fn poll(&mut self) {
        let now = Instant::now();
        let due: Vec<Target> = self
            .restarts
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, t)| *t)
            .collect();
        self.restarts.retain(|(at, _)| *at > now);
        for t in due {
            match t {
                Target::Agent(i) => self.start_agent(i),
                Target::Collector => self.start_collector(),
            }
        }
        if let Some(c) = self.collector.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            panic!(
                "the collector exited by itself ({status}):\n{}",
                tail(&self.log("collector"))
            );
        }
        for i in 0..self.agents.len() {
            let Some(child) = self.agents[i].child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "agent {i} exited with {status}:\n{}",
                    tail(&self.log(&self.nodes[i].id))
                );
                self.agents[i].child = None;
                self.agents[i].finished = true;
                continue;
            }
            // Until the restarted agent has written its ready file, its gauge is unknown.
            let full = ready_addr(&self.agent_ready(i), "metrics")
                .and_then(|a| http_get(a, "/metrics"))
                .and_then(|m| gauge(&m, "flopmeter_agent_spool_full"))
                == Some(1.0);
            if full && !self.agents[i].full {
                self.spool_full_episodes += 1;
            }
            if full && self.in_outage() {
                self.full_seen_in_outage = true;
            }
            self.agents[i].full = full;
        }
    }

    fn sleep_until(&mut self, deadline: Instant) {
        loop {
            self.poll();
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(250)));
        }
    }

    fn all_finished(&self) -> bool {
        self.agents.iter().all(|a| a.finished)
    }

    /// Waits (bounded) until every agent has exited 0: replay done and all acknowledged.
    fn wait_finished(&mut self) {
        let deadline = Instant::now() + FINISH_BOUND;
        while !self.all_finished() || !self.restarts.is_empty() {
            assert!(
                Instant::now() < deadline,
                "agents not finished after {FINISH_BOUND:?}: {:?}\n{}",
                self.agents,
                (0..self.nodes.len())
                    .map(|i| tail(&self.log(&self.nodes[i].id)))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            self.sleep_until(Instant::now() + Duration::from_millis(250));
        }
    }

    /// The ledger's totals (from the collector's API) and the agents' spools.
    fn totals(&mut self) -> Totals {
        let deadline = Instant::now() + Duration::from_secs(60);
        let models: Vec<ModelTotals> = loop {
            if let Some(body) = http_get(self.http, "/api/v1/models") {
                break serde_json::from_str(&body).unwrap();
            }
            assert!(Instant::now() < deadline, "collector API never answered");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut runs = Vec::new();
        for m in &models {
            let body = http_get(self.http, &format!("/api/v1/runs?model={}", m.model)).unwrap();
            runs.extend(serde_json::from_str::<Vec<RunTotals>>(&body).unwrap());
        }
        let rejections = http_get(self.http, "/api/v1/rejections").unwrap();
        assert_eq!(rejections.trim(), "[]", "no record was rejected");
        let mut numbered = Vec::new();
        for n in self.nodes {
            let s =
                Spool::open(&self.dir.join(&n.id).join("spool"), SpoolOptions::default()).unwrap();
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
                Some(self.stop_ms),
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

/// Where cargo puts this build's outputs: `<target>/<profile>/deps/<test binary>`.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[test]
fn fault_campaign_totals_equal_a_fault_free_run() {
    if std::env::var_os("FLOPMETER_FAULT_CAMPAIGN").is_none() {
        eprintln!(
            "SKIPPED: the fault campaign takes minutes; set FLOPMETER_FAULT_CAMPAIGN=1 \
             (scripts/test, which CI runs, does)"
        );
        return;
    }
    let t0 = Instant::now();
    let seed = std::env::var("FLOPMETER_CHAOS_SEED")
        .ok()
        .map(|s| {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .expect("FLOPMETER_CHAOS_SEED is a u64 (decimal or 0x hex)")
        })
        .unwrap_or(DEFAULT_SEED);
    let events = plan(seed);
    println!(
        "fault campaign: seed={seed} ({} planned events)",
        events.len()
    );

    let work = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..AGENTS).map(node).collect();
    // Event time well in the past (the collector refuses events more than 5 min ahead of
    // it), on an hour boundary; the same for both phases.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start_ms = (now_ms - 3 * SPAN_MS) / SPAN_MS * SPAN_MS;

    // Phase 1: the reference, without faults, as fast as the CPU goes.
    let reference = {
        let mut c = Cluster::new(&nodes, work.path().join("reference"), None, start_ms);
        c.start_collector();
        for i in 0..AGENTS {
            c.start_agent(i);
        }
        c.wait_finished();
        c.totals()
    };
    let t1 = Instant::now();
    println!(
        "phase 1 (no faults): {} records in {:.1} s",
        reference.records(),
        (t1 - t0).as_secs_f64()
    );

    // Phase 2: the same, paced, under the chaos plan.
    let mut c = Cluster::new(&nodes, work.path().join("chaos"), Some(SPEED), start_ms);
    c.start_collector();
    for i in 0..AGENTS {
        c.start_agent(i);
    }
    let begin = Instant::now();
    for (at, event) in events {
        c.sleep_until(begin + at);
        match event {
            Event::Kill { target, down } => {
                while !c.kill(target, down) {
                    c.sleep_until(Instant::now() + Duration::from_millis(500));
                }
            }
            Event::Outage => {
                assert!(
                    c.kill(Target::Collector, OUTAGE),
                    "the collector is up for its outage"
                );
                c.outage_until = Some(Instant::now() + OUTAGE);
            }
        }
    }
    c.wait_finished();
    let chaos = c.totals();
    let t2 = Instant::now();

    let kills = c.kills_agents + c.kills_collector;
    let equal = chaos == reference;
    let flop = chaos.flop();
    let wall = (t2 - t0).as_secs_f64();
    println!(
        "\nfault campaign seed={seed} kills: agents={}, collector={} (total {kills}); \
         outages: 1 ({} s); spool-full episodes: {}; records: {} (reference {}); \
         FLOP central: {} (reference {}); low: {}; high: {}; GPU-ms: {} (equal: {}); \
         wall time {:.0} s (phase 1 {:.0} s, phase 2 {:.0} s)\n",
        c.kills_agents,
        c.kills_collector,
        OUTAGE.as_secs(),
        c.spool_full_episodes,
        chaos.records(),
        reference.records(),
        flop.central,
        reference.flop().central,
        flop.low,
        flop.high,
        chaos.gpu_ms(),
        if equal { "yes" } else { "NO" },
        wall,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    );
    let per_model: BTreeMap<&str, serde_json::Value> = chaos
        .models
        .iter()
        .map(|m| {
            (
                m.model.as_str(),
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
        .collect();
    let summary = serde_json::json!({
        "seed": seed,
        "agents": AGENTS,
        "kills": { "agents": c.kills_agents, "collector": c.kills_collector, "total": kills },
        "outages": [{ "seconds": OUTAGE.as_secs(), "spool_full_observed": c.full_seen_in_outage }],
        "spool_full_episodes": c.spool_full_episodes,
        "spool_max_bytes": SPOOL_CAP,
        "virtual_span_seconds": SPAN_MS / 1000,
        "virtual_speed": SPEED,
        "records": chaos.records(),
        "reference_records": reference.records(),
        "flop": {
            "low": flop.low.to_string(),
            "central": flop.central.to_string(),
            "high": flop.high.to_string(),
        },
        "reference_flop_central": reference.flop().central.to_string(),
        "gpu_ms": chaos.gpu_ms().to_string(),
        "models": per_model,
        "equal": equal,
        "wall_seconds": { "total": wall, "phase1": (t1 - t0).as_secs_f64(), "phase2": (t2 - t1).as_secs_f64() },
    });
    let out = target_dir().join("fault-campaign.json");
    if let Err(e) = std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()) {
        println!("could not write {}: {e}", out.display());
    } else {
        println!("summary written to {}", out.display());
    }

    assert!(kills >= MIN_KILLS, "only {kills} kills");
    assert!(
        c.kills_agents >= 5 && c.kills_collector >= 3,
        "kills split between agents and the collector"
    );
    assert!(
        c.full_seen_in_outage,
        "no agent's spool reached its cap during the outage"
    );
    assert_eq!(
        chaos.numbered, reference.numbered,
        "per-agent record numbering"
    );
    assert_eq!(chaos.models, reference.models, "per-model totals");
    assert_eq!(chaos.runs, reference.runs, "per-run totals");
    assert!(equal);
}
