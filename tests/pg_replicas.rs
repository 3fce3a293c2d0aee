//! Two `flopmeter collector` processes on one PostgreSQL ledger (`--store`), as an operator
//! runs the `ha-postgres` overlay: one ledger, one compliance engine, a bounded failover.
//!
//! One PostgreSQL per test binary (`flopmeter_pg::test_support::shared`, started on first
//! use), a fresh database per test. The lease is short (ttl 2 s, renewals and polls every
//! 500 ms), so the failover bound is 2.5 s after the leader's last renewal.

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flopmeter_sim::agent::{Pace, SimAgent, SimSpec, SimStats, StopAt};
use flopmeter_sim::loadgen::channel;

use crate::support::{self, CollectorProc, http};

const TOKEN: &str = "adm1n";
const TTL: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(500);
/// Beyond ttl + poll: one lease query, the engine taking office, one metrics scrape.
const SLACK: Duration = Duration::from_secs(3);

fn flopmeter(args: &[&str]) -> Output {
    support::flopmeter(args)
        .env_remove("FLOPMETER_LOG")
        .stdout(Stdio::piped())
        .output()
        .expect("flopmeter runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn replica(dsn: &str, name: &str) -> CollectorProc {
    let dir = tempfile::tempdir().unwrap();
    let c = support::collector(dir.path())
        .args(["--store", dsn, "--replica-name", name])
        .args(["--lease-ttl", "2s", "--lease-renew-every", "500ms"])
        .args(["--lease-poll-every", "500ms"])
        .env("FLOPMETER_ADMIN_TOKEN", TOKEN)
        .start();
    // --data-dir is not used with --store: nothing may have been written there.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a collector on PostgreSQL wrote to its --data-dir"
    );
    c
}

/// `flopmeter_compliance_leader` of a replica (`None`: no answer).
fn leader_gauge(c: &CollectorProc) -> Option<f64> {
    http::sample(
        &http::get_text(c.http, "/metrics")?,
        "flopmeter_compliance_leader",
    )
}

fn metrics(c: &CollectorProc) -> String {
    http::get_text(c.http, "/metrics").unwrap()
}

/// Sends `batches` batches of 4 records for `model`/`run` as `agent` to `url`, all
/// acknowledged.
fn feed(url: &str, agent: &str, model: &str, run: &str, batches: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut a = SimAgent::new(SimSpec {
            agent_id: agent.into(),
            node: format!("{agent}-node"),
            gpus: 4,
            model: model.into(),
            run: run.into(),
            stage: String::new(),
            interval: Duration::from_secs(10),
            token: None,
            cluster: String::new(),
        });
        let stop = StopAt {
            batches: Some(batches),
            deadline: None,
        };
        a.run(
            channel(url).unwrap(),
            Pace::Max,
            stop,
            Duration::ZERO,
            Arc::new(SimStats::default()),
        )
        .await;
        assert_eq!(a.unacked(), 0, "{agent}: every batch acknowledged");
    });
}

fn model_json(c: &CollectorProc, model: &str) -> serde_json::Value {
    let models = c.get("/api/v1/models").unwrap();
    models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .cloned()
        .unwrap_or_else(|| panic!("{model} not in {models}"))
}

/// The engine lease's row: (epoch, holder).
fn lease_row(dsn: &str) -> (i64, Option<String>) {
    let db = flopmeter_pg::Database::connect(flopmeter_pg::Options::new(
        flopmeter_pg::Dsn::parse(dsn).unwrap(),
    ))
    .unwrap();
    db.run(|conn| async move {
        flopmeter_pg::lease::current(&conn, flopmeter_pg::lease::ENGINE).await
    })
    .unwrap()
    .map(|(epoch, holder, _)| (epoch, holder))
    .unwrap()
}

#[test]
fn two_replicas_share_one_ledger_and_one_engine_with_a_bounded_failover() {
    let db = flopmeter_pg::test_support::shared().fresh_database();
    let dsn = db.socket_dsn();
    let mut replicas = [replica(&dsn, "replica-a"), replica(&dsn, "replica-b")];

    // Exactly one leads; both export the gauge.
    let mut leader = usize::MAX;
    support::eventually("one replica leads", || {
        let g: Vec<Option<f64>> = replicas.iter().map(leader_gauge).collect();
        match g.as_slice() {
            [Some(a), Some(b)] if a + b == 1.0 => {
                leader = if *a == 1.0 { 0 } else { 1 };
                true
            }
            _ => false,
        }
    });
    let follower = 1 - leader;
    let names = ["replica-a", "replica-b"];

    // Records sent to each replica land in one ledger: both answer the same totals.
    feed(&replicas[0].url(), "agent-0", "shared-model", "run-a", 5);
    feed(&replicas[1].url(), "agent-1", "shared-model", "run-b", 7);
    let (a, b) = (
        model_json(&replicas[0], "shared-model"),
        model_json(&replicas[1], "shared-model"),
    );
    assert_eq!(a, b, "both replicas read one ledger");
    assert_eq!(a["records"], 48, "{a}");
    assert_eq!(a["runs"], 2, "{a}");
    // An agent that moves to the other replica carries on from its mark there: the Welcome
    // names the 20 records replica a applied, and every new batch is acknowledged (a gap
    // would be refused). 7 or 8 new batches: a batch the simulated agent generated before
    // the Welcome is dropped as covered by the mark, and counts toward its 8.
    feed(&replicas[1].url(), "agent-0", "shared-model", "run-a", 8);
    let records = model_json(&replicas[0], "shared-model")["records"].clone();
    assert!(records == 76 || records == 80, "{records}");
    assert_eq!(model_json(&replicas[1], "shared-model")["records"], records);

    // Model-level series come from the leader only, so a sum over replicas counts once.
    let series = "flopmeter_model_flop{bound=\"high\",model=\"shared-model\"}";
    support::eventually("the leader exports the model's FLOP", || {
        http::sample(&metrics(&replicas[leader]), series).is_some()
    });
    let m = metrics(&replicas[follower]);
    assert!(
        !m.contains("flopmeter_model_flop{") && !m.contains("flopmeter_run_flop{"),
        "a follower exports model-level series:\n{m}"
    );
    assert_eq!(http::sample(&m, "flopmeter_compliance_leader"), Some(0.0));

    // A person's action on the follower: UNAVAILABLE, naming the leader, retried and said so.
    let o = flopmeter(&[
        "ack",
        "--model",
        "shared-model",
        "--reference",
        "AI Office 2026-1",
        "--by",
        "erin",
        "--admin-token",
        TOKEN,
        "--collector",
        &replicas[follower].url(),
    ]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("not the compliance leader")
            && err.contains(&format!("the leader is {}", names[leader])),
        "{err}"
    );
    assert!(err.contains("retrying over a new connection"), "{err}");
    assert!(err.contains("attempt 4 of 5"), "{err}");

    // SIGKILL the leader: the other takes over within the bound.
    let killed_at = Instant::now();
    replicas[leader].kill9();
    support::eventually("the follower leads", || {
        leader_gauge(&replicas[follower]) == Some(1.0)
    });
    let took = killed_at.elapsed();
    assert!(
        took <= TTL + POLL + SLACK,
        "failover took {took:?}, bound {:?} + slack",
        TTL + POLL
    );
    eprintln!("failover after SIGKILL of the leader: {took:?}");

    // A clock start after the kill: made by the new leader, once.
    let survivor = &replicas[follower];
    let o = flopmeter(&[
        "model",
        "set",
        "shared-model",
        "--planned-flop",
        "2e25",
        "--by",
        "erin",
        "--admin-token",
        TOKEN,
        "--collector",
        &survivor.url(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    support::eventually("the new leader starts the clock", || {
        let o = flopmeter(&["alerts", "--json", "--collector", &survivor.url()]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|al| al["model"] == "shared-model" && al["clock_start"] != "")
        })
    });
    // The new leader's model-level series.
    support::eventually("the new leader exports the model's FLOP", || {
        http::sample(&metrics(survivor), series).is_some()
    });
    let status = replicas[follower].proc.terminate();
    assert!(status.success(), "{}", replicas[follower].log.text());
    // A clean stop released the lease: the next replica takes it at its next poll, not
    // after the ttl.
    let (epoch, holder) = lease_row(&dsn);
    assert_eq!(holder, None, "the lease is still held after a clean stop");
    assert!(
        epoch >= 2,
        "the first leader's acquisition and the survivor's: {epoch}"
    );

    // The shared ledger verifies offline, and its chain holds one clock start.
    let o = flopmeter(&["ledger", "verify", "--store", &dsn]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let o = flopmeter(&["audit", "verify", "--store", &dsn]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).contains("audit chain OK"),
        "{}",
        text(&o.stdout)
    );
    let o = flopmeter(&["audit", "export", "--store", &dsn]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let starts = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "clock-started")
        .count();
    assert_eq!(starts, 1, "{}", text(&o.stdout));
    // The password never reaches a log (the socket DSN has none; the DSN's user does).
    assert!(
        !replicas[follower]
            .log
            .contains(flopmeter_pg::test_support::SUPERUSER_PASSWORD)
    );
}
