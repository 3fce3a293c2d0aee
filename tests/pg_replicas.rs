//! Two `flopmeter collector` processes on one PostgreSQL ledger (`--store`), as an operator
//! runs the `ha-postgres` overlay: one ledger, one compliance engine, a bounded failover.
//!
//! One PostgreSQL per test binary (`flopmeter_pg::test_support::shared`, started on first
//! use), a fresh database per test. The lease is short (ttl 2 s, renewals and polls every
//! 500 ms), so the failover bound is 2.5 s after the leader's last renewal.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use flopmeter_proto::v1::IntervalRecord;
use flopmeter_sim::agent::{SimAgent, SimLoad, SimSpec};

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
    replica_with(dsn, name, &[])
}

/// [`replica`] with more collector flags.
fn replica_with(dsn: &str, name: &str, extra: &[&str]) -> CollectorProc {
    let dir = tempfile::tempdir().unwrap();
    let c = support::collector(dir.path())
        .args(["--store", dsn, "--replica-name", name])
        .args(extra)
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
    support::feed_agent(url, sim_agent(agent, "", model, run), batches);
}

/// A simulated agent of 4 GPUs on `cluster` ("" = none), reporting 10 s intervals.
fn sim_agent(agent: &str, cluster: &str, model: &str, run: &str) -> SimAgent {
    SimAgent::new(SimSpec {
        agent_id: agent.into(),
        node: format!("{agent}-node"),
        gpus: 4,
        model: model.into(),
        run: run.into(),
        stage: String::new(),
        interval: Duration::from_secs(10),
        token: None,
        cluster: cluster.into(),
    })
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

/// An exact integer, as the JSON API writes it (a decimal string).
fn exact(v: &serde_json::Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an exact integer: {v}"))
}

/// A FLOP band `[low, central, high]` of the JSON API.
fn band(v: &serde_json::Value) -> [u128; 3] {
    [exact(&v["low"]), exact(&v["central"]), exact(&v["high"])]
}

/// The band of `records`, summed as the ledger sums them (u128).
fn sum_band(records: &[IntervalRecord]) -> [u128; 3] {
    records.iter().fold([0; 3], |s, r| {
        [
            s[0] + u128::from(r.flop_low),
            s[1] + u128::from(r.flop_central),
            s[2] + u128::from(r.flop_high),
        ]
    })
}

/// The records `a` sends in `batches` batches from its first sequence number, its event
/// clock starting at `start_ms`: the simulated agent's records are a function of (agent, seq,
/// GPU), so the test knows them without asking the collector.
fn sent(a: &SimAgent, start_ms: i64, batches: u64) -> Vec<IntervalRecord> {
    let gpus = a.spec().gpus;
    let interval = a.spec().interval.as_millis() as i64;
    (0..batches)
        .flat_map(|b| {
            (0..gpus).map(move |g| {
                let end = start_ms + (b as i64 + 1) * interval;
                a.record(b * u64::from(gpus) + u64::from(g) + 1, g, end)
            })
        })
        .collect()
}

/// Issue 15's "done when": a model trained on two clusters, each with its own collector on the
/// one PostgreSQL, starts its clock when the SUM of both clusters' compute crosses, dated at
/// the event time of the record at which it crossed, although neither cluster alone crosses.
///
/// Replica "eu" is started first and leads; the crossing records reach the follower "us",
/// so the leader learns of them only through the shared ledger: the follower's commit
/// notifies it (`NOTIFY`, `flopmeter_pg::notify`) and it evaluates within its debounce
/// (2 s), well before its next full pass (60 s after it took office), which the test bounds.
#[test]
fn a_model_on_two_clusters_starts_its_clock_when_the_sum_crosses_dated_at_the_crossing() {
    let began = Instant::now();
    const MODEL: &str = "two-cluster-model";
    const BATCHES: u64 = 6;
    let db = flopmeter_pg::test_support::shared().fresh_database();
    let dsn = db.socket_dsn();

    // GB200s in declared FP8 at a constant FLOP per record (different per cluster): the
    // engine takes work as uniform within its hourly buckets, and with constant records
    // that line passes exactly through every record's end, so the crossing instant the
    // engine finds is a record's end, and the test can name it. Event times are fixed
    // relative to the hour two days ago (beyond the 6 h idle window: nothing extrapolated,
    // so only the measured total can start the clock): eu from H, us from H + 30 min.
    let (eu_high, us_high) = (10_000_000_000_000_000u64, 12_000_000_000_000_000u64);
    let hour = flopmeter_core::utc::MS_PER_HOUR;
    let t_eu = (flopmeter_collector::now_unix_ms() / hour - 48) * hour;
    let t_us = t_eu + hour / 2;
    let eu_agent = || {
        sim_agent("eu-node-1", "eu", MODEL, "run-eu")
            .with_load(SimLoad::Gb200Fp8 { high: eu_high })
            .starting_at(t_eu)
    };
    let us_agent = || {
        sim_agent("us-node-1", "us", MODEL, "run-us")
            .with_load(SimLoad::Gb200Fp8 { high: us_high })
            .starting_at(t_us)
    };
    let eu_records = sent(&eu_agent(), t_eu, BATCHES);
    let us_records = sent(&us_agent(), t_us, BATCHES);
    let (eu_sum, us_sum) = (sum_band(&eu_records), sum_band(&us_records));

    // The level: one FLOP below the total at the end of the us cluster's third batch, so
    // that (eu-systemic-risk compares "greater than", on the high bound by default) the sum
    // crosses exactly there, and neither cluster alone does.
    let level = eu_sum[2] + sum_band(&us_records[..12])[2] - 1;
    assert!(eu_sum[2] <= level && us_sum[2] <= level);
    assert!(eu_sum[2] + us_sum[2] > level);
    // Independently of how the level was chosen: walk every record in event-time order and
    // take the end of the first at which the cumulative high total exceeds the level.
    let mut all: Vec<&IntervalRecord> = eu_records.iter().chain(&us_records).collect();
    all.sort_by_key(|r| r.end_unix_ms);
    let mut cumulative = 0u128;
    let crossing = all
        .iter()
        .find_map(|r| {
            cumulative += u128::from(r.flop_high);
            (cumulative > level).then_some(r.end_unix_ms)
        })
        .unwrap();
    assert_eq!(crossing, t_us + 30_000, "the us cluster's third batch");

    let dir = tempfile::tempdir().unwrap();
    let thresholds = dir.path().join("thresholds.toml");
    std::fs::write(
        &thresholds,
        format!("[thresholds.eu-systemic-risk]\nlevel = \"{level}\"\n"),
    )
    .unwrap();
    let flags = ["--thresholds", thresholds.to_str().unwrap()];
    let eu = replica_with(&dsn, "eu", &flags);
    support::eventually("replica eu leads", || leader_gauge(&eu) == Some(1.0));
    let in_office = Instant::now();
    let us = replica_with(&dsn, "us", &flags);
    support::eventually("replica us follows", || leader_gauge(&us) == Some(0.0));

    support::feed_agent(&eu.url(), eu_agent(), BATCHES);
    let summary = &us.get(&format!("/api/v1/models/{MODEL}")).unwrap()["summary"];
    assert_eq!(band(&summary["counted"]), eu_sum, "{summary}");
    // Past the pass the leader's own ingest triggers (within its 2 s debounce), so that
    // pass cannot be the one that sees the follower's records.
    std::thread::sleep(Duration::from_secs(4));
    support::feed_agent(&us.url(), us_agent(), BATCHES);

    // The leader evaluates what the follower committed before its next full pass, 60 s
    // after it took office (its first pass): only the notification can bring it sooner.
    let deadline = in_office + Duration::from_secs(50);
    let alert = loop {
        let alerts = eu.get("/api/v1/alerts").unwrap_or_default();
        let found = alerts.as_array().and_then(|a| {
            a.iter()
                .find(|al| {
                    al["model"] == MODEL
                        && al["threshold"] == "eu-systemic-risk"
                        && al["clock_start"].is_string()
                })
                .cloned()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no clock start within 50 s of the leader taking office, so not before its \
             next full pass: the follower's commit did not reach it: {alerts}\n{}",
            eu.log.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("clock started {:?} after the test began", began.elapsed());
    assert_eq!(
        alert["clock_start"],
        flopmeter_core::utc::format_utc(crossing),
        "{alert}"
    );

    // Each cluster's figures are what its agent sent, neither alone crosses, and they sum
    // to the model's total exactly, on both replicas.
    for replica in [&us, &eu] {
        let summary = &replica.get(&format!("/api/v1/models/{MODEL}")).unwrap()["summary"];
        let rows = summary["by_cluster"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{summary}");
        let row = |c: &str| {
            let r = rows.iter().find(|r| r["cluster"] == c).unwrap();
            assert_eq!(r["kind"], "cluster", "{r}");
            band(&r["counted"]["flop"])
        };
        let (eu_row, us_row) = (row("eu"), row("us"));
        assert_eq!(eu_row, eu_sum, "{summary}");
        assert_eq!(us_row, us_sum, "{summary}");
        assert!(eu_row[2] <= level && us_row[2] <= level, "{summary}");
        let total = band(&summary["counted"]);
        assert_eq!([0, 1, 2].map(|i| eu_row[i] + us_row[i]), total, "{summary}");
        assert!(total[2] > level);
    }

    // The ledger's chain: one clock start for (model, threshold), dated at the crossing,
    // which is after every eu record and at the end of a us record.
    let o = flopmeter(&["audit", "verify", "--store", &dsn]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let o = flopmeter(&["audit", "export", "--store", &dsn]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let starts: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "clock-started")
        .collect();
    assert_eq!(starts.len(), 1, "{}", text(&o.stdout));
    let p = &starts[0]["payload"];
    assert_eq!(p["model"], MODEL, "{p}");
    assert_eq!(p["threshold_id"], "eu-systemic-risk", "{p}");
    assert_eq!(p["start"]["reason"], "measured", "{p}");
    let at = p["start"]["at_ms"].as_i64().unwrap();
    assert_eq!(at, crossing, "{p}");
    assert!(eu_records.iter().all(|r| r.end_unix_ms < at), "{p}");
    assert!(us_records.iter().any(|r| r.end_unix_ms == at), "{p}");
    eprintln!("test took {:?}", began.elapsed());
}
