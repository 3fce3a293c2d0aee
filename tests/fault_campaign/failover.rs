//! The failover campaign: two collector replicas (A, B) on one private PostgreSQL, B's
//! connection to it through a proxy that can cut it. The four replay agents of the fault
//! campaign switch between A and B at random (a SIGKILL, then a restart pointed at the other
//! replica), while a seeded chaos plan SIGKILLs whichever replica holds the engine lease (read
//! from `flopmeter_compliance_leader` on /metrics) at least five times, more of them right
//! after a new alert event reached the webhook (its first attempt is refused, so the event is
//! still pending delivery when its leader dies), restarts PostgreSQL once, and cuts B from
//! PostgreSQL for 30 s.
//!
//! Thresholds at a fifth, two fifths... of each model's total (from the reference run) make
//! clocks start and alerts go out while all this happens. At the end: the totals equal the
//! fault-free run's exactly; every webhook item of the outbox was delivered, and accepted
//! exactly once per idempotency key; `ledger verify --store` and `audit verify --store`
//! pass; each takeover came within the lease's failover bound.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use flopmeter_pg::test_support::{CutProxy, SUPERUSER, Server, TestDatabase};

use super::sink::Sink;
use super::support::replay::{Node, Replay, Rng, Totals, kill9, log_file, node, ready_addr, tail};
use super::support::{flopmeter, http};
use super::{AGENTS, Reference, SPAN_MS, campaign_enabled, one_at_a_time, reference};

const DEFAULT_SEED: u64 = 0xfa11_0be5;
/// The hour in about 90 s, as in the fault campaign.
const SPEED: f64 = 40.0;
const LEASE_TTL: Duration = Duration::from_secs(2);
const LEASE_RENEW: Duration = Duration::from_millis(500);
const LEASE_POLL: Duration = Duration::from_millis(500);
/// What the test allows a takeover beyond the lease's own bound (ttl + poll, pg/src/lease.rs):
/// scraping /metrics every 100 ms, and a machine of two busy cores.
const TAKEOVER_SLACK: Duration = Duration::from_millis(2500);
const CUT: Duration = Duration::from_secs(30);
const MIN_LEADER_KILLS: usize = 5;
/// Kills made when a new alert event arrives (beyond the scheduled ones).
const MAX_TRIGGERED_KILLS: usize = 4;
/// Threshold levels, in fifths of the smaller model's total.
const LEVELS: [u128; 4] = [1, 2, 3, 4];
const FINISH_BOUND: Duration = Duration::from_secs(300);
const SETTLE_BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
enum Event {
    /// Agent `i` moves to the other replica.
    Switch(usize),
    /// The current leader dies, for `down`.
    KillLeader {
        down: Duration,
    },
    RestartPostgres,
    /// B loses PostgreSQL for [`CUT`].
    Cut,
}

/// The plan: a pure function of the seed, at offsets from the start.
fn plan(seed: u64) -> Vec<(Duration, Event)> {
    let mut rng = Rng::new(seed);
    let mut events = Vec::new();
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(95) {
        t += rng.range_ms(1500, 4500);
        events.push((t, Event::Switch(rng.below(AGENTS as u64) as usize)));
    }
    let cut_at = rng.range_ms(12_000, 20_000);
    events.push((cut_at, Event::Cut));
    // After the cut is restored, while the agents still stream.
    events.push((
        cut_at + CUT + rng.range_ms(4_000, 10_000),
        Event::RestartPostgres,
    ));
    for k in 0..MIN_LEADER_KILLS as u64 {
        // One in each sixth of the replay, none in its first seconds.
        let at = Duration::from_millis(6_000 + k * 16_000) + rng.range_ms(0, 12_000);
        events.push((
            at,
            Event::KillLeader {
                down: rng.range_ms(500, 4000),
            },
        ));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

/// One collector replica and its fixed ports (a restart listens where its agents are).
struct Replica {
    name: &'static str,
    dsn: String,
    grpc: SocketAddr,
    http: SocketAddr,
    child: Option<Child>,
    started: Instant,
    kills: usize,
}

#[derive(Debug, Default)]
struct AgentSlot {
    child: Option<Child>,
    finished: bool,
    /// The replica it sends to.
    on: usize,
}

/// A takeover being timed: since when, and which replica led.
#[derive(Debug, Clone, Copy)]
struct Takeover {
    since: Instant,
    old: usize,
    cause: &'static str,
}

struct Failover<'a> {
    nodes: &'a [Node],
    dir: PathBuf,
    replay: Replay,
    thresholds: PathBuf,
    sink: &'a Sink,
    proxy: &'a CutProxy,
    replicas: [Replica; 2],
    agents: Vec<AgentSlot>,
    /// Killed replicas and when they come back.
    restarts: Vec<(Instant, usize)>,
    cut_until: Option<Instant>,
    leader: Option<usize>,
    leader_changes: usize,
    both_leading_seen: usize,
    takeover: Option<Takeover>,
    takeovers: Vec<(&'static str, Duration)>,
    switches: usize,
    triggered_kills: usize,
    keys_seen: usize,
    last_kill: Option<Instant>,
}

impl Drop for Failover<'_> {
    fn drop(&mut self) {
        for c in self
            .agents
            .iter_mut()
            .filter_map(|a| a.child.as_mut())
            .chain(self.replicas.iter_mut().filter_map(|r| r.child.as_mut()))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl<'a> Failover<'a> {
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn start_replica(&mut self, r: usize) {
        let ready = self
            .dir
            .join(format!("{}.ready.json", self.replicas[r].name));
        let _ = std::fs::remove_file(&ready);
        let rep = &self.replicas[r];
        let mut child = flopmeter(&["collector", "--store", &rep.dsn])
            .args(["--replica-name", rep.name])
            .args(["--lease-ttl", &format!("{}ms", LEASE_TTL.as_millis())])
            .args([
                "--lease-renew-every",
                &format!("{}ms", LEASE_RENEW.as_millis()),
            ])
            .args([
                "--lease-poll-every",
                &format!("{}ms", LEASE_POLL.as_millis()),
            ])
            .args(["--listen", &rep.grpc.to_string()])
            .args(["--http-addr", &rep.http.to_string()])
            .arg("--thresholds")
            .arg(&self.thresholds)
            .args(["--webhook-url", &self.sink.url()])
            .args(["--webhook-secret", "failover-campaign"])
            .arg("--ready-file")
            .arg(&ready)
            .stderr(Stdio::from(log_file(&self.log(rep.name))))
            .spawn()
            .expect("flopmeter collector starts");
        if rep.grpc.port() == 0 {
            // The first start: learn the ports before any agent needs them.
            let deadline = Instant::now() + Duration::from_secs(120);
            while ready_addr(&ready, "http").is_none() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "replica {} exited at start ({status}):\n{}",
                        rep.name,
                        tail(&self.log(rep.name))
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} never got ready",
                    rep.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let rep = &mut self.replicas[r];
            rep.grpc = ready_addr(&ready, "grpc").unwrap();
            rep.http = ready_addr(&ready, "http").unwrap();
        }
        let rep = &mut self.replicas[r];
        rep.child = Some(child);
        rep.started = Instant::now();
    }

    fn start_agent(&mut self, i: usize) {
        let node = &self.nodes[i];
        let ready = self.dir.join(format!("{}.ready.json", node.id));
        let _ = std::fs::remove_file(&ready);
        let grpc = self.replicas[self.agents[i].on].grpc;
        let mut cmd = self.replay.agent(
            node,
            &self.dir.join(&node.id),
            grpc,
            &ready,
            log_file(&self.log(&node.id)),
        );
        self.agents[i].child = Some(cmd.spawn().expect("flopmeter agent starts"));
    }

    /// Whether B is cut from PostgreSQL (until [`Failover::poll`] restores it).
    fn cut_active(&self) -> bool {
        self.cut_until.is_some()
    }

    /// Whether replica `r` reports itself the leader now.
    fn leads(&self, r: usize) -> bool {
        self.replicas[r].child.is_some()
            && http::get_text(self.replicas[r].http, "/metrics")
                .and_then(|m| http::sample(&m, "flopmeter_compliance_leader"))
                == Some(1.0)
    }

    /// Reaps and restarts, times a takeover under way, counts leader changes, and kills the
    /// leader when a new alert event has just arrived (while it is still pending).
    fn poll(&mut self) {
        let now = Instant::now();
        if self.cut_until.is_some_and(|end| now >= end) {
            self.proxy.restore();
            self.cut_until = None;
            println!("failover: B reaches PostgreSQL again");
        }
        let cut = self.cut_active();
        // B restarts only once it can reach PostgreSQL: a replica that cannot reach its
        // store at start may refuse to start, which is not what this campaign tests.
        let due = |(at, r): &(Instant, usize)| *at <= now && !(cut && *r == 1);
        let starting: Vec<usize> = self
            .restarts
            .iter()
            .filter(|x| due(x))
            .map(|(_, r)| *r)
            .collect();
        self.restarts.retain(|x| !due(x));
        for r in starting {
            self.start_replica(r);
        }
        for r in 0..2 {
            if let Some(c) = self.replicas[r].child.as_mut()
                && let Some(status) = c.try_wait().unwrap()
            {
                panic!(
                    "replica {} exited by itself ({status}):\n{}",
                    self.replicas[r].name,
                    tail(&self.log(self.replicas[r].name))
                );
            }
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
            }
        }
        let leading: Vec<usize> = (0..2).filter(|&r| self.leads(r)).collect();
        if leading.len() == 2 {
            self.both_leading_seen += 1;
        }
        if let Some(&l) = leading.first() {
            if self.leader != Some(l) && leading.len() == 1 {
                if self.leader.is_some() {
                    self.leader_changes += 1;
                }
                self.leader = Some(l);
            }
            if let Some(t) = self.takeover {
                let restarted = self.replicas[t.old].started > t.since;
                if leading.iter().any(|&r| r != t.old) || restarted {
                    let took = t.since.elapsed();
                    println!(
                        "failover: {} took over {:.2} s after {} of {}",
                        self.replicas[l].name,
                        took.as_secs_f64(),
                        t.cause,
                        self.replicas[t.old].name
                    );
                    self.takeovers.push((t.cause, took));
                    self.takeover = None;
                }
            }
        }
        // A new key at the webhook: its clock start or alert change is durable and its first
        // delivery was refused, so it is pending. Kill its leader now.
        let keys: BTreeSet<String> = self.sink.posts().into_iter().map(|p| p.key).collect();
        if keys.len() > self.keys_seen {
            self.keys_seen = keys.len();
            let quiet = self
                .last_kill
                .is_none_or(|k| k.elapsed() > Duration::from_secs(4));
            if self.triggered_kills < MAX_TRIGGERED_KILLS && quiet && self.takeover.is_none() {
                let down = Duration::from_millis(1500);
                if self.kill_leader(down, "a kill while a delivery was pending") {
                    self.triggered_kills += 1;
                }
            }
        }
    }

    /// SIGKILLs the leader, if there is one and the other replica is up and can reach
    /// PostgreSQL (so that the takeover measures the lease, not a restart). False otherwise.
    fn kill_leader(&mut self, down: Duration, cause: &'static str) -> bool {
        if self.takeover.is_some() {
            return false;
        }
        let Some(l) = (0..2).find(|&r| self.leads(r)) else {
            return false;
        };
        let other = 1 - l;
        let other_ready = self.replicas[other].child.is_some()
            && self.replicas[other].started.elapsed() > Duration::from_secs(2)
            && !(other == 1 && self.cut_active());
        if !other_ready {
            return false;
        }
        kill9(&mut self.replicas[l].child);
        self.replicas[l].kills += 1;
        let now = Instant::now();
        self.last_kill = Some(now);
        self.takeover = Some(Takeover {
            since: now,
            old: l,
            cause,
        });
        self.restarts.push((now + down, l));
        println!(
            "failover: killed leader {} ({cause}), down {:.1} s",
            self.replicas[l].name,
            down.as_secs_f64()
        );
        true
    }

    fn sleep_until(&mut self, deadline: Instant) {
        loop {
            self.poll();
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
        }
    }

    fn switch(&mut self, i: usize) {
        if self.agents[i].finished || self.agents[i].child.is_none() {
            return;
        }
        kill9(&mut self.agents[i].child);
        self.agents[i].on = 1 - self.agents[i].on;
        self.switches += 1;
        self.start_agent(i);
    }

    fn wait_finished(&mut self) {
        let deadline = Instant::now() + FINISH_BOUND;
        while !self.agents.iter().all(|a| a.finished) {
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
}

/// The webhook's outbox items: key → delivered.
fn webhook_outbox(server: &Server, db: &TestDatabase) -> BTreeMap<String, bool> {
    query(
        server,
        db,
        "SELECT key, convert_from(doc, 'UTF8')::jsonb ->> 'state' FROM compliance_outbox \
         WHERE sink LIKE 'webhook:%'",
    )
    .into_iter()
    .map(|row| (row[0].clone(), row[1] == "delivered"))
    .collect()
}

/// Rows of text columns, read over the server's Unix socket.
fn query(server: &Server, db: &TestDatabase, sql: &str) -> Vec<Vec<String>> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(server.socket_dir())
        .port(server.port())
        .user(SUPERUSER)
        .dbname(&db.name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        let conn = tokio::spawn(connection);
        let rows = client.simple_query(sql).await.unwrap();
        drop(client);
        let _ = conn.await;
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or_default().to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    })
}

/// `flopmeter <what> verify --store <dsn>`: its output, having checked it exits 0.
fn verify(what: &str, dsn: &str) -> String {
    let out: Output = flopmeter(&[what, "verify", "--store", dsn])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "flopmeter {what} verify --store failed ({}):\n{text}",
        out.status
    );
    text
}

/// Thresholds at fifths of the smaller model's total (the deciding bound is the high one),
/// so that each model crosses them one after the other during the replay.
fn thresholds_file(reference: &Totals, path: &Path) {
    let total = reference
        .models
        .iter()
        .map(|m| m.counted.high)
        .min()
        .unwrap();
    assert!(total > 0, "the reference counted FLOP");
    let mut text = String::from("decision_bound = \"high\"\n");
    for k in LEVELS {
        text.push_str(&format!(
            "\n[thresholds.failover-{k}]\njurisdiction = \"internal\"\n\
             legal_basis = \"failover campaign: {k}/5 of the run\"\n\
             level = \"{}\"\ncomparison = \"at-least\"\n\
             obligation = {{ kind = \"notify\", days = 14 }}\n",
            total * k / 5
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn failover_campaign_loses_and_duplicates_nothing() {
    if !campaign_enabled() {
        return;
    }
    let _alone = one_at_a_time();
    let t0 = Instant::now();
    let seed = super::support::replay::seed_from_env("FLOPMETER_FAILOVER_SEED", DEFAULT_SEED);
    let events = plan(seed);
    println!(
        "failover campaign: seed={seed} ({} planned events)",
        events.len()
    );

    let work = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..AGENTS).map(node).collect();
    let Reference {
        start_ms,
        totals: reference,
        wall: reference_wall,
    } = reference(&nodes, work.path());
    let t1 = Instant::now();

    let server = Server::start();
    let db = server.fresh_database();
    let proxy = CutProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port())));
    let sink = Sink::start();
    let dir = work.path().join("failover");
    std::fs::create_dir_all(&dir).unwrap();
    let thresholds = dir.join("thresholds.toml");
    thresholds_file(&reference, &thresholds);
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let replica = |name, dsn| Replica {
        name,
        dsn,
        grpc: any_port,
        http: any_port,
        child: None,
        started: Instant::now(),
        kills: 0,
    };
    let mut f = Failover {
        nodes: &nodes,
        dir,
        replay: Replay {
            start_ms,
            stop_ms: start_ms + SPAN_MS,
            speed: Some(SPEED),
            spool_cap: None,
        },
        thresholds,
        sink: &sink,
        proxy: &proxy,
        replicas: [
            replica("a", db.socket_dsn()),
            replica("b", db.dsn_via(proxy.port())),
        ],
        agents: (0..AGENTS)
            .map(|i| AgentSlot {
                on: i % 2,
                ..AgentSlot::default()
            })
            .collect(),
        restarts: Vec::new(),
        cut_until: None,
        leader: None,
        leader_changes: 0,
        both_leading_seen: 0,
        takeover: None,
        takeovers: Vec::new(),
        switches: 0,
        triggered_kills: 0,
        keys_seen: 0,
        last_kill: None,
    };
    f.start_replica(0);
    f.start_replica(1);
    for i in 0..AGENTS {
        f.start_agent(i);
    }

    let begin = Instant::now();
    let mut scheduled_kills = 0;
    let mut pg_restart = None;
    for (at, event) in events {
        f.sleep_until(begin + at);
        match event {
            Event::Switch(i) => f.switch(i),
            Event::KillLeader { down } => {
                // Wait (bounded) for a leader and a standby that can take over: during the
                // cut, B cannot take over, so a kill due then waits for its end.
                let wait = CUT + Duration::from_secs(15);
                let deadline = Instant::now() + wait;
                while !f.kill_leader(down, "a scheduled kill") {
                    assert!(
                        Instant::now() < deadline,
                        "no leader with a standby for {wait:?}:\nA:\n{}\nB:\n{}",
                        tail(&f.log("a")),
                        tail(&f.log("b"))
                    );
                    f.sleep_until(Instant::now() + Duration::from_millis(200));
                }
                scheduled_kills += 1;
            }
            Event::RestartPostgres => {
                let t = Instant::now();
                server.restart();
                pg_restart = Some((t - begin, t.elapsed()));
                println!(
                    "failover: PostgreSQL restarted in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
            }
            Event::Cut => {
                let b_led = f.leads(1);
                proxy.cut();
                f.cut_until = Some(Instant::now() + CUT);
                if b_led && f.takeover.is_none() {
                    f.takeover = Some(Takeover {
                        since: Instant::now(),
                        old: 1,
                        cause: "the cut",
                    });
                }
                println!(
                    "failover: B cut from PostgreSQL for {} s (B led: {b_led})",
                    CUT.as_secs()
                );
            }
        }
    }
    f.wait_finished();
    // Every replica up again (a restart may still be pending) and B reconnected.
    while !f.restarts.is_empty() || f.cut_until.is_some() {
        f.sleep_until(Instant::now() + Duration::from_millis(200));
    }
    let t2 = Instant::now();

    // The engine catches up with the last records and the outbox drains: wait until every
    // webhook item is delivered and no new one appeared for 5 s.
    let deadline = Instant::now() + SETTLE_BOUND;
    let mut stable_since = Instant::now();
    let mut last = BTreeMap::new();
    loop {
        f.sleep_until(Instant::now() + Duration::from_millis(500));
        let outbox = webhook_outbox(&server, &db);
        if outbox != last {
            stable_since = Instant::now();
            last = outbox;
        } else if !last.is_empty()
            && last.values().all(|d| *d)
            && stable_since.elapsed() > Duration::from_secs(5)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not settle within {SETTLE_BOUND:?}: {last:?}"
        );
    }
    let settle = t2.elapsed();

    let totals = Totals::read(f.replicas[0].http, &f.dir, &nodes, f.replay.stop_ms);
    let totals_b = Totals::read(f.replicas[1].http, &f.dir, &nodes, f.replay.stop_ms);
    // Nothing may deliver between reading the outbox and reading the receiver.
    for r in 0..2 {
        kill9(&mut f.replicas[r].child);
    }
    let outbox = webhook_outbox(&server, &db);
    let posts = sink.posts();
    let accepted = sink.accepted_per_key();
    let clocks = query(&server, &db, "SELECT count(*) FROM compliance_clocks")[0][0].clone();
    let ledger_verify = verify("ledger", &db.socket_dsn());
    let audit_verify = verify("audit", &db.socket_dsn());
    let t3 = Instant::now();

    let leader_kills = f.replicas[0].kills + f.replicas[1].kills;
    let bound = LEASE_TTL + LEASE_POLL + TAKEOVER_SLACK;
    let max_takeover = f.takeovers.iter().map(|t| t.1).max().unwrap_or_default();
    // How long an alert event waited between its first (refused) attempt and its delivery,
    // failovers included.
    let mut first: BTreeMap<&str, Instant> = BTreeMap::new();
    let mut pending_max = Duration::ZERO;
    for p in &posts {
        let at = *first.entry(p.key.as_str()).or_insert(p.at);
        if p.status == 200 {
            pending_max = pending_max.max(p.at - at);
        }
    }
    let duplicates: BTreeMap<&String, &usize> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    let undelivered: Vec<&String> = outbox
        .keys()
        .filter(|k| accepted.get(*k).copied().unwrap_or(0) == 0)
        .collect();
    let strangers: Vec<&String> = accepted
        .keys()
        .filter(|k| !outbox.contains_key(*k))
        .collect();
    let equal = totals == reference && totals_b == totals;
    let flop = totals.flop();
    let wall = (t3 - t0).as_secs_f64();
    println!(
        "\nfailover campaign seed={seed}: leader kills {leader_kills} (scheduled {scheduled_kills}, \
         while a delivery was pending {}; A {}, B {}); leader changes {}; both leading seen {} \
         times; takeovers (s): [{}] (max {:.2}, bound {:.2}); agent switches {}; PostgreSQL \
         restart {}; B cut {} s; clocks {clocks}; webhook: {} outbox items, {} POSTs, {} \
         accepted, duplicates {}, undelivered {}, longest pending {:.1} s; records {} (reference {}); FLOP central {} \
         (reference {}); GPU-ms {} (equal: {}); wall time {wall:.0} s (reference {:.0} s, \
         chaos {:.0} s, settle {:.0} s, checks {:.0} s)\n",
        f.triggered_kills,
        f.replicas[0].kills,
        f.replicas[1].kills,
        f.leader_changes,
        f.both_leading_seen,
        f.takeovers
            .iter()
            .map(|(c, d)| format!("{:.2} ({c})", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        max_takeover.as_secs_f64(),
        bound.as_secs_f64(),
        f.switches,
        pg_restart.map_or("none".into(), |(at, took)| format!(
            "at {:.0} s, {:.1} s",
            at.as_secs_f64(),
            took.as_secs_f64()
        )),
        CUT.as_secs(),
        outbox.len(),
        posts.len(),
        accepted.values().sum::<usize>(),
        duplicates.len(),
        undelivered.len(),
        pending_max.as_secs_f64(),
        totals.records(),
        reference.records(),
        flop.central,
        reference.flop().central,
        totals.gpu_ms(),
        if equal { "yes" } else { "NO" },
        reference_wall.as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        settle.as_secs_f64(),
        t3.duration_since(t2 + settle).as_secs_f64(),
    );
    println!("ledger verify --store: {}", ledger_verify.trim());
    println!("audit verify --store: {}", audit_verify.trim());
    super::write_summary(
        Some("failover"),
        serde_json::json!({
            "seed": seed,
            "agents": AGENTS,
            "replicas": 2,
            "lease": {
                "ttl_ms": LEASE_TTL.as_millis() as u64,
                "renew_every_ms": LEASE_RENEW.as_millis() as u64,
                "poll_every_ms": LEASE_POLL.as_millis() as u64,
            },
            "leader_kills": {
                "total": leader_kills,
                "scheduled": scheduled_kills,
                "while_delivery_pending": f.triggered_kills,
                "a": f.replicas[0].kills,
                "b": f.replicas[1].kills,
            },
            "leader_changes": f.leader_changes,
            "both_leading_observed": f.both_leading_seen,
            "takeovers": f.takeovers.iter().map(|(c, d)| serde_json::json!({
                "cause": c, "seconds": d.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "takeover_bound_seconds": bound.as_secs_f64(),
            "agent_switches": f.switches,
            "postgres_restart": pg_restart.map(|(at, took)| serde_json::json!({
                "at_seconds": at.as_secs_f64(), "took_seconds": took.as_secs_f64(),
            })),
            "cut_seconds": CUT.as_secs(),
            "clocks": clocks,
            "webhook": {
                "outbox_items": outbox.len(),
                "posts": posts.len(),
                "accepted": accepted.values().sum::<usize>(),
                "duplicate_keys": duplicates.len(),
                "undelivered_keys": undelivered.len(),
                "longest_pending_seconds": pending_max.as_secs_f64(),
            },
            "records": totals.records(),
            "reference_records": reference.records(),
            "flop": {
                "low": flop.low.to_string(),
                "central": flop.central.to_string(),
                "high": flop.high.to_string(),
            },
            "reference_flop_central": reference.flop().central.to_string(),
            "gpu_ms": totals.gpu_ms().to_string(),
            "models": totals.per_model_json(),
            "equal": equal,
            "wall_seconds": {
                "total": wall,
                "reference": reference_wall.as_secs_f64(),
                "chaos": (t2 - t1).as_secs_f64(),
                "settle": settle.as_secs_f64(),
            },
        }),
    );

    assert!(
        leader_kills >= MIN_LEADER_KILLS,
        "only {leader_kills} leader kills"
    );
    assert!(
        f.triggered_kills >= 1,
        "no leader was killed while a delivery was pending"
    );
    assert!(pg_restart.is_some(), "PostgreSQL was restarted");
    assert!(f.switches >= AGENTS, "only {} agent switches", f.switches);
    assert!(
        max_takeover <= bound,
        "a takeover took {max_takeover:?}, beyond {bound:?}: {:?}",
        f.takeovers
    );
    assert!(!outbox.is_empty(), "no alert event reached the outbox");
    for p in &posts {
        assert_eq!(
            p.body_key.as_deref(),
            Some(p.key.as_str()),
            "the body's key is the header's"
        );
    }
    assert!(
        strangers.is_empty(),
        "delivered keys not in the outbox: {strangers:?}"
    );
    assert!(
        undelivered.is_empty(),
        "outbox keys never delivered: {undelivered:?}"
    );
    assert!(
        duplicates.is_empty(),
        "keys accepted more than once: {duplicates:?}"
    );
    assert_eq!(totals_b, totals, "both replicas serve the same ledger");
    assert_eq!(
        totals.numbered, reference.numbered,
        "per-agent record numbering"
    );
    assert_eq!(totals.models, reference.models, "per-model totals");
    assert_eq!(totals.runs, reference.runs, "per-run totals");
    assert!(equal);
}
