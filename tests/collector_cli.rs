//! The collector's subcommands as users run them, against a real `flopmeter collector`
//! process: `model set`, `models`, `runs`, `report` (text, JSON, CSV, and offline),
//! `ledger verify` (online, offline, and on a tampered ledger).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{Aggregate, keys};
use flopmeter_sim::agent::{SimAgent, SimSpec};

use crate::support::{self, CollectorProc};

fn flopmeter(args: &[&str]) -> Output {
    support::flopmeter(args)
        .env_remove("FLOPMETER_LOG")
        .stdout(Stdio::piped())
        .output()
        .expect("flopmeter runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Running {
    _collector: CollectorProc,
    url: String,
}

fn start(dir: &Path) -> Running {
    let c = support::collector(dir)
        .env("FLOPMETER_ADMIN_TOKEN", "adm1n")
        .start();
    Running {
        url: c.url(),
        _collector: c,
    }
}

fn feed(url: &str) {
    for (i, (run, stage)) in [("run-1", ""), ("run-2", "eval")].into_iter().enumerate() {
        let a = SimAgent::new(SimSpec {
            agent_id: format!("cli-agent-{i}"),
            node: format!("cli-node-{i}"),
            gpus: 4,
            model: "acme".into(),
            run: run.into(),
            stage: stage.into(),
            interval: Duration::from_secs(10),
            token: None,
            cluster: String::new(),
        });
        support::feed_agent(url, a, 5);
    }
}

#[test]
fn collector_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let url = c.url.as_str();
    feed(url);

    let set = [
        "model",
        "set",
        "acme",
        "--base",
        "llama",
        "--base-flop",
        "3.8e24",
        "--role",
        "modifier",
        "--planned-flop",
        "2e25",
        "--planned-end",
        "2027-03-01",
        "--collector",
        url,
    ];
    let o = flopmeter(&set);
    assert_eq!(o.status.code(), Some(2), "no admin token: {}", stderr(&o));
    assert!(stderr(&o).contains("admin token"), "{}", stderr(&o));
    let mut with_token = set.to_vec();
    with_token.extend(["--admin-token", "adm1n"]);
    // The shared admin token names nobody: the audit log needs --by.
    let o = flopmeter(&with_token);
    assert_eq!(o.status.code(), Some(2), "no --by: {}", stderr(&o));
    assert!(stderr(&o).contains("--by"), "{}", stderr(&o));
    with_token.extend(["--by", "erin"]);
    let o = flopmeter(&with_token);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("saved model acme"), "{out}");
    assert!(out.contains(" by erin"), "{out}");
    assert!(out.contains("base compute:  3.8e24 FLOP"), "{out}");
    assert!(out.contains("planned end:   2027-03-01 00:00 UTC"), "{out}");
    // Flags not given keep their value.
    let o = flopmeter(&[
        "model",
        "set",
        "acme",
        "--planned-flop",
        "3e25",
        "--collector",
        url,
        "--admin-token",
        "adm1n",
        "--by",
        "erin",
    ]);
    assert!(
        stdout(&o).contains("base model:    llama"),
        "{}",
        stdout(&o)
    );
    let o = flopmeter(&[
        "model",
        "set",
        "acme",
        "--planned-flop",
        "lots",
        "--collector",
        url,
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A base's status without its compute, for the modifier threshold's fallback.
    let o = flopmeter(&[
        "model",
        "set",
        "acme-ft",
        "--role",
        "modifier",
        "--base",
        "frontier-x",
        "--base-systemic-risk",
        "--collector",
        url,
        "--admin-token",
        "adm1n",
        "--by",
        "erin",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("base status:   systemic-risk model (declared)"),
        "{}",
        stdout(&o)
    );

    let o = flopmeter(&["models", "--collector", url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("acme") && out.contains("modifier"), "{out}");

    let o = flopmeter(&["models", "--collector", url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["records"], 40);
    assert_eq!(v[0]["runs"], 2);

    let o = flopmeter(&["runs", "--model", "acme", "--collector", url]);
    let out = stdout(&o);
    assert!(
        out.contains("run-1") && out.contains("run-2") && out.contains("eval"),
        "{out}"
    );

    let o = flopmeter(&["report", "--model", "acme", "--collector", url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "Computation:",
        "method mix:      100% gpm-tensor",
        "Training time:",
        "h100-sxm GPU-days",
        "MWh",
        "  eval                   excluded",
        "Unattributed compute on the same hardware in the same period (2 node(s)",
        "Base model:        llama with 3.8e24 FLOP",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let o = flopmeter(&[
        "report",
        "--model",
        "acme",
        "--collector",
        url,
        "--format",
        "csv",
    ]);
    assert!(stdout(&o).starts_with("section,name,counts,flop_low"));
    let o = flopmeter(&[
        "report",
        "--model",
        "acme",
        "--collector",
        url,
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema"], "flopmeter.report.v1");
    assert_eq!(v["quality"]["records"], 40);
    let o = flopmeter(&["report", "--model", "nope", "--collector", url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // Online verification needs the admin credential: without it, a clear refusal.
    let o = flopmeter(&["ledger", "verify", "--collector", url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("admin token"), "{}", stderr(&o));
    let o = flopmeter(&[
        "ledger",
        "verify",
        "--collector",
        url,
        "--admin-token",
        "adm1n",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("0 mismatches"), "{}", stdout(&o));

    // Offline: the collector must be stopped first (one process per ledger).
    drop(c);
    let d = dir.path().to_str().unwrap();
    let o = flopmeter(&["ledger", "verify", "--data-dir", d]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = flopmeter(&["report", "--model", "acme", "--data-dir", d]);
    assert!(stdout(&o).contains("Computation:"), "{}", stderr(&o));

    // Tamper with one run's aggregate: verify fails and names it.
    {
        let s = SledStore::open(dir.path()).unwrap();
        let t = s.db().open_tree("run_agg").unwrap();
        let key = keys::join(&["acme", "run-1"]);
        let mut a: Aggregate = serde_json::from_slice(&t.get(&key).unwrap().unwrap()).unwrap();
        a.stages.get_mut("pretrain").unwrap().flop.high += 1_000_000;
        t.insert(key, serde_json::to_vec(&a).unwrap()).unwrap();
        s.db().flush().unwrap();
    }
    let o = flopmeter(&["ledger", "verify", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("MISMATCH run acme/run-1: stored FLOP high"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("ledger verification failed: 1 mismatch"),
        "{}",
        stderr(&o)
    );
}
