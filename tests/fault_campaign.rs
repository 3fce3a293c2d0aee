//! The fault campaign: four real `flopmeter agent` processes on the fake libnvidia-ml stream to
//! a real `flopmeter collector` while a seeded chaos loop SIGKILLs agents and the collector at
//! random times (at least 20 kills), restarts them after random short delays, and takes the
//! collector away for 60 s, long enough for the agents' small spools to fill to their cap.
//! The ledger's totals must then **equal exactly** those of the same scenario run without
//! faults: the same record count and the same u128 FLOP sums and GPU time, per model and per
//! run.
//!
//! Why a faulted run can equal a fault-free one at all: the agents replay (see
//! `support/replay.rs`), so their records are a function of the scenario, the agent and the
//! virtual span alone, whatever is killed when.
//!
//! The same binary runs the **failover campaign** (`fault_campaign/failover.rs`): two
//! collector replicas on one PostgreSQL, the engine's leader killed again and again, a
//! PostgreSQL restart and a 30 s cut; its totals are compared with the same fault-free run
//! (one reference per binary, shared by both campaigns, which run one after the other).
//!
//! It takes a few minutes, so it runs only when `FLOPMETER_FAULT_CAMPAIGN=1` is set;
//! `scripts/test` runs it as its own step, with its summary shown:
//! `FLOPMETER_FAULT_CAMPAIGN=1 cargo test --locked --test fault_campaign -- --nocapture`.
//! `FLOPMETER_CHAOS_SEED` picks the chaos plan and `FLOPMETER_FAILOVER_SEED` the failover
//! plan (defaults fixed; printed). The summary is also written as JSON to
//! `<target dir>/fault-campaign.json` (the failover campaign's under `"failover"`).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

#[path = "fault_campaign/failover.rs"]
mod failover;
#[path = "fault_campaign/sink.rs"]
mod sink;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::replay::{Node, Replay, Rng, Totals, kill9, node, ready_addr, tail};
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

/// `GET path`: the body of a 200 answer, `None` otherwise (down, starting, error).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http::get_text(addr, path)
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    http::sample(text, name)
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
        let replay = Replay {
            start_ms: self.start_ms,
            stop_ms: self.stop_ms,
            speed: self.speed,
            spool_cap: Some(SPOOL_CAP),
        };
        let mut cmd = replay.agent(
            node,
            &self.dir.join(&node.id),
            self.grpc,
            &ready,
            self.log_file(&node.id),
        );
        self.agents[i].child = Some(cmd.spawn().expect("flopmeter agent starts"));
        self.agents[i].full = false;
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
                kill9(&mut self.agents[i].child);
                self.agents[i].full = false;
                self.kills_agents += 1;
            }
            Target::Collector => {
                kill9(&mut self.collector);
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
        Totals::read(self.http, &self.dir, self.nodes, self.stop_ms)
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

/// Whether the campaigns run (`FLOPMETER_FAULT_CAMPAIGN` set); says how to run them if not.
fn campaign_enabled() -> bool {
    if std::env::var_os("FLOPMETER_FAULT_CAMPAIGN").is_none() {
        eprintln!(
            "SKIPPED: the fault campaign takes minutes; set FLOPMETER_FAULT_CAMPAIGN=1 \
             (scripts/test, which CI runs, does)"
        );
        return false;
    }
    true
}

/// One campaign at a time: each wants the machine's two cores to itself, and the test
/// harness would otherwise run both at once.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CAMPAIGN: Mutex<()> = Mutex::new(());
    CAMPAIGN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fault-free run both campaigns compare with: the same agents and virtual span, one
/// collector on sled, as fast as the CPU goes.
#[derive(Debug, Clone)]
struct Reference {
    start_ms: i64,
    totals: Totals,
    wall: Duration,
}

/// The reference, run once per test binary by whichever campaign comes first. The totals are
/// a function of the scenario, the agents and the virtual span (module docs), not of which
/// trainer processes or fake libraries the campaign runs, so both campaigns share it.
fn reference(nodes: &[Node], work: &Path) -> Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let t0 = Instant::now();
            // On an hour boundary, the same for every phase of both campaigns.
            let start_ms = support::replay::replay_start_ms(SPAN_MS);
            let mut c = Cluster::new(nodes, work.join("reference"), None, start_ms);
            c.start_collector();
            for i in 0..AGENTS {
                c.start_agent(i);
            }
            c.wait_finished();
            let totals = c.totals();
            let wall = t0.elapsed();
            println!(
                "reference (no faults): {} records in {:.1} s",
                totals.records(),
                wall.as_secs_f64()
            );
            Reference {
                start_ms,
                totals,
                wall,
            }
        })
        .clone()
}

/// Writes `part` into the JSON summary (`<target dir>/fault-campaign.json`) under `key`, or
/// at its top level for `None` (the first campaign's fields, where they always were).
fn write_summary(key: Option<&str>, part: serde_json::Value) {
    static SUMMARY: Mutex<Option<serde_json::Map<String, serde_json::Value>>> = Mutex::new(None);
    let mut guard = SUMMARY.lock().unwrap_or_else(|p| p.into_inner());
    let summary = guard.get_or_insert_with(serde_json::Map::new);
    match (key, part) {
        (Some(k), v) => {
            summary.insert(k.to_string(), v);
        }
        (None, serde_json::Value::Object(fields)) => summary.extend(fields),
        (None, other) => panic!("a top-level summary part is an object, not {other}"),
    }
    let out = target_dir().join("fault-campaign.json");
    let text = serde_json::to_string_pretty(&*summary).unwrap();
    if let Err(e) = std::fs::write(&out, text) {
        println!("could not write {}: {e}", out.display());
    } else {
        println!("summary written to {}", out.display());
    }
}

#[test]
fn fault_campaign_totals_equal_a_fault_free_run() {
    if !campaign_enabled() {
        return;
    }
    let _alone = one_at_a_time();
    let t0 = Instant::now();
    let seed = support::replay::seed_from_env("FLOPMETER_CHAOS_SEED", DEFAULT_SEED);
    let events = plan(seed);
    println!(
        "fault campaign: seed={seed} ({} planned events)",
        events.len()
    );

    let work = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..AGENTS).map(node).collect();
    // Phase 1: the reference, without faults, as fast as the CPU goes (or its figures, if
    // the failover campaign already ran it).
    let Reference {
        start_ms,
        totals: reference,
        wall: reference_wall,
    } = reference(&nodes, work.path());
    let t1 = Instant::now();
    println!(
        "phase 1 (no faults): {} records in {:.1} s",
        reference.records(),
        reference_wall.as_secs_f64()
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
        reference_wall.as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    );
    let per_model = chaos.per_model_json();
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
        "wall_seconds": { "total": wall, "phase1": reference_wall.as_secs_f64(), "phase2": (t2 - t1).as_secs_f64() },
    });
    write_summary(None, summary);

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
